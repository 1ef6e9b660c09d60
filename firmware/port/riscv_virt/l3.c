/*
 * l3.c — L3 memory on the RISC-V boards run under QEMU virt (gap9). GAP9's L3 is
 * external HyperRAM reached by uDMA copies (firmware/port/pmsis/l3.c on the chip);
 * here it is the board's [memory] l3 stretch of DRAM, a memory-mapped array in
 * section .l3 (../ep_l3_mapped.h), which the runtime still only copies from and
 * to. Without [runtime] l3_bytes there is none.
 */
#include "ep_port.h"

#if EP_L3_BYTES > 0
#include "ep_l3_mapped.h"
#else
#include "ep_l3_none.h"
#endif
