/*
 * golden_check.h — the checks of the Zephyr ztest suite, in plain C so the same
 * file also builds natively (tests/test_rtos.py): the runtime trains on the
 * golden header's batches and must land on the float64 NumPy reference.
 */
#ifndef EP_GOLDEN_CHECK_H
#define EP_GOLDEN_CHECK_H

#include <stddef.h>

/** GOLDEN_STEPS SGD steps from the golden blob; 0 if losses, correct counts and
 *  every weight match the reference, else -1 with the first difference in msg. */
int ep_golden_train(char *msg, size_t cap);

/** 0 if the blob loader refuses the golden blob with one byte of its weights
 *  flipped (CRC) and with its header truncated; -1 otherwise (msg says which). */
int ep_golden_corrupt_refused(char *msg, size_t cap);

#endif /* EP_GOLDEN_CHECK_H */
