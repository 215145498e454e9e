/* C floor over shared memory: ipcgw's shm layout 3 with nothing on top.
 * ADDR = SPIN_US. Like the transport: one sealed-size memfd segment holding
 * two single-producer/single-consumer byte rings, and four eventfds
 * ({c2s,s2c}.{data,space}) to sleep on; no names at all (both processes come
 * from fork(), so they share the mapping and the fds; nothing outlives us).
 *
 * Layout (ipcgw/transports/shm.py, LAYOUT 3): a 4096-byte header of 8-byte
 * words, then ring c2s, then ring s2c. Ring r's head, writer-asleep, tail and
 * reader-asleep words each on their own 128-byte line, at word
 * (1 + 4r) * 16 + {0, 16, 32, 48}. Words 2 (client) and 3 (server) are the
 * closed flags; here they are the end marker, stored after the last head.
 *
 * Wait strategy, as the transport's: a side with nothing to do spins SPIN_US
 * on the counter (0 when both share one CPU), then sets its asleep flag,
 * passes a seq_cst fence, re-checks and poll()s its eventfd for 0.25 s at
 * most; the other side writes the eventfd only when it sees the flag after its
 * own fence (Dekker). The writer re-reads the reader's tail only when its
 * cached copy says the ring is full. Payloads larger than a quarter ring are
 * published in RING/4 pieces. */
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include "common.h"

#define HEADER 4096
#define RING ((uint64_t)1 << 20)
#define CHUNK (RING / 4)
#define LINE 16 /* words per 128 bytes */
#define SLICE_MS 250 /* between liveness checks while asleep */

static uint64_t *words;
static char *mem;
static int efd[4]; /* c2s.data, c2s.space, s2c.data, s2c.space */
static uint64_t spin_ns;
static pid_t parent;

struct side {                /* one ring seen from one end */
    uint64_t *head, *wsleep, *tail, *rsleep, *eof;
    char *data;
    int data_fd, space_fd;
    uint64_t pos;            /* our own head (out) or tail (in) */
    uint64_t seen;           /* out: the reader's tail as last read */
};
static struct side out, in;

static void t_setup(int argc, char **argv) {
    if (argc < 1) { errno = EINVAL; die("shm needs SPIN_US"); }
    spin_ns = strtoull(argv[0], NULL, 10) * 1000u;
    int fd = memfd_create("ipcgw-bench-c", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) die("memfd_create");
    if (ftruncate(fd, HEADER + 2 * RING) != 0) die("ftruncate");
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) die("F_ADD_SEALS");
    mem = mmap(NULL, HEADER + 2 * RING, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) die("mmap");
    close(fd);
    for (int i = 0; i < 4; i++)
        if ((efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) die("eventfd");
    words = (uint64_t *)mem;
}

static void bind_side(struct side *s, int ring) {
    uint64_t *p = words + (1 + 4 * ring) * LINE;
    s->head = p; s->wsleep = p + LINE; s->tail = p + 2 * LINE; s->rsleep = p + 3 * LINE;
    s->eof = words + 2 + ring; /* ring 0 is the client's output: its closed flag is word 2 */
    s->data = mem + HEADER + (uint64_t)ring * RING;
    s->data_fd = efd[2 * ring];
    s->space_fd = efd[2 * ring + 1];
    s->pos = s->seen = 0;
}

static void t_open(int child) {
    bind_side(&out, child ? 1 : 0);
    bind_side(&in, child ? 0 : 1);
    parent = getppid();
}

static inline uint64_t load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void post(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0 && errno != EAGAIN) die("eventfd write");
}

/* A peer that died cannot post: the child notices its parent is gone, the
 * parent reaps a dead child (it dies right after, so common.h's waitpid is moot). */
static void check_peer(void) {
    if (is_child ? getppid() != parent : waitpid(-1, NULL, WNOHANG) > 0) {
        errno = EPIPE;
        die("shm peer gone");
    }
}

static void sleep_on(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, SLICE_MS);
    if (r < 0 && errno != EINTR) die("poll");
    uint64_t v;
    if (r > 0 && read(fd, &v, sizeof v) < 0 && errno != EAGAIN) die("eventfd read");
}

/* Spin up to spin_ns for *p != v; 1 if it changed. */
static int spin_until_changed(const uint64_t *p, uint64_t v) {
    if (!spin_ns) return 0;
    uint64_t end = now_ns() + spin_ns;
    do {
        for (int i = 0; i < 64; i++) {
            if (load(p) != v) return 1;
            relax();
        }
    } while (now_ns() < end);
    return 0;
}

/* Until the incoming head moves past tail (returns it) or the end marker (returns tail). */
static uint64_t wait_data(uint64_t tail) {
    if (spin_until_changed(in.head, tail)) return load(in.head);
    for (;;) {
        store(in.rsleep, 1);
        fence();
        uint64_t eof = load(in.eof), head = load(in.head); /* eof first: stored after the last head */
        if (head == tail && !eof) {
            sleep_on(in.data_fd);
            eof = load(in.eof);
            head = load(in.head);
        }
        store(in.rsleep, 0);
        if (head != tail || eof) return head;
        check_peer();
    }
}

static int has_room(uint64_t head) {
    out.seen = load(out.tail);
    return head - out.seen < RING;
}

/* Until the reader has freed room below head. */
static void wait_space(uint64_t head) {
    if (spin_until_changed(out.tail, head - RING)) { out.seen = load(out.tail); return; }
    for (;;) {
        store(out.wsleep, 1);
        fence();
        if (!has_room(head)) sleep_on(out.space_fd);
        store(out.wsleep, 0);
        if (has_room(head)) return;
        check_peer();
    }
}

static void publish(uint64_t *word, uint64_t v) {
    store(word, v);
    fence(); /* the store above before the asleep load below */
    if (load(out.rsleep)) post(out.data_fd);
}

static void tx(const char *buf, size_t n) {
    uint64_t head = out.pos;
    while (n) {
        uint64_t room = RING - (head - out.seen);
        if (room < n && room < CHUNK) { /* the cached tail says full: re-read it */
            has_room(head);
            room = RING - (head - out.seen);
        }
        if (!room) {
            wait_space(head);
            continue;
        }
        size_t k = n < room ? n : room;
        if (k > CHUNK) k = CHUNK;
        size_t off = head % RING, first = RING - off < k ? RING - off : k;
        memcpy(out.data + off, buf, first);
        memcpy(out.data, buf + first, k - first);
        head += k;
        buf += k;
        n -= k;
        publish(out.head, head);
    }
    out.pos = head;
}

/* Up to cap bytes that are there (waiting for some); 0 at the end marker. */
static size_t rx_some(char *buf, size_t cap) {
    uint64_t tail = in.pos, head = load(in.head);
    if (head == tail && (head = wait_data(tail)) == tail) return 0;
    size_t k = head - tail < cap ? head - tail : cap;
    size_t off = tail % RING, first = RING - off < k ? RING - off : k;
    memcpy(buf, in.data + off, first);
    memcpy(buf + first, in.data, k - first);
    in.pos = tail + k;
    store(in.tail, in.pos);
    fence(); /* the tail store before the writer-asleep load */
    if (load(in.wsleep)) post(in.space_fd);
    return k;
}

static int rx(char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        size_t k = rx_some(buf + got, n - got);
        if (!k) {
            if (got) { errno = EPROTO; die("end inside a message"); }
            return 0;
        }
        got += k;
    }
    return 1;
}

static void tx_end(void) { publish(out.eof, 1); }
