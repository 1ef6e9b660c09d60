/* l3.c — STM32F4 boards have no L3 tier: size 0 (../ep_l3_none.h). */
#include "ep_l3_none.h"
