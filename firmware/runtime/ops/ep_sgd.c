/* ep_sgd.c — SGD: in-place update of a trainable parameter from its gradient. */
#include "ep_ops.h"
#include "ep_parallel.h"

static ep_status_t sgd_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW) {
        return ep_reject(why, EP_WHY("sgd: only fw exists"));
    }
    if (nd->n_in != 1 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("sgd.fw: needs input (grad) and output (param)"));
    }
    const uint16_t g = nd->in[0], p = nd->out[0];
    const ep_tensor_t *gt = &m->tensors[g], *pt = &m->tensors[p];
    if (pt->dtype != EP_DTYPE_F32 || (pt->flags & (EP_TF_BATCHED | EP_TF_TRAINABLE)) != EP_TF_TRAINABLE) {
        return ep_reject(why, EP_WHY("sgd.fw: param must be an unbatched trainable f32 tensor"));
    }
    if (gt->dtype != EP_DTYPE_F32 || (gt->flags & EP_TF_BATCHED) != 0 || !ep_same_shape(m, g, p)) {
        return ep_reject(why, EP_WHY("sgd.fw: grad must be an unbatched f32 tensor shaped like param"));
    }
    if (ep_overlap(m, g, p)) {
        return ep_reject(why, EP_WHY("sgd.fw: grad overlaps param"));
    }
    return EP_OK;
}

static void sgd_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_dims_t d = {1, c->model->tensors[nd->out[0]].elems};
    const ep_sgd_params_t p = {nd->fattr[0], nd->fattr[1]};
    ep_sgd_update_f32(&p, &d, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_sgd = {
    .name = "sgd",
    .prepare = sgd_prepare,
    .fn = {[EP_FN_FW] = sgd_fw, [EP_FN_BW_INPUT] = NULL, [EP_FN_BW_PARAM] = NULL},
};

typedef struct {
    const ep_sgd_params_t *p;
    uint32_t count;
    const float *grad;
    float *param;
} sgd_args_t;

/* This core's elements (ep_parallel.h): each element's update is the same on any core. */
static void sgd_core(void *arg) {
    const sgd_args_t *a = arg;
    const float lr = a->p->lr, wd = a->p->weight_decay;
    const float *restrict grad = a->grad;
    float *restrict param = a->param;
    uint32_t lo, hi;
    ep_par_range(a->count, &lo, &hi);
    for (uint32_t i = lo; i < hi; i++) {
        param[i] -= lr * (grad[i] + wd * param[i]);
    }
}

void ep_sgd_update_f32(const ep_sgd_params_t *p, const ep_dims_t *d, const float *restrict grad,
                       float *restrict param) {
    sgd_args_t a = {.p = p, .count = d->n * d->c, .grad = grad, .param = param};
    ep_par_fork(ep_par_team_for(a.count, 64), sgd_core, &a);
}
