/* posix_nv.h — between the posix port's port.c (command line) and nv.c (storage). */
#ifndef POSIX_NV_H
#define POSIX_NV_H

/** The file `--nv FILE` named: the storage of ep_port_nv_*(); NULL = none. */
void ep_posix_nv_path(const char *path);

#endif /* POSIX_NV_H */
