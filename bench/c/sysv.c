/* C floor over two System V message queues (made by the caller:
 * ADDR = c2s-msqid s2c-msqid). Messages of at most msgmax bytes, type 1;
 * the end marker is a zero-length message of type 2. */
#include <sys/ipc.h>
#include <sys/msg.h>
#include "common.h"

static int q_c2s, q_s2c, q_w, q_r;
static size_t chunk;
static struct { long mtype; char mtext[1 << 16]; } m;

static void t_setup(int argc, char **argv) {
    if (argc < 2) { errno = EINVAL; die("sysv needs two msqids"); }
    q_c2s = atoi(argv[0]);
    q_s2c = atoi(argv[1]);
    FILE *f = fopen("/proc/sys/kernel/msgmax", "r");
    unsigned long v = 8192;
    if (f) { if (fscanf(f, "%lu", &v) != 1) v = 8192; fclose(f); }
    chunk = v < sizeof m.mtext ? v : sizeof m.mtext;
}

static void t_open(int child) {
    q_w = child ? q_s2c : q_c2s;
    q_r = child ? q_c2s : q_s2c;
}

static void send_one(const char *buf, size_t n, long type) {
    m.mtype = type;
    memcpy(m.mtext, buf, n);
    while (msgsnd(q_w, &m, n, 0) != 0)
        if (errno != EINTR) die("msgsnd");
}

static ssize_t recv_one(void) {
    for (;;) {
        ssize_t k = msgrcv(q_r, &m, sizeof m.mtext, 0, 0);
        if (k >= 0) return m.mtype == 2 ? -1 : k;
        if (errno != EINTR) die("msgrcv");
    }
}

static void tx(const char *buf, size_t n) {
    do {
        size_t k = n < chunk ? n : chunk;
        send_one(buf, k, 1);
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
        memcpy(buf + got, m.mtext, (size_t)k);
        got += (size_t)k;
    }
    return 1;
}

static size_t rx_some(char *buf, size_t cap) {
    (void)cap;
    ssize_t k = recv_one();
    if (k <= 0) return 0;
    memcpy(buf, m.mtext, (size_t)k);
    return (size_t)k;
}

static void tx_end(void) { send_one("", 0, 2); }
