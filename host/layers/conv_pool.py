"""Layer rules for conv2d/conv1d, pooling and global average pooling (firmware/runtime/ops/ep_conv_pool.h)."""

from __future__ import annotations
