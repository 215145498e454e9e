/* The data path of the shm transport in C: ring copies, counters, barriers, spin.
 *
 * Why C: in CPython each ring operation (a few counter loads and stores, a
 * barrier, a copy) cost ~0.6 us of interpreter work, on the critical path of
 * every round trip; here it is ~0.1 us. The spin also releases the GIL (other
 * threads of the process run meanwhile) and uses `pause`, which leaves the
 * core to its sibling. ipcgw/transports/shm.py owns everything else (segment
 * layout, semaphores, sleeping, close, liveness) and has a pure-Python twin
 * of this object (`PyRings`) used when this module was not built.
 *
 * Memory ordering is C11's: our counters are published with release stores,
 * the peer's read with acquire loads, and a seq_cst fence separates "publish
 * a counter" from "is the peer asleep?" (Dekker; on x86-64 an mfence).
 *
 * Trust: the peer can store anything into the segment at any time (a hostile
 * client owns half of it). Each shared counter is loaded once into a local,
 * checked against the ring size (readable = head - tail, in use = head - tail
 * as the writer sees it: both at most `ring`, unsigned, so a counter that went
 * backwards fails too), and only then used; offsets are taken modulo the ring
 * and every copy is split at the ring's end, so no index leaves the ring. A
 * violation raises shmrings.RingCorrupted (a TransportError): the session ends,
 * the process goes on. Flags are only ever tested for zero.
 *
 * Lifetime: the object holds a buffer export of the mmap, so the mapping
 * cannot be closed under it; shm.py calls release() once no thread is inside
 * put()/get_into() (its CloseOnce bookkeeping), then closes the mmap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define BIG_COPY 65536 /* copies at least this large run without the GIL */

static PyObject *RingCorrupted; /* ipcgw.transports.shmrings.RingCorrupted */

typedef struct {
    PyObject_HEAD
    Py_buffer buf;
    int held;                 /* buf is ours until release() */
    uint64_t *w;              /* the segment as 8-byte words */
    char *obase, *ibase;      /* ring data we produce into / consume from */
    uint64_t ring, chunk;
    Py_ssize_t oh, ot, osleep_r, ih, it, isleep_w, peer_closed; /* word indexes */
    uint64_t head, seen_tail;   /* producer: our head, the reader's tail as last read */
    uint64_t tail, public_tail; /* consumer: our tail, and what the writer has seen of it */
    PyObject *wake_reader;    /* callables, for the rare case the peer sleeps */
    PyObject *wake_writer;
} Rings;

static inline uint64_t load_acq(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_rel(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void copy(char *dst, const char *src, uint64_t n) {
    if (n >= BIG_COPY) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, src, n);
        Py_END_ALLOW_THREADS
    } else {
        memcpy(dst, src, n);
    }
}

static int check_held(Rings *self) {
    if (!self->held) {
        PyErr_SetString(PyExc_ValueError, "shm rings released");
        return -1;
    }
    return 0;
}

static int wake(PyObject *callable) {
    PyObject *r = PyObject_CallNoArgs(callable);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Hand consumed room back to the writer; wake it if it waits for room. */
static int publish_tail(Rings *self, uint64_t tail) {
    self->public_tail = tail;
    store_rel(&self->w[self->it], tail);
    full_fence();
    if (__atomic_load_n(&self->w[self->isleep_w], __ATOMIC_RELAXED))
        return wake(self->wake_writer);
    return 0;
}

/* Re-read the reader's tail; it must be at most a ring behind our head. */
static int read_tail(Rings *self) {
    uint64_t t = load_acq(&self->w[self->ot]); /* once: the peer may change it any time */
    if (self->head - t > self->ring) {
        PyErr_Format(RingCorrupted,
                     "shm peer corrupted the ring: its tail %llu is not within the %llu-byte ring "
                     "behind our head %llu (ending this session)",
                     (unsigned long long)t, (unsigned long long)self->ring,
                     (unsigned long long)self->head);
        return -1;
    }
    self->seen_tail = t;
    return 0;
}

static int Rings_init(Rings *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"segment", "obase", "ibase", "ring", "words", "chunk",
                             "wake_reader", "wake_writer", NULL};
    PyObject *segment, *wake_reader, *wake_writer;
    Py_ssize_t obase, ibase, ring, chunk;
    Py_ssize_t oh, ot, osleep_r, ih, it, isleep_w, peer_closed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onnn(nnnnnnn)nOO", kwlist, &segment, &obase,
                                     &ibase, &ring, &oh, &ot, &osleep_r, &ih, &it, &isleep_w,
                                     &peer_closed, &chunk, &wake_reader, &wake_writer))
        return -1;
    if (self->held) {
        PyErr_SetString(PyExc_TypeError, "Rings are initialised once");
        return -1;
    }
    if (!PyCallable_Check(wake_reader) || !PyCallable_Check(wake_writer)) {
        PyErr_SetString(PyExc_TypeError, "wake_reader and wake_writer must be callable");
        return -1;
    }
    if (PyObject_GetBuffer(segment, &self->buf, PyBUF_WRITABLE) < 0)
        return -1;
    self->held = 1;
    Py_ssize_t words = self->buf.len / 8;
    Py_ssize_t idx[] = {oh, ot, osleep_r, ih, it, isleep_w, peer_closed};
    int bad = ring <= 0 || chunk <= 0 || obase < 0 || ibase < 0 ||
              obase + ring > self->buf.len || ibase + ring > self->buf.len ||
              ((uintptr_t)self->buf.buf % 8) != 0;
    for (size_t i = 0; i < sizeof idx / sizeof idx[0]; i++)
        bad |= idx[i] < 0 || idx[i] >= words;
    if (bad) {
        PyBuffer_Release(&self->buf);
        self->held = 0;
        PyErr_SetString(PyExc_ValueError, "ring geometry does not fit the segment");
        return -1;
    }
    self->w = (uint64_t *)self->buf.buf;
    self->obase = (char *)self->buf.buf + obase;
    self->ibase = (char *)self->buf.buf + ibase;
    self->ring = (uint64_t)ring;
    self->chunk = (uint64_t)chunk;
    self->oh = oh; self->ot = ot; self->osleep_r = osleep_r;
    self->ih = ih; self->it = it; self->isleep_w = isleep_w;
    self->peer_closed = peer_closed;
    self->head = load_acq(&self->w[oh]);
    self->seen_tail = load_acq(&self->w[ot]);
    self->tail = self->public_tail = load_acq(&self->w[it]);
    if (self->head - self->seen_tail > self->ring) /* no room: put() re-reads and checks */
        self->seen_tail = self->head - self->ring;
    Py_INCREF(wake_reader);
    Py_XSETREF(self->wake_reader, wake_reader);
    Py_INCREF(wake_writer);
    Py_XSETREF(self->wake_writer, wake_writer);
    return 0;
}

PyDoc_STRVAR(put_doc,
"put(data) -> int\n\n"
"Copy as much of data as fits (at most a chunk) into the outgoing ring and\n"
"publish it; wake the reader if it sleeps. Bytes written: 0 when the ring is\n"
"full, -1 when the peer has closed (nothing written). RingCorrupted when the\n"
"reader's tail is not within a ring behind our head.");

static PyObject *Rings_put(Rings *self, PyObject *data) {
    if (check_held(self) < 0)
        return NULL;
    if (__atomic_load_n(&self->w[self->peer_closed], __ATOMIC_RELAXED))
        return PyLong_FromLong(-1);
    Py_buffer b;
    if (PyObject_GetBuffer(data, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t n = (uint64_t)b.len, ring = self->ring, head = self->head;
    uint64_t room = ring - (head - self->seen_tail); /* seen_tail was checked */
    if (n > room) {
        if (read_tail(self) < 0) {
            PyBuffer_Release(&b);
            return NULL;
        }
        room = ring - (head - self->seen_tail);
    }
    if (n > room)
        n = room;
    if (n > self->chunk)
        n = self->chunk;
    if (n) {
        uint64_t off = head % ring, first = ring - off;
        if (first >= n) {
            copy(self->obase + off, b.buf, n);
        } else {
            copy(self->obase + off, b.buf, first);
            copy(self->obase, (const char *)b.buf + first, n - first);
        }
        self->head = head + n;
        store_rel(&self->w[self->oh], head + n);
        full_fence();
        if (__atomic_load_n(&self->w[self->osleep_r], __ATOMIC_RELAXED) &&
            wake(self->wake_reader) < 0) {
            PyBuffer_Release(&b);
            return NULL;
        }
    }
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(n);
}

PyDoc_STRVAR(get_into_doc,
"get_into(buf, spin_ns) -> int\n\n"
"Copy what is readable in the incoming ring into buf (as much as fits), waiting\n"
"up to spin_ns for it (busy, without the GIL); 0 when nothing came. First hands\n"
"the room consumed by the previous call back to the writer (deferred so that in\n"
"a request/reply exchange it happens while the peer works); more than a chunk\n"
"at once goes back at once. RingCorrupted when the writer's head is more than a\n"
"ring past our tail (or behind it).");

static PyObject *Rings_get_into(Rings *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get_into(buf, spin_ns) takes 2 arguments");
        return NULL;
    }
    if (check_held(self) < 0)
        return NULL;
    long long spin_ns = PyLong_AsLongLong(args[1]);
    if (spin_ns == -1 && PyErr_Occurred())
        return NULL;
    uint64_t tail = self->tail;
    if (tail != self->public_tail && publish_tail(self, tail) < 0)
        return NULL;
    uint64_t head = load_acq(&self->w[self->ih]);
    if (head == tail && spin_ns > 0) {
        const uint64_t *hp = &self->w[self->ih];
        Py_BEGIN_ALLOW_THREADS
        uint64_t end = now_ns() + (uint64_t)spin_ns;
        unsigned i = 0;
        while ((head = load_acq(hp)) == tail) {
            cpu_relax();
            if ((++i & 31) == 0 && now_ns() > end)
                break;
        }
        Py_END_ALLOW_THREADS
    }
    if (head == tail)
        return PyLong_FromLong(0);
    uint64_t n = head - tail, ring = self->ring;
    if (n > ring) {
        PyErr_Format(RingCorrupted,
                     "shm peer corrupted the ring: its head %llu is %llu bytes past our tail %llu, "
                     "more than the %llu-byte ring (ending this session)",
                     (unsigned long long)head, (unsigned long long)n, (unsigned long long)tail,
                     (unsigned long long)ring);
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_WRITABLE) < 0)
        return NULL;
    if ((uint64_t)b.len < n)
        n = (uint64_t)b.len;
    uint64_t off = tail % ring, first = ring - off;
    char *dst = b.buf;
    if (first >= n) {
        copy(dst, self->ibase + off, n);
    } else {
        copy(dst, self->ibase + off, first);
        copy(dst + first, self->ibase, n - first);
    }
    PyBuffer_Release(&b);
    self->tail = tail + n;
    if (n > self->chunk && publish_tail(self, tail + n) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(n);
}

PyDoc_STRVAR(room_doc, "room() -> int\n\nFree bytes in the outgoing ring (re-reads and checks the reader's tail).");

static PyObject *Rings_room(Rings *self, PyObject *Py_UNUSED(ignored)) {
    if (check_held(self) < 0)
        return NULL;
    if (read_tail(self) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(self->ring - (self->head - self->seen_tail));
}

PyDoc_STRVAR(fence_doc, "fence()\n\nA full memory barrier (after setting an asleep flag, before re-checking).");

static PyObject *Rings_fence(Rings *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    full_fence();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(release_doc, "release()\n\nGive the mmap back (it can be closed then); idempotent.");

static PyObject *Rings_release(Rings *self, PyObject *Py_UNUSED(ignored)) {
    if (self->held) {
        self->held = 0;
        self->w = NULL;
        self->obase = self->ibase = NULL;
        PyBuffer_Release(&self->buf);
    }
    Py_RETURN_NONE;
}

static int Rings_traverse(Rings *self, visitproc visit, void *arg) {
    Py_VISIT(self->wake_reader);
    Py_VISIT(self->wake_writer);
    return 0;
}

static int Rings_clear(Rings *self) {
    Py_CLEAR(self->wake_reader);
    Py_CLEAR(self->wake_writer);
    return 0;
}

static void Rings_dealloc(Rings *self) {
    PyObject_GC_UnTrack(self);
    if (self->held) {
        self->held = 0;
        PyBuffer_Release(&self->buf);
    }
    Rings_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Rings_methods[] = {
    {"put", (PyCFunction)Rings_put, METH_O, put_doc},
    {"get_into", (PyCFunction)(void (*)(void))Rings_get_into, METH_FASTCALL, get_into_doc},
    {"room", (PyCFunction)Rings_room, METH_NOARGS, room_doc},
    {"fence", (PyCFunction)Rings_fence, METH_NOARGS, fence_doc},
    {"release", (PyCFunction)Rings_release, METH_NOARGS, release_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RingsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcgw.transports._shmring.Rings",
    .tp_doc = PyDoc_STR("One side's view of a client's ring pair: it produces into one "
                        "ring and consumes the other."),
    .tp_basicsize = sizeof(Rings),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rings_init,
    .tp_dealloc = (destructor)Rings_dealloc,
    .tp_traverse = (traverseproc)Rings_traverse,
    .tp_clear = (inquiry)Rings_clear,
    .tp_methods = Rings_methods,
};

static struct PyModuleDef shmring_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_shmring",
    .m_doc = "C data path of ipcgw's shm transport (see ipcgw/transports/shm.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__shmring(void) {
    if (PyType_Ready(&RingsType) < 0)
        return NULL;
    if (RingCorrupted == NULL) { /* one exception class for both twins */
        PyObject *py = PyImport_ImportModule("ipcgw.transports.shmrings");
        if (py == NULL)
            return NULL;
        RingCorrupted = PyObject_GetAttrString(py, "RingCorrupted");
        Py_DECREF(py);
        if (RingCorrupted == NULL)
            return NULL;
    }
    PyObject *m = PyModule_Create(&shmring_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RingsType);
    if (PyModule_AddObject(m, "Rings", (PyObject *)&RingsType) < 0) {
        Py_DECREF(&RingsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
