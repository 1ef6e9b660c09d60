/*
 * nv.c — non-volatile storage on GAP9 hardware: none yet. The EVK's external
 * flash (pi_flash on the SDK's HyperFlash/octo-SPI driver) would hold the A/B
 * checkpoint slots of firmware/app/ep_ckpt.c; until that driver is wired, the
 * device reports no storage (HELLO) and CKPT_SAVE answers that it has none.
 */
#include "../ep_nv_none.h"
