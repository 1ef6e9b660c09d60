/*
 * The EdgeProp runtime under Zephyr's ztest (twister: tests/zephyr/testcase.yaml).
 * The checks themselves are golden_check.c, shared with the native build of
 * tests/test_rtos.py; here they run on the target with Zephyr's libc and FPU setup.
 */
#include <zephyr/ztest.h>

#include "golden_check.h"

static char msg[160];

ZTEST(edgeprop_runtime, test_sgd_steps_match_the_numpy_reference)
{
	zassert_equal(ep_golden_train(msg, sizeof msg), 0, "%s", msg);
}

ZTEST(edgeprop_runtime, test_corrupt_blobs_are_refused)
{
	zassert_equal(ep_golden_corrupt_refused(msg, sizeof msg), 0, "%s", msg);
}

ZTEST_SUITE(edgeprop_runtime, NULL, NULL, NULL, NULL, NULL);
