/* l3.c — the MPS2/MPS3 boards have no L3 tier: size 0 (../ep_l3_none.h). */
#include "ep_l3_none.h"
