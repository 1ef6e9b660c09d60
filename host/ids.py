"""Every number the host and the device must agree on, defined once.

`python -m host.codegen` renders this module into `firmware/runtime/ep_ids.h`;
a test fails when the committed header and this module disagree. Change a value
here, regenerate, and both sides move together.
"""

from __future__ import annotations

import enum

#: Serial protocol version carried in HELLO. Bump on any incompatible change.
PROTOCOL_VERSION = 1
#: Firmware version the host expects to talk to (major, minor, patch).
FIRMWARE_VERSION = (0, 1, 0)

#: The two bytes that open every frame.
FRAME_SYNC0 = 0xE9
FRAME_SYNC1 = 0x50
#: sync(2) + type(1) + status(1) + req_id(2) + length(2)
FRAME_HEADER_BYTES = 8
#: trailing CRC-32 (IEEE 802.3, as zlib.crc32)
FRAME_CRC_BYTES = 4
#: Largest payload either side sends or accepts. Longer length fields are refused.
FRAME_MAX_PAYLOAD = 4096
#: Set on the type byte of every response.
FRAME_RESPONSE_BIT = 0x80
#: A partial frame with no new byte for this long (device clock) is dropped.
FRAME_IDLE_TIMEOUT_MS = 2000

#: Model blob magic ("EPMB") and version.
BLOB_MAGIC = b"EPMB"
BLOB_VERSION = 3
BLOB_HEADER_BYTES = 64
BLOB_TENSOR_BYTES = 24
BLOB_NODE_BYTES = 76
#: Every arena offset and tensor size is a multiple of this.
BLOB_ALIGN = 8
#: Limits a device accepts; the compiler refuses graphs beyond them. A board may
#: lower MAX_TENSORS / MAX_NODES (`[runtime] max_tensors`, `max_nodes` in its
#: board.toml): each costs RAM twice over (installed + candidate model tables).
MAX_TENSORS = 512
MAX_NODES = 256
MAX_RANK = 4
MAX_NODE_INPUTS = 8
MAX_NODE_OUTPUTS = 4
#: Per node: integer attributes (shapes, strides, flags) and float attributes
#: (hyper-parameters); each op documents its own use in docs/blob.md.
NODE_IATTRS = 12
NODE_FATTRS = 6
#: "no tensor" in a node's input/output list, "no initialiser" in a tensor.
NO_TENSOR = 0xFFFF
NO_INIT = 0xFFFFFFFF


class MsgType(enum.IntEnum):
    """Request types (host → device). A response has the same type | 0x80."""

    HELLO = 0x01
    LOAD_BEGIN = 0x02
    LOAD_CHUNK = 0x03
    LOAD_END = 0x04
    TRAIN = 0x05
    EVAL = 0x06
    STATS = 0x07
    READ_WEIGHTS = 0x08
    EXIT = 0x09
    STAGE = 0x0A
    PROFILE = 0x0B
    #: the device-side sample buffer (docs/protocol.md, "Sample buffer"): declare it, fill it,
    #: then TRAIN/EVAL on samples named by their index in it
    BUF_BEGIN = 0x0C
    BUF_CHUNK = 0x0D
    TRAIN_BUF = 0x0E
    EVAL_BUF = 0x0F
    #: checkpoints in non-volatile storage (docs/protocol.md, "Checkpoints"): save the
    #: installed model's parameters, restore the newest valid checkpoint, report what is stored
    CKPT_SAVE = 0x10
    CKPT_RESTORE = 0x11
    CKPT_INFO = 0x12
    #: training guards: the loss-spike factor (NaN/Inf rollback is always on)
    GUARD = 0x13
    #: instructions each cluster core ran in the last TRAIN/EVAL (a port with a cluster)
    CORES = 0x14
    #: device → host only: a frame it could not attribute (bad CRC, oversize, truncated)
    ERROR = 0x7F


class Status(enum.IntEnum):
    """Result of a request and of every runtime call (EP_OK == 0)."""

    OK = 0
    BAD_CRC = 1
    OVERSIZE = 2
    TRUNCATED = 3
    UNKNOWN_TYPE = 4
    BAD_PAYLOAD = 5
    NO_MODEL = 6
    BAD_STATE = 7
    BAD_OFFSET = 8
    TOO_LARGE = 9
    BAD_HASH = 10
    BAD_BLOB = 11
    NO_FIT = 12
    BAD_BATCH = 13
    BAD_TENSOR = 14
    NUMERIC = 15
    INTERNAL = 16
    #: the device has no non-volatile storage (or it failed): no checkpoints
    NO_STORAGE = 17
    #: no valid checkpoint of the installed model is stored
    NO_CHECKPOINT = 18


class Cap(enum.IntFlag):
    """Capability bits reported in HELLO."""

    F32 = 1 << 0
    SGD = 1 << 1
    CYCLES = 1 << 2
    U8_AFFINE_INPUT = 1 << 3
    #: STAGE and TRAIN/EVAL on staged rows: batches larger than one frame
    STAGED_BATCH = 1 << 4
    #: BUF_BEGIN/BUF_CHUNK and TRAIN_BUF/EVAL_BUF: samples held in the arena beyond the model
    SAMPLE_BUFFER = 1 << 5
    #: CKPT_SAVE/CKPT_RESTORE/CKPT_INFO, the model and checkpoints kept across resets
    CHECKPOINTS = 1 << 6
    #: GUARD, and TRAIN rolls back to the last checkpoint on NaN/Inf or a loss spike
    GUARDS = 1 << 7


class DType(enum.IntEnum):
    F32 = 1
    I32 = 2
    U8 = 3
    S8 = 4


DTYPE_BYTES = {DType.F32: 4, DType.I32: 4, DType.U8: 1, DType.S8: 1}


class TensorFlag(enum.IntFlag):
    #: leading dimension is the batch: dims are per sample, storage is max_batch × dims
    BATCHED = 1 << 0
    #: a model parameter: persists across steps, readable with READ_WEIGHTS
    PARAM = 1 << 1
    #: a parameter the optimizer updates
    TRAINABLE = 1 << 2
    #: the batch input the device decodes samples into
    INPUT = 1 << 3
    #: the batch labels (I32)
    LABEL = 1 << 4
    #: a gradient
    GRAD = 1 << 5
    #: lives in the board's L3 memory (GAP9's external HyperRAM), `offset` bytes into it, not
    #: in the arena: a PARAM (weights, f32 masters, optimizer state) that did not fit L2. Only
    #: L3_LOAD (as input) and L3_STORE (as output) name it; the other ops work on its L2 copy
    L3 = 1 << 6
    # 1 << 7 is the device's own (EP_TF_L3_COPY in ep_runtime.h): never in a blob


class OpCode(enum.IntEnum):
    """Op kinds. A graph node names an op and which of its functions to run."""

    LINEAR = 1
    RELU = 2
    SOFTMAX_CE = 3
    SGD = 4
    CONV2D = 5
    AVGPOOL2D = 6
    MAXPOOL2D = 7
    GLOBAL_AVGPOOL = 8
    BATCHNORM = 9
    LAYERNORM = 10
    GROUPNORM = 11
    RELU6 = 12
    ELU = 13
    GELU = 14
    SIGMOID = 15
    TANH = 16
    DROPOUT = 17
    MHSA = 18
    SEQPOOL = 19
    SOFTMAX = 20
    ADD = 21
    CONCAT = 22
    TRANSPOSE = 23
    MSE = 24
    SGD_MOMENTUM = 25
    ADAM = 26
    ACCUMULATE = 27
    CLIP_NORM = 28
    ZERO = 29
    #: rows of a tensor picked by an index list, and written back (sparse channel updates)
    GATHER = 30
    SCATTER = 31
    #: a bias's gradient alone (bias-only training): the sum of dy over all but the channel axis
    BIAS_GRAD = 32
    #: int8 training (docs/ops/int8.md): f32 → int8 with a dynamic power-of-two exponent, and back
    QUANTIZE = 33
    DEQUANTIZE = 34
    #: int8 linear / conv: int32 accumulation, dynamic output exponent, per-channel weight exponents
    LINEAR_Q8 = 35
    CONV2D_Q8 = 36
    RELU_Q8 = 37
    #: SGD on int8 weights (or int32 biases) with stochastic rounding, QAS-scaled
    SGD_Q8 = 38
    #: f32 master weights → int8 codes + per-channel exponents (or int32 bias codes)
    REQUANT_WEIGHTS = 39
    #: L3 tier (docs/blob.md): copy an L3 tensor into its L2 working copy, and back after an update
    L3_LOAD = 40
    L3_STORE = 41
    #: int8 batch norm, activations, pooling, dropout and the residual add: int8 in and out, the f32 op's arithmetic in between,
    #: bit for bit DEQUANTIZE → the f32 op → QUANTIZE without the f32 tensors (docs/ops/int8.md)
    BATCHNORM_Q8 = 42
    ACT_Q8 = 43
    AVGPOOL2D_Q8 = 44
    DROPOUT_Q8 = 45
    ADD_Q8 = 46
    GLOBAL_AVGPOOL_Q8 = 47
    #: int8 multi-head self-attention: int8 in and out, its saved Q, K, V and probabilities as int8 codes
    MHSA_Q8 = 48
    #: int8 max pooling (its backward recomputes the selection from x's codes, as MAXPOOL2D from x)
    MAXPOOL2D_Q8 = 49
    #: int8 layer norm (rows of D: the f32 kernels on one dequantized row at a time)
    LAYERNORM_Q8 = 50
    #: int8 sequence pooling (CCT): the f32 kernels on one dequantized sample at a time
    SEQPOOL_Q8 = 51


class OpFn(enum.IntEnum):
    """Which function of an op a node runs."""

    FW = 0
    BW_INPUT = 1
    BW_PARAM = 2


class Encoding(enum.IntEnum):
    """How TRAIN/EVAL carry samples: raw f32, or u8 with x = q * scale + zero; and how the
    sample buffer holds them (f32, or u8/i8/i16 with x = q * scale[c] + zero[c] per channel)."""

    F32 = 0
    U8_AFFINE = 1
    #: TRAIN/EVAL only: run on the rows sent before with STAGE (no labels, no data)
    STAGED = 2
    #: BUF_BEGIN only: signed 8-bit codes, per-channel affine
    I8_AFFINE = 3
    #: BUF_BEGIN only: signed 16-bit codes (LE), per-channel affine
    I16_AFFINE = 4


#: bytes per value of each sample encoding (BUF_BEGIN; TRAIN/EVAL/STAGE take F32 and U8_AFFINE)
ENCODING_BYTES = {Encoding.F32: 4, Encoding.U8_AFFINE: 1, Encoding.I8_AFFINE: 1, Encoding.I16_AFFINE: 2}
