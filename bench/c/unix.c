/* C floor over a connected AF_UNIX stream socket pair (socketpair(2)). */
#include <sys/socket.h>
#include "stream.h"

static int sv[2];

static void t_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
}

static void t_open(int child) {
    close(sv[child ? 0 : 1]);
    fd_r = fd_w = sv[child ? 1 : 0];
}

static void tx_end(void) { shutdown(fd_w, SHUT_WR); }
