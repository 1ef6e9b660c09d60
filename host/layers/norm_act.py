"""Layer rules for batch/layer/group normalisation, activations and dropout (firmware/runtime/ops/ep_norm_act.h)."""

from __future__ import annotations
