/*
 * ep_nv_none.h — the non-volatile storage API of a build without storage: size 0,
 * every access fails, so the device refuses checkpoints (NO_STORAGE) instead of
 * pretending. Included by a port's nv.c in place of a real implementation.
 */
#include <stdint.h>

#include "ep_port.h"

uint32_t ep_port_nv_size(void) { return 0; }
uint32_t ep_port_nv_page_bytes(void) { return 0; }
int ep_port_nv_read(uint32_t off, uint8_t *buf, uint32_t len) { (void)off, (void)buf, (void)len; return -1; }
int ep_port_nv_erase(uint32_t page) { (void)page; return -1; }
int ep_port_nv_write(uint32_t off, const uint8_t *buf, uint32_t len) { (void)off, (void)buf, (void)len; return -1; }
