/* C floor over two POSIX message queues (made by the caller: ADDR = c2s-name
 * s2c-name). Messages of at most the queue's msgsize; the end marker is a
 * zero-length message. */
#include <fcntl.h>
#include <mqueue.h>
#include "common.h"

static const char *n_c2s, *n_s2c;
static mqd_t q_w, q_r;
static size_t msgsize;
static char *tmp;

static void t_setup(int argc, char **argv) {
    if (argc < 2) { errno = EINVAL; die("posixmq needs two queue names"); }
    n_c2s = argv[0];
    n_s2c = argv[1];
}

static void t_open(int child) {
    q_w = mq_open(child ? n_s2c : n_c2s, O_WRONLY);
    q_r = mq_open(child ? n_c2s : n_s2c, O_RDONLY);
    if (q_w == (mqd_t)-1 || q_r == (mqd_t)-1) die("mq_open");
    struct mq_attr a;
    if (mq_getattr(q_r, &a) != 0) die("mq_getattr");
    msgsize = (size_t)a.mq_msgsize;
    tmp = malloc(msgsize);
    if (!tmp) die("malloc");
}

static void send_one(const char *buf, size_t n) {
    while (mq_send(q_w, buf, n, 0) != 0)
        if (errno != EINTR) die("mq_send");
}

static ssize_t recv_one(void) {
    for (;;) {
        ssize_t k = mq_receive(q_r, tmp, msgsize, NULL);
        if (k >= 0) return k == 0 ? -1 : k;
        if (errno != EINTR) die("mq_receive");
    }
}

static void tx(const char *buf, size_t n) {
    do {
        size_t k = n < msgsize ? n : msgsize;
        send_one(buf, k);
        buf += k;
        n -= k;
    } while (n);
}

static int rx(char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t k = recv_one();
        if (k < 0) {
            if (got) { errno = EPROTO; die("end inside a message"); }
            return 0;
        }
        memcpy(buf + got, tmp, (size_t)k);
        got += (size_t)k;
    }
    return 1;
}

static size_t rx_some(char *buf, size_t cap) {
    (void)cap;
    ssize_t k = recv_one();
    if (k <= 0) return 0;
    memcpy(buf, tmp, (size_t)k);
    return (size_t)k;
}

static void tx_end(void) { send_one("", 0); }
