/*
 * port.c — ep_port.h as a host program: the serial line is a TCP connection.
 *
 *   edgeprop --listen HOST:PORT [--nv FILE]
 *
 * `--nv FILE` is the device's non-volatile storage (nv.c): the stored model
 * and checkpoints survive a restart of the program, like flash survives a reset.
 *
 * Like QEMU's `-chardev socket,server=on,wait=on`, it listens on HOST:PORT and
 * starts once the first host attaches (so the boot HELLO reaches it). When that
 * host disconnects it waits for the next one; the device state (installed
 * model, counters) lives on. Cycles are CLOCK_MONOTONIC time at EP_CPU_HZ.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ep_port.h"
#include "posix_nv.h"

enum {
    EXIT_USAGE = 2,
    IDLE_POLL_MS = 10,
    RX_CHUNK = 4096,
};

#define NS_PER_S 1000000000L

static int listen_fd = -1;
static int client_fd = -1;
static struct timespec t_start;
static uint8_t rx_buf[RX_CHUNK];
static size_t rx_pos, rx_len;

static _Noreturn void die(const char *what, const char *detail) {
    fprintf(stderr, "edgeprop: %s: %s\n", what, detail);
    exit(EXIT_FAILURE);
}

static _Noreturn void usage(void) {
    fprintf(stderr, "usage: edgeprop --listen HOST:PORT [--nv FILE]\n");
    exit(EXIT_USAGE);
}

/* Bind and listen on "HOST:PORT" ("[v6addr]:PORT" also works). */
static int listen_on(const char *where) {
    char host[256];
    const char *colon = strrchr(where, ':');
    size_t hlen = colon ? (size_t)(colon - where) : 0;
    if (!colon || hlen >= sizeof host || colon[1] == '\0') {
        usage();
    }
    memcpy(host, where, hlen);
    host[hlen] = '\0';
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        memmove(host, host + 1, hlen - 2);
        host[hlen - 2] = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai;
    int rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &ai);
    if (rc != 0) {
        die(where, gai_strerror(rc));
    }
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1) != 0) {
        die(where, strerror(errno));
    }
    freeaddrinfo(ai);
    return fd;
}

/* Block until a host attaches. */
static void accept_client(void) {
    do {
        client_fd = accept(listen_fd, NULL, NULL);
    } while (client_fd < 0 && errno == EINTR);
    if (client_fd < 0) {
        die("accept", strerror(errno));
    }
    int on = 1;
    setsockopt(client_fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

static void drop_client(void) {
    close(client_fd);
    client_fd = -1;
    rx_pos = rx_len = 0;
}

void ep_port_init(int argc, char **argv) {
    const char *where = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            where = argv[++i];
        } else if (strcmp(argv[i], "--nv") == 0 && i + 1 < argc) {
            ep_posix_nv_path(argv[++i]);
        } else {
            usage();
        }
    }
    if (!where) {
        usage();
    }
    signal(SIGPIPE, SIG_IGN); /* a vanished host shows up as EPIPE, not as a signal */
    listen_fd = listen_on(where);
    fprintf(stderr, "edgeprop: %s firmware listening on %s\n", EP_BOARD_NAME, where);
    accept_client();
    clock_gettime(CLOCK_MONOTONIC, &t_start);
}

int ep_port_getc(void) {
    if (rx_pos == rx_len) {
        if (client_fd < 0) {
            return -1;
        }
        struct pollfd p = {.fd = client_fd, .events = POLLIN};
        if (poll(&p, 1, 0) <= 0) {
            return -1;
        }
        ssize_t n = read(client_fd, rx_buf, sizeof rx_buf);
        if (n <= 0) {
            if (n == 0 || errno != EINTR) {
                drop_client();
            }
            return -1;
        }
        rx_pos = 0;
        rx_len = (size_t)n;
    }
    return rx_buf[rx_pos++];
}

void ep_port_write(const uint8_t *buf, uint32_t len) {
    while (len > 0 && client_fd >= 0) {
        ssize_t n = write(client_fd, buf, len);
        if (n < 0) {
            if (errno != EINTR) {
                drop_client();
            }
            continue;
        }
        buf += n;
        len -= (uint32_t)n;
    }
}

uint64_t ep_port_cycles(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    int64_t s = (int64_t)(t.tv_sec - t_start.tv_sec);
    int64_t ns = t.tv_nsec - t_start.tv_nsec;
    if (ns < 0) {
        s--;
        ns += NS_PER_S;
    }
    return (uint64_t)s * EP_CPU_HZ + (uint64_t)ns * EP_CPU_HZ / NS_PER_S;
}

void ep_port_idle(void) {
    if (client_fd < 0) {
        accept_client();
        return;
    }
    struct pollfd p = {.fd = client_fd, .events = POLLIN};
    poll(&p, 1, IDLE_POLL_MS);
}

_Noreturn void ep_port_exit(int code) {
    exit(code);
}
