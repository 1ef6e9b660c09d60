"""The L3 tier on the host: which tensors move to L3, the copies the compiler inserts, and
that a program with tensors in L3 computes exactly what the same program computes with
everything in the arena (host.passes.spill_to_l3, docs/blob.md "L3").

The firmware side (validation, the copies, checkpoints of L3 tensors) is in
tests/test_l3_firmware.py; training with L3 on the native build and the emulated GAP9
is in tests/test_l3_device.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from host.blob import build_blob, parse_blob
from host.compiler import TrainConfig, compile_model
from host.errors import ModelError
from host.executor import BlobExecutor
from host.ids import Encoding, OpCode, TensorFlag
from host.planner import check_plan
from host.zoo import init_params, load_model

L3_OPS = (OpCode.L3_LOAD, OpCode.L3_STORE)


def _programs(cfg: TrainConfig, shrink: float = 0.9, model: str = "mlp-digits"):
    """(all in the arena, with L3) for a board whose arena is `shrink` of what the model needs."""
    spec = load_model(model)
    params = init_params(spec, 0)
    full = compile_model(spec, params, cfg)
    limit = int(full.plan.arena_bytes * shrink)
    return full, compile_model(spec, params, cfg, arena_limit=limit, l3_limit=1 << 20), limit


def _sections(g):
    bounds = sorted({0, g.n_eval_nodes, g.train_begin, g.train_loss_end, len(g.nodes)}
                    | ({g.update_begin} if g.update_begin is not None else set()))
    return lambda k: max(b for b in bounds if b <= k)


CONFIGS = {
    "sgd": TrainConfig(batch=8, lr=0.05),
    "accumulate": TrainConfig(batch=8, lr=0.05, accumulate=2),
    "int8-master": TrainConfig(batch=8, lr=0.05, dtype="int8"),
    "int8-sr": TrainConfig(batch=8, lr=0.05, dtype="int8", int8_updates="sr"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_program_too_big_for_the_arena_moves_persistent_tensors_to_l3(name):
    full, prog, limit = _programs(CONFIGS[name])
    g, plan = prog.graph, prog.plan
    assert full.plan.arena_bytes > limit >= plan.arena_bytes
    assert plan.l3_tensors and plan.l3_bytes == sum(plan.sizes[i] for i in plan.l3_tensors)
    check_plan(plan)
    section = _sections(g)
    for i in plan.l3_tensors:
        t = g.tensors[i]
        assert t.flags & TensorFlag.PARAM and t.flags & TensorFlag.L3
        assert prog.param_names.get(i, t.name) == t.name  # READ_WEIGHTS still names the home tensor
        users = [k for k, n in enumerate(g.nodes) if i in n.inputs or i in n.outputs]
        assert users and all(g.nodes[k].op in L3_OPS for k in users)
    # every working copy is filled by a load in its own section before any other use, and
    # whatever writes it is followed by a store in the same section
    for k, n in enumerate(g.nodes):
        if n.op != OpCode.L3_LOAD:
            continue
        work = n.outputs[0]
        uses = [j for j, m in enumerate(g.nodes) if work in m.inputs or work in m.outputs]
        assert uses[0] == k and len({section(j) for j in uses}) == 1
        writers = [j for j in uses[1:] if work in g.nodes[j].outputs and g.nodes[j].op != OpCode.L3_STORE]
        stores = [j for j in uses if g.nodes[j].op == OpCode.L3_STORE]
        assert (stores == [uses[-1]]) == bool(writers), g.nodes[k].describe(g)


def test_the_fewest_tensors_move_and_the_largest_first():
    full, prog, limit = _programs(CONFIGS["sgd"])
    sizes = sorted((full.plan.sizes[i] for i in full.graph.params if i != full.graph.counter_tensor), reverse=True)
    moved = sorted((prog.plan.sizes[i] for i in prog.plan.l3_tensors), reverse=True)
    assert moved == sizes[:len(moved)]
    assert len(moved) < len(sizes)  # not all: 90 % of the arena is reached before that


@pytest.mark.parametrize("name", CONFIGS)
def test_l3_changes_no_bit_of_training(name):
    """The same steps on the same data through the blob interpreter: losses and every
    parameter equal bit for bit, because the copies are exact."""
    full, prog, _ = _programs(CONFIGS[name])
    runs = []
    for p in (full, prog):
        ex = BlobExecutor(parse_blob(build_blob(p)))
        rng = np.random.default_rng(1)
        losses = []
        for _ in range(4):
            x = rng.normal(size=(8, 64)).astype(np.float32)
            y = rng.integers(0, 10, 8).astype(np.uint8)
            losses.append(ex.run(8, Encoding.F32, 1.0, 0.0, y.tobytes(), x.tobytes(), train=True)[0])
        runs.append((losses, {name: ex.param(i).tobytes() for i, name in p.param_names.items()}))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == runs[1][1]


def test_a_blob_with_l3_tensors_is_checked_against_the_devices_l3():
    _, prog, _ = _programs(CONFIGS["sgd"])
    blob = build_blob(prog)
    assert parse_blob(blob, l3_limit=prog.plan.l3_bytes).header["l3_bytes"] == prog.plan.l3_bytes
    with pytest.raises(ModelError, match="L3 memory"):
        parse_blob(blob, l3_limit=prog.plan.l3_bytes - 8)


def test_only_the_copies_may_name_an_l3_tensor():
    _, prog, _ = _programs(CONFIGS["sgd"])
    g = prog.graph
    home = next(iter(prog.plan.l3_tensors))
    node = next(n for n in g.nodes if n.op not in L3_OPS and n.inputs)
    node.inputs[0] = home
    with pytest.raises(ModelError, match="only L3_LOAD/L3_STORE"):
        parse_blob(build_blob(prog))


def test_a_model_that_does_not_fit_even_with_l3_says_so():
    spec = load_model("mlp-digits")
    params = init_params(spec, 0)
    full = compile_model(spec, params, TrainConfig(batch=8))
    with pytest.raises(ModelError, match="B of L3"):
        compile_model(spec, params, TrainConfig(batch=8), arena_limit=full.plan.arena_bytes // 4, l3_limit=1 << 20)
    with pytest.raises(ModelError, match="B of L3"):  # room in the arena, too little L3
        compile_model(spec, params, TrainConfig(batch=8), arena_limit=int(full.plan.arena_bytes * 0.9), l3_limit=64)


def test_without_l3_nothing_moves():
    spec = load_model("mlp-digits")
    prog = compile_model(spec, init_params(spec, 0), TrainConfig(batch=8), arena_limit=1 << 20, l3_limit=1 << 20)
    assert not prog.plan.l3_tensors and prog.plan.l3_bytes == 0
    assert not any(n.op in L3_OPS for n in prog.graph.nodes)
