/*
 * l3.c — the posix port's L3 memory: a plain array of EP_L3_BYTES (the native
 * board's [runtime] l3_bytes), so models that spill to L3 run natively too.
 */
#include "ep_port.h"

#if EP_L3_BYTES > 0
#include "ep_l3_mapped.h"
#else
#include "ep_l3_none.h"
#endif
