"""Model description → training graph → planned program.

The schedule the compiler emits, for layers L1..Lk and softmax cross-entropy:

    forward   L1.fw … Lk.fw, loss.fw            (EVAL runs up to here)
    backward  loss.bw_input, then for each trained layer from the last:
              Lj.bw_param, Lj.bw_input (skipped for the first layer: nothing
              upstream needs dx), and right after, the SGD update of Lj's
              parameters, so each gradient dies as soon as it is applied.

Only what backward needs is kept alive; the planner (host.planner) turns the
lifetimes into offsets in one arena.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ids
from .errors import ModelError
from .graph import Graph, Node, Tensor
from .ids import DType, OpCode, OpFn, TensorFlag
from .planner import Plan, plan_graph
from .zoo import ModelSpec

B = TensorFlag.BATCHED


@dataclass(frozen=True)
class TrainConfig:
    batch: int = 32
    lr: float = 0.5
    weight_decay: float = 0.0

    def validate(self) -> None:
        if not 1 <= self.batch <= 0xFFFF:
            raise ModelError(f"batch {self.batch} must be in 1..65535")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ModelError(f"learning rate {self.lr} must be a positive number")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ModelError(f"weight decay {self.weight_decay} must be ≥ 0")


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


def build_graph(spec: ModelSpec, params: dict[str, np.ndarray], cfg: TrainConfig) -> tuple[Graph, dict[int, str]]:
    cfg.validate()
    g = Graph(name=spec.name, max_batch=cfg.batch, num_classes=spec.classes)
    g.input_tensor = g.add_tensor(Tensor("input", spec.input, flags=B | TensorFlag.INPUT))
    g.label_tensor = g.add_tensor(Tensor("labels", (1,), DType.I32, B | TensorFlag.LABEL))
    param_names: dict[int, str] = {}

    def param(name: str, shape: tuple[int, ...]) -> int:
        value = params.get(name)
        if value is None or tuple(value.shape) != shape:
            got = None if value is None else tuple(value.shape)
            raise ModelError(f"parameter {name}: expected shape {shape}, got {got}")
        idx = g.add_tensor(Tensor(name, shape, flags=TensorFlag.PARAM | TensorFlag.TRAINABLE,
                                  init=np.ascontiguousarray(value, dtype=np.float32)))
        param_names[idx] = name
        return idx

    # forward: remember for each layer (input activation, output activation, params)
    saved: list[tuple[int, int, list[int]]] = []
    x = g.input_tensor
    for layer, shape_out in zip(spec.layers, spec.shapes()[1:]):
        y = g.add_tensor(Tensor(f"{layer.name}.out", shape_out, flags=B))
        if layer.type == "linear":
            k = g.tensors[x].dims[0]
            w = param(f"{layer.name}.weight", (layer.out, k))
            b = param(f"{layer.name}.bias", (layer.out,))
            g.add_node(Node(OpCode.LINEAR, OpFn.FW, [x, w, b], [y], layer=layer.name))
            saved.append((x, y, [w, b]))
        elif layer.type == "relu":
            g.add_node(Node(OpCode.RELU, OpFn.FW, [x], [y], layer=layer.name))
            saved.append((x, y, []))
        else:  # parse_model refuses these; kept as a guard for new layer types
            raise ModelError(f"layer {layer.name!r}: no compiler rule for {layer.type!r}")
        x = y

    logits = x
    probs = g.add_tensor(Tensor("loss.probs", (spec.classes,), flags=B))
    g.stats_tensor = g.add_tensor(Tensor("loss.stats", (2,)))
    g.add_node(Node(OpCode.SOFTMAX_CE, OpFn.FW, [logits, g.label_tensor], [probs, g.stats_tensor],
                    layer="loss"))
    g.n_eval_nodes = len(g.nodes)

    # backward + update, last layer first
    dy = g.add_tensor(Tensor("loss.grad", (spec.classes,), flags=B | TensorFlag.GRAD))
    g.add_node(Node(OpCode.SOFTMAX_CE, OpFn.BW_INPUT, [probs, g.label_tensor], [dy], layer="loss"))
    for i in range(len(spec.layers) - 1, -1, -1):
        layer = spec.layers[i]
        xin, yout, lparams = saved[i]
        first = i == 0
        dx = None if first else g.add_tensor(
            Tensor(f"{layer.name}.in.grad", g.tensors[xin].dims, flags=B | TensorFlag.GRAD))
        if layer.type == "linear":
            w, b = lparams
            dw = g.add_tensor(Tensor(f"{layer.name}.weight.grad", g.tensors[w].dims, flags=TensorFlag.GRAD))
            db = g.add_tensor(Tensor(f"{layer.name}.bias.grad", g.tensors[b].dims, flags=TensorFlag.GRAD))
            g.add_node(Node(OpCode.LINEAR, OpFn.BW_PARAM, [dy, xin], [dw, db], layer=layer.name))
            if dx is not None:
                g.add_node(Node(OpCode.LINEAR, OpFn.BW_INPUT, [dy, w], [dx], layer=layer.name))
            for p, gp in ((w, dw), (b, db)):
                g.add_node(Node(OpCode.SGD, OpFn.FW, [gp], [p], fattrs=(cfg.lr, cfg.weight_decay), layer=layer.name))
        elif layer.type == "relu":
            if dx is not None:
                g.add_node(Node(OpCode.RELU, OpFn.BW_INPUT, [dy, yout], [dx], layer=layer.name))
        if dx is None:
            break
        dy = dx

    if len(g.tensors) > ids.MAX_TENSORS or len(g.nodes) > ids.MAX_NODES:
        raise ModelError(f"graph has {len(g.tensors)} tensors and {len(g.nodes)} nodes; "
                         f"the device takes at most {ids.MAX_TENSORS} and {ids.MAX_NODES}")
    return g, param_names


def compile_model(spec: ModelSpec, params: dict[str, np.ndarray], cfg: TrainConfig | None = None,
                  arena_limit: int | None = None) -> Program:
    """Build and plan the training program; refuse it if it does not fit `arena_limit`."""
    cfg = cfg or TrainConfig()
    graph, names = build_graph(spec, params, cfg)
    plan = plan_graph(graph)
    if arena_limit is not None and plan.arena_bytes > arena_limit:
        top = sorted(range(len(graph.tensors)), key=lambda i: -plan.sizes[i])[:3]
        biggest = ", ".join(f"{graph.tensors[i].name} {plan.sizes[i]} B" for i in top)
        raise ModelError(
            f"model {spec.name!r} needs a {plan.arena_bytes}-byte arena at batch {cfg.batch}; "
            f"the board has {arena_limit} (biggest: {biggest})",
            hint="use a smaller --batch or a board with more RAM")
    return Program(spec, cfg, graph, plan, names)
