/* ep_op_table.c — the op registry: one line per op, indexed by ep_opcode_t. */
#include "ep_ops.h"

static const ep_op_t *const k_ops[EP_OPCODE_COUNT] = {
    [EP_OP_LINEAR] = &ep_op_linear,
    [EP_OP_RELU] = &ep_op_relu,
    [EP_OP_SOFTMAX_CE] = &ep_op_softmax_ce,
    [EP_OP_SGD] = &ep_op_sgd,
};

const ep_op_t *ep_op_lookup(uint8_t opcode) {
    return opcode < EP_OPCODE_COUNT ? k_ops[opcode] : NULL;
}
