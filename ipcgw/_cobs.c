/* COBS for delimited:nul framing, in C: the pure-Python twin in framing.py
 * loops once per zero byte, which made an all-zero 16 MiB frame cost seconds.
 *
 * Same wire format as the twin (framing.cobs_encode): a payload is cut at each
 * zero into pieces; a piece of 254+ bytes is sent as 0xFF blocks of 254, and
 * every piece ends with a block whose code is its length + 1 (so a payload
 * ending in a full 254-byte block is followed by a 0x01 block). One pass per
 * direction (decode copies blocks with memcpy); large inputs are worked on without the
 * GIL, so one peer's big frame does not stall the other sessions.
 *
 * Errors are ValueError with the twin's words; framing.py turns them into
 * FramingError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Below this many bytes, dropping and taking the GIL costs more than it frees. */
#define NOGIL_MIN (64 * 1024)

static Py_ssize_t
encode_into(const unsigned char *src, Py_ssize_t n, unsigned char *dst)
{
    /* One pass, one branch per byte: memchr per run costs a call per zero,
     * which loses on zero-heavy data (the worst case that matters). */
    unsigned char *code_at = dst, *out = dst + 1;
    unsigned int code = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char b = src[i];
        if (b) {
            *out++ = b;
            if (++code == 0xFF) {
                *code_at = 0xFF;
                code_at = out++;
                code = 1;
            }
        } else {
            *code_at = (unsigned char)code;
            code_at = out++;
            code = 1;
        }
    }
    *code_at = (unsigned char)code;
    return out - dst;
}

static PyObject *
cobs_encode(PyObject *self, PyObject *arg)
{
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t n = buf.len;
    PyObject *res = PyBytes_FromStringAndSize(NULL, n + n / 254 + 1);
    if (res == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(res);
    Py_ssize_t used;
    if (n >= NOGIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        used = encode_into(buf.buf, n, dst);
        Py_END_ALLOW_THREADS
    } else {
        used = encode_into(buf.buf, n, dst);
    }
    PyBuffer_Release(&buf);
    if (_PyBytes_Resize(&res, used) < 0)
        return NULL;
    return res;
}

/* 0 on success (*used set), else the error's words. */
static const char *
decode_into(const unsigned char *src, Py_ssize_t n, unsigned char *dst, Py_ssize_t *used)
{
    Py_ssize_t pos = 0;
    unsigned char *out = dst;
    unsigned int code = 0;
    while (pos < n) {
        code = src[pos];
        if (code == 0)
            return "COBS block code 0 inside a frame";
        Py_ssize_t next = pos + code;
        if (next > n)
            return "truncated COBS block";
        memcpy(out, src + pos + 1, code - 1);
        out += code - 1;
        if (code != 0xFF)
            *out++ = 0;
        pos = next;
    }
    if (code == 0 || code == 0xFF)
        return "COBS frame is empty or ends with a full block";
    *used = out - dst - 1; /* the zero implied by the last block is not data */
    return NULL;
}

static PyObject *
cobs_decode(PyObject *self, PyObject *arg)
{
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t n = buf.len;
    /* Every block of code c yields at most c bytes for c input bytes, so the
     * output (plus the implied final zero) never exceeds the input. */
    PyObject *res = PyBytes_FromStringAndSize(NULL, n > 0 ? n : 1);
    if (res == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(res);
    Py_ssize_t used = 0;
    const char *err;
    if (n >= NOGIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        err = decode_into(buf.buf, n, dst, &used);
        Py_END_ALLOW_THREADS
    } else {
        err = decode_into(buf.buf, n, dst, &used);
    }
    PyBuffer_Release(&buf);
    if (err != NULL) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    if (_PyBytes_Resize(&res, used) < 0)
        return NULL;
    return res;
}

static PyMethodDef methods[] = {
    {"encode", cobs_encode, METH_O, "encode(payload) -> bytes without NUL (COBS)."},
    {"decode", cobs_decode, METH_O, "decode(encoded) -> payload; ValueError if malformed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ipcgw._cobs", "COBS encode/decode in C (see framing.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cobs(void)
{
    return PyModule_Create(&module);
}
