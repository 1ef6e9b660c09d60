/*
 * nv.c — non-volatile storage on STM32F4 boards.
 *
 *  - Under QEMU (netduinoplus2, EP_SEMIHOSTING): QEMU models no flash
 *    controller, so the storage is a host file reached through Arm semihosting
 *    (../ep_nv_semihost.h) with flash semantics (../ep_nv_file.h).
 *  - On hardware with STM32_NV_FIRST_SECTOR set in the board's [port_settings]:
 *    STM32_NV_SECTORS uniform sectors of STM32_NV_SECTOR_BYTES at STM32_NV_BASE,
 *    erased and programmed through the flash interface (RM0390 section 3:
 *    unlock with KEY1/KEY2, sector erase with SER/SNB/STRT, byte programming with
 *    PG and PSIZE x8, which is valid at any supply voltage). One page = one
 *    sector. The CPU stalls while the flash it runs from is busy; nothing runs
 *    from interrupts, so that is harmless. If the program image reaches into the
 *    storage sectors, the storage reports size 0 rather than erase the code.
 *    Written from the reference manual and built; not run on a board here.
 *  - Otherwise: no storage (size 0; checkpoints are refused with that reason).
 */
#include <stdint.h>
#include <string.h>

#include "ep_port.h"

#if defined(EP_SEMIHOSTING)
static intptr_t semihost_call(uintptr_t op, void *args) {
    register uintptr_t r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return (intptr_t)r0;
}
#include "ep_nv_semihost.h"
#include "ep_nv_file.h"

#elif defined(STM32_NV_FIRST_SECTOR)

#define FLASH_REG(off) (*(volatile uint32_t *)(uintptr_t)(0x40023C00u + (off)))
enum {
    FLASH_KEYR = 0x04,
    FLASH_SR = 0x0C,
    FLASH_CR = 0x10,
    FLASH_KEY1 = 0x45670123u,
    FLASH_KEY2 = 0xCDEF89ABu,
    CR_PG = 1u << 0,
    CR_SER = 1u << 1,
    CR_SNB_SHIFT = 3,
    CR_SNB_MASK = 0xFu << 3,
    CR_PSIZE_MASK = 3u << 8,   /* 00: x8 */
    CR_STRT = 1u << 16,
    CR_LOCK = 1u << 31,
    SR_BSY = 1u << 16,
    SR_ERRORS = 0xF2u,         /* OPERR, WRPERR, PGAERR, PGPERR, PGSERR */
};
#define NV_BYTES ((uint32_t)STM32_NV_SECTORS * STM32_NV_SECTOR_BYTES)

/* End of the program image in flash (the .data initialisers come last): armv7m/link.ld.in. */
extern const uint8_t __data_load[], __data_start[], __data_end[];

static int nv_usable(void) {
    uintptr_t image_end = (uintptr_t)__data_load + (uintptr_t)(__data_end - __data_start);
    return image_end <= (uintptr_t)STM32_NV_BASE;
}

static int flash_wait(void) {
    while (FLASH_REG(FLASH_SR) & SR_BSY) {
    }
    uint32_t sr = FLASH_REG(FLASH_SR);
    FLASH_REG(FLASH_SR) = sr & SR_ERRORS; /* write 1 to clear */
    return sr & SR_ERRORS ? -1 : 0;
}

static void flash_unlock(void) {
    if (FLASH_REG(FLASH_CR) & CR_LOCK) {
        FLASH_REG(FLASH_KEYR) = FLASH_KEY1;
        FLASH_REG(FLASH_KEYR) = FLASH_KEY2;
    }
}

static void flash_lock(void) { FLASH_REG(FLASH_CR) |= CR_LOCK; }

uint32_t ep_port_nv_size(void) { return nv_usable() ? NV_BYTES : 0; }

uint32_t ep_port_nv_page_bytes(void) { return nv_usable() ? STM32_NV_SECTOR_BYTES : 0; }

int ep_port_nv_read(uint32_t off, uint8_t *buf, uint32_t len) {
    if (!nv_usable() || off > NV_BYTES || len > NV_BYTES - off) {
        return -1;
    }
    memcpy(buf, (const void *)(uintptr_t)(STM32_NV_BASE + off), len);
    return 0;
}

int ep_port_nv_erase(uint32_t page) {
    if (!nv_usable() || page >= STM32_NV_SECTORS) {
        return -1;
    }
    flash_unlock();
    int rc = flash_wait();
    uint32_t cr = FLASH_REG(FLASH_CR) & ~(CR_SNB_MASK | CR_PSIZE_MASK | CR_PG);
    FLASH_REG(FLASH_CR) = cr | CR_SER | ((uint32_t)(STM32_NV_FIRST_SECTOR + page) << CR_SNB_SHIFT);
    FLASH_REG(FLASH_CR) |= CR_STRT;
    rc |= flash_wait();
    FLASH_REG(FLASH_CR) &= ~(CR_SER | CR_SNB_MASK);
    flash_lock();
    return rc ? -1 : 0;
}

int ep_port_nv_write(uint32_t off, const uint8_t *buf, uint32_t len) {
    if (!nv_usable() || off > NV_BYTES || len > NV_BYTES - off) {
        return -1;
    }
    flash_unlock();
    int rc = flash_wait();
    FLASH_REG(FLASH_CR) = (FLASH_REG(FLASH_CR) & ~(CR_PSIZE_MASK | CR_SER)) | CR_PG;
    volatile uint8_t *dst = (volatile uint8_t *)(uintptr_t)(STM32_NV_BASE + off);
    for (uint32_t i = 0; i < len && rc == 0; i++) {
        if (buf[i] != 0xFF) { /* programming 0xFF changes nothing */
            dst[i] = (uint8_t)(dst[i] & buf[i]);
            rc = flash_wait();
        }
    }
    FLASH_REG(FLASH_CR) &= ~CR_PG;
    flash_lock();
    return rc ? -1 : 0;
}

#else
#include "ep_nv_none.h"
#endif
