"""The portable runtime (firmware/runtime) as a host shared library, through ctypes.

`load()` compiles firmware/runtime/*.c and firmware/runtime/ops/*.c with the host
`cc` into build/native-lib/<variant>/libep_runtime.so, once, and again whenever a
runtime source or header is newer than the library. Variants:

    plain     -O2 -std=c11 -Wall -Wextra -Werror (the default)
    sanitize  the same plus -fsanitize=address,undefined,float-cast-overflow,
              aborting on the first report. An ASan library can only be loaded into a process that
              starts with libasan preloaded: `sanitized_env()` gives the
              environment for such a subprocess, and EP_NATIVE_VARIANT=sanitize
              makes `load()` pick this variant there.

The wrappers below take and return NumPy arrays so tests read like the maths;
they mirror the C structs of ep_runtime.h and ep_ops.h field for field.
"""

from __future__ import annotations

import ctypes as C
import os
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from host import ids  # the limits and node layout ep_ids.h is generated from

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "firmware" / "runtime"
BUILD = ROOT / "build" / "native-lib"

CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", f"-I{RUNTIME}"]
VARIANT_FLAGS = {
    "plain": [],
    "sanitize": ["-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                 "-fsanitize=float-cast-overflow", "-fno-sanitize-recover=all"],
}


EP_MAX_TENSORS = ids.MAX_TENSORS
EP_MAX_NODES = ids.MAX_NODES


def sources() -> list[Path]:
    return sorted(RUNTIME.glob("*.c")) + sorted((RUNTIME / "ops").glob("*.c"))


def build(variant: str = "plain") -> Path:
    """Compile the library unless it is newer than every runtime source and header."""
    out = BUILD / variant / "libep_runtime.so"
    inputs = sources() + sorted(RUNTIME.glob("*.h")) + sorted((RUNTIME / "ops").glob("*.h"))
    if out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # build next to the target and rename: concurrent test processes never see half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = ["cc", *CFLAGS, *VARIANT_FLAGS[variant], "-o", tmp, *map(str, sources()), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building the runtime failed:\n{' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, out)
    return out


def sanitized_env() -> dict[str, str]:
    """Environment for a subprocess that loads the sanitize variant."""
    libasan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    env = dict(os.environ)
    env.update(EP_NATIVE_VARIANT="sanitize", LD_PRELOAD=libasan,
               # every Python allocation through malloc, so ASan guards the buffers we pass
               PYTHONMALLOC="malloc",
               # CPython keeps objects alive at exit by design: not our leaks
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    return env


# -- the C types --------------------------------------------------------------

class Dims(C.Structure):
    _fields_ = [("n", C.c_uint32), ("c", C.c_uint32)]


class LinearParams(C.Structure):
    _fields_ = [("in_", Dims), ("out", Dims)]


class SgdParams(C.Structure):
    _fields_ = [("lr", C.c_float), ("weight_decay", C.c_float)]


class Tensor(C.Structure):
    _fields_ = [("dtype", C.c_uint8), ("flags", C.c_uint8), ("rank", C.c_uint8),
                ("dims", C.c_uint16 * 4), ("offset", C.c_uint32), ("bytes", C.c_uint32),
                ("init", C.c_uint32), ("elems", C.c_uint32)]


class Node(C.Structure):
    _fields_ = [("op", C.c_uint8), ("fn", C.c_uint8), ("n_in", C.c_uint8), ("n_out", C.c_uint8),
                ("in_", C.c_uint16 * ids.MAX_NODE_INPUTS), ("out", C.c_uint16 * ids.MAX_NODE_OUTPUTS),
                ("iattr", C.c_uint16 * ids.NODE_IATTRS), ("fattr", C.c_float * ids.NODE_FATTRS)]


L3_COPY = C.CFUNCTYPE(None, C.c_uint32, C.c_void_p, C.c_uint32)


class L3(C.Structure):
    """ep_l3_t: the board's L3 memory as the runtime sees it."""
    _fields_ = [("bytes", C.c_uint32), ("read", L3_COPY), ("write", L3_COPY)]


class Model(C.Structure):
    _fields_ = [("crc", C.c_uint32), ("arena_bytes", C.c_uint32),
                ("l3_bytes", C.c_uint32), ("l3", C.POINTER(L3)),
                ("n_tensors", C.c_uint16), ("n_nodes", C.c_uint16),
                ("n_eval_nodes", C.c_uint16), ("max_batch", C.c_uint16),
                ("train_begin", C.c_uint16), ("train_loss_end", C.c_uint16),
                ("update_begin", C.c_uint16), ("update_every", C.c_uint16), ("counter_tensor", C.c_uint16),
                ("input_tensor", C.c_uint16), ("label_tensor", C.c_uint16),
                ("stats_tensor", C.c_uint16), ("num_classes", C.c_uint16),
                ("tensors", Tensor * EP_MAX_TENSORS), ("nodes", Node * EP_MAX_NODES)]


class Batch(C.Structure):
    _fields_ = [("n", C.c_uint16), ("encoding", C.c_uint8), ("scale", C.c_float),
                ("zero", C.c_float), ("labels", C.POINTER(C.c_uint8)),
                ("data", C.POINTER(C.c_uint8)), ("data_bytes", C.c_uint32)]


class StepResult(C.Structure):
    _fields_ = [("loss", C.c_float), ("n", C.c_uint16), ("correct", C.c_uint16)]


F32P = C.POINTER(C.c_float)
I32P = C.POINTER(C.c_int32)
U8P = C.POINTER(C.c_uint8)
WHY = C.POINTER(C.c_char_p)

_SIGNATURES = {
    "ep_crc32": (C.c_uint32, [C.c_uint32, U8P, C.c_uint32]),
    "ep_linear_fw_f32": (None, [C.POINTER(LinearParams), F32P, F32P, F32P, F32P]),
    "ep_linear_bw_input_f32": (None, [C.POINTER(LinearParams), F32P, F32P, F32P]),
    "ep_linear_bw_param_f32": (None, [C.POINTER(LinearParams), F32P, F32P, F32P, F32P]),
    "ep_relu_fw_f32": (None, [C.POINTER(Dims), F32P, F32P]),
    "ep_relu_bw_f32": (None, [C.POINTER(Dims), F32P, F32P, F32P]),
    "ep_softmax_ce_fw_f32": (None, [C.POINTER(Dims), F32P, I32P, F32P, F32P]),
    "ep_softmax_ce_bw_f32": (None, [C.POINTER(Dims), F32P, I32P, F32P]),
    "ep_sgd_update_f32": (None, [C.POINTER(SgdParams), C.POINTER(Dims), F32P, F32P]),
    "ep_model_parse": (C.c_int, [C.POINTER(Model), U8P, C.c_uint32, C.c_uint32, C.POINTER(L3), WHY]),
    "ep_model_init_arena": (None, [C.POINTER(Model), U8P, U8P]),
    "ep_model_run": (C.c_int, [C.POINTER(Model), U8P, C.POINTER(Batch), C.c_bool, C.c_void_p,
                               C.POINTER(StepResult), WHY]),
}


@cache
def load(variant: str | None = None) -> C.CDLL:
    """The runtime library (built if stale), with argument types declared."""
    lib = C.CDLL(str(build(variant or os.environ.get("EP_NATIVE_VARIANT", "plain"))))
    for name, (res, args) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


# -- NumPy-facing wrappers ----------------------------------------------------

def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _p(a: np.ndarray, ptype=F32P):
    return a.ctypes.data_as(ptype)


def _u8(data: bytes):
    """A ctypes buffer of exactly len(data) bytes (so a sanitizer sees an overrun)."""
    return (C.c_uint8 * len(data)).from_buffer_copy(data) if data else (C.c_uint8 * 1)()


def linear_fw(x, w, b) -> np.ndarray:
    x, w, b = _f32(x), _f32(w), _f32(b)
    (n, k), m = x.shape, w.shape[0]
    y = np.full((n, m), np.nan, np.float32)
    p = LinearParams(Dims(n, k), Dims(n, m))
    load().ep_linear_fw_f32(C.byref(p), _p(x), _p(w), _p(b), _p(y))
    return y


def linear_bw_input(dy, w) -> np.ndarray:
    dy, w = _f32(dy), _f32(w)
    (n, m), k = dy.shape, w.shape[1]
    dx = np.full((n, k), np.nan, np.float32)
    p = LinearParams(Dims(n, k), Dims(n, m))
    load().ep_linear_bw_input_f32(C.byref(p), _p(dy), _p(w), _p(dx))
    return dx


def linear_bw_param(dy, x) -> tuple[np.ndarray, np.ndarray]:
    dy, x = _f32(dy), _f32(x)
    (n, m), k = dy.shape, x.shape[1]
    dw = np.full((m, k), np.nan, np.float32)
    db = np.full(m, np.nan, np.float32)
    p = LinearParams(Dims(n, k), Dims(n, m))
    load().ep_linear_bw_param_f32(C.byref(p), _p(dy), _p(x), _p(dw), _p(db))
    return dw, db


def relu_fw(x, out: np.ndarray | None = None) -> np.ndarray:
    """y = relu(x); pass out=x to run in place."""
    x = _f32(x)
    y = np.full_like(x, np.nan) if out is None else out
    d = Dims(x.shape[0], x.size // x.shape[0])
    load().ep_relu_fw_f32(C.byref(d), _p(x), _p(y))
    return y


def relu_bw(dy, y, out: np.ndarray | None = None) -> np.ndarray:
    dy, y = _f32(dy), _f32(y)
    dx = np.full_like(dy, np.nan) if out is None else out
    d = Dims(dy.shape[0], dy.size // dy.shape[0])
    load().ep_relu_bw_f32(C.byref(d), _p(dy), _p(y), _p(dx))
    return dx


def softmax_ce_fw(logits, labels) -> tuple[np.ndarray, float, float]:
    """(probs, mean loss, correct count) as the kernel writes them."""
    z = _f32(logits)
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    probs = np.full_like(z, np.nan)
    stats = np.full(2, np.nan, np.float32)
    d = Dims(*z.shape)
    load().ep_softmax_ce_fw_f32(C.byref(d), _p(z), _p(lab, I32P), _p(probs), _p(stats))
    return probs, float(stats[0]), float(stats[1])


def softmax_ce_bw(probs, labels, out: np.ndarray | None = None) -> np.ndarray:
    p = _f32(probs)
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    dz = np.full_like(p, np.nan) if out is None else out
    d = Dims(*p.shape)
    load().ep_softmax_ce_bw_f32(C.byref(d), _p(p), _p(lab, I32P), _p(dz))
    return dz


def sgd_update(param, grad, lr: float, weight_decay: float) -> np.ndarray:
    """The updated copy of param."""
    w, g = _f32(param).copy(), _f32(grad)
    d = Dims(1, w.size)
    load().ep_sgd_update_f32(C.byref(SgdParams(lr, weight_decay)), C.byref(d), _p(g), _p(w))
    return w


def crc32(data: bytes, crc: int = 0) -> int:
    return load().ep_crc32(crc, _u8(data), len(data))


class L3Memory:
    """An ep_l3_t over a NumPy byte array `mem`: a test's L3 memory. An access outside
    it is not made but recorded in `bad` (an exception cannot cross the C callback),
    every access in `log` as ("read" | "write", off, n)."""

    def __init__(self, size: int):
        self.mem = np.zeros(size, np.uint8)
        self.bad: list[tuple[str, int, int]] = []
        self.log: list[tuple[str, int, int]] = []
        base = self.mem.ctypes.data

        def copy(kind: str, off: int, buf: int, n: int) -> None:
            self.log.append((kind, off, n))
            if off + n > size:
                self.bad.append((kind, off, n))
            elif kind == "read":
                C.memmove(buf, base + off, n)
            else:
                C.memmove(base + off, buf, n)

        # the CFUNCTYPE objects must live as long as the struct that points at them
        self._read = L3_COPY(lambda off, dst, n: copy("read", off, dst, n))
        self._write = L3_COPY(lambda off, src, n: copy("write", off, src, n))
        self.struct = L3(size, self._read, self._write)


@dataclass
class Parsed:
    status: int
    why: str
    model: Model
    l3: L3Memory | None = None  # kept alive: model.l3 points into it


def parse(blob: bytes, arena_bytes: int = 1 << 24, l3: L3Memory | None = None) -> Parsed:
    """ep_model_parse on an exact-size copy of blob, with the L3 memory l3 (None: the device has none)."""
    m = Model()
    why = C.c_char_p()
    st = load().ep_model_parse(C.byref(m), _u8(blob), len(blob), arena_bytes,
                               C.byref(l3.struct) if l3 is not None else None, C.byref(why))
    return Parsed(st, (why.value or b"").decode(), m, l3)


class Runtime:
    """One installed model: the blob, its parsed description, an arena and (l3_bytes > 0) an
    L3 memory `l3`."""

    def __init__(self, blob: bytes, arena_bytes: int = 1 << 20, l3_bytes: int = 0):
        self.l3 = L3Memory(l3_bytes) if l3_bytes else None
        p = parse(blob, arena_bytes, self.l3)
        if p.status != 0:
            raise ValueError(f"blob refused: status {p.status}, {p.why}")
        self.model = p.model
        self._blob = _u8(blob)
        self.arena = np.zeros(arena_bytes, np.uint8)
        load().ep_model_init_arena(C.byref(self.model), self._blob, _p(self.arena, U8P))

    def tensor(self, i: int, n: int | None = None) -> np.ndarray:
        """A copy of tensor i as float32 (batched tensors: the first n samples; L3 tensors
        from the L3 memory)."""
        t = self.model.tensors[i]
        count = t.elems * (n if t.flags & ids.TensorFlag.BATCHED else 1)
        mem = self.l3.mem if t.flags & ids.TensorFlag.L3 else self.arena
        return mem[t.offset:t.offset + 4 * count].view(np.float32).copy()

    def run(self, labels, data: bytes, *, n: int | None = None, encoding: int = 0,
            scale: float = 1.0, zero: float = 0.0, train: bool = False) -> tuple[int, str, StepResult]:
        labels = bytes(labels)
        lab, dat = _u8(labels), _u8(data)
        b = Batch(len(labels) if n is None else n, encoding, scale, zero,
                  C.cast(lab, U8P), C.cast(dat, U8P), len(data))
        r = StepResult()
        why = C.c_char_p()
        st = load().ep_model_run(C.byref(self.model), _p(self.arena, U8P), C.byref(b), train, None,
                                 C.byref(r), C.byref(why))
        return st, (why.value or b"").decode(), r


# -- helpers for the op families' ctypes modules (tests/*_lib.py) -------------------------

#: sentinel floats on both sides of every kernel output: a write outside it shows
GUARD = 16
SENTINEL = np.float32(-123456.75)


def declare(signatures: dict) -> C.CDLL:
    """The runtime library with these {name: (restype, argtypes)} declared."""
    so = load()
    for name, (res, args) in signatures.items():
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, args
    return so


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def fptr(a: np.ndarray):
    return a.ctypes.data_as(F32P)


SENTINEL_U8 = np.uint8(0x5A)


class Guarded:
    """An array of `shape` (float32, or uint8 for masks) inside a buffer with GUARD
    sentinels on both sides, filled with NaN (0xA5 for uint8: so an element the
    kernel forgot shows) or a copy of `init`."""

    def __init__(self, shape, init=None, dtype=np.float32):
        shape = tuple(int(s) for s in shape)
        size = int(np.prod(shape))
        self.u8 = np.dtype(dtype) == np.uint8
        self.sentinel = SENTINEL_U8 if self.u8 else SENTINEL
        self.buf = np.full(size + 2 * GUARD, self.sentinel, dtype)
        self.arr = self.buf[GUARD:GUARD + size].reshape(shape)
        fill = 0xA5 if self.u8 else np.nan
        self.arr[...] = fill if init is None else np.asarray(init, dtype).reshape(shape)

    @classmethod
    def of(cls, init):
        a = f32(init)
        return cls(a.shape, a)

    def ptr(self):
        return self.arr.ctypes.data_as(U8P) if self.u8 else fptr(self.arr)

    def get(self) -> np.ndarray:
        head, tail = self.buf[:GUARD], self.buf[-GUARD:]
        assert (head == self.sentinel).all() and (tail == self.sentinel).all(), "kernel wrote outside its buffer"
        return self.arr.copy()

