"""PNG plots of a run, written into its run folder (runs/<timestamp>/):

- ``loss.png``      training loss of each batch over samples trained, and the held-out
                    loss at each evaluation;
- ``accuracy.png``  held-out accuracy over samples trained;
- ``per_class.png`` held-out accuracy per class before and after training (grouped bars).

matplotlib is imported here, lazily, inside the functions: the rest of the host
imports without it. It draws with the Agg canvas directly (no pyplot, no display,
no global backend switch). A plot with nothing to show is skipped; each file is
written to a temporary name and renamed into place, like the rest of the record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PLOTS = ("loss.png", "accuracy.png", "per_class.png")


def write_plots(run_dir: Path | str, trains: list[dict], evals: list[dict],
                class_names: list[str] | tuple[str, ...] | None = None) -> list[Path]:
    """Write the plots that the records allow; returns the paths written.

    `trains`: the "train" records of metrics.jsonl (samples, loss); `evals`: the "eval"
    records (epoch, samples, loss, accuracy, per_class). An interrupted run passes what
    it has: per_class.png then shows "after" only if an evaluation after training exists.
    """
    run_dir = Path(run_dir)
    written = []
    for name, draw in (("loss.png", _loss), ("accuracy.png", _accuracy), ("per_class.png", _per_class)):
        fig = draw(trains, evals, class_names)
        if fig is not None:
            written.append(_save(fig, run_dir / name))
    return written


def plot_run(run_dir: Path | str) -> list[Path]:
    """(Re)draw the plots of a run folder from its metrics.jsonl and summary.json."""
    run_dir = Path(run_dir)
    trains, evals = [], []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            (trains if rec.get("kind") == "train" else evals if rec.get("kind") == "eval" else []).append(rec)
    names = None
    try:
        names = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("class_names")
    except (OSError, ValueError, AttributeError):
        pass
    return write_plots(run_dir, trains, evals, names)


def _figure(title: str, xlabel: str, ylabel: str, width: float = 7.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        fig.savefig(f, format="png")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _measured(evals: list[dict], key: str) -> list[tuple[int, float]]:
    return [(e["samples"], e[key]) for e in evals if e.get(key) is not None]


def _loss(trains, evals, _names):
    train = [(t["samples"], t["loss"]) for t in trains if t.get("loss") is not None]
    held = _measured(evals, "loss")
    if not train and not held:
        return None
    fig, ax = _figure("loss", "samples trained", "loss")
    if train:
        xs, ys = zip(*train)
        ax.plot(xs, ys, lw=0.8, alpha=0.6, color="tab:blue", label="training (per batch)")
    if held:
        xs, ys = zip(*held)
        ax.plot(xs, ys, "o-", color="tab:orange", label="held-out (each evaluation)")
    ax.legend()
    return fig


def _accuracy(_trains, evals, _names):
    held = _measured(evals, "accuracy")
    if not held:
        return None
    fig, ax = _figure("held-out accuracy", "samples trained", "accuracy")
    xs, ys = zip(*held)
    ax.plot(xs, ys, "o-", color="tab:green", label="held-out")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return fig


def _per_class(_trains, evals, names):
    if not evals or not evals[0].get("per_class"):
        return None
    before = evals[0]["per_class"]
    trained = [e for e in evals[1:] if e.get("epoch", 0) >= 1 and e.get("per_class")]
    after = trained[-1]["per_class"] if trained else None
    k = len(before)
    labels = [str(n) for n in names] if names and len(names) == k else [str(c) for c in range(k)]
    fig, ax = _figure("held-out accuracy per class", "class", "accuracy", width=max(7.0, 0.55 * k + 2))
    xs = list(range(k))
    width = 0.4 if after is not None else 0.6

    def bars(values, offset, label, color):
        ax.bar([x + offset for x in xs], [v if v is not None else 0.0 for v in values], width,
               label=label, color=color)

    if after is not None:
        bars(before, -width / 2, "before", "tab:gray")
        bars(after, width / 2, f"after ({trained[-1]['samples']} samples)", "tab:blue")
    else:
        bars(before, 0.0, "before", "tab:gray")
    ax.set_xticks(xs)
    long = max((len(s) for s in labels), default=0) > 6
    ax.set_xticklabels(labels, rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_ylim(0, 1.22)  # room for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.grid(True, axis="x", alpha=0)
    ax.legend(loc="upper center", ncol=2)
    return fig
