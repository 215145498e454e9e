/* C floor over TCP on 127.0.0.1 with TCP_NODELAY. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include "stream.h"

static int lfd;
static struct sockaddr_in addr;

static void t_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind");
    socklen_t len = sizeof addr;
    if (getsockname(lfd, (struct sockaddr *)&addr, &len) != 0) die("getsockname");
    if (listen(lfd, 1) != 0) die("listen");
}

static void t_open(int child) {
    int fd, one = 1;
    if (child) {
        close(lfd);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
    } else {
        fd = accept(lfd, NULL, NULL);
        if (fd < 0) die("accept");
        close(lfd);
    }
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("TCP_NODELAY");
    fd_r = fd_w = fd;
}

static void tx_end(void) { shutdown(fd_w, SHUT_WR); }
