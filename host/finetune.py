"""The PyTorch reference of on-device fine-tuning: the same strategy, on the host.

`TorchFinetune(spec, params, cfg)` builds `host.importer.to_torch(spec)` and trains
what `cfg.strategy` trains (host.strategies.Selection) with the torch.optim
optimizer matching the config:

- parameters outside the selection have requires_grad off;
- LoRA adapters are added to the layer modules as forward hooks (y + B·(A·x)),
  with the adapters' initial values of the compiled program;
- a sparse selection zeroes the gradient rows of the channels not chosen before
  each step (and the optimizer state of those rows stays zero, so they never move
  under SGD, momentum or Adam without weight decay).

The golden tests (tests/test_strategies.py) compare the device with it step by
step; `host.results` compares accuracies after whole calibration runs. PyTorch is
imported here only: the host core does not need it.
"""

from __future__ import annotations

import copy

import numpy as np

from .compiler import TrainConfig
from .strategies import lora_init, lora_shapes, select
from .zoo import ModelSpec


def adapter(module, a, b):
    """x ↦ B·(A·x) for a linear or a pointwise conv module (the conv keeps its padding and stride)."""
    import torch
    import torch.nn.functional as F

    if isinstance(module, torch.nn.Linear):
        return lambda x: F.linear(F.linear(x, a), b)
    ma = copy.deepcopy(module)
    ma.weight = a if isinstance(a, torch.nn.Parameter) else torch.nn.Parameter(a, requires_grad=False)
    ma.bias = None
    conv = F.conv2d if b.dim() == 4 else F.conv1d
    return lambda x: conv(ma(x), b)


def torch_optimizer(params, cfg: TrainConfig):
    """The torch.optim optimizer matching cfg."""
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


class TorchFinetune:
    def __init__(self, spec: ModelSpec, params: dict[str, np.ndarray], cfg: TrainConfig, dtype=None,
                 adapters: dict[str, np.ndarray] | None = None):
        import torch

        from .importer import to_torch

        self.spec, self.cfg = spec, cfg
        self.dtype = dtype or torch.float64
        self.sel = select(spec, cfg.strategy, cfg.train_layers, cfg.train_channels)
        self.model = to_torch(spec, params).to(self.dtype)
        self.named = dict(self.model.named_parameters())
        for n, p in self.named.items():
            p.requires_grad_(n in self.sel.trainable)
        self.adapters: dict[str, "torch.nn.Parameter"] = {}
        init = adapters or {}
        for name, shape in lora_shapes(spec, self.sel.lora_rank).items():
            value = init.get(name, lora_init(name, shape))
            self.adapters[name] = torch.nn.Parameter(torch.from_numpy(np.asarray(value, np.float32)).to(self.dtype))
        for layer in self.sel.lora_layers:
            module = getattr(self.model, layer)
            extra = adapter(module, self.adapters[f"{layer}.lora_A"], self.adapters[f"{layer}.lora_B"])
            module.register_forward_hook(lambda m, i, out, extra=extra: out + extra(i[0]))
        trained = [p for p in self.model.parameters() if p.requires_grad] + list(self.adapters.values())
        self.opt = torch_optimizer(trained, cfg)

    def _loss(self, out, x, y):
        import torch.nn.functional as F

        n = x.shape[0]
        if self.spec.loss == "mse":
            return F.mse_loss(out.reshape(n, -1), x.reshape(n, -1))
        return F.cross_entropy(out.reshape(n, -1), y)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on a batch (x float32 [n, *input] or [n, features])."""
        import torch

        self.model.train()
        xt = torch.from_numpy(np.asarray(x, np.float32).reshape(-1, *self.spec.input)).to(self.dtype)
        yt = torch.from_numpy(np.asarray(y, np.int64))
        self.opt.zero_grad()
        loss = self._loss(self.model(xt), xt, yt)
        loss.backward()
        for layer, chans in self.sel.channels.items():
            keep = torch.zeros(self.named[f"{layer}.weight"].shape[0], dtype=torch.bool)
            keep[list(chans)] = True
            for local in ("weight", "bias"):
                p = self.named.get(f"{layer}.{local}")
                if p is not None and p.grad is not None:
                    p.grad[~keep] = 0
        if self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]],
                                           self.cfg.clip_norm)
        self.opt.step()
        return float(loss.item())

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) in eval mode."""
        import torch

        self.model.eval()
        with torch.no_grad():
            xt = torch.from_numpy(np.asarray(x, np.float32).reshape(-1, *self.spec.input)).to(self.dtype)
            out = self.model(xt)
            loss = self._loss(out, xt, torch.from_numpy(np.asarray(y, np.int64)))
        acc = float((out.reshape(len(y), -1).argmax(1).numpy() == np.asarray(y)).mean()) if len(y) else 0.0
        return float(loss), acc

    def state(self) -> dict[str, np.ndarray]:
        out = {k: v.detach().double().numpy() for k, v in self.model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
        out.update({k: v.detach().double().numpy() for k, v in self.adapters.items()})
        return out
