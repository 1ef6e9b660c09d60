"""Layer rules for attention, sequence pooling, softmax, residual add, concat, transpose (firmware/runtime/ops/ep_attn_optim.h)."""

from __future__ import annotations
