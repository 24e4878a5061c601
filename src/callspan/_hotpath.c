/* callspan._hotpath: the compiled hot path.
 *
 * The same state machine as callspan/recorder.py (start, finish, suspend, resume) and the same
 * records (callspan/record.py layout), driven by sys.monitoring callbacks written in C (3.12+),
 * plus the keyed hash the span builder uses. The Python recorder is the reference: this file
 * reads the same clocks and counters in the same order, so injected clocks give equal records.
 *
 * Rules for everything reachable from a callback: never leave an exception set (it would be
 * raised into the application); count the fault on the recorder instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <structmember.h>
#include <pthread.h>

#if PY_VERSION_HEX >= 0x030D0000
PyAPI_FUNC(size_t) _PySys_GetSizeOf(PyObject *); /* exported; declared in an internal header in 3.13 */
#endif

static PyObject *str_empty;

/* KeyboardInterrupt, SystemExit and other non-Exception errors raised by user code the hot path
 * runs (a __hash__, when a signal arrives) are the application's: kept here and raised when the
 * callback returns (see callback_result), never swallowed. Under the GIL: one at a time. */
static PyObject *stash_type, *stash_value, *stash_tb;

static void
drop_error(void) /* clear an error the hot path handles; keep an interrupt */
{
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception) && stash_type == NULL) {
        PyErr_Fetch(&stash_type, &stash_value, &stash_tb);
        return;
    }
    PyErr_Clear();
}

/* Record layout: must match callspan/record.py (checked by tests/unit/test_hotpath.py). */
enum {
    R_INFO, R_PARENT, R_ROOT, R_START, R_END, R_SEG_CPU, R_CPU, R_CHILD_CPU, R_ARGS, R_RET,
    R_RET_SIZE, R_ERROR, R_SUSPENDS, R_SUSP_NS, R_SUSP_AT, R_THREAD, R_CONTEXT, R_PREV_CURRENT,
    R_VIA_TASK, R_INCOMPLETE, R_OUT, RECORD_SIZE
};

enum { KIND_FUNCTION, KIND_COROUTINE, KIND_GENERATOR, KIND_ASYNC_GENERATOR };

/* ---------------------------------------------------------------------------------------- */
/* SipHash-2-4 (Aumasson and Bernstein): a keyed PRF for short inputs, here one 64-bit word.  */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                     \
    do {                                                             \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);    \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                       \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                       \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);    \
    } while (0)

static uint64_t
siphash24_u64(uint64_t k0, uint64_t k1, uint64_t m)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0;
    uint64_t v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0;
    uint64_t v3 = 0x7465646279746573ULL ^ k1;
    uint64_t b = ((uint64_t)8) << 56; /* message length 8, no tail bytes */
    v3 ^= m; SIPROUND; SIPROUND; v0 ^= m;
    v3 ^= b; SIPROUND; SIPROUND; v0 ^= b;
    v2 ^= 0xff;
    SIPROUND; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static PyObject *
py_siphash24(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "siphash24(k0, k1, message) takes 3 integers");
        return NULL;
    }
    uint64_t v[3];
    for (int i = 0; i < 3; i++) {
        v[i] = PyLong_AsUnsignedLongLongMask(args[i]);
        if (v[i] == (uint64_t)-1 && PyErr_Occurred())
            return NULL;
    }
    return PyLong_FromUnsignedLongLong(siphash24_u64(v[0], v[1], v[2]));
}


/* IntervalThreadClock (callspan/counters.py) over the real clocks, one per OS thread. */
static unsigned int fork_generation = 1;

static void
after_fork_in_child(void)
{
    fork_generation++;
}

typedef struct {
    long long anchor, last, value;
    unsigned int generation; /* 0 or stale: not read yet in this thread (of this process) */
} IntervalClock;

static long long
interval_step(IntervalClock *c, long long interval, long long now, int *need_real)
{
    /* Phase 1: returns 1 in *need_real when the kernel clock must be read (then call
     * interval_commit). Same rule as IntervalThreadClock.__call__. */
    if (c->generation != fork_generation || now - c->anchor >= interval) {
        *need_real = 1;
        return 0;
    }
    *need_real = 0;
    c->value += now - c->last;
    c->last = now;
    return c->value;
}

static long long
interval_commit(IntervalClock *c, long long now, long long real)
{
    if (c->generation != fork_generation || real > c->value)
        c->value = real;
    c->anchor = now;
    c->last = now;
    c->generation = fork_generation;
    return c->value;
}

static inline long long
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline long long
thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static __thread IntervalClock thread_interval_clock __attribute__((unused, tls_model("initial-exec")));
static long long cpu_interval_ns __attribute__((unused)) = 20000; /* set by HotPath from the counter */

/* interval_clock_replay(interval, walls, reals): the values the rule gives for a sequence of
 * wall readings, consuming a real CPU reading only when it reads the kernel. For tests. */
static PyObject *
py_interval_clock_replay(PyObject *module, PyObject *args)
{
    long long interval;
    PyObject *walls, *reals;
    if (!PyArg_ParseTuple(args, "LOO:interval_clock_replay", &interval, &walls, &reals))
        return NULL;
    PyObject *wall_list = PySequence_Fast(walls, "walls must be a sequence");
    if (wall_list == NULL)
        return NULL;
    PyObject *real_iter = PyObject_GetIter(reals);
    PyObject *out = real_iter ? PyList_New(0) : NULL;
    IntervalClock clock = {0, 0, 0, 0};
    for (Py_ssize_t i = 0; out != NULL && i < PySequence_Fast_GET_SIZE(wall_list); i++) {
        long long now = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(wall_list, i));
        int need_real = 0;
        long long value = PyErr_Occurred() ? 0 : interval_step(&clock, interval, now, &need_real);
        if (!PyErr_Occurred() && need_real) {
            PyObject *real = PyIter_Next(real_iter);
            if (real == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "reals ran out");
            }
            else {
                long long r = PyLong_AsLongLong(real);
                Py_DECREF(real);
                value = interval_commit(&clock, now, r);
            }
        }
        PyObject *item = PyErr_Occurred() ? NULL : PyLong_FromLongLong(value);
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
    }
    Py_DECREF(wall_list);
    Py_XDECREF(real_iter);
    return out;
}

/* ---------------------------------------------------------------------------------------- */
/* The call record. The compiled recorder makes Records: one allocation holding the slots of
 * callspan/record.py, the integer ones as C integers (no int object per counter, no list, not a
 * GC object: records never form reference cycles, see hp_start). The pure-Python recorder makes
 * lists with the same slots; the compiled builder reads both through put_ll / get_ll / put_obj /
 * REC_ITEM, and Python code (the reference builder, stop, eviction) indexes a Record like a list. */

#define N_NUM 8
#define N_OBJ (RECORD_SIZE - N_NUM)
/* slot -> 1 + index into n[] (integer slots) or into o[] (object slots); 0: the other kind */
static const signed char NUM_SLOT[RECORD_SIZE] = {
    [R_START] = 1, [R_END] = 2, [R_SEG_CPU] = 3, [R_CPU] = 4, [R_CHILD_CPU] = 5,
    [R_SUSPENDS] = 6, [R_SUSP_NS] = 7, [R_SUSP_AT] = 8,
};
static const signed char OBJ_SLOT[RECORD_SIZE] = {
    [R_INFO] = 1, [R_PARENT] = 2, [R_ROOT] = 3, [R_ARGS] = 4, [R_RET] = 5, [R_RET_SIZE] = 6,
    [R_ERROR] = 7, [R_THREAD] = 8, [R_CONTEXT] = 9, [R_PREV_CURRENT] = 10, [R_VIA_TASK] = 11,
    [R_INCOMPLETE] = 12, [R_OUT] = 13,
};

typedef struct {
    PyObject_HEAD
    PyObject *o[N_OBJ]; /* never NULL once made */
    long long n[N_NUM];
} RecordObject;

static PyTypeObject RecordType;
#define IS_RECORD_OBJECT(op) Py_IS_TYPE((op), &RecordType)

/* Borrowed object slot of a record (a Record or a list record). */
static inline PyObject *
REC_ITEM(PyObject *record, Py_ssize_t slot)
{
    if (IS_RECORD_OBJECT(record))
        return ((RecordObject *)record)->o[OBJ_SLOT[slot] - 1];
    return PyList_GET_ITEM(record, slot);
}

/* record[slot] = value (a C integer), releasing the old item. */
static inline int
put_ll(PyObject *record, Py_ssize_t slot, long long value)
{
    PyObject *obj;
    if (IS_RECORD_OBJECT(record)) {
        RecordObject *r = (RecordObject *)record;
        int num = NUM_SLOT[slot];
        if (num) {
            r->n[num - 1] = value;
            return 0;
        }
        if ((obj = PyLong_FromLongLong(value)) == NULL)
            return -1;
        Py_SETREF(r->o[OBJ_SLOT[slot] - 1], obj);
        return 0;
    }
    if ((obj = PyLong_FromLongLong(value)) == NULL)
        return -1;
    PyObject *old = PyList_GET_ITEM(record, slot);
    PyList_SET_ITEM(record, slot, obj);
    Py_XDECREF(old);
    return 0;
}

static inline int
get_ll(PyObject *record, Py_ssize_t slot, long long *out)
{
    if (IS_RECORD_OBJECT(record) && NUM_SLOT[slot]) {
        *out = ((RecordObject *)record)->n[NUM_SLOT[slot] - 1];
        return 0;
    }
    *out = PyLong_AsLongLong(REC_ITEM(record, slot));
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static void
put_obj(PyObject *record, Py_ssize_t slot, PyObject *value) /* steals value; an object slot */
{
    if (IS_RECORD_OBJECT(record)) {
        Py_SETREF(((RecordObject *)record)->o[OBJ_SLOT[slot] - 1], value);
        return;
    }
    PyObject *old = PyList_GET_ITEM(record, slot);
    PyList_SET_ITEM(record, slot, value);
    Py_XDECREF(old);
}

static void
Record_dealloc(RecordObject *self)
{
    /* Release the parent chain iteratively: a deep recursion's records may be freed together. */
    PyObject *parent = self->o[OBJ_SLOT[R_PARENT] - 1];
    self->o[OBJ_SLOT[R_PARENT] - 1] = NULL;
    for (int i = 0; i < N_OBJ; i++)
        Py_XDECREF(self->o[i]);
    PyObject_Free(self);
    while (parent != NULL && IS_RECORD_OBJECT(parent) && Py_REFCNT(parent) == 1) {
        RecordObject *p = (RecordObject *)parent;
        parent = p->o[OBJ_SLOT[R_PARENT] - 1];
        p->o[OBJ_SLOT[R_PARENT] - 1] = NULL;
        Py_DECREF(p); /* frees p without touching the chain above */
    }
    Py_XDECREF(parent);
}

static Py_ssize_t
Record_length(PyObject *self)
{
    return RECORD_SIZE;
}

static PyObject *
Record_item(PyObject *self, Py_ssize_t slot)
{
    if (slot < 0 || slot >= RECORD_SIZE) {
        PyErr_SetString(PyExc_IndexError, "record slot out of range");
        return NULL;
    }
    RecordObject *r = (RecordObject *)self;
    if (NUM_SLOT[slot])
        return PyLong_FromLongLong(r->n[NUM_SLOT[slot] - 1]);
    PyObject *item = r->o[OBJ_SLOT[slot] - 1];
    /* Compact keys (a bare raw hash, see args_key / value_key) read back in the list layout. */
    if (slot == R_ARGS && PyLong_CheckExact(item))
        return PyTuple_Pack(3, item, str_empty, Py_False);
    if (slot == R_RET && PyLong_CheckExact(item))
        return PyTuple_Pack(2, item, Py_True);
    return Py_NewRef(item);
}

static int
Record_ass_item(PyObject *self, Py_ssize_t slot, PyObject *value)
{
    if (slot < 0 || slot >= RECORD_SIZE) {
        PyErr_SetString(PyExc_IndexError, "record slot out of range");
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "record slots cannot be deleted");
        return -1;
    }
    RecordObject *r = (RecordObject *)self;
    if (NUM_SLOT[slot]) {
        long long v = PyLong_AsLongLong(value);
        if (v == -1 && PyErr_Occurred())
            return -1;
        r->n[NUM_SLOT[slot] - 1] = v;
        return 0;
    }
    Py_SETREF(r->o[OBJ_SLOT[slot] - 1], Py_NewRef(value));
    return 0;
}

static PySequenceMethods Record_as_sequence = {
    .sq_length = Record_length,
    .sq_item = Record_item,
    .sq_ass_item = Record_ass_item,
};

static PyTypeObject RecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan._hotpath.Record",
    .tp_basicsize = sizeof(RecordObject),
    .tp_dealloc = (destructor)Record_dealloc,
    .tp_as_sequence = &Record_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A call record of the compiled recorder: indexed like the list records of "
              "callspan/record.py (the slots R_*).",
};

/* ---------------------------------------------------------------------------------------- */
/* Fingerprints of unhashable keys and values: callspan/keys.py (fingerprint, _flat_fingerprint,
 * unhashable_args) is the reference; the same tuples are built and hashed, so the numbers are
 * equal. Results: 1 with *out set, 0 for None. Never leaves an exception set. */

static PyObject *str_dict_tag, *str_set_tag;

static int
unhashable_type(PyObject *value)
{
    return Py_TYPE(value)->tp_hash == PyObject_HashNotImplemented;
}

static int
hash_built(PyObject *built, Py_hash_t *out) /* steals built */
{
    if (built == NULL) {
        drop_error();
        return 0;
    }
    Py_hash_t h = PyObject_Hash(built);
    Py_DECREF(built);
    if (h == -1 && PyErr_Occurred()) {
        drop_error();
        return 0;
    }
    *out = h;
    return 1;
}

static int
flat_fingerprint(PyObject *value, Py_ssize_t *budget, Py_hash_t *out)
{
    PyTypeObject *kind = Py_TYPE(value);
    if (!unhashable_type(value)) {
        Py_hash_t h = PyObject_Hash(value);
        if (h == -1 && PyErr_Occurred()) {
            drop_error();
            return 0;
        }
        *out = h;
        return 1;
    }
    if (kind == &PyList_Type) {
        *budget -= PyList_GET_SIZE(value);
        if (*budget < 0)
            return 0;
        PyObject *items = PyList_AsTuple(value);
        return hash_built(items ? Py_BuildValue("(ON)", Py_True, items) : NULL, out);
    }
    if (kind == &PyDict_Type) {
        *budget -= PyDict_GET_SIZE(value);
        if (*budget < 0)
            return 0;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(value, &pos, &k, &v)) {
            if (unhashable_type(v))
                return 0; /* a nested container: not walked */
        }
        PyObject *items = PyDict_Items(value);
        PyObject *frozen = items ? PyFrozenSet_New(items) : NULL;
        Py_XDECREF(items);
        return hash_built(frozen ? Py_BuildValue("(ON)", str_dict_tag, frozen) : NULL, out);
    }
    if (kind == &PySet_Type) {
        PyObject *frozen = PyFrozenSet_New(value);
        return hash_built(frozen ? Py_BuildValue("(ON)", str_set_tag, frozen) : NULL, out);
    }
    if (kind == &PyByteArray_Type)
        return hash_built(PyBytes_FromStringAndSize(PyByteArray_AS_STRING(value), PyByteArray_GET_SIZE(value)), out);
    return 0;
}

static int
fingerprint(PyObject *value, Py_ssize_t budget, Py_hash_t *out)
{
    PyTypeObject *kind = Py_TYPE(value);
    if (kind == &PyList_Type || kind == &PyTuple_Type) {
        budget -= Py_SIZE(value);
        if (budget < 0)
            return 0;
        if (kind == &PyTuple_Type) { /* the key tuple: one level of unhashable containers inside */
            Py_ssize_t n = PyTuple_GET_SIZE(value);
            PyObject *parts = PyTuple_New(n);
            if (parts == NULL) {
                drop_error();
                return 0;
            }
            for (Py_ssize_t i = 0; i < n; i++) {
                Py_hash_t part;
                if (!flat_fingerprint(PyTuple_GET_ITEM(value, i), &budget, &part)) {
                    Py_DECREF(parts);
                    return 0;
                }
                PyObject *number = PyLong_FromSsize_t(part);
                if (number == NULL) {
                    drop_error();
                    Py_DECREF(parts);
                    return 0;
                }
                PyTuple_SET_ITEM(parts, i, number);
            }
            return hash_built(Py_BuildValue("(ON)", Py_False, parts), out);
        }
    }
    return flat_fingerprint(value, &budget, out);
}

static PyObject * /* new reference: fingerprint as an int, or None */
fingerprint_object(PyObject *value)
{
    Py_hash_t h;
    if (fingerprint(value, 16, &h))
        return PyLong_FromSsize_t(h);
    return Py_NewRef(Py_None);
}

static PyObject *callback_result(PyObject *result);

static PyObject *
py_fingerprint(PyObject *module, PyObject *value)
{
    return callback_result(fingerprint_object(value));
}

/* The unhashable type names of a key, as keys.unhashable_args names them. Names are cached
 * per type (a type's __name__ can change, but not for the builtin containers that matter). */
static PyObject *type_names; /* dict: type -> its __name__ */

static PyObject * /* new reference */
type_name(PyTypeObject *type)
{
    PyObject *name = PyDict_GetItemWithError(type_names, (PyObject *)type);
    if (name != NULL)
        return Py_NewRef(name);
    if (PyErr_Occurred() || (name = PyType_GetName(type)) == NULL)
        return NULL;
    if (PyDict_GET_SIZE(type_names) < 256 && PyDict_SetItem(type_names, (PyObject *)type, name) < 0)
        Py_CLEAR(name);
    return name;
}

static PyObject *
unhashable_names(PyObject *key)
{
    Py_ssize_t n = PyTuple_Check(key) ? PyTuple_GET_SIZE(key) : 1;
    PyObject *first = NULL, *names = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_Check(key) ? PyTuple_GET_ITEM(key, i) : key;
        if (!unhashable_type(v))
            continue;
        PyObject *name = type_name(Py_TYPE(v));
        if (name == NULL)
            goto error;
        if (first == NULL) {
            first = name;
            continue;
        }
        int seen = 0;
        if (names == NULL) {
            seen = PyUnicode_Compare(first, name) == 0;
            if (!seen && ((names = PyList_New(0)) == NULL || PyList_Append(names, first) < 0)) {
                Py_DECREF(name);
                goto error;
            }
        }
        else {
            seen = PySequence_Contains(names, name);
        }
        if (seen < 0 || (!seen && names != NULL && PyList_Append(names, name) < 0)) {
            Py_DECREF(name);
            goto error;
        }
        Py_DECREF(name);
    }
    if (first == NULL)
        return PyUnicode_FromString("tuple");
    if (names == NULL)
        return first;
    PyObject *comma = PyUnicode_FromString(",");
    PyObject *joined = comma ? PyUnicode_Join(comma, names) : NULL;
    Py_XDECREF(comma);
    Py_DECREF(names);
    Py_DECREF(first);
    return joined;
error:
    Py_XDECREF(first);
    Py_XDECREF(names);
    return NULL;
}

static PyObject *
py_unhashable_args(PyObject *module, PyObject *key)
{
    PyObject *names = unhashable_names(key);
    if (names == NULL)
        return NULL;
    return callback_result(Py_BuildValue("(NN)", fingerprint_object(key), names));
}

/* ---------------------------------------------------------------------------------------- */
/* The span builder's per-record decisions and summaries (callspan/builder.py is the reference:
 * SpanBuilder.process with _accept, _has_token, _summary_target, _summarise, _hashes,
 * _Summary.add_call/merge). Spans themselves are still opened and closed by the Python builder. */

/* GC support for the small types below: every object field is a T_OBJECT member, so the member
 * table says what to visit and clear. */
static int
visit_members(PyObject *self, const PyMemberDef *member, visitproc visit, void *arg)
{
    for (; member->name != NULL; member++) {
        if (member->type == T_OBJECT)
            Py_VISIT(*(PyObject **)((char *)self + member->offset));
    }
    return 0;
}

static void
clear_members(PyObject *self, const PyMemberDef *member)
{
    for (; member->name != NULL; member++) {
        if (member->type == T_OBJECT)
            Py_CLEAR(*(PyObject **)((char *)self + member->offset));
    }
}

#define MEMBER_GC_FUNCS(Name)                                                   \
    static int Name##_traverse(PyObject *self, visitproc visit, void *arg)      \
    {                                                                           \
        return visit_members(self, Name##_members, visit, arg);                 \
    }                                                                           \
    static int Name##_clear(PyObject *self)                                     \
    {                                                                           \
        clear_members(self, Name##_members);                                    \
        return 0;                                                               \
    }                                                                           \
    static void Name##_dealloc(PyObject *self)                                  \
    {                                                                           \
        PyObject_GC_UnTrack(self);                                              \
        Name##_clear(self);                                                     \
        Py_TYPE(self)->tp_free(self);                                           \
    }

enum { OUT_PENDING, OUT_OPEN, OUT_CLOSED, OUT_SUMMARISED, OUT_UNSAMPLED };

typedef struct {
    PyObject_HEAD
    int state;
    PyObject *node;
    PyObject *summaries;
    long long kept;
    PyObject *walls;
    long long seen;
    long long threshold;
} OutObject;

typedef struct {
    PyObject_HEAD
    PyObject *info;
    long long count, errors, wall, run, cpu_total, cpu_self;
    PyObject *calls;
    double rate;
} SummaryObject;

static int
Out_init(OutObject *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ":Out"))
        return -1;
    self->state = OUT_PENDING;
    Py_CLEAR(self->node);
    Py_CLEAR(self->summaries);
    Py_CLEAR(self->walls);
    self->kept = self->seen = 0;
    self->threshold = -1;
    return 0;
}

static PyMemberDef Out_members[] = {
    {"state", T_INT, offsetof(OutObject, state), 0, NULL},
    {"node", T_OBJECT, offsetof(OutObject, node), 0, NULL},
    {"summaries", T_OBJECT, offsetof(OutObject, summaries), 0, NULL},
    {"kept", T_LONGLONG, offsetof(OutObject, kept), 0, NULL},
    {"walls", T_OBJECT, offsetof(OutObject, walls), 0, NULL},
    {"seen", T_LONGLONG, offsetof(OutObject, seen), 0, NULL},
    {"threshold", T_LONGLONG, offsetof(OutObject, threshold), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

MEMBER_GC_FUNCS(Out)

static PyTypeObject OutType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan._hotpath.Out",
    .tp_basicsize = sizeof(OutObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "builder state of one record (see callspan.builder._Out)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Out_init,
    .tp_dealloc = (destructor)Out_dealloc,
    .tp_traverse = (traverseproc)Out_traverse,
    .tp_clear = (inquiry)Out_clear,
    .tp_members = Out_members,
};

static int
Summary_init(SummaryObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *info;
    if (!PyArg_ParseTuple(args, "O:Summary", &info))
        return -1;
    Py_XSETREF(self->info, Py_NewRef(info));
    Py_XSETREF(self->calls, PyList_New(0));
    if (self->calls == NULL)
        return -1;
    self->count = self->errors = self->wall = self->run = self->cpu_total = self->cpu_self = 0;
    self->rate = 1.0;
    return 0;
}

static PyMemberDef Summary_members[] = {
    {"info", T_OBJECT, offsetof(SummaryObject, info), 0, NULL},
    {"count", T_LONGLONG, offsetof(SummaryObject, count), 0, NULL},
    {"errors", T_LONGLONG, offsetof(SummaryObject, errors), 0, NULL},
    {"wall", T_LONGLONG, offsetof(SummaryObject, wall), 0, NULL},
    {"run", T_LONGLONG, offsetof(SummaryObject, run), 0, NULL},
    {"cpu_total", T_LONGLONG, offsetof(SummaryObject, cpu_total), 0, NULL},
    {"cpu_self", T_LONGLONG, offsetof(SummaryObject, cpu_self), 0, NULL},
    {"calls", T_OBJECT, offsetof(SummaryObject, calls), 0, NULL},
    {"rate", T_DOUBLE, offsetof(SummaryObject, rate), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

MEMBER_GC_FUNCS(Summary)

static PyTypeObject SummaryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan._hotpath.Summary",
    .tp_basicsize = sizeof(SummaryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "calls of one function summarised on one span (see callspan.builder._Summary)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Summary_init,
    .tp_dealloc = (destructor)Summary_dealloc,
    .tp_traverse = (traverseproc)Summary_traverse,
    .tp_clear = (inquiry)Summary_clear,
    .tp_members = Summary_members,
};

/* One batch's view of the builder. */
typedef struct {
    PyObject *builder;
    PyObject *out_type, *summary_type, *summarised_out, *monotonic, *deque_type;
    long long max_spans, cap, clock_offset;
    double rate, tokens, refilled, listed_tokens;
    long long traces_unsampled, calls_summarised, calls_unlisted;
    uint64_t k0, k1;
    PyObject *holder; /* builder._unsampled (a record) or NULL: the open window, cached per batch */
} Batch;

static int
attr_ll(PyObject *obj, const char *name, long long *out)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int
attr_double(PyObject *obj, const char *name, double *out)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == NULL)
        return -1;
    *out = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int
set_attr_ll(PyObject *obj, const char *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int rc = PyObject_SetAttrString(obj, name, v);
    Py_DECREF(v);
    return rc;
}

static int
set_attr_double(PyObject *obj, const char *name, double value)
{
    PyObject *v = PyFloat_FromDouble(value);
    if (v == NULL)
        return -1;
    int rc = PyObject_SetAttrString(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* Mutable builder fields: written back before Python code runs, reloaded after. */
static int
batch_store(Batch *b)
{
    if (set_attr_double(b->builder, "_tokens", b->tokens) < 0 ||
        set_attr_double(b->builder, "_refilled", b->refilled) < 0 ||
        set_attr_ll(b->builder, "traces_unsampled", b->traces_unsampled) < 0 ||
        set_attr_ll(b->builder, "calls_summarised", b->calls_summarised) < 0 ||
        set_attr_double(b->builder, "_listed_tokens", b->listed_tokens) < 0 ||
        set_attr_ll(b->builder, "calls_unlisted", b->calls_unlisted) < 0)
        return -1;
    return 0;
}

static int
batch_load(Batch *b)
{
    if (attr_double(b->builder, "_tokens", &b->tokens) < 0 ||
        attr_double(b->builder, "_refilled", &b->refilled) < 0 ||
        attr_ll(b->builder, "traces_unsampled", &b->traces_unsampled) < 0 ||
        attr_ll(b->builder, "calls_summarised", &b->calls_summarised) < 0 ||
        attr_double(b->builder, "_listed_tokens", &b->listed_tokens) < 0 ||
        attr_ll(b->builder, "calls_unlisted", &b->calls_unlisted) < 0)
        return -1;
    return 0;
}

static int
has_token(Batch *b)
{
    PyObject *value = PyObject_CallNoArgs(b->monotonic);
    if (value == NULL)
        return -1;
    double now = PyFloat_AsDouble(value);
    Py_DECREF(value);
    if (now == -1.0 && PyErr_Occurred())
        return -1;
    double tokens = b->tokens + (now - b->refilled) * b->rate;
    b->tokens = tokens < b->rate ? tokens : b->rate;
    b->refilled = now;
    return b->tokens >= 1;
}

static OutObject *
out_of(Batch *b, PyObject *record) /* borrowed; creates the record's Out when it has none */
{
    PyObject *out = REC_ITEM(record, R_OUT);
    if (out == Py_None) {
        if (b->out_type == (PyObject *)&OutType) {
            out = OutType.tp_alloc(&OutType, 0);
            if (out != NULL)
                ((OutObject *)out)->threshold = -1; /* state PENDING (0), counters 0, objects NULL */
        }
        else {
            out = PyObject_CallNoArgs(b->out_type);
        }
        if (out == NULL)
            return NULL;
        put_obj(record, R_OUT, out);
    }
    if (!PyObject_TypeCheck(out, &OutType)) {
        PyErr_SetString(PyExc_TypeError, "record's builder state is not a callspan._hotpath.Out");
        return NULL;
    }
    return (OutObject *)out;
}

static int
is_record(PyObject *obj)
{
    return IS_RECORD_OBJECT(obj) || (PyList_CheckExact(obj) && PyList_GET_SIZE(obj) == RECORD_SIZE);
}

static int
out_state(PyObject *record) /* -1: no Out yet */
{
    PyObject *out = REC_ITEM(record, R_OUT);
    if (out == Py_None || !PyObject_TypeCheck(out, &OutType))
        return -1;
    return ((OutObject *)out)->state;
}

static int
accept_record(Batch *b, PyObject *record)
{
    PyObject *root = REC_ITEM(record, R_ROOT);
    OutObject *budget = out_of(b, root == Py_None ? record : root);
    if (budget == NULL)
        return -1;
    if (budget->kept >= b->max_spans)
        return 0;
    int token = has_token(b);
    if (token <= 0)
        return token;
    long long start, end;
    if (get_ll(record, R_START, &start) < 0 || get_ll(record, R_END, &end) < 0)
        return -1;
    long long wall = end - start;
    if (budget->walls == NULL || budget->walls == Py_None) {
        PyObject *kwargs = Py_BuildValue("{s:i}", "maxlen", 256);
        PyObject *empty = PyTuple_New(0);
        PyObject *walls = (kwargs && empty) ? PyObject_Call(b->deque_type, empty, kwargs) : NULL;
        Py_XDECREF(kwargs);
        Py_XDECREF(empty);
        if (walls == NULL)
            return -1;
        Py_XSETREF(budget->walls, walls);
    }
    PyObject *wall_obj = PyLong_FromLongLong(wall);
    if (wall_obj == NULL)
        return -1;
    PyObject *done = PyObject_CallMethod(budget->walls, "append", "O", wall_obj);
    Py_DECREF(wall_obj);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    budget->seen += 1;
    if (budget->kept < b->max_spans / 2)
        return 1;
    if (budget->seen <= 256 || budget->seen % 64 == 0) {
        PyObject *ordered = PySequence_List(budget->walls);
        if (ordered == NULL || PyList_Sort(ordered) < 0) {
            Py_XDECREF(ordered);
            return -1;
        }
        Py_ssize_t n = PyList_GET_SIZE(ordered);
        long long threshold = PyLong_AsLongLong(PyList_GET_ITEM(ordered, (Py_ssize_t)(n * 0.9)));
        Py_DECREF(ordered);
        if (threshold == -1 && PyErr_Occurred())
            return -1;
        budget->threshold = threshold;
    }
    return wall > budget->threshold;
}

/* Where a summarised call goes (borrowed, or NULL): see SpanBuilder._summary_target. */
static PyObject *
summary_target(PyObject *record)
{
    PyObject *parent = REC_ITEM(record, R_PARENT);
    PyObject *undecided = NULL;
    while (parent != Py_None && is_record(parent)) {
        int state = out_state(parent);
        if (state < 0 || state == OUT_PENDING) {
            if (undecided == NULL)
                undecided = parent;
        }
        else if (state == OUT_OPEN) {
            return parent;
        }
        else if (state == OUT_CLOSED) {
            return undecided;
        }
        parent = REC_ITEM(parent, R_PARENT);
    }
    return undecided;
}

static PyObject *
keyed_digest(Batch *b, PyObject *raw) /* new reference: SipHash-2-4 of the raw hash (an int) */
{
    uint64_t m = PyLong_AsUnsignedLongLongMask(raw);
    if (m == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLongLong(siphash24_u64(b->k0, b->k1, m));
}

/* SHARDS: keep a key iff the high 32 bits of its keyed digest fall below rate * 2**32. */
static int
digest_sampled(PyObject *digest, double rate)
{
    if (digest == Py_None)
        return 0;
    uint64_t d = PyLong_AsUnsignedLongLongMask(digest);
    if (d == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return (double)(d >> 32) < rate * 4294967296.0;
}

static int
resample(SummaryObject *summary)
{
    PyObject *kept = PyList_New(0);
    if (kept == NULL)
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(summary->calls);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *call = PyList_GET_ITEM(summary->calls, i);
        if (PyTuple_Check(call) && PyTuple_GET_SIZE(call) == 5 &&
            digest_sampled(PyTuple_GET_ITEM(call, 0), summary->rate) && PyList_Append(kept, call) < 0) {
            Py_DECREF(kept);
            return -1;
        }
    }
    Py_SETREF(summary->calls, kept);
    return 0;
}

static int
add_call(SummaryObject *summary, PyObject *call, long long cap)
{
    if (summary->rate < 1.0 && !digest_sampled(PyTuple_GET_ITEM(call, 0), summary->rate))
        return 0;
    if (PyList_Append(summary->calls, call) < 0)
        return -1;
    while (PyList_GET_SIZE(summary->calls) > cap) {
        summary->rate /= 2;
        if (resample(summary) < 0)
            return -1;
    }
    return 0;
}

static int
merge_summary(SummaryObject *mine, SummaryObject *other, long long cap)
{
    mine->count += other->count;
    mine->errors += other->errors;
    mine->wall += other->wall;
    mine->run += other->run;
    mine->cpu_total += other->cpu_total;
    mine->cpu_self += other->cpu_self;
    if (other->rate < mine->rate) {
        mine->rate = other->rate;
        if (resample(mine) < 0)
            return -1;
    }
    PyObject *calls = Py_NewRef(other->calls); /* other may be mine's own list: iterate a fixed one */
    Py_ssize_t n = PyList_GET_SIZE(calls);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (add_call(mine, PyList_GET_ITEM(calls, i), cap) < 0) {
            Py_DECREF(calls);
            return -1;
        }
    }
    Py_DECREF(calls);
    return 0;
}

/* 1 summarised, 0 no ancestor can take it, -1 error. */
static int
summarise(Batch *b, PyObject *record, PyObject *target)
{
    if (target == NULL && (target = summary_target(record)) == NULL)
        return 0;
    OutObject *tout = out_of(b, target);
    if (tout == NULL)
        return -1;
    if (tout->summaries == NULL || tout->summaries == Py_None) {
        PyObject *fresh = PyDict_New();
        if (fresh == NULL)
            return -1;
        Py_XSETREF(tout->summaries, fresh);
    }
    PyObject *summaries = tout->summaries;
    PyObject *info = REC_ITEM(record, R_INFO);
    PyObject *found = PyDict_GetItemWithError(summaries, info);
    if (found == NULL) {
        if (PyErr_Occurred())
            return -1;
        PyObject *made;
        if (b->summary_type == (PyObject *)&SummaryType) {
            made = SummaryType.tp_alloc(&SummaryType, 0);
            if (made != NULL) {
                SummaryObject *fresh = (SummaryObject *)made;
                fresh->info = Py_NewRef(info);
                fresh->rate = 1.0;
                if ((fresh->calls = PyList_New(0)) == NULL)
                    Py_CLEAR(made);
            }
        }
        else {
            made = PyObject_CallOneArg(b->summary_type, info);
        }
        if (made == NULL)
            return -1;
        int rc = PyDict_SetItem(summaries, info, made);
        Py_DECREF(made);
        if (rc < 0)
            return -1;
        found = made; /* the dict holds it */
    }
    if (!PyObject_TypeCheck(found, &SummaryType)) {
        PyErr_SetString(PyExc_TypeError, "summary is not a callspan._hotpath.Summary");
        return -1;
    }
    SummaryObject *summary = (SummaryObject *)found;
    long long start, end, cpu, susp, child;
    if (get_ll(record, R_START, &start) < 0 || get_ll(record, R_END, &end) < 0 ||
        get_ll(record, R_CPU, &cpu) < 0 || get_ll(record, R_SUSP_NS, &susp) < 0 ||
        get_ll(record, R_CHILD_CPU, &child) < 0)
        return -1;
    summary->count += 1;
    PyObject *error = REC_ITEM(record, R_ERROR);
    if (error != Py_None)
        summary->errors += 1;
    summary->wall += end - start;
    summary->run += end - start - susp;
    summary->cpu_total += cpu;
    summary->cpu_self += cpu - child;
    PyObject *args = REC_ITEM(record, R_ARGS);
    PyObject *ret = REC_ITEM(record, R_RET);
    if (args != Py_None || ret != Py_None) {
        PyObject *args_digest, *ret_digest;
        if (PyLong_CheckExact(args))
            args_digest = keyed_digest(b, args); /* a Record's compact key */
        else if (PyTuple_Check(args) && PyTuple_GET_SIZE(args) >= 1 && PyTuple_GET_ITEM(args, 0) != Py_None)
            args_digest = keyed_digest(b, PyTuple_GET_ITEM(args, 0));
        else
            args_digest = Py_NewRef(Py_None);
        if (args_digest == NULL)
            return -1;
        if (error == Py_None && PyLong_CheckExact(ret))
            ret_digest = keyed_digest(b, ret);
        else if (error == Py_None && PyTuple_Check(ret) && PyTuple_GET_SIZE(ret) >= 1 &&
                 PyTuple_GET_ITEM(ret, 0) != Py_None)
            ret_digest = keyed_digest(b, PyTuple_GET_ITEM(ret, 0));
        else
            ret_digest = Py_NewRef(Py_None);
        if (ret_digest == NULL) {
            Py_DECREF(args_digest);
            return -1;
        }
        int rc = 0;
        int listed = args_digest != Py_None || ret_digest != Py_None;
        if (listed && summary->rate < 1.0 && !digest_sampled(args_digest, summary->rate))
            listed = 0; /* not in the SHARDS sample */
        else if (listed && b->listed_tokens < 1) {
            listed = 0;
            b->calls_unlisted += 1;
        }
        else if (listed)
            b->listed_tokens -= 1;
        if (listed) {
            PyObject *call = PyTuple_New(5);
            PyObject *t0 = PyLong_FromLongLong(start + b->clock_offset);
            PyObject *t1 = PyLong_FromLongLong(end + b->clock_offset);
            PyObject *c = PyLong_FromLongLong(cpu);
            if (call == NULL || t0 == NULL || t1 == NULL || c == NULL) {
                Py_XDECREF(call);
                Py_XDECREF(t0);
                Py_XDECREF(t1);
                Py_XDECREF(c);
                rc = -1;
            }
            else {
                PyTuple_SET_ITEM(call, 0, Py_NewRef(args_digest));
                PyTuple_SET_ITEM(call, 1, Py_NewRef(ret_digest));
                PyTuple_SET_ITEM(call, 2, t0);
                PyTuple_SET_ITEM(call, 3, t1);
                PyTuple_SET_ITEM(call, 4, c);
                rc = add_call(summary, call, b->cap);
                Py_DECREF(call);
            }
        }
        Py_DECREF(args_digest);
        Py_DECREF(ret_digest);
        if (rc < 0)
            return -1;
    }
    PyObject *own = REC_ITEM(record, R_OUT);
    if (own != Py_None && PyObject_TypeCheck(own, &OutType)) {
        PyObject *children = ((OutObject *)own)->summaries;
        if (children != NULL && PyDict_Check(children) && PyDict_GET_SIZE(children)) {
            Py_INCREF(children);
            Py_ssize_t pos = 0;
            PyObject *child_info, *child;
            while (PyDict_Next(children, &pos, &child_info, &child)) {
                PyObject *mine = PyDict_GetItemWithError(summaries, child_info);
                int rc;
                if (mine == NULL)
                    rc = PyErr_Occurred() ? -1 : PyDict_SetItem(summaries, child_info, child);
                else if (!PyObject_TypeCheck(mine, &SummaryType) || !PyObject_TypeCheck(child, &SummaryType))
                    rc = (PyErr_SetString(PyExc_TypeError, "summary is not a callspan._hotpath.Summary"), -1);
                else
                    rc = merge_summary((SummaryObject *)mine, (SummaryObject *)child, b->cap);
                if (rc < 0) {
                    Py_DECREF(children);
                    return -1;
                }
            }
            Py_DECREF(children);
        }
    }
    put_obj(record, R_OUT, Py_NewRef(b->summarised_out));
    b->calls_summarised += 1;
    return 1;
}

static int
call_close(Batch *b, PyObject *record, PyObject *out) /* builder._close(record, out or _out(record)) */
{
    if (batch_store(b) < 0)
        return -1;
    PyObject *done;
    if (out == NULL) {
        out = PyObject_CallMethod(b->builder, "_out", "O", record);
        if (out == NULL)
            return -1;
        done = PyObject_CallMethod(b->builder, "_close", "OO", record, out);
        Py_DECREF(out);
    }
    else {
        done = PyObject_CallMethod(b->builder, "_close", "OO", record, out);
    }
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return batch_load(b);
}

/* The open unsampled window's holder (new reference), widened to ``record``; created through
 * SpanBuilder._unsampled_record when there is none. */
static PyObject *
unsampled_holder(Batch *b, PyObject *record)
{
    PyObject *holder = b->holder;
    if (holder != NULL) {
        Py_INCREF(holder);
        long long start, end, hstart, hend;
        if (get_ll(record, R_START, &start) < 0 || get_ll(record, R_END, &end) < 0 ||
            get_ll(holder, R_START, &hstart) < 0 || get_ll(holder, R_END, &hend) < 0 ||
            (start < hstart && put_ll(holder, R_START, start) < 0) ||
            (end > hend && put_ll(holder, R_END, end) < 0)) {
            Py_DECREF(holder);
            return NULL;
        }
        return holder;
    }
    if (batch_store(b) < 0)
        return NULL;
    holder = PyObject_CallMethod(b->builder, "_unsampled_record", "O", record);
    if (holder == NULL || batch_load(b) < 0) {
        Py_XDECREF(holder);
        return NULL;
    }
    if (!is_record(holder)) {
        Py_DECREF(holder);
        PyErr_SetString(PyExc_TypeError, "unsampled holder is not a record");
        return NULL;
    }
    Py_XSETREF(b->holder, Py_NewRef(holder));
    return holder;
}

static int
to_unsampled(Batch *b, PyObject *record)
{
    PyObject *holder = unsampled_holder(b, record);
    if (holder == NULL)
        return -1;
    int rc = summarise(b, record, holder);
    Py_DECREF(holder);
    return rc < 0 ? -1 : 0;
}

/* SpanBuilder._process_python, one record. */
static int
process_one(Batch *b, PyObject *record)
{
    if (!is_record(record)) {
        PyErr_SetString(PyExc_TypeError, "not a call record");
        return -1;
    }
    PyObject *out = REC_ITEM(record, R_OUT);
    int state = out == Py_None ? OUT_PENDING : out_state(record);
    if (state == OUT_OPEN)
        return call_close(b, record, out);
    PyObject *root = REC_ITEM(record, R_ROOT);
    if (state == OUT_UNSAMPLED || (root == Py_None && state == OUT_PENDING)) {
        if (state == OUT_PENDING) {
            int token = has_token(b);
            if (token < 0)
                return -1;
            if (token)
                return call_close(b, record, NULL);
        }
        b->traces_unsampled += 1;
        return to_unsampled(b, record);
    }
    if (state != OUT_PENDING)
        return 0; /* already closed or summarised (e.g. ended at stop, then finished) */
    if (!is_record(root)) {
        PyErr_SetString(PyExc_TypeError, "root is not a record");
        return -1;
    }
    if (out_state(root) == OUT_UNSAMPLED)
        return to_unsampled(b, record);
    int accepted = accept_record(b, record);
    if (accepted < 0)
        return -1;
    if (accepted)
        return call_close(b, record, NULL);
    OutObject *root_out = out_of(b, root);
    if (root_out == NULL)
        return -1;
    if (b->tokens < 1 && root_out->state == OUT_PENDING && root_out->kept == 0) {
        /* No span token and none of this trace kept yet: the whole trace is unsampled. */
        root_out->state = OUT_UNSAMPLED;
        return to_unsampled(b, record);
    }
    int done = summarise(b, record, NULL);
    if (done < 0)
        return -1;
    if (done)
        return 0;
    return call_close(b, record, NULL);
}

/* process_records(builder, records): SpanBuilder.process's loop (without the final close of
 * the unsampled holder, which the Python caller does). */
static PyObject *
py_process_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "process_records(builder, records: list)");
        return NULL;
    }
    Batch b;
    memset(&b, 0, sizeof b);
    b.builder = args[0];
    PyObject *key = NULL, *collections = NULL;
    PyObject *result = NULL;
    if ((b.out_type = PyObject_GetAttrString(b.builder, "_out_type")) == NULL ||
        (b.summary_type = PyObject_GetAttrString(b.builder, "_summary_type")) == NULL ||
        (b.summarised_out = PyObject_GetAttrString(b.builder, "_summarised_out")) == NULL ||
        (b.monotonic = PyObject_GetAttrString(b.builder, "_monotonic")) == NULL ||
        (key = PyObject_GetAttrString(b.builder, "_sip_key")) == NULL)
        goto finally;
    if ((collections = PyImport_ImportModule("collections")) == NULL ||
        (b.deque_type = PyObject_GetAttrString(collections, "deque")) == NULL)
        goto finally;
    if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2) {
        PyErr_SetString(PyExc_TypeError, "builder._sip_key must be (k0, k1)");
        goto finally;
    }
    b.k0 = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(key, 0));
    b.k1 = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(key, 1));
    if (PyErr_Occurred() || attr_ll(b.builder, "max_spans", &b.max_spans) < 0 ||
        attr_ll(b.builder, "max_summary_calls", &b.cap) < 0 ||
        attr_ll(b.builder, "clock_offset", &b.clock_offset) < 0 ||
        attr_double(b.builder, "max_spans_per_second", &b.rate) < 0 || batch_load(&b) < 0)
        goto finally;
    PyObject *open_holder = PyObject_GetAttrString(b.builder, "_unsampled");
    if (open_holder == NULL)
        goto finally;
    if (is_record(open_holder))
        b.holder = open_holder;
    else
        Py_DECREF(open_holder);
    Py_ssize_t n = PyList_GET_SIZE(args[1]);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = Py_NewRef(PyList_GET_ITEM(args[1], i));
        int rc = process_one(&b, record);
        Py_DECREF(record);
        if (rc < 0) {
            batch_store(&b);
            goto finally;
        }
    }
    if (batch_store(&b) < 0)
        goto finally;
    result = Py_NewRef(Py_None);
finally:
    Py_XDECREF(b.out_type);
    Py_XDECREF(b.summary_type);
    Py_XDECREF(b.summarised_out);
    Py_XDECREF(b.monotonic);
    Py_XDECREF(b.deque_type);
    Py_XDECREF(b.holder);
    Py_XDECREF(collections);
    Py_XDECREF(key);
    return result;
}


/* ---------------------------------------------------------------------------------------- */
/* Per-thread state and per-code facts as C structs the hot path reads directly; the Python
 * classes callspan.recorder.ThreadState and callspan.selection.CodeInfo derive from these. */

typedef struct {
    PyObject_HEAD
    PyObject *stack; /* list of running records */
    PyObject *ident;
    PyObject *name;
    PyObject *cpu;   /* the thread's CPU reader, or None */
    long cpu_fd;     /* see callspan.counters.native_reader */
} ThreadStateObject;

static PyMemberDef ThreadState_members[] = {
    {"stack", T_OBJECT, offsetof(ThreadStateObject, stack), 0, NULL},
    {"ident", T_OBJECT, offsetof(ThreadStateObject, ident), 0, NULL},
    {"name", T_OBJECT, offsetof(ThreadStateObject, name), 0, NULL},
    {"cpu", T_OBJECT, offsetof(ThreadStateObject, cpu), 0, NULL},
    {"cpu_fd", T_LONG, offsetof(ThreadStateObject, cpu_fd), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

MEMBER_GC_FUNCS(ThreadState)

static PyTypeObject ThreadStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan._hotpath.ThreadStateBase",
    .tp_basicsize = sizeof(ThreadStateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "fields of callspan.recorder.ThreadState",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)ThreadState_dealloc,
    .tp_traverse = (traverseproc)ThreadState_traverse,
    .tp_clear = (inquiry)ThreadState_clear,
    .tp_members = ThreadState_members,
};

typedef struct {
    PyObject_HEAD
    PyObject *code;
    int kind;
    char keys;
    char is_method;
    PyObject *arg_names; /* tuple of positional parameter names */
    PyObject *varargs;   /* name or None */
    PyObject *kwonly;    /* tuple */
    PyObject *varkw;     /* name or None */
    long unkeyed;        /* consecutive calls whose arguments could not be keyed */
    unsigned long sized; /* calls whose return value size was considered (see RET_SIZE_EVERY) */
    PyObject *unkeyed_args; /* (None, names, False) once unkeyed reached UNKEYABLE_AFTER */
} CodeInfoObject;

#define UNKEYABLE_AFTER 64 /* callspan.keys.UNKEYABLE_AFTER */
#define RET_SIZE_EVERY 16  /* callspan.keys.RET_SIZE_EVERY */

static PyMemberDef CodeInfo_members[] = {
    {"code", T_OBJECT, offsetof(CodeInfoObject, code), 0, NULL},
    {"kind", T_INT, offsetof(CodeInfoObject, kind), 0, NULL},
    {"keys", T_BOOL, offsetof(CodeInfoObject, keys), 0, NULL},
    {"is_method", T_BOOL, offsetof(CodeInfoObject, is_method), 0, NULL},
    {"arg_names", T_OBJECT, offsetof(CodeInfoObject, arg_names), 0, NULL},
    {"varargs", T_OBJECT, offsetof(CodeInfoObject, varargs), 0, NULL},
    {"kwonly", T_OBJECT, offsetof(CodeInfoObject, kwonly), 0, NULL},
    {"varkw", T_OBJECT, offsetof(CodeInfoObject, varkw), 0, NULL},
    {"unkeyed", T_LONG, offsetof(CodeInfoObject, unkeyed), 0, NULL},
    {"sized", T_ULONG, offsetof(CodeInfoObject, sized), 0, NULL},
    {"unkeyed_args", T_OBJECT, offsetof(CodeInfoObject, unkeyed_args), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

MEMBER_GC_FUNCS(CodeInfo)

static PyTypeObject CodeInfoType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan._hotpath.CodeInfoBase",
    .tp_basicsize = sizeof(CodeInfoObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "fields of callspan.selection.CodeInfo the hot path reads",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)CodeInfo_dealloc,
    .tp_traverse = (traverseproc)CodeInfo_traverse,
    .tp_clear = (inquiry)CodeInfo_clear,
    .tp_members = CodeInfo_members,
};

/* ---------------------------------------------------------------------------------------- */
/* The hot path: sys.monitoring callbacks (3.12+) and a C profile function (setprofile, 3.11+). */

#if PY_VERSION_HEX >= 0x030C0000
#define frame_get_var(frame, locals, name) PyFrame_GetVar((frame), (name))
#else
/* 3.11 has no PyFrame_GetVar: read the frame's locals mapping (taken once per key). */
static PyObject *
frame_get_var(PyFrameObject *frame, PyObject *locals, PyObject *name)
{
    PyObject *value = locals ? PyObject_GetItem(locals, name) : NULL;
    if (value == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_NameError, "variable %R does not exist", name);
    return value;
}
#endif

typedef struct {
    PyObject *code;
    PyObject *info;
} MapEntry;

typedef struct {
    PyObject_HEAD
    PyObject *recorder;
    PyObject *infos;          /* dict: code -> CodeInfo or None */
    PyObject *decide;         /* recorder.decide(code, frame) */
    PyObject *states;         /* dict: thread ident -> ThreadState */
    PyObject *thread_state;   /* recorder.thread_state() */
    PyObject *finished;       /* deque of finished records */
    PyObject *suspended;      /* dict: id(frame) -> record */
    PyObject *evict;          /* recorder.evict_oldest_suspended() */
    PyObject *clock;          /* NULL: CLOCK_MONOTONIC (what time.perf_counter_ns reads) */
    PyObject *context_getter; /* NULL or callable */
    PyObject *current;        /* the ContextVar of the innermost running traced coroutine */
    PyObject *disable;        /* sys.monitoring.DISABLE */
    PyObject *kwd_mark;
    PyObject *generator_exit;
    Py_ssize_t max_pending;
    Py_ssize_t max_suspended;
    uint64_t serial;          /* this session's key in the per-thread cache (get_state) */
    int profiling;            /* the profile function acts only while this is set */
    PyObject *unknown_exc;    /* setprofile: stands in for an exception it cannot name */
    unsigned char op_kind[256]; /* setprofile: 1 return opcode, 2 yield opcode */
    int resume_op;            /* setprofile: RESUME, and whether 3.13 reports yields there */
    int yield_at_resume;
    MapEntry *map;            /* the decision cache (see info_of) */
    Py_ssize_t map_mask;
    Py_ssize_t map_used;
} HotPath;

static PyObject *str_faults, *str_dropped;
static PyObject *str_error;

static void
count_on_recorder(HotPath *hp, PyObject *name)
{
    /* Called with no exception set; leaves none set. */
    PyObject *value = PyObject_GetAttr(hp->recorder, name);
    if (value != NULL) {
        PyObject *one = PyLong_FromLong(1);
        PyObject *sum = one ? PyNumber_Add(value, one) : NULL;
        if (sum != NULL) {
            PyObject_SetAttr(hp->recorder, name, sum);
            Py_DECREF(sum);
        }
        Py_XDECREF(one);
        Py_DECREF(value);
    }
    PyErr_Clear();
}

/* An error inside the hook: counted and dropped, except KeyboardInterrupt, SystemExit and the
 * like (raised by user code the hook ran, e.g. a __hash__, when a signal arrived): those are
 * kept and raised into the application when the callback returns, as the Python cores let them
 * through. */

static void
fault(HotPath *hp)
{
    int interrupt = PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception);
    drop_error();
    if (!interrupt)
        count_on_recorder(hp, str_faults);
}

/* Raise the stashed interrupt, if any: 1 when there was one. */
static int
raise_stash(void)
{
    if (stash_type == NULL)
        return 0;
    PyErr_Restore(stash_type, stash_value, stash_tb);
    stash_type = stash_value = stash_tb = NULL;
    return 1;
}

/* The callback's result, or NULL with the stashed interrupt raised. */
static PyObject *
callback_result(PyObject *result)
{
    if (!raise_stash())
        return result;
    Py_XDECREF(result);
    return NULL;
}

static int
read_clock(HotPath *hp, long long *out)
{
    if (hp->clock == NULL) {
        *out = monotonic_ns();
        return 0;
    }
    PyObject *value = PyObject_CallNoArgs(hp->clock);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* The thread's CPU reading, by ThreadState.cpu_fd: -3 thread CPU time read at most once per
 * interval, -2 thread CPU time, >= 0 a perf_event fd (all read natively), -1 call the reader
 * (injected counters in tests). Returns 1 when the thread has no counter. */
static int
read_cpu(ThreadStateObject *ts, long long *out)
{
    PyObject *cpu = ts->cpu;
    if (cpu == NULL || cpu == Py_None)
        return 1; /* no counter */
    long fd = ts->cpu_fd;
    if (fd == -3) {
        IntervalClock *clock = &thread_interval_clock;
        long long now = monotonic_ns();
        int need_real;
        *out = interval_step(clock, cpu_interval_ns, now, &need_real);
        if (need_real)
            *out = interval_commit(clock, now, thread_cpu_ns());
        return 0;
    }
    if (fd == -2) {
        *out = thread_cpu_ns();
        return 0;
    }
    if (fd >= 0) {
        uint64_t value = 0;
        if (read((int)fd, &value, sizeof value) != (ssize_t)sizeof value) {
            PyErr_SetString(PyExc_OSError, "perf_event read failed");
            return -1;
        }
        *out = (long long)value;
        return 0;
    }
    PyObject *value = PyObject_CallNoArgs(cpu);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Borrowed ThreadState of this thread (created when ``create``), or NULL: with an exception
 * set on error, without one when the thread has no state and create is 0. */
/* This thread's state for the session that looked it up last: sessions get serial numbers
 * that are never reused, so a stale entry never matches. The state is borrowed from
 * recorder.states, which drops it only when its thread ends (and this cache with it). */
static uint64_t next_serial = 1;
static __thread struct {
    uint64_t serial;
    ThreadStateObject *state;
} thread_cache __attribute__((tls_model("initial-exec")));

static ThreadStateObject *get_state_slow(HotPath *hp, int create);

static inline ThreadStateObject *
get_state(HotPath *hp, int create)
{
    if (thread_cache.serial == hp->serial)
        return thread_cache.state;
    ThreadStateObject *state = get_state_slow(hp, create);
    if (state != NULL) {
        thread_cache.serial = hp->serial;
        thread_cache.state = state;
    }
    return state;
}

static ThreadStateObject *
get_state_slow(HotPath *hp, int create)
{
    PyObject *key = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (key == NULL)
        return NULL;
    PyObject *state = PyDict_GetItemWithError(hp->states, key);
    Py_DECREF(key);
    if (state == NULL) {
        if (PyErr_Occurred() || !create)
            return NULL;
        PyObject *made = PyObject_CallNoArgs(hp->thread_state);
        if (made == NULL)
            return NULL;
        Py_DECREF(made); /* recorder.states holds it */
        state = made;
    }
    if (!PyObject_TypeCheck(state, &ThreadStateType) || ((ThreadStateObject *)state)->stack == NULL ||
        !PyList_Check(((ThreadStateObject *)state)->stack)) {
        PyErr_SetString(PyExc_TypeError, "thread state is not a callspan._hotpath.ThreadStateBase with a stack");
        return NULL;
    }
    return (ThreadStateObject *)state;
}

static CodeInfoObject *
as_info(PyObject *info)
{
    if (!PyObject_TypeCheck(info, &CodeInfoType)) {
        PyErr_SetString(PyExc_TypeError, "not a callspan._hotpath.CodeInfoBase");
        return NULL;
    }
    CodeInfoObject *ci = (CodeInfoObject *)info;
    if (ci->code == NULL || ci->arg_names == NULL || !PyTuple_Check(ci->arg_names) || ci->kwonly == NULL ||
        !PyTuple_Check(ci->kwonly)) {
        PyErr_SetString(PyExc_TypeError, "CodeInfo is not initialised");
        return NULL;
    }
    return ci;
}

static int
is_set(PyObject *obj)
{
    return obj != NULL && obj != Py_None;
}

/* hash(tuple(items)) without making the tuple: CPython's tuple hash (xxHash-based, the same in
 * 3.8 to 3.13; equality with hash() is tested against keys.args_key). */
static Py_hash_t
tuple_hash_of(PyObject *const *items, Py_ssize_t len)
{
#if SIZEOF_PY_HASH_T > 4
    const Py_uhash_t prime1 = 11400714785074694791ULL, prime2 = 14029467366897019727ULL,
                     prime5 = 2870177450012600261ULL;
#define XXROTATE(x) ((x << 31) | (x >> 33))
#else
    const Py_uhash_t prime1 = 2654435761UL, prime2 = 2246822519UL, prime5 = 374761393UL;
#define XXROTATE(x) ((x << 13) | (x >> 19))
#endif
    Py_uhash_t acc = prime5;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_uhash_t lane = (Py_uhash_t)PyObject_Hash(items[i]);
        if (lane == (Py_uhash_t)-1)
            return -1;
        acc += lane * prime2;
        acc = XXROTATE(acc);
        acc *= prime1;
    }
#undef XXROTATE
    acc += (Py_uhash_t)len ^ (prime5 ^ 3527539UL);
    if (acc == (Py_uhash_t)-1)
        return 1546275796;
    return (Py_hash_t)acc;
}

/* (raw hash or fingerprint or None, unhashable type names, self hashed by identity) as
 * keys.args_key computes it, reading the arguments from the frame. The key's items are
 * gathered in a C array and hashed as the lru_cache key tuple would be; the tuple itself is
 * only made for unhashable keys (fingerprint, type names). */
static PyObject *
args_key(HotPath *hp, CodeInfoObject *ci, PyFrameObject *frame)
{
    PyObject *arg_names = ci->arg_names;
    PyObject *kwonly = ci->kwonly;
    int is_method = ci->is_method;
    Py_ssize_t nargs = PyTuple_GET_SIZE(arg_names);
    Py_ssize_t nkwonly = PyTuple_GET_SIZE(kwonly);
    PyObject *extra = NULL, *kwdict = NULL, *key = NULL, *result = NULL, *locals = NULL;
    PyObject *stack_items[16];
    PyObject **items = stack_items;
    Py_ssize_t filled = 0; /* references held in items */
#if PY_VERSION_HEX < 0x030C0000
    if ((locals = PyFrame_GetLocals(frame)) == NULL)
        return NULL;
#endif
    if (is_set(ci->varargs)) {
        extra = frame_get_var(frame, locals, ci->varargs);
        if (extra == NULL || !PyTuple_Check(extra))
            goto error;
    }
    if (is_set(ci->varkw)) {
        kwdict = frame_get_var(frame, locals, ci->varkw);
        if (kwdict == NULL || !PyDict_Check(kwdict))
            goto error;
    }
    Py_ssize_t nextra = extra ? PyTuple_GET_SIZE(extra) : 0;
    Py_ssize_t total = nargs + nextra;
    int keyword_part = nkwonly > 0 || kwdict != NULL;
    if (keyword_part)
        total += 1 + 2 * nkwonly + (kwdict ? 2 * PyDict_GET_SIZE(kwdict) : 0);
    if (total > (Py_ssize_t)(sizeof(stack_items) / sizeof(stack_items[0]))) {
        items = PyMem_Malloc(total * sizeof(PyObject *));
        if (items == NULL) {
            PyErr_NoMemory();
            goto error;
        }
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *value = frame_get_var(frame, locals, PyTuple_GET_ITEM(arg_names, i));
        if (value == NULL)
            goto error;
        items[filled++] = value;
    }
    for (Py_ssize_t i = 0; i < nextra; i++)
        items[filled++] = Py_NewRef(PyTuple_GET_ITEM(extra, i));
    if (keyword_part) {
        items[filled++] = Py_NewRef(hp->kwd_mark);
        for (Py_ssize_t i = 0; i < nkwonly; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwonly, i);
            PyObject *value = frame_get_var(frame, locals, name);
            if (value == NULL)
                goto error;
            items[filled++] = Py_NewRef(name);
            items[filled++] = value;
        }
        if (kwdict != NULL) {
            Py_ssize_t pos = 0;
            PyObject *k, *v;
            while (filled + 1 < total && PyDict_Next(kwdict, &pos, &k, &v)) {
                items[filled++] = Py_NewRef(k);
                items[filled++] = Py_NewRef(v);
            }
        }
    }
    while (filled < total) /* a kwargs dict that shrank meanwhile: cannot happen, but stay valid */
        items[filled++] = Py_NewRef(Py_None);

    PyObject *identity = Py_False;
    if (is_method && nargs > 0 && Py_TYPE(items[0])->tp_hash == PyBaseObject_Type.tp_hash)
        identity = Py_True;
    /* lru_cache keys a lone int/str argument as itself */
    int lone = total == 1 && (PyLong_CheckExact(items[0]) || PyUnicode_CheckExact(items[0]));
    int unhashable = 0;
    for (Py_ssize_t i = 0; i < total; i++) {
        if (Py_TYPE(items[i])->tp_hash == PyObject_HashNotImplemented) {
            unhashable = 1;
            break;
        }
    }
    Py_hash_t h = -1;
    if (!unhashable) {
        h = lone ? PyObject_Hash(items[0]) : tuple_hash_of(items, total);
        if (h == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                if (!PyErr_ExceptionMatches(PyExc_Exception))
                    goto error; /* an interrupt: the application's (see fault) */
                PyErr_Clear();
                result = PyTuple_Pack(3, Py_None, str_error, identity);
                goto done;
            }
            PyErr_Clear();
            unhashable = 1;
        }
    }
    if (unhashable) {
        PyObject *hashed;
        if (lone) {
            hashed = items[0];
        }
        else {
            if ((key = PyTuple_New(total)) == NULL)
                goto error;
            for (Py_ssize_t i = 0; i < total; i++)
                PyTuple_SET_ITEM(key, i, Py_NewRef(items[i]));
            hashed = key;
        }
        PyObject *names = unhashable_names(hashed);
        if (names == NULL)
            goto error;
        result = Py_BuildValue("(NNO)", fingerprint_object(hashed), names, identity);
    }
    else {
        PyObject *raw = PyLong_FromSsize_t(h);
        if (raw == NULL)
            goto error;
        if (identity == Py_False) {
            result = raw; /* the common case, compact: a Record reads it back as (raw, "", False) */
        }
        else {
            result = PyTuple_Pack(3, raw, str_empty, identity);
            Py_DECREF(raw);
            if (result != NULL) /* atomic contents: it can never be part of a cycle */
                PyObject_GC_UnTrack(result);
        }
    }
done:
    for (Py_ssize_t i = 0; i < filled; i++)
        Py_DECREF(items[i]);
    if (items != stack_items)
        PyMem_Free(items);
    Py_XDECREF(extra);
    Py_XDECREF(kwdict);
    Py_XDECREF(key);
    Py_XDECREF(locals);
    return result;
error:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "unexpected frame variables");
    Py_CLEAR(result);
    goto done;
}

/* (raw hash or fingerprint or None, hashable) as keys.value_key computes it. */
static PyObject *
value_key(HotPath *hp, PyObject *value)
{
    if (Py_TYPE(value)->tp_hash != PyObject_HashNotImplemented) {
        Py_hash_t h = PyObject_Hash(value);
        if (h != -1 || !PyErr_Occurred()) {
            /* compact: a Record reads a bare int back as (raw, True) */
            return PyLong_FromSsize_t(h);
        }
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return NULL; /* an interrupt: the application's (see fault) */
            PyErr_Clear();
            return PyTuple_Pack(2, Py_None, Py_False);
        }
        PyErr_Clear();
    }
    return Py_BuildValue("(NO)", fingerprint_object(value), Py_False);
}

/* -- the four transitions (mirror callspan/recorder.py) ---------------------------------- */

static int
hp_start(HotPath *hp, PyObject *info, PyFrameObject *frame)
{
    PyObject *parent = NULL, *prev = NULL;
    PyObject *record = NULL, *args = NULL, *context = NULL;
    int rc = -1;
    CodeInfoObject *ci = as_info(info);
    if (ci == NULL)
        return -1;
    ThreadStateObject *ts = get_state(hp, 1);
    if (ts == NULL)
        goto finally;
    PyObject *stack = ts->stack;
    int kind = ci->kind;
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    parent = Py_NewRef(depth ? PyList_GET_ITEM(stack, depth - 1) : Py_None);
    PyObject *via_task = Py_False;
    prev = Py_NewRef(Py_None);
    if (kind == KIND_COROUTINE) {
        Py_CLEAR(prev);
        if (PyContextVar_Get(hp->current, Py_None, &prev) < 0)
            goto finally;
        if (prev != Py_None && prev != parent) {
            Py_SETREF(parent, Py_NewRef(prev));
            via_task = Py_True;
        }
    }
    else if (parent == Py_None) {
        PyObject *found = NULL;
        if (PyContextVar_Get(hp->current, Py_None, &found) < 0)
            goto finally;
        Py_SETREF(parent, found);
        via_task = parent != Py_None ? Py_True : Py_False;
    }
    PyObject *root;
    if (parent == Py_None) {
        root = Py_None;
        if (hp->context_getter != NULL && (context = PyObject_CallNoArgs(hp->context_getter)) == NULL)
            goto finally;
    }
    else {
        if (!is_record(parent)) {
            PyErr_SetString(PyExc_TypeError, "parent is not a record");
            goto finally;
        }
        root = REC_ITEM(parent, R_ROOT);
        if (root == Py_None)
            root = parent;
    }
    if (ci->keys) {
        if (ci->unkeyed >= UNKEYABLE_AFTER && is_set(ci->unkeyed_args)) {
            args = Py_NewRef(ci->unkeyed_args); /* never keyable: not tried again */
        }
        else {
            if (frame == NULL) {
                PyErr_SetString(PyExc_RuntimeError, "no frame");
                goto finally;
            }
            if ((args = args_key(hp, ci, frame)) == NULL)
                goto finally;
            /* a compact key (a bare hash) is keyed; a tuple is unkeyed when it has no hash */
            PyObject *names = PyLong_CheckExact(args) ? NULL : PyTuple_GET_ITEM(args, 1);
            if (names != NULL && PyTuple_GET_ITEM(args, 0) == Py_None && PyUnicode_GET_LENGTH(names) &&
                PyUnicode_CompareWithASCIIString(names, "error") != 0) {
                if (++ci->unkeyed == UNKEYABLE_AFTER) {
                    PyObject *fixed = PyTuple_Pack(3, Py_None, names, Py_False);
                    if (fixed == NULL)
                        goto finally;
                    Py_XSETREF(ci->unkeyed_args, fixed);
                }
            }
            else {
                ci->unkeyed = 0;
            }
        }
    }
    RecordObject *made = PyObject_New(RecordObject, &RecordType);
    if (made == NULL)
        goto finally;
    record = (PyObject *)made;
    PyObject **o = made->o;
    o[OBJ_SLOT[R_INFO] - 1] = Py_NewRef(info);
    o[OBJ_SLOT[R_PARENT] - 1] = Py_NewRef(parent);
    o[OBJ_SLOT[R_ROOT] - 1] = Py_NewRef(root);
    o[OBJ_SLOT[R_ARGS] - 1] = args ? Py_NewRef(args) : Py_NewRef(Py_None);
    o[OBJ_SLOT[R_RET] - 1] = Py_NewRef(Py_None);
    o[OBJ_SLOT[R_RET_SIZE] - 1] = PyLong_FromLong(0); /* a cached small int: cannot fail */
    o[OBJ_SLOT[R_ERROR] - 1] = Py_NewRef(Py_None);
    o[OBJ_SLOT[R_THREAD] - 1] = Py_NewRef((PyObject *)ts);
    o[OBJ_SLOT[R_CONTEXT] - 1] = context ? Py_NewRef(context) : Py_NewRef(Py_None);
    o[OBJ_SLOT[R_PREV_CURRENT] - 1] = Py_NewRef(prev);
    o[OBJ_SLOT[R_VIA_TASK] - 1] = Py_NewRef(via_task);
    o[OBJ_SLOT[R_INCOMPLETE] - 1] = Py_NewRef(Py_False);
    o[OBJ_SLOT[R_OUT] - 1] = Py_NewRef(Py_None);
    memset(made->n, 0, sizeof(made->n));
    /* Records never form reference cycles (they point to parents, infos, their thread state,
     * never to children), so they are not GC objects: hundreds of thousands may wait for the
     * builder, and the cyclic GC would traverse them all on every full collection. */
    if (PyList_Append(stack, record) < 0)
        goto finally;
    if (kind == KIND_COROUTINE) {
        PyObject *token = PyContextVar_Set(hp->current, record);
        if (token == NULL)
            goto finally;
        Py_DECREF(token);
    }
    long long value;
    int got = read_cpu(ts, &value);
    if (got < 0 || (got == 0 && put_ll(record, R_SEG_CPU, value) < 0))
        goto finally;
    if (read_clock(hp, &value) < 0 || put_ll(record, R_START, value) < 0)
        goto finally;
    rc = 0;
finally:
    Py_XDECREF(parent);
    Py_XDECREF(prev);
    Py_XDECREF(record);
    Py_XDECREF(args);
    Py_XDECREF(context);
    return rc;
}

/* Pops this thread's innermost record if it belongs to ``code``: a new reference, or NULL (an
 * exception set on error; none when the record is not ours). */
static PyObject *
pop_own(HotPath *hp, PyObject *code, ThreadStateObject **ts_out)
{
    ThreadStateObject *ts = get_state(hp, 0);
    *ts_out = ts;
    if (ts == NULL)
        return NULL;
    PyObject *stack = ts->stack;
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    if (depth == 0)
        return NULL;
    PyObject *top = PyList_GET_ITEM(stack, depth - 1);
    CodeInfoObject *ci = as_info(REC_ITEM(top, R_INFO));
    if (ci == NULL)
        return NULL;
    if (ci->code != code) /* started before tracing began */
        return NULL;
    /* Pop: the list keeps its capacity; the reference moves to the caller. */
    PyList_SET_ITEM(stack, depth - 1, NULL);
    Py_SET_SIZE(stack, depth - 1);
    return top;
}

/* record[CPU] += cpu() - record[SEG_CPU]; 1 when there is no counter. */
static int
close_segment(ThreadStateObject *ts, PyObject *record)
{
    long long now, seg, total;
    int got = read_cpu(ts, &now);
    if (got != 0)
        return got;
    if (get_ll(record, R_SEG_CPU, &seg) < 0 || get_ll(record, R_CPU, &total) < 0)
        return -1;
    return put_ll(record, R_CPU, total + now - seg);
}

static int
hp_finish(HotPath *hp, PyObject *code, PyObject *value, PyObject *error)
{
    long long now;
    if (read_clock(hp, &now) < 0)
        return -1;
    ThreadStateObject *ts;
    PyObject *record = pop_own(hp, code, &ts);
    if (record == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int rc = -1;
    CodeInfoObject *ci = (CodeInfoObject *)REC_ITEM(record, R_INFO); /* checked by pop_own */
    int counted = close_segment(ts, record);
    if (counted < 0 || put_ll(record, R_END, now) < 0)
        goto finally;
    if (error == NULL) {
        if (ci->keys && ci->unkeyed < UNKEYABLE_AFTER) {
            PyObject *ret = value_key(hp, value);
            if (ret == NULL)
                goto finally;
            put_obj(record, R_RET, ret);
            if (ci->sized++ % RET_SIZE_EVERY == 0) {
                size_t bytes = _PySys_GetSizeOf(value); /* sys.getsizeof(value, 0) */
                if (bytes == (size_t)-1 && PyErr_Occurred()) {
                    if (!PyErr_ExceptionMatches(PyExc_TypeError))
                        goto finally;
                    PyErr_Clear();
                    bytes = 0;
                }
                if (put_ll(record, R_RET_SIZE, (long long)bytes) < 0)
                    goto finally;
            }
            else {
                put_obj(record, R_RET_SIZE, Py_NewRef(Py_None));
            }
        }
    }
    else if (!PyObject_TypeCheck(error, (PyTypeObject *)hp->generator_exit)) {
        put_obj(record, R_ERROR, Py_NewRef((PyObject *)Py_TYPE(error)));
    }
    Py_ssize_t depth = PyList_GET_SIZE(ts->stack);
    if (depth && counted == 0) {
        PyObject *parent = PyList_GET_ITEM(ts->stack, depth - 1);
        if (parent == REC_ITEM(record, R_PARENT)) {
            long long mine, theirs;
            if (get_ll(record, R_CPU, &mine) < 0 || get_ll(parent, R_CHILD_CPU, &theirs) < 0 ||
                put_ll(parent, R_CHILD_CPU, theirs + mine) < 0)
                goto finally;
        }
    }
    if (ci->kind == KIND_COROUTINE) {
        PyObject *token = PyContextVar_Set(hp->current, REC_ITEM(record, R_PREV_CURRENT));
        if (token == NULL)
            goto finally;
        Py_DECREF(token);
    }
    if (PyList_GET_SIZE(hp->finished) < hp->max_pending) {
        if (PyList_Append(hp->finished, record) < 0)
            goto finally;
    }
    else {
        count_on_recorder(hp, str_dropped);
    }
    rc = 0;
finally:
    Py_DECREF(record);
    return rc;
}

static int
hp_suspend(HotPath *hp, PyObject *code, PyFrameObject *frame)
{
    long long now;
    if (read_clock(hp, &now) < 0)
        return -1;
    ThreadStateObject *ts;
    PyObject *record = pop_own(hp, code, &ts);
    if (record == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int rc = -1;
    long long count;
    PyObject *key = NULL;
    if (close_segment(ts, record) < 0 || get_ll(record, R_SUSPENDS, &count) < 0 ||
        put_ll(record, R_SUSPENDS, count + 1) < 0 || put_ll(record, R_SUSP_AT, now) < 0)
        goto finally;
    if (PyDict_GET_SIZE(hp->suspended) >= hp->max_suspended) {
        PyObject *done = PyObject_CallNoArgs(hp->evict);
        if (done == NULL)
            goto finally;
        Py_DECREF(done);
    }
    if ((key = PyLong_FromVoidPtr(frame)) == NULL || PyDict_SetItem(hp->suspended, key, record) < 0)
        goto finally;
    rc = 0;
finally:
    Py_XDECREF(key);
    Py_DECREF(record);
    return rc;
}

static int
hp_resume(HotPath *hp, PyFrameObject *frame)
{
    PyObject *key = PyLong_FromVoidPtr(frame);
    if (key == NULL)
        return -1;
    PyObject *record = PyDict_GetItemWithError(hp->suspended, key);
    if (record == NULL) {
        Py_DECREF(key);
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(record);
    int deleted = PyDict_DelItem(hp->suspended, key);
    Py_DECREF(key);
    if (deleted < 0) {
        Py_DECREF(record);
        return -1;
    }
    int rc = -1;
    PyCodeObject *code = PyFrame_GetCode(frame);
    CodeInfoObject *ci = as_info(REC_ITEM(record, R_INFO));
    if (ci == NULL)
        goto finally;
    if (ci->code != (PyObject *)code) {
        rc = 0;
        goto finally;
    }
    ThreadStateObject *ts = get_state(hp, 1);
    if (ts == NULL)
        goto finally;
    long long now, at, total;
    if (read_clock(hp, &now) < 0 || get_ll(record, R_SUSP_AT, &at) < 0 ||
        get_ll(record, R_SUSP_NS, &total) < 0 || put_ll(record, R_SUSP_NS, total + now - at) < 0)
        goto finally;
    if (PyList_Append(ts->stack, record) < 0)
        goto finally;
    int got = read_cpu(ts, &now);
    if (got < 0 || (got == 0 && put_ll(record, R_SEG_CPU, now) < 0))
        goto finally;
    rc = 0;
finally:
    Py_XDECREF(code);
    Py_DECREF(record);
    return rc;
}

/* -- the decision cache: code object -> CodeInfo or None, per session ------------------------
 * The recorder's infos dict is the record of decisions; this open-addressing table keyed by the
 * code object's address avoids hashing code objects (code_hash walks the code's fields) on every
 * event. It holds strong references, so an address cannot be reused while it is in the table. */

static Py_ssize_t
map_slot(HotPath *hp, PyObject *code)
{
    uint64_t h = ((uint64_t)(uintptr_t)code >> 4) * 0x9E3779B97F4A7C15ULL;
    Py_ssize_t i = (Py_ssize_t)(h >> 32) & hp->map_mask;
    while (hp->map[i].code != NULL && hp->map[i].code != code)
        i = (i + 1) & hp->map_mask;
    return i;
}

static int
map_put(HotPath *hp, PyObject *code, PyObject *info)
{
    if (hp->map == NULL || (hp->map_used + 1) * 2 > hp->map_mask + 1) {
        Py_ssize_t size = hp->map ? (hp->map_mask + 1) * 2 : 1024;
        MapEntry *old = hp->map;
        Py_ssize_t old_size = old ? hp->map_mask + 1 : 0;
        MapEntry *fresh = PyMem_Calloc((size_t)size, sizeof(MapEntry));
        if (fresh == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        hp->map = fresh;
        hp->map_mask = size - 1;
        for (Py_ssize_t i = 0; i < old_size; i++) {
            if (old[i].code != NULL)
                hp->map[map_slot(hp, old[i].code)] = old[i];
        }
        PyMem_Free(old);
    }
    Py_ssize_t i = map_slot(hp, code);
    if (hp->map[i].code == NULL) {
        hp->map[i].code = Py_NewRef(code);
        hp->map[i].info = Py_NewRef(info);
        hp->map_used++;
    }
    else {
        Py_SETREF(hp->map[i].info, Py_NewRef(info));
    }
    return 0;
}

/* The CodeInfo of ``code`` (borrowed), Py_None when unselected, NULL when never decided
 * (an exception set on error). */
static PyObject *
info_of(HotPath *hp, PyObject *code)
{
    if (hp->map != NULL) {
        MapEntry *entry = &hp->map[map_slot(hp, code)];
        if (entry->code == code)
            return entry->info;
    }
    PyObject *info = PyDict_GetItemWithError(hp->infos, code);
    if (info != NULL && map_put(hp, code, info) < 0)
        return NULL;
    return info;
}

/* -- sys.monitoring callbacks ------------------------------------------------------------ */

static PyObject *
cb_py_start_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1)
        Py_RETURN_NONE;
    PyObject *code = args[0];
    PyObject *info = info_of(hp, code);
    PyFrameObject *frame = NULL;
    if (info == NULL) {
        if (PyErr_Occurred()) {
            fault(hp);
            Py_RETURN_NONE;
        }
        frame = PyEval_GetFrame();
        PyObject *decided = PyObject_CallFunctionObjArgs(hp->decide, code, frame ? (PyObject *)frame : Py_None, NULL);
        if (decided == NULL) {
            fault(hp);
            Py_RETURN_NONE;
        }
        Py_DECREF(decided); /* recorder.infos holds it */
        if (map_put(hp, code, decided) < 0) {
            fault(hp);
            Py_RETURN_NONE;
        }
        if (decided == Py_None)
            return Py_NewRef(hp->disable);
        info = decided;
    }
    else if (info == Py_None) {
        return Py_NewRef(hp->disable);
    }
    /* The frame object is materialised only to read arguments (keys). */
    if (frame == NULL && PyObject_TypeCheck(info, &CodeInfoType) && ((CodeInfoObject *)info)->keys &&
        ((CodeInfoObject *)info)->unkeyed < UNKEYABLE_AFTER)
        frame = PyEval_GetFrame();
    if (hp_start(hp, info, frame) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

static PyObject *
cb_py_resume_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *info = nargs >= 1 ? info_of(hp, args[0]) : NULL;
    if (info == NULL || info == Py_None) {
        if (PyErr_Occurred())
            fault(hp);
        return Py_NewRef(hp->disable);
    }
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL || hp_resume(hp, frame) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

static PyObject *
cb_py_return_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *info = nargs >= 3 ? info_of(hp, args[0]) : NULL;
    if (info == NULL || info == Py_None) {
        if (PyErr_Occurred())
            fault(hp);
        return Py_NewRef(hp->disable);
    }
    if (hp_finish(hp, args[0], args[2], NULL) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

static PyObject *
cb_py_yield_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *info = nargs >= 1 ? info_of(hp, args[0]) : NULL;
    if (info == NULL || info == Py_None) {
        if (PyErr_Occurred())
            fault(hp);
        return Py_NewRef(hp->disable);
    }
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL || hp_suspend(hp, args[0], frame) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

/* PY_UNWIND and PY_THROW are global events: they must never return DISABLE. */
static PyObject *
cb_py_unwind_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *info = nargs >= 3 ? info_of(hp, args[0]) : NULL;
    if (info == NULL || info == Py_None) {
        if (PyErr_Occurred())
            fault(hp);
        Py_RETURN_NONE;
    }
    if (hp_finish(hp, args[0], Py_None, args[2]) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

static PyObject *
cb_py_throw_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *info = nargs >= 1 ? info_of(hp, args[0]) : NULL;
    if (info == NULL || info == Py_None) {
        if (PyErr_Occurred())
            fault(hp);
        Py_RETURN_NONE;
    }
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL || hp_resume(hp, frame) < 0)
        fault(hp);
    Py_RETURN_NONE;
}


/* The registered callbacks: each event's implementation, its result mapped by callback_result. */
#define MONITORING_CALLBACK(event)                                              \
    static PyObject *                                                           \
    cb_##event(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)            \
    {                                                                           \
        return callback_result(cb_##event##_impl(hp, args, nargs));            \
    }
MONITORING_CALLBACK(py_start)
MONITORING_CALLBACK(py_resume)
MONITORING_CALLBACK(py_return)
MONITORING_CALLBACK(py_yield)
MONITORING_CALLBACK(py_unwind)
MONITORING_CALLBACK(py_throw)
#undef MONITORING_CALLBACK

/* -- the setprofile hook: a C profile function (as cProfile's) ---------------------------- */
/* Mirrors callspan/cores/setprofile.py: "call" starts a record (or resumes a suspended
 * generator/coroutine); "return" is a return, a yield or an exception exit, told apart by the
 * opcode at the frame's last instruction. C calls are ignored. */

static void
profile_call(HotPath *hp, PyFrameObject *frame)
{
    PyObject *code = (PyObject *)PyFrame_GetCode(frame);
    PyObject *info = info_of(hp, code);
    if (info == NULL) {
        if (PyErr_Occurred()) {
            fault(hp);
            goto done;
        }
        PyObject *decided = PyObject_CallFunctionObjArgs(hp->decide, code, (PyObject *)frame, NULL);
        if (decided == NULL) {
            fault(hp);
            goto done;
        }
        Py_DECREF(decided); /* recorder.infos holds it */
        if (map_put(hp, code, decided) < 0) {
            fault(hp);
            goto done;
        }
        info = decided;
    }
    if (info == Py_None)
        goto done;
    CodeInfoObject *ci = as_info(info);
    if (ci == NULL) {
        fault(hp);
        goto done;
    }
    if (ci->kind != KIND_FUNCTION) {
        PyObject *key = PyLong_FromVoidPtr(frame);
        int suspended = key ? PyDict_Contains(hp->suspended, key) : -1;
        Py_XDECREF(key);
        if (suspended < 0) {
            fault(hp);
            goto done;
        }
        if (suspended) {
            if (hp_resume(hp, frame) < 0)
                fault(hp);
            goto done;
        }
    }
    if (hp_start(hp, info, frame) < 0)
        fault(hp);
done:
    Py_DECREF(code);
}

static void
profile_return(HotPath *hp, PyFrameObject *frame, PyObject *arg)
{
    PyObject *code = (PyObject *)PyFrame_GetCode(frame);
    PyObject *info = info_of(hp, code);
    if (info == NULL || info == Py_None) {
        if (PyErr_Occurred())
            fault(hp);
        Py_DECREF(code);
        return;
    }
    int kind = PyObject_TypeCheck(info, &CodeInfoType) ? ((CodeInfoObject *)info)->kind : KIND_FUNCTION;
    int lasti = PyFrame_GetLasti(frame);
    int opcode = -1;
    PyObject *bytes = PyCode_GetCode((PyCodeObject *)code);
    if (bytes != NULL && PyBytes_Check(bytes) && lasti >= 0 && lasti < PyBytes_GET_SIZE(bytes)) {
        const unsigned char *ops = (const unsigned char *)PyBytes_AS_STRING(bytes);
        opcode = ops[lasti];
        if (hp->yield_at_resume && opcode == hp->resume_op && lasti >= 2)
            opcode = ops[lasti - 2];
    }
    Py_XDECREF(bytes);
    PyErr_Clear();
    int rc;
    if (opcode >= 0 && hp->op_kind[opcode] == 1)
        rc = hp_finish(hp, code, arg ? arg : Py_None, NULL);
    else if (opcode >= 0 && hp->op_kind[opcode] == 2 && kind != KIND_FUNCTION)
        rc = hp_suspend(hp, code, frame);
    else
        rc = hp_finish(hp, code, Py_None, hp->unknown_exc);
    if (rc < 0)
        fault(hp);
    Py_DECREF(code);
}

static int
profile_func(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg)
{
    HotPath *hp = (HotPath *)obj;
    if (!hp->profiling || frame == NULL || (what != PyTrace_CALL && what != PyTrace_RETURN))
        return 0;
    if (hp->map != NULL) { /* the common case, unselected code: one table lookup */
        PyCodeObject *code = PyFrame_GetCode(frame);
        MapEntry *entry = &hp->map[map_slot(hp, (PyObject *)code)];
        int unselected = entry->code == (PyObject *)code && entry->info == Py_None;
        Py_DECREF(code);
        if (unselected)
            return 0;
    }
    PyObject *saved_type, *saved_value, *saved_tb; /* an exception may be in flight (returns) */
    PyErr_Fetch(&saved_type, &saved_value, &saved_tb);
    if (what == PyTrace_CALL)
        profile_call(hp, frame);
    else if (what == PyTrace_RETURN)
        profile_return(hp, frame, arg);
    if (stash_type != NULL) { /* an interrupt raised by user code we ran: the application's */
        Py_XDECREF(saved_type);
        Py_XDECREF(saved_value);
        Py_XDECREF(saved_tb);
        return raise_stash() ? -1 : 0;
    }
    PyErr_Restore(saved_type, saved_value, saved_tb);
    return 0; /* never our own error: it would be raised into the application */
}

/* configure_setprofile(unknown_exc, return_opcodes, yield_opcodes, resume_opcode, yield_at_resume) */
static PyObject *
hp_configure_setprofile(HotPath *hp, PyObject *args)
{
    PyObject *unknown, *returns, *yields;
    int resume_op, yield_at_resume;
    if (!PyArg_ParseTuple(args, "OOOip:configure_setprofile", &unknown, &returns, &yields, &resume_op,
                          &yield_at_resume))
        return NULL;
    memset(hp->op_kind, 0, sizeof hp->op_kind);
    PyObject *sets[2] = {returns, yields};
    for (int k = 0; k < 2; k++) {
        PyObject *iter = PyObject_GetIter(sets[k]), *item;
        if (iter == NULL)
            return NULL;
        while ((item = PyIter_Next(iter)) != NULL) {
            long op = PyLong_AsLong(item);
            Py_DECREF(item);
            if (op >= 0 && op < 256)
                hp->op_kind[op] = (unsigned char)(k + 1);
        }
        Py_DECREF(iter);
        if (PyErr_Occurred())
            return NULL;
    }
    Py_XSETREF(hp->unknown_exc, Py_NewRef(unknown));
    hp->resume_op = resume_op;
    hp->yield_at_resume = yield_at_resume;
    Py_RETURN_NONE;
}

/* profile_install(): this thread (3.11) or every thread (3.12+). */
static PyObject *
hp_profile_install(HotPath *hp, PyObject *unused)
{
    if (hp->unknown_exc == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure_setprofile() first");
        return NULL;
    }
    hp->profiling = 1;
#if PY_VERSION_HEX >= 0x030C0000
    PyEval_SetProfileAllThreads(profile_func, (PyObject *)hp);
#else
    PyEval_SetProfile(profile_func, (PyObject *)hp);
#endif
    Py_RETURN_NONE;
}

static PyObject *
hp_profile_uninstall(HotPath *hp, PyObject *unused)
{
    /* Threads this cannot reach (3.11) keep calling profile_func, which does nothing now. */
    hp->profiling = 0;
#if PY_VERSION_HEX >= 0x030C0000
    PyEval_SetProfileAllThreads(NULL, NULL);
#else
    PyEval_SetProfile(NULL, NULL);
#endif
    Py_RETURN_NONE;
}

/* thread_bootstrap(frame, event, arg): the Python-level hook threading.setprofile gives new
 * threads; it installs the C profile function for its thread and handles this first event. */
static PyObject *
hp_thread_bootstrap(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    if (!hp->profiling) {
        PyEval_SetProfile(NULL, NULL);
        Py_RETURN_NONE;
    }
    PyEval_SetProfile(profile_func, (PyObject *)hp);
    if (nargs == 3 && PyFrame_Check(args[0]) && PyUnicode_Check(args[1])) {
        if (PyUnicode_CompareWithASCIIString(args[1], "call") == 0)
            profile_func((PyObject *)hp, (PyFrameObject *)args[0], PyTrace_CALL, args[2]);
        else if (PyUnicode_CompareWithASCIIString(args[1], "return") == 0)
            profile_func((PyObject *)hp, (PyFrameObject *)args[0], PyTrace_RETURN, args[2]);
    }
    Py_RETURN_NONE;
}

/* -- the type ------------------------------------------------------------------------------ */

static int
HotPath_traverse(HotPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->recorder);
    Py_VISIT(self->infos);
    Py_VISIT(self->decide);
    Py_VISIT(self->states);
    Py_VISIT(self->thread_state);
    Py_VISIT(self->finished);
    Py_VISIT(self->suspended);
    Py_VISIT(self->evict);
    Py_VISIT(self->clock);
    Py_VISIT(self->context_getter);
    Py_VISIT(self->current);
    Py_VISIT(self->disable);
    Py_VISIT(self->kwd_mark);
    Py_VISIT(self->generator_exit);
    Py_VISIT(self->unknown_exc);
    if (self->map != NULL) {
        for (Py_ssize_t i = 0; i <= self->map_mask; i++) {
            Py_VISIT(self->map[i].code);
            Py_VISIT(self->map[i].info);
        }
    }
    return 0;
}

static int
HotPath_clear(HotPath *self)
{
    Py_CLEAR(self->recorder);
    Py_CLEAR(self->infos);
    Py_CLEAR(self->decide);
    Py_CLEAR(self->states);
    Py_CLEAR(self->thread_state);
    Py_CLEAR(self->finished);
    Py_CLEAR(self->suspended);
    Py_CLEAR(self->evict);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->context_getter);
    Py_CLEAR(self->current);
    Py_CLEAR(self->disable);
    Py_CLEAR(self->kwd_mark);
    Py_CLEAR(self->generator_exit);
    Py_CLEAR(self->unknown_exc);
    if (self->map != NULL) {
        MapEntry *map = self->map;
        Py_ssize_t size = self->map_mask + 1;
        self->map = NULL;
        self->map_mask = self->map_used = 0;
        for (Py_ssize_t i = 0; i < size; i++) {
            Py_XDECREF(map[i].code);
            Py_XDECREF(map[i].info);
        }
        PyMem_Free(map);
    }
    return 0;
}

static void
HotPath_dealloc(HotPath *self)
{
    PyObject_GC_UnTrack(self);
    HotPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
attr_or_null(PyObject *obj, const char *name)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == Py_None) {
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

/* HotPath(recorder, current_var, kwd_mark, disable, native_clock) */
static int
HotPath_init(HotPath *self, PyObject *args, PyObject *kwds)
{
    PyObject *recorder, *current, *kwd_mark, *disable;
    int native_clock;
    if (!PyArg_ParseTuple(args, "OOOOp:HotPath", &recorder, &current, &kwd_mark, &disable, &native_clock))
        return -1;
    HotPath_clear(self);
    self->serial = next_serial++;
    self->recorder = Py_NewRef(recorder);
    self->current = Py_NewRef(current);
    self->kwd_mark = Py_NewRef(kwd_mark);
    self->disable = Py_NewRef(disable);
    self->generator_exit = Py_NewRef(PyExc_GeneratorExit);
    if ((self->infos = PyObject_GetAttrString(recorder, "infos")) == NULL ||
        (self->decide = PyObject_GetAttrString(recorder, "decide")) == NULL ||
        (self->states = PyObject_GetAttrString(recorder, "states")) == NULL ||
        (self->thread_state = PyObject_GetAttrString(recorder, "thread_state")) == NULL ||
        (self->finished = PyObject_GetAttrString(recorder, "finished")) == NULL ||
        (self->suspended = PyObject_GetAttrString(recorder, "suspended")) == NULL ||
        (self->evict = PyObject_GetAttrString(recorder, "evict_oldest_suspended")) == NULL)
        return -1;
    if (!PyDict_Check(self->infos) || !PyDict_Check(self->states) || !PyDict_Check(self->suspended) ||
        !PyList_Check(self->finished)) {
        PyErr_SetString(PyExc_TypeError, "recorder.infos, states and suspended must be dicts, finished a list");
        return -1;
    }
    if (!native_clock && (self->clock = PyObject_GetAttrString(recorder, "clock")) == NULL)
        return -1;
    self->context_getter = attr_or_null(recorder, "context_getter");
    if (self->context_getter == NULL && PyErr_Occurred())
        return -1;
    PyObject *value = PyObject_GetAttrString(recorder, "max_pending");
    if (value == NULL)
        return -1;
    self->max_pending = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    if ((value = PyObject_GetAttrString(recorder, "max_suspended")) == NULL)
        return -1;
    self->max_suspended = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    PyObject *counter = PyObject_GetAttrString(recorder, "counter");
    if (counter == NULL)
        return -1;
    PyObject *interval = counter == Py_None ? NULL : PyObject_GetAttrString(counter, "interval_ns");
    Py_DECREF(counter);
    if (interval == NULL)
        PyErr_Clear();
    else {
        long long ns = PyLong_AsLongLong(interval);
        Py_DECREF(interval);
        if (ns > 0)
            cpu_interval_ns = ns;
        PyErr_Clear();
    }
    return PyErr_Occurred() ? -1 : 0;
}

static PyMethodDef HotPath_methods[] = {
    {"py_start", (PyCFunction)(void (*)(void))cb_py_start, METH_FASTCALL, "PY_START callback"},
    {"py_resume", (PyCFunction)(void (*)(void))cb_py_resume, METH_FASTCALL, "PY_RESUME callback"},
    {"py_return", (PyCFunction)(void (*)(void))cb_py_return, METH_FASTCALL, "PY_RETURN callback"},
    {"py_yield", (PyCFunction)(void (*)(void))cb_py_yield, METH_FASTCALL, "PY_YIELD callback"},
    {"py_unwind", (PyCFunction)(void (*)(void))cb_py_unwind, METH_FASTCALL, "PY_UNWIND callback"},
    {"py_throw", (PyCFunction)(void (*)(void))cb_py_throw, METH_FASTCALL, "PY_THROW callback"},
    {"configure_setprofile", (PyCFunction)hp_configure_setprofile, METH_VARARGS, "opcodes for the profile hook"},
    {"profile_install", (PyCFunction)hp_profile_install, METH_NOARGS, "install the C profile function"},
    {"profile_uninstall", (PyCFunction)hp_profile_uninstall, METH_NOARGS, "remove the C profile function"},
    {"thread_bootstrap", (PyCFunction)(void (*)(void))hp_thread_bootstrap, METH_FASTCALL,
     "threading.setprofile hook that installs the C profile function in a new thread"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HotPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan._hotpath.HotPath",
    .tp_basicsize = sizeof(HotPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "sys.monitoring callbacks driving a callspan Recorder",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HotPath_init,
    .tp_dealloc = (destructor)HotPath_dealloc,
    .tp_traverse = (traverseproc)HotPath_traverse,
    .tp_clear = (inquiry)HotPath_clear,
    .tp_methods = HotPath_methods,
};


static PyMethodDef module_methods[] = {
    {"siphash24", (PyCFunction)(void (*)(void))py_siphash24, METH_FASTCALL,
     "siphash24(k0, k1, message): SipHash-2-4 of one little-endian 64-bit word under the key (k0, k1)"},
    {"fingerprint", (PyCFunction)py_fingerprint, METH_O,
     "fingerprint(value): as callspan.keys.fingerprint(value, [16]) computes it (tests)"},
    {"unhashable_args", (PyCFunction)py_unhashable_args, METH_O,
     "unhashable_args(key): as callspan.keys.unhashable_args computes it (tests)"},
    {"interval_clock_replay", (PyCFunction)py_interval_clock_replay, METH_VARARGS,
     "interval_clock_replay(interval, walls, reals): the interval thread clock's values (tests)"},
    {"process_records", (PyCFunction)(void (*)(void))py_process_records, METH_FASTCALL,
     "process_records(builder, records): the span builder's per-record decisions and summaries"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "callspan._hotpath", "callspan's compiled hot path", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    PyObject *module = PyModule_Create(&hotpath_module);
    if (module == NULL)
        return NULL;
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        goto error;
    }
    if (PyModule_AddIntConstant(module, "RECORD_SIZE", RECORD_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "R_OUT", R_OUT) < 0 ||
        PyModule_AddIntConstant(module, "R_VIA_TASK", R_VIA_TASK) < 0 ||
        PyModule_AddIntConstant(module, "UNKEYABLE_AFTER", UNKEYABLE_AFTER) < 0 ||
        PyModule_AddIntConstant(module, "RET_SIZE_EVERY", RET_SIZE_EVERY) < 0)
        goto error;
    if ((str_empty = PyUnicode_InternFromString("")) == NULL ||
        (str_dict_tag = PyUnicode_InternFromString("dict")) == NULL ||
        (type_names = PyDict_New()) == NULL ||
        (str_set_tag = PyUnicode_InternFromString("set")) == NULL || PyType_Ready(&OutType) < 0 ||
        PyType_Ready(&SummaryType) < 0)
        goto error;
    if (PyType_Ready(&ThreadStateType) < 0 || PyType_Ready(&CodeInfoType) < 0 || PyType_Ready(&RecordType) < 0)
        goto error;
    Py_INCREF(&ThreadStateType);
    if (PyModule_AddObject(module, "ThreadStateBase", (PyObject *)&ThreadStateType) < 0) {
        Py_DECREF(&ThreadStateType);
        goto error;
    }
    Py_INCREF(&CodeInfoType);
    if (PyModule_AddObject(module, "CodeInfoBase", (PyObject *)&CodeInfoType) < 0) {
        Py_DECREF(&CodeInfoType);
        goto error;
    }
    Py_INCREF(&RecordType);
    if (PyModule_AddObject(module, "Record", (PyObject *)&RecordType) < 0) {
        Py_DECREF(&RecordType);
        goto error;
    }
    Py_INCREF(&OutType);
    if (PyModule_AddObject(module, "Out", (PyObject *)&OutType) < 0) {
        Py_DECREF(&OutType);
        goto error;
    }
    Py_INCREF(&SummaryType);
    if (PyModule_AddObject(module, "Summary", (PyObject *)&SummaryType) < 0) {
        Py_DECREF(&SummaryType);
        goto error;
    }
    if ((str_faults = PyUnicode_InternFromString("faults")) == NULL ||
        (str_dropped = PyUnicode_InternFromString("dropped")) == NULL ||
        (str_error = PyUnicode_InternFromString("error")) == NULL)
        goto error;
    if (PyType_Ready(&HotPathType) < 0)
        goto error;
    Py_INCREF(&HotPathType);
    if (PyModule_AddObject(module, "HotPath", (PyObject *)&HotPathType) < 0) {
        Py_DECREF(&HotPathType);
        goto error;
    }
    return module;
error:
    Py_DECREF(module);
    return NULL;
}
