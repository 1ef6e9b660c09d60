"""Layer rules for conv2d/conv1d, pooling and global average pooling (firmware/runtime/ops/ep_conv_pool.h).

Node contracts: docs/ops/conv_pool.md. Every layer is one op over rank-3
([C][H][W]) or rank-2 ([C][L]) per-sample tensors; the 1-D layers are the 2-D
ops with H = 1 (the device tells them apart by the tensors' rank). Padding is
per side (top, bottom, left, right), so ONNX's and PyTorch's padding='same'
asymmetric pads are expressible; PyTorch modules take symmetric padding only, so
`torch_module` pads explicitly (F.pad) in a subclass where a layer's padding is
asymmetric.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from ..errors import ModelError
from .. import quant
from ..ids import OpCode, OpFn
from . import LayerRule, Shape, int_attr, pair_attr, q8, register, register_onnx, uniform

U16 = 0xFFFF


# -- attributes ----------------------------------------------------------------------

def _bool_attr(d: dict, key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ModelError(f"attribute {key!r} = {v!r}: want true or false")
    return v


def _pads_2d(d: dict, key: str = "padding") -> list[int]:
    """int, [ph, pw] or [top, bottom, left, right] → [top, bottom, left, right]."""
    v = d.get(key, 0)
    if isinstance(v, int) and not isinstance(v, bool):
        p = int_attr({key: v}, key, lo=0)
        return [p, p, p, p]
    if isinstance(v, (list, tuple)) and len(v) == 2:
        ph, pw = (int_attr({key: a}, key, lo=0) for a in v)
        return [ph, ph, pw, pw]
    if isinstance(v, (list, tuple)) and len(v) == 4:
        return [int_attr({key: a}, key, lo=0) for a in v]
    raise ModelError(f"attribute {key!r} = {v!r}: want an integer, [height, width] or [top, bottom, left, right]")


def _pads_1d(d: dict, key: str = "padding") -> list[int]:
    """int or [left, right] → [left, right]."""
    v = d.get(key, 0)
    if isinstance(v, int) and not isinstance(v, bool):
        p = int_attr({key: v}, key, lo=0)
        return [p, p]
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return [int_attr({key: a}, key, lo=0) for a in v]
    raise ModelError(f"attribute {key!r} = {v!r}: want an integer or [left, right]")


def _out_len(n: int, lo: int, hi: int, k: int, s: int, d: int = 1) -> int:
    """PyTorch's floor-mode output length; ≤ 0 when the window does not fit."""
    span = n + lo + hi - d * (k - 1) - 1
    return span // s + 1 if span >= 0 else 0


def _same_pads(k: int, d: int) -> tuple[int, int]:
    """PyTorch's padding='same' (stride 1): the odd pad goes to the end."""
    total = d * (k - 1)
    return total // 2, total - total // 2


def _int1(v) -> int:
    """An int or a 1-tuple (nn.AvgPool1d stores kernel_size=(k,))."""
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


# -- geometry shared by conv2d and conv1d ---------------------------------------------

class _Geom:
    """A layer's 2-D view: the node's iattrs and the output size."""

    def __init__(self, two_d: bool, kernel, stride, pads, dilation):
        self.two_d = two_d
        self.kernel, self.stride, self.dilation = tuple(kernel), tuple(stride), tuple(dilation)
        self.pads = tuple(pads)  # top, bottom, left, right

    @classmethod
    def of(cls, layer) -> _Geom:
        a = layer.attrs
        if layer.type.endswith("1d"):
            return cls(False, (1, a["kernel"]), (1, a["stride"]), (0, 0, *a["padding"]), (1, a.get("dilation", 1)))
        return cls(True, a["kernel"], a["stride"], a["padding"], a.get("dilation", (1, 1)))

    @classmethod
    def of_pool(cls, attrs: dict, rank: int) -> _Geom:
        """A pooling layer's geometry from its (parsed) attributes; no dilation."""
        if rank == 3:
            return cls(True, attrs["kernel"], attrs["stride"], attrs["padding"], (1, 1))
        return cls(False, (1, attrs["kernel"]), (1, attrs["stride"]), (0, 0, *attrs["padding"]), (1, 1))

    def out_hw(self, layer_name: str, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw), (pt, pb, pl, pr) = self.kernel, self.stride, self.dilation, self.pads
        ho, wo = _out_len(h, pt, pb, kh, sh, dh), _out_len(w, pl, pr, kw, sw, dw)
        if ho < 1 or wo < 1:
            raise ModelError(f"layer {layer_name!r}: the (dilated) kernel does not fit the padded input {h}x{w}")
        if ho > U16 or wo > U16:
            raise ModelError(f"layer {layer_name!r}: output {ho}x{wo} too large")
        return ho, wo

    def symmetric(self) -> bool:
        return self.pads[0] == self.pads[1] and self.pads[2] == self.pads[3]


def _spatial(layer, in_shape: Shape, rank: int) -> tuple[int, int, int]:
    """(C, H, W) of the input; H = 1 for 1-D layers."""
    if len(in_shape) != rank:
        want = "[C][H][W]" if rank == 3 else "[C][L]"
        raise ModelError(f"layer {layer.name!r} ({layer.type}) wants a {want} input, got {list(in_shape)}")
    return (in_shape[0], in_shape[1], in_shape[2]) if rank == 3 else (in_shape[0], 1, in_shape[1])


# -- torch twins ------------------------------------------------------------------------

@cache
def _torch_classes():
    """nn.Conv1d/2d and pooling subclasses that pad per side before the unpadded op."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv_with_pads(base):
        class PaddedConv(base):
            """nn.ConvNd over an input padded per side: (left, right[, top, bottom]) as F.pad."""

            def __init__(self, *args, side_pads=(), **kwargs):
                super().__init__(*args, padding=0, **kwargs)
                self.side_pads = tuple(side_pads)

            def forward(self, x):
                return super().forward(F.pad(x, self.side_pads))

        PaddedConv.__name__ = f"Padded{base.__name__}"
        return PaddedConv

    class PaddedPool(nn.Module):
        """Max/avg pooling over an input padded per side (F.pad order: left, right[, top, bottom])."""

        def __init__(self, kind: str, kernel, stride, side_pads, count_include_pad: bool = True):
            super().__init__()
            self.kind, self.kernel, self.stride = kind, tuple(kernel), tuple(stride)
            self.side_pads, self.count_include_pad = tuple(side_pads), count_include_pad

        def forward(self, x):
            one_d = x.dim() == 3
            pool = {("max", True): F.max_pool1d, ("max", False): F.max_pool2d,
                    ("avg", True): F.avg_pool1d, ("avg", False): F.avg_pool2d}[(self.kind, one_d)]
            k, s = (self.kernel[-1:], self.stride[-1:]) if one_d else (self.kernel, self.stride)
            if self.kind == "max":
                return pool(F.pad(x, self.side_pads, value=-math.inf), k, s)
            total = pool(F.pad(x, self.side_pads), k, s)
            if self.count_include_pad:
                return total
            count = pool(F.pad(torch.ones_like(x[:1, :1]), self.side_pads), k, s)
            return total / count

    return {"Conv2d": conv_with_pads(nn.Conv2d), "Conv1d": conv_with_pads(nn.Conv1d), "Pool": PaddedPool}


def _f_pads(g: _Geom) -> tuple[int, ...]:
    """F.pad order: (left, right) for 1-D, (left, right, top, bottom) for 2-D."""
    pt, pb, pl, pr = g.pads
    return (pl, pr, pt, pb) if g.two_d else (pl, pr)


# -- convolution ------------------------------------------------------------------------

#: iattrs of a 1×1 conv with stride 1 and no padding (a LoRA adapter's B): one row per
#: output channel of the 1-D and 2-D convs alike
_POINTWISE = (1, 1, 0, 0, 0, 0, 1, 1, 1)


class _Conv(LayerRule):
    rank = 3

    def _geom_attrs(self, d):
        raise NotImplementedError

    def parse(self, d):
        attrs = {"out": int_attr(d, "out"), **self._geom_attrs(d), "groups": int_attr(d, "groups", 1),
                 "bias": _bool_attr(d, "bias", True)}
        if attrs["out"] % attrs["groups"]:
            raise ModelError(f"groups {attrs['groups']} does not divide out {attrs['out']}")
        return attrs

    def _check_in(self, layer, in_shape):
        c, h, w = _spatial(layer, in_shape, self.rank)
        if c % layer["groups"]:
            raise ModelError(f"layer {layer.name!r}: groups {layer['groups']} does not divide the {c} input channels")
        return c, h, w

    def out_shape(self, layer, in_shape):
        _, h, w = self._check_in(layer, in_shape)
        ho, wo = _Geom.of(layer).out_hw(layer.name, h, w)
        return (layer["out"], ho, wo) if self.rank == 3 else (layer["out"], wo)

    def _kernel_dims(self, layer) -> tuple[int, ...]:
        g = _Geom.of(layer)
        return g.kernel if self.rank == 3 else (g.kernel[1],)

    def param_shapes(self, layer, in_shape):
        c = self._check_in(layer, in_shape)[0]
        shapes = {"weight": (layer["out"], c // layer["groups"], *self._kernel_dims(layer))}
        if layer["bias"]:
            shapes["bias"] = (layer["out"],)
        return shapes

    def init_params(self, layer, in_shape, rng):
        # nn.ConvNd.reset_parameters: kaiming_uniform(a=√5) = U(±1/√fan_in), bias U(±1/√fan_in)
        shapes = self.param_shapes(layer, in_shape)
        fan_in = int(np.prod(shapes["weight"][1:]))
        bound = 1.0 / np.sqrt(fan_in)
        return {name: uniform(rng, bound, shape) for name, shape in shapes.items()}

    @staticmethod
    def iattrs(layer) -> tuple[int, ...]:
        g = _Geom.of(layer)
        return (g.stride[0], g.stride[1], *g.pads, g.dilation[0], g.dilation[1], layer["groups"])

    def lora_shapes(self, layer, in_shape, rank):
        """Adapters on pointwise convs only (a 1×1 kernel, no groups): A [r][C_in][1..] with
        the layer's geometry, B [C_out][r][1..] a plain 1×1 conv; a wider kernel is not low rank
        per pixel and keeps no adapter."""
        if any(k != 1 for k in self._kernel_dims(layer)) or layer["groups"] != 1:
            return {}
        c = self._check_in(layer, in_shape)[0]
        ones = (1,) * len(self._kernel_dims(layer))
        return {"lora_A": (rank, c, *ones), "lora_B": (layer["out"], rank, *ones)}

    int8 = int8_weights = True

    def _scratch(self, e, layer, x) -> dict[str, int]:
        """CONV2D_Q8's scratch bytes per fn (host.quant.conv_scratch_bytes; 1-D as height 1)."""
        c, h, w = _spatial(layer, e.dims(x), self.rank)
        g = _Geom.of(layer)
        geom = quant.ConvGeom(g.stride, g.pads, g.dilation, layer["groups"])
        w_shape = (layer["out"], c // layer["groups"], *g.kernel)
        return {fn: quant.conv_scratch_bytes(fn, e.g.max_batch, (c, h, w), w_shape, geom, e.q8_sample_sums)
                for fn in quant.SCRATCH_FNS}

    def forward(self, e, layer, x, train):
        if e.is_q8(layer):
            y, xq = q8.forward(e, layer, OpCode.CONV2D_Q8, x, self.out_shape(layer, e.dims(x)), self.iattrs(layer),
                               self._scratch(e, layer, x)["fw"], layer["bias"])
            return y, (xq, None)
        ins = [x, e.param("weight")] + ([e.param("bias")] if layer["bias"] else [])
        y = e.act("out", self.out_shape(layer, e.dims(x)))
        e.node(OpCode.CONV2D, OpFn.FW, ins, [y], iattrs=self.iattrs(layer))
        r = e.lora_rank(layer)
        if not r:
            return y, (x, None)
        h = e.act("lora.h", (r, *e.dims(y)[1:]))
        e.node(OpCode.CONV2D, OpFn.FW, [x, e.param("lora_A")], [h], iattrs=self.iattrs(layer))
        z = e.act("lora.z", e.dims(y))
        e.node(OpCode.CONV2D, OpFn.FW, [h, e.param("lora_B")], [z], iattrs=_POINTWISE)
        e.node(OpCode.ACCUMULATE, OpFn.FW, [y, z], [y])
        return y, (x, h)

    def sparse_ok(self, layer, in_shape) -> bool:
        """Whether single output channels can train: each output channel's weights read
        either every input channel (groups 1) or exactly one (depthwise, any multiplier)."""
        c = self._check_in(layer, in_shape)[0]
        return layer["groups"] == 1 or c == layer["groups"]

    def backward(self, e, layer, saved, dy, need_dx):
        x, h = saved
        if e.is_q8(layer):
            return q8.backward(e, layer, OpCode.CONV2D_Q8, x, dy, need_dx, self.iattrs(layer),
                               self._scratch(e, layer, x), layer["bias"])
        w = e.param("weight")
        b = e.param("bias") if layer["bias"] else None
        out = layer["out"]
        inner = int(np.prod(e.dims(dy)[1:]))
        grads, rows = [], None
        if e.is_trainable(w):
            idx = e.channel_index(layer)
            if idx is None:
                dys, xs, attrs, k = dy, x, self.iattrs(layer), None
            else:  # sparse: only the chosen output channels (and, depthwise, their inputs)
                k = e.dims(idx)[0]
                dys = e.gather(dy, idx, out, inner, "out.grad.rows")
                attrs, xs = self.iattrs(layer), x
                if layer["groups"] != 1:
                    c_in = e.dims(x)[0]
                    xs = e.gather(x, e.channel_index(layer, out // layer["groups"]), c_in,
                                  int(np.prod(e.dims(x)[1:])), "in.rows")
                    attrs = (*attrs[:-1], k)
                rows = (idx, out)
            grads = [(w, e.param_grad(w, k))] + ([(b, e.param_grad(b, k))] if b is not None else [])
            e.node(OpCode.CONV2D, OpFn.BW_PARAM, [dys, xs], [gp for _, gp in grads], iattrs=attrs)
        elif b is not None and e.is_trainable(b):
            e.bias_grad(b, dy, out, inner)
        dh = None
        if h is not None:  # adapters: dB from (dy, h), dh = Bᵀ·dy, dA from (dh, x)
            a, bb = e.param("lora_A"), e.param("lora_B")
            d_b, d_a = e.param_grad(bb), e.param_grad(a)
            e.node(OpCode.CONV2D, OpFn.BW_PARAM, [dy, h], [d_b], iattrs=_POINTWISE)
            dh = e.grad("lora.h.grad", e.dims(h))
            e.node(OpCode.CONV2D, OpFn.BW_INPUT, [dy, bb], [dh], iattrs=_POINTWISE)
            e.node(OpCode.CONV2D, OpFn.BW_PARAM, [dh, x], [d_a], iattrs=self.iattrs(layer))
            grads += [(a, d_a), (bb, d_b)]
        dx = None
        if need_dx:
            dx = e.grad("in.grad", e.dims(x))
            e.node(OpCode.CONV2D, OpFn.BW_INPUT, [dy, w], [dx], iattrs=self.iattrs(layer))
            if dh is not None:
                dxa = e.grad("lora.in.grad", e.dims(x))
                e.node(OpCode.CONV2D, OpFn.BW_INPUT, [dh, e.param("lora_A")], [dxa], iattrs=self.iattrs(layer))
                e.node(OpCode.ACCUMULATE, OpFn.FW, [dx, dxa], [dx])
        for p, gp in grads:
            if e.is_trainable(p):
                e.update(p, gp, None if rows is None or p not in (w, b)
                         else (rows[0], rows[1], int(np.prod(e.dims(p)[1:]))))
        return dx

    def torch_module(self, layer, in_shape):
        from torch import nn
        c = self._check_in(layer, in_shape)[0]
        g = _Geom.of(layer)
        base = nn.Conv2d if self.rank == 3 else nn.Conv1d
        k, s, d = (g.kernel, g.stride, g.dilation) if self.rank == 3 else (g.kernel[1], g.stride[1], g.dilation[1])
        kw = {"stride": s, "dilation": d, "groups": layer["groups"], "bias": layer["bias"]}
        if g.symmetric():
            return base(c, layer["out"], k, padding=(g.pads[0], g.pads[2]) if self.rank == 3 else g.pads[2], **kw)
        same = (*_same_pads(g.kernel[0], g.dilation[0]), *_same_pads(g.kernel[1], g.dilation[1]))
        if g.stride == (1, 1) and (g.pads == same or (not g.two_d and g.pads[2:] == same[2:])):
            return base(c, layer["out"], k, padding="same", **kw)
        # other per-side paddings: F.pad before the unpadded conv (from_torch cannot read this back)
        cls = _torch_classes()["Conv2d" if self.rank == 3 else "Conv1d"]
        return cls(c, layer["out"], k, side_pads=_f_pads(g), **kw)

    def from_torch(self, m, in_shape):
        c = in_shape[0] if in_shape else None
        if m.padding_mode != "zeros":
            raise ModelError(f"padding_mode={m.padding_mode!r} is not supported (zeros only)")
        if m.in_channels != c:
            raise ModelError(f"in_channels {m.in_channels} but the input has {c} channels")
        k, s, d = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                pads = [0] * (2 * len(k))
            else:  # "same" (PyTorch allows it with stride 1 only)
                pads = [p for kk, dd in zip(k, d) for p in _same_pads(kk, dd)]
        else:
            pads = [int(p) for p in m.padding for _ in range(2)]
        attrs = {"out": m.out_channels, "groups": m.groups, "bias": m.bias is not None}
        if self.rank == 3:
            return {**attrs, "kernel": list(k), "stride": list(s), "padding": pads, "dilation": list(d)}
        return {**attrs, "kernel": k[0], "stride": s[0], "padding": pads, "dilation": d[0]}


@register
class Conv2d(_Conv):
    """nn.Conv2d over [C][H][W]: kernel, stride, per-side padding, dilation, groups, optional bias."""

    type = "conv2d"
    rank = 3
    torch_types = ("Conv2d",)

    def _geom_attrs(self, d):
        return {"kernel": list(pair_attr(d, "kernel")), "stride": list(pair_attr(d, "stride", 1)),
                "padding": _pads_2d(d), "dilation": list(pair_attr(d, "dilation", 1))}


@register
class Conv1d(_Conv):
    """nn.Conv1d over [C][L]: the CONV2D op with H = 1 (rank-2 tensors, rank-3 weight)."""

    type = "conv1d"
    rank = 2
    torch_types = ("Conv1d",)

    def _geom_attrs(self, d):
        return {"kernel": int_attr(d, "kernel"), "stride": int_attr(d, "stride", 1),
                "padding": _pads_1d(d), "dilation": int_attr(d, "dilation", 1)}


# -- pooling --------------------------------------------------------------------------

class _Pool(LayerRule):
    rank = 3
    kind = "avg"
    op = OpCode.AVGPOOL2D

    def parse(self, d):
        if self.rank == 3:
            kernel = list(pair_attr(d, "kernel"))
            attrs = {"kernel": kernel, "stride": list(pair_attr(d, "stride", tuple(kernel))), "padding": _pads_2d(d)}
        else:
            kernel = int_attr(d, "kernel")
            attrs = {"kernel": kernel, "stride": int_attr(d, "stride", kernel), "padding": _pads_1d(d)}
        if self.kind == "avg":
            attrs["count_include_pad"] = _bool_attr(d, "count_include_pad", True)
        elif d.get("dilation", 1) not in (1, [1, 1]):
            raise ModelError("max pooling with dilation != 1 is not supported")
        g = _Geom.of_pool(attrs, self.rank)
        (kh, kw), (pt, pb, pl, pr) = g.kernel, g.pads
        if 2 * max(pt, pb) > kh or 2 * max(pl, pr) > kw:
            raise ModelError(f"padding {attrs['padding']} exceeds half the kernel {attrs['kernel']}")
        return attrs

    def _geom(self, layer) -> _Geom:
        return _Geom.of_pool(layer.attrs, self.rank)

    def out_shape(self, layer, in_shape):
        c, h, w = _spatial(layer, in_shape, self.rank)
        ho, wo = self._geom(layer).out_hw(layer.name, h, w)
        return (c, ho, wo) if self.rank == 3 else (c, wo)

    def iattrs(self, layer) -> tuple[int, ...]:
        g = self._geom(layer)
        cip = int(layer.attrs.get("count_include_pad", False)) if self.kind == "avg" else 0
        return (*g.kernel, *g.stride, *g.pads, cip)

    def _q8_scratch(self, layer, in_dims) -> tuple[str, int]:
        """AVGPOOL2D_Q8's / MAXPOOL2D_Q8's scratch: one (sample, channel) plane of each side in
        f32, and one of x for the max pool's backward."""
        c, h, w = _spatial(layer, in_dims, self.rank)
        _, ho, wo = _spatial(layer, self.out_shape(layer, in_dims), self.rank)
        return "q8.scratch", 4 * ((2 if self.kind == "max" else 1) * h * w + ho * wo)

    @property
    def q8_op(self) -> OpCode:
        return OpCode.MAXPOOL2D_Q8 if self.kind == "max" else OpCode.AVGPOOL2D_Q8

    def forward(self, e, layer, x, train):
        if e.is_q8(layer):
            y, (x,) = e.q8_node(self.q8_op, OpFn.FW, [x], "out", self.out_shape(layer, e.dims(x)),
                                scratch=self._q8_scratch(layer, e.dims(x)), iattrs=self.iattrs(layer))
            return y, x
        y = e.act("out", self.out_shape(layer, e.dims(x)))
        e.node(self.op, OpFn.FW, [x], [y], iattrs=self.iattrs(layer))
        # max pooling recomputes its selection from x in backward; average pooling needs only dy
        return y, x

    def backward(self, e, layer, x, dy, need_dx):
        if not need_dx:
            return None
        if e.is_q8(layer):  # the max pool recomputes its selection from x's codes
            return e.q8_node(self.q8_op, OpFn.BW_INPUT, [dy] + ([x] if self.kind == "max" else []), "in.grad",
                             e.dims(x), grad=True, scratch=self._q8_scratch(layer, e.dims(x)),
                             iattrs=self.iattrs(layer))[0]
        dx = e.grad("in.grad", e.dims(x))
        ins = [dy, x] if self.kind == "max" else [dy]
        e.node(self.op, OpFn.BW_INPUT, ins, [dx], iattrs=self.iattrs(layer))
        return dx

    def torch_module(self, layer, in_shape):
        from torch import nn
        g = self._geom(layer)
        cip = bool(layer.attrs.get("count_include_pad", True))
        if g.symmetric():
            if self.rank == 3:
                k, s, p = g.kernel, g.stride, (g.pads[0], g.pads[2])
                return (nn.MaxPool2d(k, s, p) if self.kind == "max"
                        else nn.AvgPool2d(k, s, p, count_include_pad=cip))
            k, s, p = g.kernel[1], g.stride[1], g.pads[2]
            return nn.MaxPool1d(k, s, p) if self.kind == "max" else nn.AvgPool1d(k, s, p, count_include_pad=cip)
        return _torch_classes()["Pool"](self.kind, g.kernel, g.stride, _f_pads(g), cip)

    def from_torch(self, m, in_shape):
        if getattr(m, "ceil_mode", False):
            raise ModelError("ceil_mode=True is not supported")
        if self.kind == "max":
            if getattr(m, "return_indices", False):
                raise ModelError("return_indices=True is not supported")
            if m.dilation not in (1, (1,), (1, 1)):
                raise ModelError(f"dilation={m.dilation} is not supported (1 only)")
        elif getattr(m, "divisor_override", None) is not None:
            raise ModelError("divisor_override is not supported")
        if self.rank == 3:
            k, s, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
            attrs = {"kernel": list(k), "stride": list(s), "padding": [p[0], p[0], p[1], p[1]]}
        else:
            p = _int1(m.padding)
            attrs = {"kernel": _int1(m.kernel_size), "stride": _int1(m.stride), "padding": [p, p]}
        if self.kind == "avg":
            attrs["count_include_pad"] = bool(m.count_include_pad)
        return attrs



@register
class AvgPool2d(_Pool):
    """nn.AvgPool2d (floor mode; count_include_pad as PyTorch, default true)."""

    type = "avgpool2d"
    torch_types = ("AvgPool2d",)
    int8 = int8_after_int8 = int8_before_int8 = True  # AVGPOOL2D_Q8


@register
class MaxPool2d(_Pool):
    """nn.MaxPool2d (floor mode, dilation 1). Backward reads the forward input x
    (the selection is recomputed, no index tensor is saved)."""

    type = "maxpool2d"
    kind, op = "max", OpCode.MAXPOOL2D
    torch_types = ("MaxPool2d",)
    int8 = int8_after_int8 = int8_before_int8 = True  # MAXPOOL2D_Q8


@register
class AvgPool1d(_Pool):
    type = "avgpool1d"
    rank = 2
    torch_types = ("AvgPool1d",)
    int8 = int8_after_int8 = int8_before_int8 = True  # AVGPOOL2D_Q8


@register
class MaxPool1d(_Pool):
    type = "maxpool1d"
    rank = 2
    kind, op = "max", OpCode.MAXPOOL2D
    torch_types = ("MaxPool1d",)
    int8 = int8_after_int8 = int8_before_int8 = True  # MAXPOOL2D_Q8


# -- global average pooling ---------------------------------------------------------------

@register
class GlobalAvgPool(LayerRule):
    """Mean over every position of each channel: [C][H][W] or [C][L] → [C].

    With keepdims (what nn.AdaptiveAvgPool2d(1) / AdaptiveAvgPool1d(1) and ONNX
    GlobalAveragePool output) the result is [C][1][1] or [C][1]: the same bytes;
    a flatten after it is free. Without it, the PyTorch twin is the adaptive pool
    followed by nn.Flatten."""

    type = "global_avgpool"
    torch_types = ("AdaptiveAvgPool2d", "AdaptiveAvgPool1d")

    def parse(self, d):
        return {"keepdims": _bool_attr(d, "keepdims", False)}

    def out_shape(self, layer, in_shape):
        if len(in_shape) not in (2, 3):
            raise ModelError(f"layer {layer.name!r} (global_avgpool) wants a [C][H][W] or [C][L] input, "
                             f"got {list(in_shape)}")
        c = in_shape[0]
        return (c, *([1] * (len(in_shape) - 1))) if layer.attrs.get("keepdims") else (c,)

    int8 = int8_after_int8 = int8_before_int8 = True  # GLOBAL_AVGPOOL_Q8

    @staticmethod
    def _q8_scratch(in_dims) -> tuple[str, int]:
        """GLOBAL_AVGPOOL_Q8's scratch: one (sample, channel) plane in f32."""
        return "q8.scratch", 4 * int(np.prod(in_dims[1:]))

    def forward(self, e, layer, x, train):
        if e.is_q8(layer):
            y, _ = e.q8_node(OpCode.GLOBAL_AVGPOOL_Q8, OpFn.FW, [x], "out", self.out_shape(layer, e.dims(x)),
                             scratch=self._q8_scratch(e.dims(x)))
            return y, e.dims(x)
        y = e.act("out", self.out_shape(layer, e.dims(x)))
        e.node(OpCode.GLOBAL_AVGPOOL, OpFn.FW, [x], [y])
        return y, e.dims(x)

    def backward(self, e, layer, in_dims, dy, need_dx):
        if not need_dx:
            return None
        if e.is_q8(layer):
            return e.q8_node(OpCode.GLOBAL_AVGPOOL_Q8, OpFn.BW_INPUT, [dy], "in.grad", in_dims, grad=True,
                             scratch=self._q8_scratch(in_dims))[0]
        dx = e.grad("in.grad", in_dims)
        e.node(OpCode.GLOBAL_AVGPOOL, OpFn.BW_INPUT, [dy], [dx])
        return dx

    def torch_module(self, layer, in_shape):
        from torch import nn
        pool = nn.AdaptiveAvgPool2d(1) if len(in_shape) == 3 else nn.AdaptiveAvgPool1d(1)
        return pool if layer.attrs.get("keepdims") else nn.Sequential(pool, nn.Flatten())

    def from_torch(self, m, in_shape):
        size = m.output_size
        if any(s != 1 for s in (size if isinstance(size, (tuple, list)) else (size,))):
            raise ModelError(f"output_size={size} is not supported (1 only: global average pooling)")
        want = 3 if type(m).__name__ == "AdaptiveAvgPool2d" else 2
        if len(in_shape) != want:
            raise ModelError(f"{type(m).__name__} on a per-sample input of shape {list(in_shape)}")
        return {"keepdims": True}


# -- ONNX ---------------------------------------------------------------------------------

def _onnx_pads(a: dict, in_shape, kernel, strides, dilations) -> list[int]:
    """ONNX pads [x1_begin, x2_begin, ..., x1_end, x2_end] (or auto_pad) → per side,
    as (begin, end) pairs per spatial axis."""
    n = len(kernel)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        pads = [int(p) for p in a.get("pads", [0] * (2 * n))]
        return [v for i in range(n) for v in (pads[i], pads[n + i])]
    if auto == "VALID":
        return [0] * (2 * n)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, k, s, d in zip(in_shape[1:], kernel, strides, dilations):
            o = -(-size // s)
            total = max(0, (o - 1) * s + d * (k - 1) + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            out += [lo, total - lo]
        return out
    raise ModelError(f"auto_pad={auto} is not supported")


def _onnx_geom(a: dict, shape, default_kernel=None):
    if len(shape) not in (2, 3):
        raise ModelError(f"input shape {list(shape)}: want [C][H][W] or [C][L]")
    n = len(shape) - 1
    kernel = [int(k) for k in a.get("kernel_shape", default_kernel or [])]
    if len(kernel) != n:
        raise ModelError(f"kernel_shape {kernel} does not match a {n}-D input")
    strides = [int(s) for s in a.get("strides", [1] * n)]
    dilations = [int(d) for d in a.get("dilations", [1] * n)]
    return kernel, strides, dilations, _onnx_pads(a, shape, kernel, strides, dilations)


def _onnx_conv(a, w, shape):
    weight = w[0]
    kernel, strides, dilations, pads = _onnx_geom(a, shape, list(weight.shape[2:]))
    bias = w[1] if len(w) > 1 and w[1] is not None else None
    attrs = {"out": int(weight.shape[0]), "groups": int(a.get("group", 1)), "bias": bias is not None}
    params = {"weight": weight, **({"bias": bias} if bias is not None else {})}
    if len(kernel) == 2:
        return "conv2d", {**attrs, "kernel": kernel, "stride": strides, "padding": pads, "dilation": dilations}, params
    return "conv1d", {**attrs, "kernel": kernel[0], "stride": strides[0], "padding": pads,
                      "dilation": dilations[0]}, params


def _onnx_pool(kind: str):
    def mapper(a, w, shape):
        if a.get("ceil_mode", 0):
            raise ModelError("ceil_mode=1 is not supported")
        kernel, strides, dilations, pads = _onnx_geom(a, shape)
        if any(d != 1 for d in dilations):
            raise ModelError(f"dilations {dilations} are not supported (1 only)")
        t = f"{kind}pool{len(kernel)}d"
        attrs = ({"kernel": kernel, "stride": strides, "padding": pads} if len(kernel) == 2
                 else {"kernel": kernel[0], "stride": strides[0], "padding": pads})
        if kind == "avg":
            attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        return t, attrs, {}
    return mapper


def _onnx_global_avgpool(a, w, shape):
    return "global_avgpool", {"keepdims": True}, {}


register_onnx("Conv", _onnx_conv)
register_onnx("AveragePool", _onnx_pool("avg"))
register_onnx("MaxPool", _onnx_pool("max"))
register_onnx("GlobalAveragePool", _onnx_global_avgpool)
