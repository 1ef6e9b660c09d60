"""Importing PyTorch modules and ONNX files, and training what was imported.

The import must reproduce the source model (host.importer checks the outputs
itself; these tests check that check and go further: N SGD steps on the native
runtime of the imported model equal the same steps of the source in PyTorch).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False)
import torch
import torch.nn as nn

import native_lib as nl
from host.blob import build_blob
from host.compiler import TrainConfig, compile_model
from host.errors import ModelError
from host.importer import from_onnx, from_torch, load_source, to_torch
from torch_golden import torch_steps


class Mlp(nn.Module):
    """A user's model: submodules plus functional calls, input [1][8][8]."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 24)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(24, 5))

    def forward(self, x):
        return self.head(torch.relu(self.fc1(torch.flatten(x, 1))))


def test_torch_module_imports_as_a_chain_of_layers():
    torch.manual_seed(0)
    spec, params = from_torch(Mlp(), (1, 8, 8), classes=5)
    assert [(l.type, l.name) for l in spec.layers] == [
        ("flatten", "flatten"), ("linear", "fc1"), ("relu", "relu"), ("relu", "head_0"), ("linear", "head_1")]
    assert set(params) == {"fc1.weight", "fc1.bias", "head_1.weight", "head_1.bias"}


def test_imported_model_trains_on_the_runtime_like_the_source_in_pytorch():
    torch.manual_seed(1)
    spec, params = from_torch(Mlp(), (1, 8, 8), classes=5)
    cfg = TrainConfig(batch=6, lr=0.2)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((6, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, 6)) for _ in range(5)]
    prog = compile_model(spec, params, cfg)
    rt = nl.Runtime(build_blob(prog))
    losses = []
    for x, y in batches:
        st, why, r = rt.run(bytes(y.astype(np.uint8)), x.tobytes(), train=True)
        assert st == 0, why
        losses.append(r.loss)
    ref_losses, _, state = torch_steps(spec, params, cfg, batches)
    # float32 sums of ≤ 64 products per entry over 5 steps at lr 0.2: errors ~1e-6
    # (see test_training_golden.py for the bound); 2e-5 leaves room and still
    # catches a wrong weight (which moves results by ≥ 1e-3).
    np.testing.assert_allclose(losses, ref_losses, atol=2e-5)
    for name in params:
        np.testing.assert_allclose(rt.tensor(prog.param_index(name)), state[name].ravel(), atol=2e-5, err_msg=name)


def test_unsupported_ops_are_named():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    with pytest.raises(ModelError, match="unsupported op 'mul'"):
        from_torch(Square(), (4,), classes=4)

    class Sin(nn.Module):
        def forward(self, x):
            return torch.sin(x)

    with pytest.raises(ModelError, match="unsupported op 'sin'"):
        from_torch(Sin(), (4,), classes=4)

    with pytest.raises(ModelError, match=r"layer 'fc'.*bias"):
        from_torch(nn.Sequential(OrderedDict(fc=nn.Linear(4, 4, bias=False))), (4,), classes=4)


def test_the_import_check_catches_a_model_that_differs(monkeypatch):
    """A mapping that dropped a setting would make the imported model compute
    something else; the output check refuses it instead of training it."""
    from host.layers import core

    # a broken rule: its PyTorch twin (what the device computes) drops the ReLU
    monkeypatch.setattr(core.ReLU, "torch_module", lambda self, layer, in_shape: nn.Identity())
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with pytest.raises(ModelError, match="does not reproduce"):
        from_torch(model, (4,), classes=3)


def test_onnx_file_imports_and_matches(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 4),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"])
    spec, params = from_onnx(path)
    assert spec.input == (3, 4) and spec.classes == 3
    assert [l.type for l in spec.layers] == ["flatten", "linear", "relu", "linear"]
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        np.testing.assert_allclose(to_torch(spec, params)(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_load_source_takes_a_python_factory(tmp_path):
    src = tmp_path / "user_model.py"
    src.write_text("import torch.nn as nn\n"
                   "def build():\n"
                   "    return nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2))\n")
    spec, params = load_source(f"{src}:build", input_shape=(10,), classes=2)
    assert [l.type for l in spec.layers] == ["linear", "relu", "linear"]
    with pytest.raises(ModelError, match="has no 'nope'"):
        load_source(f"{src}:nope", input_shape=(10,), classes=2)
    with pytest.raises(ModelError, match="--input-shape"):
        load_source(f"{src}:build")


def test_host_compile_takes_a_pytorch_factory(tmp_path, capsys):
    import json

    from host.cli import main

    src = tmp_path / "user_model.py"
    src.write_text("import torch.nn as nn\n"
                   "def build():\n"
                   "    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))\n")
    out = tmp_path / "m.epm"
    assert main(["compile", "--model", f"{src}:build", "--input-shape", "3,4", "--classes", "3",
                 "--optimizer", "sgd", "--strategy", "layers=layer_3", "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["trainable_params"] == 6 * 3 + 3  # only the last linear layer trains
    assert nl.parse(out.read_bytes()).status == 0
    # no shape given: a clear usage error, exit code 5 (model)
    assert main(["compile", "--model", f"{src}:build", "-o", str(out)]) == 5
    assert "--input-shape" in capsys.readouterr().err


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x)) + x           # residual: x feeds fc1 and the add
        h2 = self.fc2(h) + h
        return self.head(torch.cat([h2, h], dim=1))  # h feeds fc2, the add and the concat


def test_residuals_and_concat_import_as_a_graph():
    torch.manual_seed(3)
    spec, params = from_torch(Residual(), (6,), classes=3)
    by_name = {l.name: l for l in spec.layers}
    assert by_name["fc1"].inputs == ("input",)
    assert by_name["add"].inputs == ("relu", "input")
    assert by_name["cat"].type == "concat" and by_name["cat"].inputs == ("add_2", "add")
    prog = compile_model(spec, params, TrainConfig(batch=4))
    ops = [(n.op.name, n.fn.name) for n in prog.graph.nodes]
    # the input feeds fc1 and the first add, but nothing upstream trains: no gradient for it
    assert not any(n.layer == "fc1" and n.fn.name == "BW_INPUT" for n in prog.graph.nodes)
    # h feeds fc2, the second add and the concat: its gradients are summed
    assert ops.count(("ACCUMULATE", "FW")) + ops.count(("ADD", "FW")) >= 4


def test_reshape_and_size_queries_import_as_a_view():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):                      # x [n, 2, 3, 4]
            t = x.view(x.size(0), 6, 4)            # a view to tokens
            return self.fc(t).reshape(x.shape[0], -1)

    spec, params = from_torch(Tokens(), (2, 3, 4), classes=18)
    assert [(l.type, l.attrs) for l in spec.layers] == [("reshape", {"shape": [6, 4]}), ("linear", {"out": 3}),
                                                        ("flatten", {})]
    prog = compile_model(spec, params, TrainConfig(batch=2))
    reshaped = prog.graph.index("view.out")
    assert prog.graph.tensors[reshaped].alias_of == prog.graph.input_tensor
