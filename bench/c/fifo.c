/* C floor over two FIFOs (made by the caller: ADDR = c2s-path s2c-path),
 * grown to 1 MiB like ipcgw's fifo transport and the raw Python reference. */
#include <fcntl.h>
#include "stream.h"

static const char *c2s, *s2c;

static void t_setup(int argc, char **argv) {
    if (argc < 2) { errno = EINVAL; die("fifo needs C2S and S2C paths"); }
    c2s = argv[0];
    s2c = argv[1];
}

static void t_open(int child) {
    /* Same order on both sides (c2s, then s2c), so the blocking opens pair up. */
    if (child) {
        fd_r = open(c2s, O_RDONLY | O_CLOEXEC);
        fd_w = open(s2c, O_WRONLY | O_CLOEXEC);
    } else {
        fd_w = open(c2s, O_WRONLY | O_CLOEXEC);
        fd_r = open(s2c, O_RDONLY | O_CLOEXEC);
        fcntl(fd_w, F_SETPIPE_SZ, 1 << 20);
        fcntl(fd_r, F_SETPIPE_SZ, 1 << 20);
    }
    if (fd_r < 0 || fd_w < 0) die("open fifo");
}

static void tx_end(void) { close(fd_w); fd_w = -1; }
