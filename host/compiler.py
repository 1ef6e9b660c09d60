"""Model description → training graph → planned program.

The schedule the compiler emits, for layers L1..Lk and the loss:

    forward   L1.fw … Lk.fw, loss.fw            (EVAL runs up to here)
    backward  loss.bw_input, then for each layer from the last that trains or
              feeds one that does: Lj.bw_param, Lj.bw_input (only where an
              upstream layer needs dx), and right after, the optimizer update of
              Lj's parameters, so each gradient dies as soon as it is applied.
              Where an output feeds several layers (residuals), the gradients
              arriving from each reader are summed in place (ACCUMULATE).

Layers that neither train nor feed a trained layer run forward only. When a layer computes
something else in training (batch statistics, dropout), the eval forward is a
separate prefix and TRAIN starts after it (`train_begin` in docs/blob.md).

What each layer type emits is its rule's business (`host.layers`); only what
backward needs is kept alive, and the planner (host.planner) turns the
lifetimes into offsets in one arena.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np

from . import ids, passes
from .errors import ModelError
from .graph import Graph, Tensor
from .ids import DType, OpCode, OpFn, TensorFlag
from .layers import Emitter, rule_for, split_attrs
from .planner import Plan, plan_graph
from .strategies import Selection, lora_init, lora_shapes, select
from .zoo import INPUT, ModelSpec

B = TensorFlag.BATCHED
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
DTYPES = ("fp32", "int8", "mixed")
INT8_UPDATES = ("auto", "master", "sr")
INT8_SUMS = ("auto", "batch", "sample")


@dataclass(frozen=True)
class TrainConfig:
    batch: int = 32
    lr: float = 0.5
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    #: names of the layers whose parameters train; None = as `strategy` says
    train_layers: tuple[str, ...] | None = None
    #: what trains, by name (host.strategies): full, last, layers=NAME,..., bias, sparse, lora=R
    strategy: str = "full"
    #: `sparse`: the channels chosen per layer (host.sparse.choose_channels), as
    #: ((layer, (channel, ...)), ...); a layer named with all its channels trains whole
    train_channels: tuple[tuple[str, tuple[int, ...]], ...] | None = None
    #: gradient accumulation: the optimizer steps once per this many TRAIN batches,
    #: on the mean of their gradients (an effective batch of accumulate × batch)
    accumulate: int = 1
    #: clip the gradient's global L2 norm to this (torch.nn.utils.clip_grad_norm_); 0 = off
    clip_norm: float = 0.0
    #: arithmetic (docs/ops/int8.md): fp32; int8 = linear/conv/relu layers in int8 forward and
    #: backward, f32 master weights for what trains; mixed = int8 for the frozen layers that run
    #: forward only, fp32 where anything trains (the practical choice for last, sparse, lora)
    dtype: str = "fp32"
    #: how the weights of trained int8 layers update (dtype int8, docs/ops/int8.md): "master"
    #: (f32 master weights, any optimizer, then REQUANT_WEIGHTS), "sr" (the int8 codes
    #: themselves by SGD_Q8: stochastic rounding and quantisation-aware scaling, no f32 copy;
    #: plain SGD only) or "auto" (master, unless only sr fits the board's arena)
    int8_updates: str = "auto"
    #: how int8 convs hold their int32 sums in FW and BW_INPUT (docs/ops/int8.md): "batch" (the
    #: whole batch's, requantised at once: fastest), "sample" (one sample's, made twice: those
    #: MACs twice, the sums' memory divided by the batch) or "auto" (batch, unless only sample
    #: fits the board's arena; tried before L3 and SGD_Q8, which cost copies or accuracy)
    int8_sums: str = "auto"

    def sr_problem(self) -> str | None:
        """Why int8-weight updates (SGD_Q8) cannot run this config, or None."""
        if self.dtype != "int8":
            return f"int8 weight updates need --dtype int8 (not {self.dtype})"
        if self.optimizer != "sgd" or self.weight_decay or self.accumulate > 1 or self.clip_norm:
            return "int8 weight updates (SGD_Q8) are plain SGD: no momentum/Adam, weight decay, accumulation or clipping"
        return None

    def validate(self) -> None:
        if not 1 <= self.batch <= 0xFFFF:
            raise ModelError(f"batch {self.batch} must be in 1..65535")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ModelError(f"learning rate {self.lr} must be a positive number")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ModelError(f"weight decay {self.weight_decay} must be ≥ 0")
        if self.optimizer not in OPTIMIZERS:
            raise ModelError(f"optimizer {self.optimizer!r}: want one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1 or not all(0 <= b < 1 for b in self.betas) or not self.eps > 0:
            raise ModelError("momentum and betas must be in [0, 1), eps > 0")
        if self.train_layers is not None and self.strategy != "full":
            raise ModelError("give the layers to train or a strategy, not both")
        if not 1 <= self.accumulate <= 0x7FFF:
            raise ModelError(f"accumulate {self.accumulate} must be in 1..32767")
        if not (np.isfinite(self.clip_norm) and self.clip_norm >= 0):
            raise ModelError(f"clip norm {self.clip_norm} must be ≥ 0 (0 = off)")
        if self.dtype not in DTYPES:
            raise ModelError(f"dtype {self.dtype!r}: want one of {', '.join(DTYPES)}")
        if self.int8_updates not in INT8_UPDATES:
            raise ModelError(f"int8 updates {self.int8_updates!r}: want one of {', '.join(INT8_UPDATES)}")
        if self.int8_sums not in INT8_SUMS:
            raise ModelError(f"int8 sums {self.int8_sums!r}: want one of {', '.join(INT8_SUMS)}")
        if self.int8_updates == "sr" and self.sr_problem():
            raise ModelError(self.sr_problem(), hint="use --int8-updates master (f32 master weights) instead")


@dataclass
class Program:
    """A compiled, planned training program: what a blob holds."""

    spec: ModelSpec
    config: TrainConfig
    graph: Graph
    plan: Plan
    param_names: dict[int, str]    # tensor index → "fc1.weight"

    def param_index(self, name: str) -> int:
        for i, n in self.param_names.items():
            if n == name:
                return i
        raise KeyError(name)

    def report(self) -> dict:
        """What the strategy trains and what it costs (per training step of a full batch):
        trained values (a sparse layer counts only its chosen rows), the bytes of their
        gradients and of the optimizer state, forward and backward MACs, and the plan."""
        from .costs import graph_macs

        g, n = self.graph, self.config.batch
        rows = dict(self.config.train_channels or ())
        trained = 0
        for i in g.trainable:
            t = g.tensors[i]
            layer = t.name.split(".", 1)[0]
            if t.name.endswith(".rows"):  # a sparse update's working copy (_step)
                continue
            if layer in rows and ".lora_" not in t.name:
                trained += len(rows[layer]) * int(np.prod(t.dims[1:]))
            else:
                trained += t.elems
        grads = [i for i, t in enumerate(g.tensors) if t.flags & TensorFlag.GRAD
                 and not t.flags & TensorFlag.BATCHED]
        state = [i for i, t in enumerate(g.tensors) if t.is_param and not t.flags & TensorFlag.TRAINABLE
                 and t.name.endswith(_OPTIMIZER_STATE)]
        return {"strategy": self.config.strategy, "dtype": self.config.dtype,
                "int8_sums": self.config.int8_sums, "int8_updates": self.config.int8_updates,
                "trainable_params": trained,
                "gradient_bytes": sum(self.plan.sizes[i] for i in grads),
                "optimizer_state_bytes": sum(self.plan.sizes[i] for i in state),
                "forward_macs": graph_macs(g, n, range(g.train_begin, g.train_loss_end)),
                "backward_macs": graph_macs(g, n, range(g.train_loss_end, len(g.nodes))),
                "peak_bytes": self.plan.arena_bytes, "lower_bound_bytes": self.plan.lower_bound,
                "naive_bytes": self.plan.naive_bytes, "l3_bytes": self.plan.l3_bytes,
                "l3_tensors": sorted(g.tensors[i].name for i in self.plan.l3_tensors)}


#: name endings of the optimizer's persistent state (host.compiler._optimizer_step, _Updates)
_OPTIMIZER_STATE = (".momentum", ".adam_m", ".adam_v", ".adam_t", ".grad_sum")


def _step(e: Emitter, cfg: TrainConfig, p: int, gp: int, scale: float = 1.0, rows=None) -> None:
    """The optimizer step of p; with rows = (index, C, inner), of p's rows the index names:
    gathered into a temporary, stepped (its optimizer state has the gathered shape),
    scattered back."""
    if rows is None:
        _optimizer_step(e, cfg, p, gp, scale)
        return
    idx, channels, inner = rows
    # the optimizer ops step only TRAINABLE tensors, and TRAINABLE implies PARAM (persistent):
    # the gathered rows are a small persistent buffer, like the optimizer's own state
    part = e.gather(p, idx, channels, inner, e.g.tensors[p].name.split(".", 1)[1] + ".rows",
                    flags=TensorFlag.PARAM | TensorFlag.TRAINABLE)
    _optimizer_step(e, cfg, part, gp, scale)
    e.node(OpCode.SCATTER, OpFn.FW, [part, idx], [p], iattrs=split_attrs(channels, inner))


def _optimizer_step(e: Emitter, cfg: TrainConfig, p: int, gp: int, scale: float = 1.0) -> None:
    """The optimizer node(s) for one parameter (docs/blob.md), on gradient gp · scale."""
    lr, wd = cfg.lr, cfg.weight_decay
    name, dims = e.g.tensors[p].name, e.g.tensors[p].dims
    if cfg.optimizer == "sgd":
        # p -= lr·(scale·g + wd·p) is p -= (lr·scale)·(g + (wd/scale)·p): SGD needs no scale attribute
        e.node(OpCode.SGD, OpFn.FW, [gp], [p], fattrs=(lr * scale, wd / scale))
    elif cfg.optimizer == "momentum":
        vel = e.state(f"{name}.momentum", dims)
        e.node(OpCode.SGD_MOMENTUM, OpFn.FW, [gp], [p, vel], fattrs=(lr, cfg.momentum, wd, 0.0, scale))
    else:
        m, v = e.state(f"{name}.adam_m", dims), e.state(f"{name}.adam_v", dims)
        step = e.state(f"{name}.adam_t", (1,))
        e.node(OpCode.ADAM, OpFn.FW, [gp], [p, m, v, step], iattrs=(int(cfg.optimizer == "adamw"),),
               fattrs=(lr, cfg.betas[0], cfg.betas[1], cfg.eps, wd, scale))


class _Updates:
    """What e.update does: step each parameter right after its gradient (the
    least memory: each gradient dies at once), or, when a step needs every
    gradient first, defer the steps to an update section at the end:

    - gradient accumulation: each gradient is added into a persistent sum, and
      the section (run on every K-th TRAIN) steps on sum/K, then zeroes the sums;
    - gradient clipping: the section first sums the squares of all gradients
      (CLIP_NORM phase 0) and scales them by min(1, max_norm/(norm + 1e-6))
      (phase 1), as torch.nn.utils.clip_grad_norm_ does. With accumulation it
      clips the sum against K·max_norm, which is clipping the mean against max_norm.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.defer = cfg.accumulate > 1 or cfg.clip_norm > 0
        self.deferred: list[tuple[int, int, str, tuple | None]] = []

    def __call__(self, e: Emitter, p: int, gp: int, layer: str, rows=None, then=None) -> None:
        if not self.defer:
            _step(e, self.cfg, p, gp, rows=rows)
            if then is not None:
                then(e)
            return
        if self.cfg.accumulate > 1:
            acc = e.state(f"{e.g.tensors[p].name}.grad_sum", e.g.tensors[gp].dims)
            e.node(OpCode.ACCUMULATE, OpFn.FW, [acc, gp], [acc])
            gp = acc
        self.deferred.append((p, gp, layer, rows, then))

    def emit_section(self, e: Emitter, g: Graph) -> None:
        if not self.defer:
            return
        k = self.cfg.accumulate
        g.update_begin, g.update_every = len(g.nodes), k
        if k > 1:
            g.counter_tensor = g.add_tensor(Tensor("train.batches_since_update", (1,), DType.I32, TensorFlag.PARAM))
        grads = [gp for _, gp, _, _, _ in self.deferred]
        if self.cfg.clip_norm > 0:
            e.begin("clip")
            sumsq = e.g.add_tensor(Tensor("clip.sumsq", (1,)))
            for i in range(0, len(grads), ids.MAX_NODE_INPUTS):
                e.node(OpCode.CLIP_NORM, OpFn.FW, grads[i:i + ids.MAX_NODE_INPUTS], [sumsq], iattrs=(0, int(i == 0)))
            for i in range(0, len(grads), ids.MAX_NODE_OUTPUTS):
                e.node(OpCode.CLIP_NORM, OpFn.FW, [sumsq], grads[i:i + ids.MAX_NODE_OUTPUTS], iattrs=(1,),
                       fattrs=(self.cfg.clip_norm * k,))
        for p, gp, layer, rows, then in self.deferred:
            e.begin(layer)
            _step(e, self.cfg, p, gp, scale=1.0 / k, rows=rows)
            if then is not None:
                then(e)
            if k > 1:
                e.node(OpCode.ZERO, OpFn.FW, [], [gp])


def _loss_forward(e: Emitter, spec: ModelSpec, g: Graph, out: int, suffix: str) -> int | None:
    """Loss nodes on the model output; returns what the loss backward reads."""
    e.begin("loss")
    if spec.loss == "softmax_cross_entropy":
        probs = g.add_tensor(Tensor(f"loss.probs{suffix}", (spec.classes,), flags=B))
        e.node(OpCode.SOFTMAX_CE, OpFn.FW, [out, g.label_tensor], [probs, g.stats_tensor])
        return probs
    e.node(OpCode.MSE, OpFn.FW, [out, g.input_tensor], [g.stats_tensor])
    return out


def build_graph(spec: ModelSpec, params: dict[str, np.ndarray], cfg: TrainConfig,
                max_tensors: int = ids.MAX_TENSORS, max_nodes: int = ids.MAX_NODES) -> tuple[Graph, dict[int, str]]:
    cfg.validate()
    g = Graph(name=spec.name, max_batch=cfg.batch, num_classes=spec.classes)
    g.input_tensor = g.add_tensor(Tensor("input", spec.input, flags=B | TensorFlag.INPUT))
    g.label_tensor = g.add_tensor(Tensor("labels", (1,), DType.I32, B | TensorFlag.LABEL))
    g.stats_tensor = g.add_tensor(Tensor("loss.stats", (2,)))
    updates = _Updates(cfg)
    e = Emitter(g, updates)

    sel = select(spec, cfg.strategy, cfg.train_layers, cfg.train_channels)
    e.lora = {name: sel.lora_rank for name in sel.lora_layers}
    e.channels = dict(sel.channels)
    # a layer needs backward if it trains or feeds (directly or not) a layer that does
    needs_grad: dict[str, bool] = {INPUT: False}
    owners = {name.split(".", 1)[0] for name in sel.trainable}
    for layer in spec.layers:
        needs_grad[layer.name] = layer.name in owners or any(needs_grad[src] for src in layer.inputs)
    if not any(needs_grad.values()):
        raise ModelError("nothing to train: no chosen layer has parameters")
    buffers = spec.buffer_names()
    shapes = {**spec.param_shapes(), **lora_shapes(spec, sel.lora_rank)}
    e.values = {name: params[name] if name in params else lora_init(name, shape)
                for name, shape in shapes.items() if name in params or ".lora_" in name}
    e.q8_layers = _int8_layers(spec, cfg.dtype, sel, shapes, needs_grad)
    e.q8_sample_sums = cfg.int8_sums == "sample"
    if cfg.dtype == "int8" and cfg.int8_updates == "sr":
        e.q8_sr = {n.split(".", 1)[0] for n in sel.trainable if n.split(".", 1)[0] in e.q8_layers}
        e.lr = cfg.lr
    q8_weights = {layer.name for layer in spec.layers
                  if layer.name in e.q8_layers and rule_for(layer.type).int8_weights}
    for name, shape in shapes.items():
        value = e.values.get(name)
        if value is None or tuple(value.shape) != shape:
            got = None if value is None else tuple(value.shape)
            raise ModelError(f"parameter {name}: expected shape {shape}, got {got}")
        trains = name in sel.trainable and name not in buffers
        owner = name.split(".", 1)[0]
        if owner in q8_weights and (not trains or owner in e.q8_sr):
            continue  # a frozen (or SGD_Q8-trained) int8 layer holds only its int8 codes (host.layers.q8)
        flags = TensorFlag.PARAM | (TensorFlag.TRAINABLE if trains else 0)
        idx = g.add_tensor(Tensor(name, shape, flags=flags, init=np.ascontiguousarray(value, np.float32)))
        e.params[name] = idx
        e.param_names[idx] = name

    def forward(train: bool) -> tuple[int, list]:
        out, saved = {INPUT: g.input_tensor}, []
        e.new_pass()  # conversions of one forward are not visible to the other (eval and TRAIN)
        for layer in spec.layers:
            e.begin(layer)
            rule = rule_for(layer.type)
            xs = [out[src] for src in layer.inputs]
            if not (rule.any_dtype or e.is_q8(layer)):
                xs = [e.to_f32(x) for x in xs]
            out[layer.name], s = rule.forward(e, layer, xs[0] if rule.n_inputs == 1 else xs, train)
            saved.append(s)
        e.begin("loss")
        return e.to_f32(out[spec.layers[-1].name]), saved

    if any(rule_for(layer.type).mode_dependent for layer in spec.layers):
        out, _ = forward(train=False)
        _loss_forward(e, spec, g, out, ".eval")
        g.n_eval_nodes = g.train_begin = len(g.nodes)
    out, saved = forward(train=True)
    loss_saved = _loss_forward(e, spec, g, out, "")
    g.train_loss_end = len(g.nodes)
    if g.train_begin == 0:
        g.n_eval_nodes = g.train_loss_end

    # backward + update, last layer first; gradients of an output read by several
    # layers are summed in place (ACCUMULATE) as each reader's input gradient arrives
    e.begin("loss")
    dy = e.grad("grad", g.tensors[out].dims)
    if spec.loss == "softmax_cross_entropy":
        e.node(OpCode.SOFTMAX_CE, OpFn.BW_INPUT, [loss_saved, g.label_tensor], [dy])
    else:
        e.node(OpCode.MSE, OpFn.BW_INPUT, [loss_saved, g.input_tensor], [dy])
    grads = {spec.layers[-1].name: dy}
    for i in range(len(spec.layers) - 1, -1, -1):
        layer = spec.layers[i]
        if not needs_grad[layer.name]:
            continue
        e.begin(layer)
        rule = rule_for(layer.type)
        need = [needs_grad[src] for src in layer.inputs]
        dy = grads.pop(layer.name)
        if not (rule.any_dtype or e.is_q8(layer)):
            dy = e.to_f32(dy)
        dxs = rule.backward(e, layer, saved[i], dy, need[0] if rule.n_inputs == 1 else need)
        for src, dx, wanted in zip(layer.inputs, [dxs] if rule.n_inputs == 1 else dxs, need):
            if not wanted:
                continue
            if src not in grads:
                grads[src] = dx
                continue
            both_q8 = g.tensors[dx].dtype == g.tensors[grads[src]].dtype == DType.S8
            if both_q8 and src in e.q8_layers:
                # an int8 layer quantises the sum at once: ADD_Q8 computes exactly that, without the f32 sum
                total = e.act_q8(f"{src}.grad.sum", g.tensors[grads[src]].dims, grad=True)
                e.node(OpCode.ADD_Q8, OpFn.FW, [grads[src], e.qexp[grads[src]], dx, e.qexp[dx]], [total, e.qexp[total]])
                grads[src] = total
                continue
            if DType.S8 in (g.tensors[dx].dtype, g.tensors[grads[src]].dtype):  # gradient sums are f32
                grads[src], dx = e.to_f32(grads[src]), e.to_f32(dx)
            if any(t == grads[src] for k, t in grads.items() if k != src):
                # a pass-through (flatten, add) shares this tensor with a layer whose
                # backward has not run yet: sum into a new tensor instead of in place
                total = e.grad(f"{src}.grad.sum", g.tensors[grads[src]].dims)
                e.node(OpCode.ADD, OpFn.FW, [grads[src], dx], [total])
                grads[src] = total
            else:
                e.node(OpCode.ACCUMULATE, OpFn.FW, [grads[src], dx], [grads[src]])

    updates.emit_section(e, g)
    passes.relu_masks(g)
    passes.redequantize(g, max_nodes, max_tensors)
    passes.in_place(g)
    if len(g.tensors) > max_tensors or len(g.nodes) > max_nodes:
        raise ModelError(f"graph has {len(g.tensors)} tensors and {len(g.nodes)} nodes; "
                         f"the device takes at most {max_tensors} and {max_nodes}",
                         hint="train fewer layers, or use a board with larger limits")
    return g, e.param_names


def _int8_layers(spec: ModelSpec, dtype: str, sel: Selection, shapes: dict, needs_grad: dict) -> set[str]:
    """The layers that run in int8 under `dtype` (TrainConfig.dtype). A layer qualifies if its
    rule has an int8 form and it trains whole or not at all (no adapters, no sparse rows, not
    bias-only); under mixed, only if it runs forward only; ReLU, batch norm, the
    activations, average pooling, dropout and add only where their inputs are int8
    (rule.int8_after_int8), and all but ReLU only where every consumer is int8 too
    (rule.int8_before_int8); flatten and reshape pass int8 through."""
    if dtype == "fp32":
        return set()
    chosen: set[str] = set()
    buffers = spec.buffer_names()  # running statistics: never trained, so not counted
    for layer in spec.layers:
        rule = rule_for(layer.type)
        own = [n for n in shapes if n.split(".", 1)[0] == layer.name and n not in buffers]
        trained = [n for n in own if n in sel.trainable]
        ok = rule.int8 and layer.name not in sel.lora_layers and layer.name not in sel.channels \
            and len(trained) in (0, len(own)) and (dtype == "int8" or not needs_grad[layer.name])
        if ok and rule.int8_after_int8:
            ok = all(src in chosen for src in layer.inputs)
        if ok or (rule.any_dtype and layer.inputs[0] in chosen):
            chosen.add(layer.name)
    for layer in reversed(spec.layers):  # consumers come later: one pass settles chains
        users = [u for u in spec.layers if layer.name in u.inputs]
        if layer.name in chosen and rule_for(layer.type).int8_before_int8 \
                and (not users or any(u.name not in chosen for u in users)):
            chosen.discard(layer.name)
    return {n for n in chosen if rule_for(next(l.type for l in spec.layers if l.name == n)).int8}


def compile_model(spec: ModelSpec, params: dict[str, np.ndarray], cfg: TrainConfig | None = None,
                  arena_limit: int | None = None, max_tensors: int = ids.MAX_TENSORS,
                  max_nodes: int = ids.MAX_NODES, l3_limit: int = 0) -> Program:
    """Build and plan the training program; refuse it if it does not fit `arena_limit`
    or the device's graph limits. A board with `l3_limit` bytes of L3 memory (GAP9) takes
    a program whose persistent tensors do not all fit the arena: the fewest, largest of
    them move to L3 (host.passes.spill_to_l3)."""
    cfg = cfg or TrainConfig()
    # int8_updates "auto": f32 master weights (any optimizer, no rounding loss), unless only
    # the int8 codes trained in place by SGD_Q8 fit the arena (L3 comes first: it costs
    # copies, not accuracy)
    auto = cfg.int8_updates == "auto"
    cfg = replace(cfg, int8_updates="master") if auto else cfg
    sums_auto = cfg.int8_sums == "auto"
    cfg = replace(cfg, int8_sums="batch") if sums_auto else cfg
    graph, names = build_graph(spec, params, cfg, max_tensors, max_nodes)
    plan = plan_graph(graph)
    if sums_auto and cfg.dtype != "fp32" and arena_limit is not None and plan.arena_bytes > arena_limit:
        lean = replace(cfg, int8_sums="sample")  # the int8 convs' sums one sample at a time
        lean_graph, lean_names = build_graph(spec, params, lean, max_tensors, max_nodes)
        lean_plan = plan_graph(lean_graph)
        if lean_plan.arena_bytes < plan.arena_bytes:
            cfg, graph, names, plan = lean, lean_graph, lean_names, lean_plan
    if arena_limit is not None and plan.arena_bytes > arena_limit and l3_limit > 0:
        graph, plan = _with_l3(graph, plan, arena_limit, l3_limit, max_tensors, max_nodes)
    sr = replace(cfg, int8_updates="sr")
    if auto and arena_limit is not None and plan.arena_bytes > arena_limit and sr.sr_problem() is None:
        sr_graph, sr_names = build_graph(spec, params, sr, max_tensors, max_nodes)
        sr_plan = plan_graph(sr_graph)
        if sr_plan.arena_bytes <= arena_limit:
            cfg, graph, names, plan = sr, sr_graph, sr_names, sr_plan
    if arena_limit is not None and plan.arena_bytes > arena_limit:
        top = sorted(range(len(graph.tensors)), key=lambda i: -plan.sizes[i])[:3]
        biggest = ", ".join(f"{graph.tensors[i].name} {plan.sizes[i]} B" for i in top)
        raise ModelError(
            f"model {spec.name!r} needs a {plan.arena_bytes}-byte arena at batch {cfg.batch}; "
            f"the board has {arena_limit}{f' and {l3_limit} B of L3' if l3_limit else ''} (biggest: {biggest})",
            hint=_what_fits(spec, params, cfg, arena_limit, max_tensors, max_nodes))
    return Program(spec, cfg, graph, plan, names)


def _with_l3(graph: Graph, plan: Plan, arena_limit: int, l3_limit: int, max_tensors: int,
             max_nodes: int) -> tuple[Graph, Plan]:
    """The program with the fewest of its largest persistent tensors in L3 that fits
    arena_limit (binary search over how many), or the unchanged one if none does. Fewest:
    each moved tensor costs a copy in and out around every run of nodes that uses it."""
    cands = passes.l3_candidates(graph)

    def attempt(k: int) -> tuple[Graph, Plan] | None:
        chosen = cands[:k]
        if sum(plan.sizes[i] for i in chosen) > l3_limit:
            return None
        g = copy.deepcopy(graph)
        passes.spill_to_l3(g, chosen)
        if len(g.tensors) > max_tensors or len(g.nodes) > max_nodes:
            return None
        return g, plan_graph(g)

    def fits(r: tuple[Graph, Plan] | None) -> bool:
        return r is not None and r[1].arena_bytes <= arena_limit

    lo, hi = 1, len(cands)
    best = attempt(hi)
    if not fits(best):
        return graph, plan
    while lo < hi:  # smallest k that fits (arena size falls, near enough monotonically, with k)
        mid = (lo + hi) // 2
        r = attempt(mid)
        if fits(r):
            best, hi = r, mid
        else:
            lo = mid + 1
    return best


def _what_fits(spec: ModelSpec, params, cfg: TrainConfig, limit: int, max_tensors: int, max_nodes: int) -> str:
    """Suggestions for a program that does not fit: lighter strategies, smaller batches (a
    sparse choice needs data, so it is suggested by name: --strategy sparse picks within the
    board's memory)."""
    tries = [(f"--strategy {s}", replace(cfg, train_layers=None, strategy=s, train_channels=None))
             for s in ("lora=4", "bias", "last") if s != cfg.strategy]
    tries += [(f"--batch {b}", replace(cfg, batch=b)) for b in (16, 8, 4, 2, 1) if b < cfg.batch]
    if cfg.dtype != "fp32" and cfg.int8_sums != "sample":
        tries.append(("--int8-sums sample", replace(cfg, int8_sums="sample")))
    sr = replace(cfg, dtype="int8", int8_updates="sr")
    if cfg.dtype != "int8" or cfg.int8_updates != "sr":
        tries.append(("--dtype int8 --int8-updates sr" if sr.sr_problem() is None else "--dtype int8",
                      sr if sr.sr_problem() is None else replace(cfg, dtype="int8", int8_updates="master")))
    fits = []
    for flag, c in tries:
        try:
            need = plan_graph(build_graph(spec, params, c, max_tensors, max_nodes)[0]).arena_bytes
        except ModelError:
            continue
        if need <= limit:
            fits.append(f"{flag} ({need} B)")
    if not fits:
        return "no strategy or batch size fits this board: use a board with more RAM"
    return "these fit: " + ", ".join(fits) + "; --strategy sparse chooses channels within the board's memory"
