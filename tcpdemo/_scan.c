/*
 * tcpdemo._scan: the per-frame Submit scanner and the ack builders of
 * tcpdemo/scan.py, compiled for CPython.
 *
 * Optional: tcpdemo/scan.py uses these when the extension was built (and
 * TCPDEMO_NO_ACCEL is unset) on CPython, its own pure-Python versions
 * otherwise.  The pure versions are the reference: each function here makes
 * exactly their decisions (tests/test_scan.py checks it on random input), so
 * read scan.py for what they do and why.
 *
 * Frames: a signed big-endian int32 length counting itself, then a command
 * byte.  A Submit (0x02) carries an 8-byte id; its SubmitAck is the 14 bytes
 * 0000000e 81 <id> 00.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>

#define HEADER_SIZE 4
#define SUBMIT 0x02
#define ID_SIZE 8
#define ID_START (HEADER_SIZE + 1)
#define SUBMIT_FRAME_MIN (ID_START + ID_SIZE)
#define ACK_HEAD_SIZE 5
#define ACK_SIZE (ACK_HEAD_SIZE + ID_SIZE + 1)

static const unsigned char ACK_HEAD[ACK_HEAD_SIZE] = {0, 0, 0, ACK_SIZE, 0x81};
#define RESULT_OK 0
/* submitAcks's default minRun: tcpdemo.scan.MIN_RUN (a test checks). */
#define MIN_RUN 16

static inline long long
frameLength(const unsigned char *p)
{
    /* Signed, as the reference reads it. */
    return (long long)(int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                                ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

/* A Python int as a long long, saturating: every bound here is compared with
 * an int32, so a larger bound means "no bound". */
static int
asBound(PyObject *value, long long *out)
{
    int overflow;
    long long v;
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow > 0) {
        v = LLONG_MAX;
    } else if (overflow < 0) {
        v = LLONG_MIN;
    }
    *out = v;
    return 0;
}

static int
checkBytes(PyObject *data)
{
    if (!PyBytes_CheckExact(data)) {
        PyErr_Format(PyExc_TypeError, "expected bytes, got %.100s", Py_TYPE(data)->tp_name);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(acks_doc,
             "acks(ids, /) -> bytes\n\n"
             "As tcpdemo.scan.pureAcks, compiled.");

static PyObject *
acks(PyObject *module, PyObject *ids)
{
    Py_ssize_t count, i, total;
    PyObject *result, *seq;
    char *out;

    seq = PySequence_Fast(ids, "ids must be a sequence of bytes");
    if (seq == NULL) {
        return NULL;
    }
    count = PySequence_Fast_GET_SIZE(seq);
    /* The head, each id with the ack's tail and the next head, and the last
     * tail: what joining the ids with tail + head gives. */
    total = ACK_HEAD_SIZE + 1;
    for (i = 0; i < count; i++) {
        PyObject *ident = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(ident)) {
            PyErr_Format(PyExc_TypeError, "ids[%zd] must be bytes, not %.100s", i,
                         Py_TYPE(ident)->tp_name);
            Py_DECREF(seq);
            return NULL;
        }
        total += PyBytes_GET_SIZE(ident) + (i ? ACK_HEAD_SIZE + 1 : 0);
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    out = PyBytes_AS_STRING(result);
    for (i = 0; i < count; i++) {
        PyObject *ident = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t n = PyBytes_GET_SIZE(ident);
        if (i) {
            *out++ = RESULT_OK;
        }
        memcpy(out, ACK_HEAD, ACK_HEAD_SIZE);
        out += ACK_HEAD_SIZE;
        memcpy(out, PyBytes_AS_STRING(ident), n);
        out += n;
    }
    if (!count) {
        memcpy(out, ACK_HEAD, ACK_HEAD_SIZE);
        out += ACK_HEAD_SIZE;
    }
    *out = RESULT_OK;
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(submitAcks_doc,
             "submitAcks(data, maxLength, start=0, minRun=MIN_RUN, /) -> (end, count, acks)\n\n"
             "As tcpdemo.scan.pureSubmitAcks, compiled: one loop over the frames,\n"
             "whatever their sizes (minRun, a tuning knob of the pure version, is\n"
             "checked but changes nothing here).");

/* (0, 0, b""): no Submit to take, made once. */
static PyObject *noSubmits;

static PyObject *
submitAcks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *result;
    long long maxLength, start = 0, minRun = MIN_RUN;
    Py_ssize_t size, offset, count, i;
    const unsigned char *p;
    unsigned char *out;

    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "submitAcks takes 2 to 4 positional arguments");
        return NULL;
    }
    data = args[0];
    if (checkBytes(data) < 0 || asBound(args[1], &maxLength) < 0 ||
        (nargs >= 3 && asBound(args[2], &start) < 0) ||
        (nargs == 4 && asBound(args[3], &minRun) < 0)) {
        return NULL;
    }
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must not be negative");
        return NULL;
    }
    if (minRun < 1) {
        PyErr_SetString(PyExc_ValueError, "minRun must be at least 1");
        return NULL;
    }
    size = PyBytes_GET_SIZE(data);
    if (start > (long long)size) {
        /* Nothing to take: where it starts is where it ends. */
        return Py_BuildValue("(Liy#)", start, 0, "", (Py_ssize_t)0);
    }
    p = (const unsigned char *)PyBytes_AS_STRING(data);
    /* First where the leading Submits end, and how many there are. */
    offset = (Py_ssize_t)start;
    count = 0;
    while (size - offset >= SUBMIT_FRAME_MIN) {
        const unsigned char *f = p + offset;
        long long length = frameLength(f);
        if (length < SUBMIT_FRAME_MIN || length > maxLength || f[HEADER_SIZE] != SUBMIT ||
            length > (long long)(size - offset)) {
            break;
        }
        offset += (Py_ssize_t)length;
        count++;
    }
    if (!count) {
        if (offset) {
            return Py_BuildValue("(niy#)", offset, 0, "", (Py_ssize_t)0);
        }
        Py_INCREF(noSubmits);
        return noSubmits;
    }
    /* Then their acks, each id copied between a head and a tail. */
    result = PyBytes_FromStringAndSize(NULL, count * ACK_SIZE);
    if (result == NULL) {
        return NULL;
    }
    out = (unsigned char *)PyBytes_AS_STRING(result);
    p += start;
    for (i = 0; i < count; i++) {
        memcpy(out, ACK_HEAD, ACK_HEAD_SIZE);
        memcpy(out + ACK_HEAD_SIZE, p + ID_START, ID_SIZE);
        out[ACK_SIZE - 1] = RESULT_OK;
        out += ACK_SIZE;
        p += frameLength(p);
    }
    return Py_BuildValue("(nnN)", offset, count, result);
}

PyDoc_STRVAR(scanSubmits_doc,
             "scanSubmits(data, maxLength, ids, start=0, /) -> int\n\n"
             "As tcpdemo.scan.pureScanSubmits, compiled (one bytes object per id,\n"
             "which the caller asked for).");

static PyObject *
scanSubmits(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *ids;
    long long maxLength, start = 0;
    Py_ssize_t size, offset;
    const unsigned char *p;

    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "scanSubmits takes 3 or 4 positional arguments");
        return NULL;
    }
    data = args[0];
    ids = args[2];
    if (checkBytes(data) < 0 || asBound(args[1], &maxLength) < 0 ||
        (nargs == 4 && asBound(args[3], &start) < 0)) {
        return NULL;
    }
    if (!PyList_Check(ids)) {
        PyErr_Format(PyExc_TypeError, "ids must be a list, not %.100s", Py_TYPE(ids)->tp_name);
        return NULL;
    }
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must not be negative");
        return NULL;
    }
    size = PyBytes_GET_SIZE(data);
    if (start > (long long)size) {
        return PyLong_FromLongLong(start);
    }
    p = (const unsigned char *)PyBytes_AS_STRING(data);
    offset = (Py_ssize_t)start;
    while (size - offset >= SUBMIT_FRAME_MIN) {
        const unsigned char *f = p + offset;
        long long length = frameLength(f);
        PyObject *ident;
        int failed;
        if (length < SUBMIT_FRAME_MIN || length > maxLength || f[HEADER_SIZE] != SUBMIT ||
            length > (long long)(size - offset)) {
            break;
        }
        ident = PyBytes_FromStringAndSize((const char *)f + ID_START, ID_SIZE);
        if (ident == NULL) {
            return NULL;
        }
        failed = PyList_Append(ids, ident);
        Py_DECREF(ident);
        if (failed < 0) {
            return NULL;
        }
        offset += (Py_ssize_t)length;
    }
    return PyLong_FromSsize_t(offset);
}

static PyMethodDef methods[] = {
    {"acks", (PyCFunction)acks, METH_O, acks_doc},
    {"scanSubmits", (PyCFunction)(void (*)(void))scanSubmits, METH_FASTCALL, scanSubmits_doc},
    {"submitAcks", (PyCFunction)(void (*)(void))submitAcks, METH_FASTCALL, submitAcks_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "tcpdemo._scan",
    "The Submit scanner and ack builders of tcpdemo.scan, compiled for CPython.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    PyObject *m;
    noSubmits = Py_BuildValue("(iiy#)", 0, 0, "", (Py_ssize_t)0);
    if (noSubmits == NULL) {
        return NULL;
    }
    m = PyModule_Create(&module);
    if (m == NULL) {
        Py_CLEAR(noSubmits);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MIN_RUN", MIN_RUN) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
