/* Byte-stream transports (sockets, FIFOs): the file descriptors each side
 * reads and writes, and exact reads that see EOF as the end marker. */
#include "common.h"

static int fd_r = -1, fd_w = -1;

static void tx(const char *buf, size_t n) {
    while (n) {
        ssize_t k = write(fd_w, buf, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        buf += k;
        n -= (size_t)k;
    }
}

static int rx(char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd_r, buf + got, n - got);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (k == 0) {
            if (got) { errno = EPROTO; die("EOF inside a message"); }
            return 0;
        }
        got += (size_t)k;
    }
    return 1;
}

static size_t rx_some(char *buf, size_t cap) {
    for (;;) {
        ssize_t k = read(fd_r, buf, cap);
        if (k >= 0) return (size_t)k;
        if (errno != EINTR) die("read");
    }
}
