/* golden_check.c — see golden_check.h. */
#include "golden_check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ep_runtime.h"
#include "golden.h"

/* Tolerances: the float32 device against the float64 reference, as in
 * tests/test_training_golden.py (where the bounds are derived): a weight error
 * of at most ~1e-6 per step (K ≤ 64 products, lr 0.5), far below 5e-5 over these
 * GOLDEN_STEPS; the loss moves by ‖∂L/∂w‖₁ · max|Δw| ≤ ~1.3e-3. A wrong sign,
 * index or scale moves a weight by ≥ 1e-3 after one step. */
#define WEIGHT_ATOL 5e-5f
#define LOSS_ATOL 1.5e-3f

static ep_model_t model;
static uint8_t arena[EP_ARENA_BYTES] __attribute__((aligned(8)));
static uint8_t blob_copy[GOLDEN_BLOB_BYTES] __attribute__((aligned(8)));

int ep_golden_train(char *msg, size_t cap) {
    const char *why = "";
    ep_status_t st = ep_model_parse(&model, golden_blob, GOLDEN_BLOB_BYTES, EP_ARENA_BYTES, NULL, &why);
    if (st != EP_OK) {
        snprintf(msg, cap, "parse: status %d (%s)", (int)st, why);
        return -1;
    }
    ep_model_init_arena(&model, golden_blob, arena);
    for (int s = 0; s < GOLDEN_STEPS; s++) {
        const ep_batch_t b = {
            .n = GOLDEN_BATCH,
            .encoding = EP_ENC_F32,
            .labels = golden_y[s],
            .data = (const uint8_t *)golden_x[s],
            .data_bytes = sizeof golden_x[s],
        };
        ep_step_result_t r;
        st = ep_model_run(&model, arena, &b, true, NULL, &r, &why);
        if (st != EP_OK) {
            snprintf(msg, cap, "step %d: status %d (%s)", s, (int)st, why);
            return -1;
        }
        if (fabsf(r.loss - golden_loss[s]) > LOSS_ATOL || r.correct != golden_correct[s]) {
            snprintf(msg, cap, "step %d: loss %.7f correct %u, reference %.7f correct %u", s, (double)r.loss,
                     (unsigned)r.correct, (double)golden_loss[s], (unsigned)golden_correct[s]);
            return -1;
        }
    }
    for (int p = 0; p < GOLDEN_N_PARAMS; p++) {
        const struct golden_param *g = &golden_params[p];
        const ep_tensor_t *t = &model.tensors[g->tensor];
        if (t->elems != g->elems) {
            snprintf(msg, cap, "%s: %u elements, reference %u", g->name, (unsigned)t->elems, (unsigned)g->elems);
            return -1;
        }
        for (uint32_t i = 0; i < g->elems; i++) {
            float w;
            memcpy(&w, arena + t->offset + 4u * i, sizeof w);
            if (!(fabsf(w - g->want[i]) <= WEIGHT_ATOL)) {
                snprintf(msg, cap, "%s[%u] = %.8f, reference %.8f", g->name, (unsigned)i, (double)w,
                         (double)g->want[i]);
                return -1;
            }
        }
    }
    snprintf(msg, cap, "ok");
    return 0;
}

int ep_golden_corrupt_refused(char *msg, size_t cap) {
    const char *why = "";
    memcpy(blob_copy, golden_blob, sizeof blob_copy);
    blob_copy[sizeof blob_copy - 5] ^= 0x10; /* inside the initial values, under the CRC */
    if (ep_model_parse(&model, blob_copy, sizeof blob_copy, EP_ARENA_BYTES, NULL, &why) == EP_OK) {
        snprintf(msg, cap, "a blob with a flipped bit was accepted");
        return -1;
    }
    if (ep_model_parse(&model, golden_blob, 16, EP_ARENA_BYTES, NULL, &why) == EP_OK) {
        snprintf(msg, cap, "a truncated blob was accepted");
        return -1;
    }
    snprintf(msg, cap, "ok");
    return 0;
}
