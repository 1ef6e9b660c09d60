/*
 * pmsis.h — what the GAP SDK's pmsis.h gives an application, for the compile check
 * of firmware/port/pmsis (tests/test_pmsis_port.py) against the PMSIS API headers
 * alone (GreenWaves' pmsis_api: declarations). The SDK's implementation adds the
 * chip's inline functions declared at the end; nothing here links or runs.
 */
#ifndef EP_PMSIS_SHIM_H
#define EP_PMSIS_SHIM_H

#include <stddef.h>
#include <string.h>

#include "pmsis/pmsis_types.h"
#include "pmsis/device.h"
#include "pmsis/task.h"
#include "pmsis/rtos/os_frontend_api/os.h"
#include "pmsis/drivers/uart.h"
#include "pmsis/drivers/perf.h"
#include "pmsis/cluster/cl_pmsis_types.h"
#include "pmsis/cluster/cluster_sync/fc_to_cl_delegate.h"
#include "pmsis/cluster/cluster_team/cl_team.h"

/* the implementation side (the SDK's chip and OS headers): declarations with the
 * SDK's names, and an opaque stand-in for the task structure it defines */
struct pi_task {
    uint32_t implem[16];
};
int pi_core_id(void);
int pi_is_fc(void);
void pi_yield(void);
enum { PI_PERF_CYCLES = 0 };

#endif
