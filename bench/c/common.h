/* The C floor: one ping-pong or one-way throughput run between two processes.
 *
 * Each transport file (unix.c, tcp.c, fifo.c, sysv.c, posixmq.c) defines the
 * six functions declared below and includes this header, which holds main():
 *
 *   prog pp|tp SIZE BUDGET_MS CLIENT_CPU SERVER_CPU WORK_NS [ADDR...]
 *
 * The parent is the client, a forked child the echo server; each pins itself.
 * WORK_NS (pp only): the echo busy-waits this long on the clock between
 * receiving a message and echoing it. Why: on a VM a vCPU that goes idle while
 * waiting costs a wake-up (an exit and an IPI) on the next message, so a
 * cross-CPU round trip can get *faster* when the echo works a little; the
 * bench takes the floor as the best (p50 - WORK_NS) over a few WORK_NS.
 * The protocol is the one of bench/echo.py (raw Python) so both references
 * do the same syscalls: the child says it is ready with one message, echoes
 * SIZE-byte messages (pp) or counts bytes (tp) until an end marker (EOF or a
 * zero-length queue message), then answers the byte count in 8 bytes.
 * Output: one JSON line with the latency histogram in bench/hist.py's buckets.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* compiled with -D_GNU_SOURCE: transport headers come first */
#endif
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SUB_BITS 8
#define LINEAR (1 << SUB_BITS)
#define HALF (LINEAR >> 1)
#define NBUCKETS (LINEAR + (64 - SUB_BITS) * HALF)

static uint64_t hist[NBUCKETS];
static int is_child;

/* Per transport: set up before fork (both ends), open the own end, move
 * messages.  rx() returns 1 with exactly n bytes, 0 on the end marker. */
static void t_setup(int argc, char **argv);
static void t_open(int child);
static void tx(const char *buf, size_t n);
static int rx(char *buf, size_t n);
static size_t rx_some(char *buf, size_t cap); /* 0 on the end marker */
static void tx_end(void);

static void die(const char *what) {
    fprintf(stderr, "%s: %s: %s\n", is_child ? "child" : "parent", what, strerror(errno));
    _exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity");
}

static int bucket(uint64_t v) {
    if (v < LINEAR) return (int)v;
    int shift = 64 - __builtin_clzll(v) - SUB_BITS;
    return LINEAR + (shift - 1) * HALF + (int)(v >> shift) - HALF;
}

static void put_u64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get_u64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Busy work on the clock: no syscall (vDSO), the CPU stays busy. */
static void busy_ns(uint64_t ns) {
    if (!ns) return;
    uint64_t end = now_ns() + ns;
    while (now_ns() < end) {
    }
}

static void child_main(int mode_pp, size_t size, int report_fd, uint64_t work_ns) {
    size_t cap = size > 65536 ? size : 65536;
    char *buf = malloc(cap);
    if (!buf) die("malloc");
    uint64_t c0 = cpu_ns();
    char ready = 'R';
    tx(&ready, 1);
    uint64_t total = 0;
    if (mode_pp) {
        while (rx(buf, size)) {
            busy_ns(work_ns);
            tx(buf, size);
            total += size;
        }
    } else {
        size_t n;
        while ((n = rx_some(buf, cap)) > 0) total += n;
    }
    char ack[8];
    put_u64(ack, total);
    tx(ack, 8);
    uint64_t used = cpu_ns() - c0;
    if (write(report_fd, &used, sizeof used) != sizeof used) die("write report");
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s pp|tp SIZE BUDGET_MS CLIENT_CPU SERVER_CPU WORK_NS [ADDR...]\n",
                argv[0]);
        return 2;
    }
    int pp = strcmp(argv[1], "pp") == 0;
    size_t size = strtoull(argv[2], NULL, 10);
    uint64_t budget = strtoull(argv[3], NULL, 10) * 1000000u;
    int client_cpu = atoi(argv[4]), server_cpu = atoi(argv[5]);
    uint64_t work_ns = strtoull(argv[6], NULL, 10);
    signal(SIGPIPE, SIG_IGN);
    t_setup(argc - 7, argv + 7);
    int rep[2];
    if (pipe(rep) != 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        is_child = 1;
        close(rep[0]);
        pin(server_cpu);
        t_open(1);
        child_main(pp, size, rep[1], work_ns);
    }
    close(rep[1]);
    pin(client_cpu);
    t_open(0);
    char *buf = malloc(size > 65536 ? size : 65536);
    char *payload = malloc(size);
    if (!buf || !payload) die("malloc");
    for (size_t i = 0; i < size; i++) payload[i] = (char)(i * 131 + 7);
    if (!rx(buf, 1)) die("child not ready");
    uint64_t n = 0, warm = 0, t0, t1 = 0, c0, c1 = 0, lat_min = UINT64_MAX, lat_max = 0;
    if (pp) {
        /* warm-up: a fifth of the budget, at most 200 round trips */
        uint64_t wend = now_ns() + budget / 5;
        do {
            tx(payload, size);
            if (!rx(buf, size)) die("echo ended");
            warm++;
        } while (warm < 200 && now_ns() < wend);
        if (memcmp(buf, payload, size) != 0) { errno = EIO; die("echo differs"); }
        c0 = cpu_ns();
        t0 = now_ns();
        uint64_t end = t0 + budget, a = t0, b;
        do {
            tx(payload, size);
            if (!rx(buf, size)) die("echo ended");
            b = now_ns();
            uint64_t d = b - a;
            hist[bucket(d)]++;
            if (d < lat_min) lat_min = d;
            if (d > lat_max) lat_max = d;
            n++;
            a = now_ns();
        } while (b < end || n < 20);
        t1 = b;
        c1 = cpu_ns();
    } else {
        c0 = cpu_ns();
        t0 = now_ns();
        uint64_t end = t0 + budget;
        int batch = size >= 65536 ? 1 : 16;
        do {
            for (int i = 0; i < batch; i++) tx(payload, size);
            n += batch;
        } while (now_ns() < end);
    }
    tx_end();
    if (!rx(buf, 8)) die("no ack");
    if (!pp) {
        t1 = now_ns();
        c1 = cpu_ns();
        if (get_u64(buf) != n * size) { errno = EIO; die("byte count differs"); }
    }
    uint64_t server_cpu_ns = 0;
    if (read(rep[0], &server_cpu_ns, sizeof server_cpu_ns) != sizeof server_cpu_ns) die("read report");
    int status;
    waitpid(pid, &status, 0);
    printf("{\"n\": %" PRIu64 ", \"warmup\": %" PRIu64 ", \"elapsed_ns\": %" PRIu64
           ", \"client_cpu_ns\": %" PRIu64 ", \"server_cpu_ns\": %" PRIu64
           ", \"min\": %" PRIu64 ", \"max\": %" PRIu64 ", \"hist\": [",
           n, warm, t1 - t0, c1 - c0, server_cpu_ns, n && pp ? lat_min : 0, lat_max);
    int first = 1;
    for (int i = 0; i < NBUCKETS; i++) {
        if (!hist[i]) continue;
        printf("%s[%d, %" PRIu64 "]", first ? "" : ", ", i, hist[i]);
        first = 0;
    }
    printf("]}\n");
    return 0;
}
