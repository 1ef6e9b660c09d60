/*
 * The ztest suite's checks (../src/golden_check.c) as a host program, so that
 * tests/test_rtos.py runs them without Zephyr: prints each check and exits 1 if
 * any fails.
 */
#include <stdio.h>

#include "golden_check.h"

int main(void) {
    char msg[160];
    int bad = 0;
    int r = ep_golden_train(msg, sizeof msg);
    printf("train: %s\n", msg);
    bad |= r;
    r = ep_golden_corrupt_refused(msg, sizeof msg);
    printf("corrupt: %s\n", msg);
    bad |= r;
    return bad ? 1 : 0;
}
