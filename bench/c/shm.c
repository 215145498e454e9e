/* C floor over shared memory: two single-producer/single-consumer byte rings in
 * a POSIX shared-memory segment, spin-then-sleep on POSIX named semaphores.
 * ADDR = BASE SPIN_US: the caller picks BASE ("/name") and removes the names
 * too if we die before we do; we create BASE.seg and BASE.{c2s,s2c}.{data,space}
 * exclusively, map/open them and unlink every name before fork(), so nothing
 * named outlives setup (the child inherits the mapping and the semaphores).
 *
 * Same layout and wait strategy as bench/shmring.py (raw Python) and ipcgw's
 * shm transport: a 4096-byte header of 8-byte words, then ring c2s, then ring
 * s2c; ring r's producer words (head, producer-asleep, eof) on the 128-byte
 * line at word (1 + 2r) * 16, its consumer words (tail, consumer-asleep) on the
 * next line. A side with nothing to do spins SPIN_US on the counter (0 when
 * both share one CPU), then sets its asleep flag, passes a seq_cst fence,
 * re-checks and sem_timedwait()s; the other side posts only when it sees the
 * flag after its own fence (Dekker). Payloads larger than the ring stream
 * through it in RING/4 pieces. The end marker is the eof word, after the last
 * head. */
#include <fcntl.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include "common.h"

#define HEADER 4096
#define RING ((uint64_t)1 << 20)
#define CHUNK (RING / 4)
#define SLICE_NS 250000000L /* between liveness checks while asleep */

static const char *kinds[4] = {"c2s.data", "c2s.space", "s2c.data", "s2c.space"};
static char names[5][256]; /* seg, then the semaphores in kinds order */
static uint64_t *words;
static char *mem;
static sem_t *sems[4];
static uint64_t spin_ns;
static pid_t parent;

struct side {                /* one ring seen from one end */
    uint64_t *head, *wsleep, *eof, *tail, *rsleep;
    char *data;
    sem_t *data_sem, *space_sem;
    uint64_t pos;            /* our own head (out) or tail (in) */
};
static struct side out, in;

static void unlink_names(void) {
    shm_unlink(names[0]);
    for (int i = 1; i < 5; i++) sem_unlink(names[i]);
}

static void setup_fail(const char *what) {
    int e = errno;
    unlink_names();
    errno = e;
    die(what);
}

static void t_setup(int argc, char **argv) {
    if (argc < 2) { errno = EINVAL; die("shm needs BASE and SPIN_US"); }
    snprintf(names[0], sizeof names[0], "%s.seg", argv[0]);
    for (int i = 0; i < 4; i++) snprintf(names[i + 1], sizeof names[i + 1], "%s.%s", argv[0], kinds[i]);
    spin_ns = strtoull(argv[1], NULL, 10) * 1000u;
    int fd = shm_open(names[0], O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) setup_fail("shm_open");
    if (ftruncate(fd, HEADER + 2 * RING) != 0) setup_fail("ftruncate");
    mem = mmap(NULL, HEADER + 2 * RING, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) setup_fail("mmap");
    close(fd);
    for (int i = 0; i < 4; i++) {
        sems[i] = sem_open(names[i + 1], O_CREAT | O_EXCL, 0600, 0);
        if (sems[i] == SEM_FAILED) setup_fail("sem_open");
    }
    unlink_names(); /* both processes come from fork(): no one needs the names any more */
    words = (uint64_t *)mem;
}

static void bind_side(struct side *s, int ring) {
    uint64_t *p = words + (1 + 2 * ring) * 16;
    s->head = p; s->wsleep = p + 1; s->eof = p + 2;
    s->tail = p + 16; s->rsleep = p + 17;
    s->data = mem + HEADER + (uint64_t)ring * RING;
    s->data_sem = sems[2 * ring];
    s->space_sem = sems[2 * ring + 1];
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

/* A peer that died cannot post: the child notices its parent is gone, the
 * parent reaps a dead child (it dies right after, so common.h's waitpid is moot). */
static void check_peer(void) {
    if (is_child ? getppid() != parent : waitpid(-1, NULL, WNOHANG) > 0) {
        errno = EPIPE;
        die("shm peer gone");
    }
}

static void sleep_on(sem_t *sem) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += SLICE_NS;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    if (sem_timedwait(sem, &ts) != 0 && errno != ETIMEDOUT && errno != EINTR) die("sem_timedwait");
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
            sleep_on(in.data_sem);
            eof = load(in.eof);
            head = load(in.head);
        }
        store(in.rsleep, 0);
        if (head != tail || eof) return head;
        check_peer();
    }
}

/* Until the reader has freed room below head. */
static void wait_space(uint64_t head) {
    if (spin_until_changed(out.tail, head - RING)) return;
    for (;;) {
        store(out.wsleep, 1);
        fence();
        if (head - load(out.tail) >= RING) sleep_on(out.space_sem);
        store(out.wsleep, 0);
        if (head - load(out.tail) < RING) return;
        check_peer();
    }
}

static void publish(struct side *s, uint64_t *word, uint64_t v) {
    store(word, v);
    fence(); /* the store above before the asleep load below */
    if (load(s->rsleep)) sem_post(s->data_sem);
}

static void tx(const char *buf, size_t n) {
    uint64_t head = out.pos;
    while (n) {
        uint64_t room = RING - (head - load(out.tail));
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
        publish(&out, out.head, head);
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
    if (load(in.wsleep)) sem_post(in.space_sem);
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

static void tx_end(void) { publish(&out, out.eof, 1); }
