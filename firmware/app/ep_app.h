/*
 * ep_app.h — the device side of serial protocol v1 (docs/protocol.md): answers
 * every request the frame receiver (ep_frame.h) delivers, and answers receive
 * errors with ERROR frames.
 *
 * State (all static, no heap):
 *   - the training arena (EP_ARENA_BYTES, 8-aligned) and the upload staging
 *     buffer (EP_STAGING_BYTES; in the board's L3 region where it has a
 *     memory-mapped one, EP_L3_REGION: the emulated gap9);
 *   - the port's L3 memory (ep_port.h, EP_L3_BYTES; HELLO reports its size), handed
 *     to the runtime for models with tensors there; READ_WEIGHTS, checkpoints and
 *     the guards reach those parameters through it;
 *   - the sample buffer (BUF_BEGIN/BUF_CHUNK): samples and labels kept in the
 *     arena beyond the installed model's span, decoded by TRAIN_BUF/EVAL_BUF;
 *     installing a model discards it;
 *   - two model descriptors: the installed one and the candidate LOAD_END
 *     validates into; they swap only once a blob passed every check, so a bad
 *     upload leaves the installed model working;
 *   - the last executed request (type, req_id) and its response on the wire: a
 *     repeat is answered from it without running again (retries never apply a
 *     TRAIN batch or a LOAD_CHUNK twice). ERROR frames do not touch it;
 *   - the STATS counters since boot (steps count since the model was installed);
 *   - what non-volatile storage holds (ep_ckpt.h): at boot the stored model is
 *     validated and reinstalled with its newest valid checkpoint; LOAD_END
 *     stores the new model; CKPT_SAVE/CKPT_RESTORE write and read checkpoints;
 *   - the training guards: a TRAIN whose loss or updated parameters are NaN or
 *     infinite, or whose loss exceeds spike_k x the mean of the last 8 accepted
 *     losses (GUARD; off until set), is rolled back to the newest checkpoint and
 *     answered with EP_NUMERIC and a message saying to which.
 *
 * Untrusted input: every payload length and field is checked before use;
 * refusals carry a status and a UTF-8 message naming the field (the runtime's
 * `why` for blob and batch errors). Requests are never partially applied.
 */
#ifndef EP_APP_H
#define EP_APP_H

#include "ep_frame.h"

/** Capabilities reported in HELLO. */
#define EP_APP_CAPS                                                                                       \
    (EP_CAP_F32 | EP_CAP_SGD | EP_CAP_CYCLES | EP_CAP_U8_AFFINE_INPUT | EP_CAP_STAGED_BATCH | EP_CAP_SAMPLE_BUFFER | \
     EP_CAP_CHECKPOINTS | EP_CAP_GUARDS)

/** nv_flags of HELLO and CKPT_INFO (docs/protocol.md; host/protocol.py NvFlag mirrors them). */
enum {
    EP_NV_PRESENT = 1,          /**< the device has non-volatile storage */
    EP_NV_MODEL_STORED = 2,     /**< the installed model is also stored: it survives a reset */
    EP_NV_MODEL_RESTORED = 4,   /**< the installed model was reinstalled from storage at boot */
    EP_NV_CKPT_RESTORED = 8,    /**< ...with the weights of a checkpoint (boot_seq) */
};

/** Call once, after ep_port_init(): set up the state and send the unsolicited boot HELLO (req_id 0). */
void ep_app_init(void);

/**
 * Handle one event of the frame receiver: a request is answered (from the
 * retry cache if it repeats the last one); a receive error is answered with an
 * ERROR frame and counted in frames_bad. EXIT answers, then stops the program.
 */
void ep_app_handle(const ep_frame_t *f);

#endif /* EP_APP_H */
