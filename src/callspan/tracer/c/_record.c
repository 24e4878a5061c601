/* The Record type, and the C structs under callspan.tracer.recorder.ThreadState and
 * callspan.tracer.selection.CodeInfo (their fields are read directly by the hot path). GIL held. */
#include "_callspan.h"

static PyObject *str_empty;

/* ---------------------------------------------------------------------------------------- */
/* The call record. The compiled recorder makes Records: one allocation holding the slots of
 * callspan/tracer/record.py, the integer ones as C integers (no int object per counter, no list, not a
 * GC object: records never form reference cycles, they point to parents, infos and their
 * thread state, never to children). The hot path reads the fields directly (o[], n[], node);
 * Python code (the builder, stop, eviction) indexes a Record like the list records. */

/* slot -> 1 + index into n[] (integer slots) or into o[] (object slots); 0: the other kind.
 * R_NODE is neither: the node id, read as an int (None for 0) and not assignable. */
static const signed char NUM_SLOT[RECORD_SIZE] = {
    [R_START] = 1 + NUM_START, [R_END] = 1 + NUM_END, [R_SEG_CPU] = 1 + NUM_SEG_CPU, [R_CPU] = 1 + NUM_CPU,
    [R_CHILD_CPU] = 1 + NUM_CHILD_CPU, [R_SUSPENDS] = 1 + NUM_SUSPENDS, [R_SUSP_NS] = 1 + NUM_SUSP_NS,
    [R_SUSP_AT] = 1 + NUM_SUSP_AT, [R_KEEP] = 1 + NUM_KEEP, [R_SHADOW] = 1 + NUM_SHADOW,
};
static const signed char OBJ_SLOT[RECORD_SIZE] = {
    [R_INFO] = 1 + OBJ_INFO, [R_PARENT] = 1 + OBJ_PARENT, [R_ROOT] = 1 + OBJ_ROOT, [R_ARGS] = 1 + OBJ_ARGS,
    [R_RET] = 1 + OBJ_RET, [R_RET_SIZE] = 1 + OBJ_RET_SIZE, [R_ERROR] = 1 + OBJ_ERROR,
    [R_THREAD] = 1 + OBJ_THREAD, [R_CONTEXT] = 1 + OBJ_CONTEXT, [R_PREV_CURRENT] = 1 + OBJ_PREV_CURRENT,
    [R_VIA_TASK] = 1 + OBJ_VIA_TASK, [R_INCOMPLETE] = 1 + OBJ_INCOMPLETE, [R_OUT] = 1 + OBJ_OUT,
};

PyObject *cs_record_defaults[N_OBJ];

/* Freed records are kept for reuse (one per call is made and freed: the allocator's work
 * counts); bounded, and only ever touched with the GIL held. */
#define RECORD_FREELIST_MAX 256
static RecordObject *record_freelist[RECORD_FREELIST_MAX];
static int record_freelist_len;

RecordObject *
cs_record_alloc(void)
{
    if (record_freelist_len > 0) {
        RecordObject *r = record_freelist[--record_freelist_len];
        PyObject_Init((PyObject *)r, &CS_RecordType);
        return r;
    }
    return PyObject_New(RecordObject, &CS_RecordType);
}

static void
Record_dealloc(RecordObject *self)
{
    /* Release the parent chain iteratively: a deep recursion's records may be freed together. */
    PyObject *parent = self->o[OBJ_PARENT];
    self->o[OBJ_PARENT] = NULL;
    /* unrolled: one test per slot, most are NULL (their default) */
    PyObject **o = self->o;
    _Static_assert(N_OBJ == 13, "Record_dealloc releases 13 object slots");
    Py_XDECREF(o[0]), Py_XDECREF(o[1]), Py_XDECREF(o[2]), Py_XDECREF(o[3]), Py_XDECREF(o[4]);
    Py_XDECREF(o[5]), Py_XDECREF(o[6]), Py_XDECREF(o[7]), Py_XDECREF(o[8]), Py_XDECREF(o[9]);
    Py_XDECREF(o[10]), Py_XDECREF(o[11]), Py_XDECREF(o[12]);
    if (record_freelist_len < RECORD_FREELIST_MAX)
        record_freelist[record_freelist_len++] = self;
    else
        PyObject_Free(self);
    while (parent != NULL && IS_RECORD_OBJECT(parent) && Py_REFCNT(parent) == 1) {
        RecordObject *p = (RecordObject *)parent;
        parent = p->o[OBJ_PARENT];
        p->o[OBJ_PARENT] = NULL;
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
    if (slot == R_NODE)
        return r->node ? PyLong_FromUnsignedLong(r->node) : Py_NewRef(Py_None);
    if (NUM_SLOT[slot])
        return PyLong_FromLongLong(r->n[NUM_SLOT[slot] - 1]);
    PyObject *item = record_slot(r, OBJ_SLOT[slot] - 1);
    /* Compact keys (a raw hash in C, see cs_args_key / cs_value_key) read back in the list layout. */
    if (slot == R_ARGS && r->args_kind != KEY_OBJECT) {
        PyObject *raw = PyLong_FromLongLong(r->args_raw);
        PyObject *result = raw ? PyTuple_Pack(3, raw, str_empty, Py_False) : NULL;
        Py_XDECREF(raw);
        return result;
    }
    if (slot == R_RET && r->ret_kind != KEY_OBJECT) {
        PyObject *raw = PyLong_FromLongLong(r->ret_raw);
        PyObject *result = raw ? PyTuple_Pack(2, raw, Py_True) : NULL;
        Py_XDECREF(raw);
        return result;
    }
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
    if (slot == R_NODE) {
        PyErr_SetString(PyExc_TypeError, "a compiled record's node is set by the hot path");
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
    if (slot == R_ARGS)
        r->args_kind = KEY_OBJECT;
    else if (slot == R_RET)
        r->ret_kind = KEY_OBJECT;
    Py_XSETREF(r->o[OBJ_SLOT[slot] - 1], Py_NewRef(value));
    return 0;
}

static PySequenceMethods Record_as_sequence = {
    .sq_length = Record_length,
    .sq_item = Record_item,
    .sq_ass_item = Record_ass_item,
};

PyTypeObject CS_RecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan.tracer._hotpath.Record",
    .tp_basicsize = sizeof(RecordObject),
    .tp_dealloc = (destructor)Record_dealloc,
    .tp_as_sequence = &Record_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A call record of the compiled recorder: indexed like the list records of "
              "callspan/tracer/record.py (the slots R_*).",
};

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


/* ---------------------------------------------------------------------------------------- */
/* Per-thread state and per-code facts as C structs the hot path reads directly; the Python
 * classes callspan.tracer.recorder.ThreadState and callspan.tracer.selection.CodeInfo derive from these. */

static PyMemberDef ThreadState_members[] = {
    {"stack", T_OBJECT, offsetof(ThreadStateObject, stack), 0, NULL},
    {"ident", T_OBJECT, offsetof(ThreadStateObject, ident), 0, NULL},
    {"name", T_OBJECT, offsetof(ThreadStateObject, name), 0, NULL},
    {"cpu", T_OBJECT, offsetof(ThreadStateObject, cpu), 0, NULL},
    {"cpu_fd", T_LONG, offsetof(ThreadStateObject, cpu_fd), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* ThreadState: its members, and its call frames' references. */
static int
ThreadState_traverse(ThreadStateObject *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->n_frames; i++) {
        Py_VISIT(self->frames[i].info);
        Py_VISIT(self->frames[i].args);
    }
    return visit_members((PyObject *)self, ThreadState_members, visit, arg);
}

static int
ThreadState_clear(ThreadStateObject *self)
{
    CallFrame *frames = self->frames;
    Py_ssize_t n = self->n_frames;
    self->frames = NULL;
    self->n_frames = self->cap_frames = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(frames[i].info);
        Py_XDECREF(frames[i].args);
    }
    PyMem_Free(frames);
    clear_members((PyObject *)self, ThreadState_members);
    return 0;
}

static void
ThreadState_dealloc(ThreadStateObject *self)
{
    PyObject_GC_UnTrack(self);
    ThreadState_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* flush_frames(): the calls the compiled hot path keeps as C frames become Records on the
 * stack (the recorder calls it before it reads the stack). */
static PyObject *
ThreadState_flush_frames(ThreadStateObject *self, PyObject *unused)
{
    if (cs_flush_frames(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef ThreadState_methods[] = {
    {"flush_frames", (PyCFunction)ThreadState_flush_frames, METH_NOARGS,
     "make Records of the running calls kept as C frames, on the stack"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject CS_ThreadStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan.tracer._hotpath.ThreadStateBase",
    .tp_basicsize = sizeof(ThreadStateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "fields of callspan.tracer.recorder.ThreadState",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)ThreadState_dealloc,
    .tp_traverse = (traverseproc)ThreadState_traverse,
    .tp_clear = (inquiry)ThreadState_clear,
    .tp_members = ThreadState_members,
    .tp_methods = ThreadState_methods,
};

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
    {"_names_types", T_OBJECT, offsetof(CodeInfoObject, names_types), READONLY, NULL},
    {"_names", T_OBJECT, offsetof(CodeInfoObject, names), READONLY, NULL},
    {"slow_hash", T_BOOL, offsetof(CodeInfoObject, slow_hash), 0, NULL},
    {"hash_ns", T_LONGLONG, offsetof(CodeInfoObject, hash_ns), 0, NULL},
    {"hash_runs", T_LONGLONG, offsetof(CodeInfoObject, hash_runs), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

MEMBER_GC_FUNCS(CodeInfo)

PyTypeObject CS_CodeInfoType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan.tracer._hotpath.CodeInfoBase",
    .tp_basicsize = sizeof(CodeInfoObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "fields of callspan.tracer.selection.CodeInfo the hot path reads",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)CodeInfo_dealloc,
    .tp_traverse = (traverseproc)CodeInfo_traverse,
    .tp_clear = (inquiry)CodeInfo_clear,
    .tp_members = CodeInfo_members,
};

static int
add_type(PyObject *module, const char *name, PyTypeObject *type)
{
    if (PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

int
cs_record_types_ready(PyObject *module)
{
    if ((str_empty = PyUnicode_InternFromString("")) == NULL)
        return -1;
    for (int i = 0; i < N_OBJ; i++)
        cs_record_defaults[i] = Py_None;
    cs_record_defaults[OBJ_VIA_TASK] = cs_record_defaults[OBJ_INCOMPLETE] = Py_False;
    if ((cs_record_defaults[OBJ_RET_SIZE] = PyLong_FromLong(0)) == NULL)
        return -1;
    if (add_type(module, "ThreadStateBase", &CS_ThreadStateType) < 0 ||
        add_type(module, "CodeInfoBase", &CS_CodeInfoType) < 0 || add_type(module, "Record", &CS_RecordType) < 0)
        return -1;
    return 0;
}
