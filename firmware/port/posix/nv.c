/*
 * nv.c — the posix port's non-volatile storage: the file named by `--nv FILE`
 * (port.c hands it over), with flash semantics from ../ep_nv_file.h. Without
 * `--nv` the native build has no storage (checkpoints are refused).
 */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "posix_nv.h"

static const char *nv_path;
static int nv_fd = -1;

void ep_posix_nv_path(const char *path) { nv_path = path; }

static int nvf_open(uint32_t *length) {
    if (!nv_path) {
        return -1;
    }
    nv_fd = open(nv_path, O_RDWR | O_CREAT, 0644);
    struct stat st;
    if (nv_fd < 0 || fstat(nv_fd, &st) != 0) {
        return -1;
    }
    *length = (uint32_t)st.st_size;
    return 0;
}

static int nvf_pread(uint32_t off, uint8_t *buf, uint32_t len) {
    return pread(nv_fd, buf, len, (off_t)off) == (ssize_t)len ? 0 : -1;
}

static int nvf_pwrite(uint32_t off, const uint8_t *buf, uint32_t len) {
    return pwrite(nv_fd, buf, len, (off_t)off) == (ssize_t)len ? 0 : -1;
}

#include "ep_nv_file.h"
