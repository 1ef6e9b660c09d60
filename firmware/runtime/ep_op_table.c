/* ep_op_table.c — the op registry: one line per op, indexed by ep_opcode_t.
 *
 * Ops are weak references: an op whose file is not linked into a build is absent
 * (NULL here), and a blob that uses it is refused as "unknown op" rather than
 * failing to link. A board short of flash may leave op files out; HELLO-level
 * capability bits say what a build has. */
#include "ep_ops.h"

static const ep_op_t *const k_ops[EP_OPCODE_COUNT] = {
    [EP_OP_LINEAR] = &ep_op_linear,
    [EP_OP_RELU] = &ep_op_relu,
    [EP_OP_SOFTMAX_CE] = &ep_op_softmax_ce,
    [EP_OP_SGD] = &ep_op_sgd,
    [EP_OP_CONV2D] = &ep_op_conv2d,
    [EP_OP_AVGPOOL2D] = &ep_op_avgpool2d,
    [EP_OP_MAXPOOL2D] = &ep_op_maxpool2d,
    [EP_OP_GLOBAL_AVGPOOL] = &ep_op_global_avgpool,
    [EP_OP_BATCHNORM] = &ep_op_batchnorm,
    [EP_OP_LAYERNORM] = &ep_op_layernorm,
    [EP_OP_GROUPNORM] = &ep_op_groupnorm,
    [EP_OP_RELU6] = &ep_op_relu6,
    [EP_OP_ELU] = &ep_op_elu,
    [EP_OP_GELU] = &ep_op_gelu,
    [EP_OP_SIGMOID] = &ep_op_sigmoid,
    [EP_OP_TANH] = &ep_op_tanh,
    [EP_OP_DROPOUT] = &ep_op_dropout,
    [EP_OP_MHSA] = &ep_op_mhsa,
    [EP_OP_SEQPOOL] = &ep_op_seqpool,
    [EP_OP_SOFTMAX] = &ep_op_softmax,
    [EP_OP_ADD] = &ep_op_add,
    [EP_OP_CONCAT] = &ep_op_concat,
    [EP_OP_TRANSPOSE] = &ep_op_transpose,
    [EP_OP_MSE] = &ep_op_mse,
    [EP_OP_SGD_MOMENTUM] = &ep_op_sgd_momentum,
    [EP_OP_ADAM] = &ep_op_adam,
    [EP_OP_ACCUMULATE] = &ep_op_accumulate,
    [EP_OP_CLIP_NORM] = &ep_op_clip_norm,
    [EP_OP_ZERO] = &ep_op_zero,
    [EP_OP_GATHER] = &ep_op_gather,
    [EP_OP_SCATTER] = &ep_op_scatter,
    [EP_OP_BIAS_GRAD] = &ep_op_bias_grad,
    [EP_OP_QUANTIZE] = &ep_op_quantize,
    [EP_OP_DEQUANTIZE] = &ep_op_dequantize,
    [EP_OP_LINEAR_Q8] = &ep_op_linear_q8,
    [EP_OP_CONV2D_Q8] = &ep_op_conv2d_q8,
    [EP_OP_RELU_Q8] = &ep_op_relu_q8,
    [EP_OP_SGD_Q8] = &ep_op_sgd_q8,
    [EP_OP_REQUANT_WEIGHTS] = &ep_op_requant_weights,
    [EP_OP_L3_LOAD] = &ep_op_l3_load,
    [EP_OP_L3_STORE] = &ep_op_l3_store,
    [EP_OP_BATCHNORM_Q8] = &ep_op_batchnorm_q8,
    [EP_OP_ACT_Q8] = &ep_op_act_q8,
    [EP_OP_AVGPOOL2D_Q8] = &ep_op_avgpool2d_q8,
    [EP_OP_DROPOUT_Q8] = &ep_op_dropout_q8,
    [EP_OP_ADD_Q8] = &ep_op_add_q8,
    [EP_OP_GLOBAL_AVGPOOL_Q8] = &ep_op_global_avgpool_q8,
    [EP_OP_MHSA_Q8] = &ep_op_mhsa_q8,
    [EP_OP_MAXPOOL2D_Q8] = &ep_op_maxpool2d_q8,
    [EP_OP_LAYERNORM_Q8] = &ep_op_layernorm_q8,
    [EP_OP_SEQPOOL_Q8] = &ep_op_seqpool_q8,
};

const ep_op_t *ep_op_lookup(uint8_t opcode) {
    return opcode < EP_OPCODE_COUNT ? k_ops[opcode] : NULL;
}
