/* Keys for the cache analysis: callspan/keys.py is the reference (equal numbers for equal
 * inputs, tested by tests/tracer/test_hotpath.py).
 *
 * - SipHash-2-4 of one 64-bit word (the builder's keyed digest);
 * - fingerprints of unhashable values and the names of unhashable argument types;
 * - the argument key of a call (read from its frame) and the key of a return value.
 *
 * GIL held throughout. Hashing runs user code (__hash__): errors are handled by the callers
 * (or dropped here with cs_drop_error, which keeps interrupts for the application).
 */
#include "_callspan.h"
#include <string.h>

/* A call's arguments are read from its interpreter frame (localsplus): with sys.monitoring no
 * frame object is materialised for it (PyEval_GetFrame allocates one per call, and the call's
 * exit then frees it: ~20% of a keyed call's cost), and on 3.11 the profile function's frame is
 * not turned into a locals dict (PyFrame_GetLocals copies every local). The layout is CPython's
 * own, fixed for a minor version, which this module is compiled for. */
#define Py_BUILD_CORE 1
#include "internal/pycore_code.h" /* CO_FAST_CELL */
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE

static PyObject *str_empty, *str_error;
PyObject *cs_identity_only_args;

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

uint64_t
cs_siphash24_u64(uint64_t k0, uint64_t k1, uint64_t m)
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

PyObject *
cs_py_siphash24(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
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
    return PyLong_FromUnsignedLongLong(cs_siphash24_u64(v[0], v[1], v[2]));
}


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

/* Hash slots that run no Python code (keys.py _NO_USER_CODE_HASHES: the same types). A type
 * defining __hash__ in Python has slot_tp_hash instead. */
static hashfunc no_user_code_hashes[12];
static int n_no_user_code_hashes;
/* keys.set_user_hash: CALLSPAN_USER_HASH=on lets keys call a user __hash__ (as lru_cache would) */
static int user_hash_allowed;
/* CALLSPAN_USER_HASH_SKIP: keys.type_skipped (NULL: no type is skipped), and its answers per
 * type (a dict, bounded as keys._skip_decisions) */
static PyObject *type_skipped_fn, *skip_decisions;
#define MAX_SKIP_DECISIONS 1024
/* keys.USER_HASH_BUDGET_NS, keys.USER_HASH_MAX_NS: the bound on a function's user hashing */
#define USER_HASH_BUDGET_NS 1000000LL
#define USER_HASH_MAX_NS 10000LL

PyObject *
cs_py_set_user_hash(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "set_user_hash(allowed, type_skipped=None)");
        return NULL;
    }
    int allowed = PyObject_IsTrue(args[0]);
    if (allowed < 0)
        return NULL;
    PyObject *decider = nargs == 2 && args[1] != Py_None ? args[1] : NULL;
    if (decider != NULL && !PyCallable_Check(decider)) {
        PyErr_SetString(PyExc_TypeError, "type_skipped must be callable or None");
        return NULL;
    }
    Py_XSETREF(type_skipped_fn, Py_XNewRef(decider));
    PyDict_Clear(skip_decisions);
    user_hash_allowed = allowed;
    Py_RETURN_NONE;
}

/* keys.hash_verdict's answers */
enum { HASH_REFUSED, HASH_SLOW, HASH_BUILTIN, HASH_USER };

/* keys._skipped: whether ``type``'s __hash__ never runs (CALLSPAN_USER_HASH_SKIP), decided once
 * per type. An interrupt raised meanwhile is kept for the application (cs_drop_error). */
static int
type_skipped(PyTypeObject *type)
{
    if (type_skipped_fn == NULL)
        return 0;
    /* a metaclass with a hash of its own would run it as a dict key: asked each time instead */
    int cacheable = Py_TYPE(type)->tp_hash == PyType_Type.tp_hash;
    if (cacheable) {
        PyObject *decision = PyDict_GetItemWithError(skip_decisions, (PyObject *)type);
        if (decision != NULL)
            return decision == Py_True;
        PyErr_Clear();
    }
    PyObject *answer = PyObject_CallOneArg(type_skipped_fn, (PyObject *)type);
    if (answer == NULL) {
        cs_drop_error();
        return 0;
    }
    int skipped = answer == Py_True;
    Py_DECREF(answer);
    if (cacheable && PyDict_GET_SIZE(skip_decisions) < MAX_SKIP_DECISIONS &&
        PyDict_SetItem(skip_decisions, (PyObject *)type, skipped ? Py_True : Py_False) < 0)
        PyErr_Clear(); /* only a cache */
    return skipped;
}

static inline int
user_verdict(const CodeInfoObject *ci)
{
    if (!user_hash_allowed)
        return HASH_REFUSED;
    return ci != NULL && ci->slow_hash ? HASH_SLOW : HASH_USER;
}

/* The commonest values hashed by a built-in hash, told without a call (every keyed return value
 * is checked: ints, strings and None first). */
static inline int
plainly_builtin(PyObject *value)
{
    PyTypeObject *type = Py_TYPE(value);
    return type == &PyLong_Type || type == &PyUnicode_Type || value == Py_None || type == &PyFloat_Type ||
           type == &PyBytes_Type;
}

/* An exact tuple of plainly_builtin items (a common return value): hash_verdict's answer,
 * HASH_BUILTIN, without its call. */
static inline int
plain_tuple(PyObject *value)
{
    if (!PyTuple_CheckExact(value))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(value); i++) {
        if (!plainly_builtin(PyTuple_GET_ITEM(value, i)))
            return 0;
    }
    return 1;
}

/* keys.hash_verdict: what hash(value) would run for ``ci``'s keys (NULL: no function's bound). */
static int
hash_verdict(PyObject *value, const CodeInfoObject *ci, int depth)
{
    if (plainly_builtin(value))
        return HASH_BUILTIN;
    hashfunc slot = Py_TYPE(value)->tp_hash;
    if (slot == PyTuple_Type.tp_hash) {
        if (depth >= 16) /* keys.py _MAX_TUPLE_DEPTH */
            return user_verdict(ci);
        int verdict = HASH_BUILTIN;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(value); i++) {
            PyObject *item = PyTuple_GET_ITEM(value, i);
            if (plainly_builtin(item))
                continue;
            int found = hash_verdict(item, ci, depth + 1);
            if (found < HASH_BUILTIN)
                return found;
            if (found > verdict)
                verdict = found;
        }
        return verdict;
    }
    for (int i = 0; i < n_no_user_code_hashes; i++) {
        if (slot == no_user_code_hashes[i])
            return HASH_BUILTIN;
    }
    if (slot == PyObject_HashNotImplemented)
        return user_hash_allowed ? HASH_BUILTIN : HASH_REFUSED;
    if (user_hash_allowed && type_skipped(Py_TYPE(value)))
        return HASH_REFUSED;
    return user_verdict(ci);
}

/* Timing a user hash for ``ci`` (keys._account): the injected clock (a callable) or the
 * monotonic one. A failing injected clock (tests only) reads as no time passed. */
typedef struct {
    CodeInfoObject *ci; /* NULL: nothing timed (module functions called by tests) */
    PyObject *clock;
} HashTimer;

static long long
timer_now(const HashTimer *timer)
{
    if (timer->clock == NULL)
        return cs_monotonic_ns();
    PyObject *value = PyObject_CallNoArgs(timer->clock);
    long long now = value != NULL ? PyLong_AsLongLong(value) : -1;
    Py_XDECREF(value);
    if (now == -1 && PyErr_Occurred()) {
        cs_drop_error();
        return 0;
    }
    return now;
}

/* One timed user hash began at ``start``: past the bound, ``ci``'s user hashing stops. The
 * exception of the hash, if any, is kept across the clock read. */
static void
timer_account(const HashTimer *timer, long long start)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    long long elapsed = timer_now(timer) - start;
    PyErr_Restore(type, value, tb);
    CodeInfoObject *ci = timer->ci;
    ci->hash_ns += elapsed;
    ci->hash_runs += 1;
    if (ci->hash_ns > USER_HASH_BUDGET_NS && ci->hash_ns > ci->hash_runs * USER_HASH_MAX_NS)
        ci->slow_hash = 1;
}

/* 1 when a hash whose verdict is ``verdict`` is timed by ``timer`` */
static inline int
timed(const HashTimer *timer, int verdict)
{
    return verdict == HASH_USER && timer != NULL && timer->ci != NULL;
}

/* 1 when sys.getsizeof(value) would call a __sizeof__ written in Python (not measured). */
int
cs_sizeof_is_python(PyObject *value)
{
    static PyObject *name;
    if (name == NULL && (name = PyUnicode_InternFromString("__sizeof__")) == NULL) {
        PyErr_Clear();
        return 1;
    }
    PyObject *method = _PyType_Lookup(Py_TYPE(value), name); /* borrowed; no exception */
    return method != NULL && PyFunction_Check(method);
}

static int
hash_built(PyObject *built, Py_hash_t *out) /* steals built */
{
    if (built == NULL) {
        cs_drop_error();
        return 0;
    }
    Py_hash_t h = PyObject_Hash(built);
    Py_DECREF(built);
    if (h == -1 && PyErr_Occurred()) {
        cs_drop_error();
        return 0;
    }
    *out = h;
    return 1;
}

/* keys._verdicts: the first refusal among ``n`` values, else HASH_USER if any is one */
static int
verdicts(PyObject *const *values, Py_ssize_t n, const CodeInfoObject *ci)
{
    int verdict = HASH_BUILTIN;
    for (Py_ssize_t i = 0; i < n; i++) {
        int found = hash_verdict(values[i], ci, 0);
        if (found < HASH_BUILTIN)
            return found;
        if (found > verdict)
            verdict = found;
    }
    return verdict;
}

/* A list's or dict's fingerprint (keys._flat_fingerprint), the building included in the timing
 * (a frozenset of a dict's items hashes them). */
static int
container_fingerprint(PyObject *value, const HashTimer *timer, int user, Py_hash_t *out)
{
    long long start = user ? timer_now(timer) : 0;
    int done;
    if (PyList_CheckExact(value)) {
        PyObject *items = PyList_AsTuple(value);
        done = hash_built(items ? Py_BuildValue("(ON)", Py_True, items) : NULL, out);
    }
    else {
        PyObject *items = PyDict_Items(value);
        PyObject *frozen = items ? PyFrozenSet_New(items) : NULL;
        Py_XDECREF(items);
        done = hash_built(frozen ? Py_BuildValue("(ON)", str_dict_tag, frozen) : NULL, out);
    }
    if (user)
        timer_account(timer, start);
    return done;
}

static int
flat_fingerprint(PyObject *value, Py_ssize_t *budget, const HashTimer *timer, Py_hash_t *out)
{
    PyTypeObject *kind = Py_TYPE(value);
    const CodeInfoObject *ci = timer != NULL ? timer->ci : NULL;
    if (!unhashable_type(value)) {
        int verdict = hash_verdict(value, ci, 0);
        if (verdict < HASH_BUILTIN)
            return 0;
        int user = timed(timer, verdict);
        long long start = user ? timer_now(timer) : 0;
        Py_hash_t h = PyObject_Hash(value);
        if (user)
            timer_account(timer, start);
        if (h == -1 && PyErr_Occurred()) {
            cs_drop_error();
            return 0;
        }
        *out = h;
        return 1;
    }
    if (kind == &PyList_Type) {
        *budget -= PyList_GET_SIZE(value);
        if (*budget < 0)
            return 0;
        int verdict = verdicts(&PyList_GET_ITEM(value, 0), PyList_GET_SIZE(value), ci);
        if (verdict < HASH_BUILTIN)
            return 0;
        return container_fingerprint(value, timer, timed(timer, verdict), out);
    }
    if (kind == &PyDict_Type) {
        *budget -= PyDict_GET_SIZE(value);
        if (*budget < 0)
            return 0;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        int verdict = HASH_BUILTIN;
        while (PyDict_Next(value, &pos, &k, &v)) {
            if (unhashable_type(v))
                return 0; /* a nested container: not walked */
            PyObject *pair[2] = {k, v};
            int found = verdicts(pair, 2, ci);
            if (found < HASH_BUILTIN)
                return 0;
            if (found > verdict)
                verdict = found;
        }
        return container_fingerprint(value, timer, timed(timer, verdict), out);
    }
    if (kind == &PySet_Type) { /* a set's items keep their hashes: none is called */
        PyObject *frozen = PyFrozenSet_New(value);
        return hash_built(frozen ? Py_BuildValue("(ON)", str_set_tag, frozen) : NULL, out);
    }
    if (kind == &PyByteArray_Type)
        return hash_built(PyBytes_FromStringAndSize(PyByteArray_AS_STRING(value), PyByteArray_GET_SIZE(value)), out);
    return 0;
}

static int
fingerprint(PyObject *value, Py_ssize_t budget, const HashTimer *timer, Py_hash_t *out)
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
                cs_drop_error();
                return 0;
            }
            for (Py_ssize_t i = 0; i < n; i++) {
                Py_hash_t part;
                if (!flat_fingerprint(PyTuple_GET_ITEM(value, i), &budget, timer, &part)) {
                    Py_DECREF(parts);
                    return 0;
                }
                PyObject *number = PyLong_FromSsize_t(part);
                if (number == NULL) {
                    cs_drop_error();
                    Py_DECREF(parts);
                    return 0;
                }
                PyTuple_SET_ITEM(parts, i, number);
            }
            return hash_built(Py_BuildValue("(ON)", Py_False, parts), out);
        }
    }
    return flat_fingerprint(value, &budget, timer, out);
}

/* new reference: fingerprint as an int, or None; user hashes timed by ``timer`` (or NULL) */
static PyObject *
fingerprint_object(PyObject *value, const HashTimer *timer)
{
    Py_hash_t h;
    if (fingerprint(value, 16, timer, &h))
        return PyLong_FromSsize_t(h);
    return Py_NewRef(Py_None);
}

PyObject *
cs_fingerprint_object(PyObject *value)
{
    return fingerprint_object(value, NULL);
}

PyObject *
cs_py_fingerprint(PyObject *module, PyObject *value)
{
    return cs_callback_result(cs_fingerprint_object(value));
}

/* The unhashable arguments of a key as "name:type" items, as keys.unhashable_args names them.
 * Type names are cached per type (a type's __name__ can change, but not for the builtin
 * containers that matter), and "name:type" strings per (name, type). */
static PyObject *type_names;     /* dict: type -> its __name__ */
static PyObject *labelled_names; /* dict: (name, type) -> "name:type" */

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

static PyObject * /* new reference; label: an exact str (hashing it runs no user code) */
labelled_name(PyObject *label, PyTypeObject *type)
{
    PyObject *pair = PyTuple_Pack(2, label, (PyObject *)type);
    if (pair == NULL)
        return NULL;
    PyObject *name = PyDict_GetItemWithError(labelled_names, pair);
    if (name != NULL) {
        Py_DECREF(pair);
        return Py_NewRef(name);
    }
    PyObject *tname = PyErr_Occurred() ? NULL : type_name(type);
    if (tname != NULL) {
        name = PyUnicode_FromFormat("%U:%U", label, tname);
        Py_DECREF(tname);
        if (name != NULL && PyDict_GET_SIZE(labelled_names) < 4096 && PyDict_SetItem(labelled_names, pair, name) < 0)
            Py_CLEAR(name);
    }
    Py_DECREF(pair);
    return name;
}

/* The label of the key's item i: its parameter's name, "*" and the *args parameter's, or the
 * keyword before it (after the keyword mark); "?" otherwise. New reference. */
static PyObject *
item_label(PyObject *const *items, Py_ssize_t i, int keyword, PyObject *arg_names, PyObject *varargs)
{
    if (keyword) {
        PyObject *before = items[i - 1];
        return PyUnicode_CheckExact(before) ? Py_NewRef(before) : PyUnicode_FromString("?");
    }
    if (arg_names != NULL && PyTuple_Check(arg_names) && i < PyTuple_GET_SIZE(arg_names)) {
        PyObject *name = PyTuple_GET_ITEM(arg_names, i);
        return PyUnicode_CheckExact(name) ? Py_NewRef(name) : PyUnicode_FromString("?");
    }
    if (is_set(varargs) && PyUnicode_CheckExact(varargs))
        return PyUnicode_FromFormat("*%U", varargs);
    return PyUnicode_FromString("?");
}

/* keys.skipped_type_names: the unhashable types, then "Name:user-hash" (or "Name:slow-hash")
 * for the values whose hash would run user code not allowed for ``ci``, each once, in order. */
static PyObject *
skipped_type_names(PyObject *const *items, Py_ssize_t n, const CodeInfoObject *ci)
{
    PyObject *seen = PyDict_New(), *sep = NULL, *joined = NULL;
    if (seen == NULL)
        return NULL;
    for (int pass = 0; pass < 2; pass++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            int unhashable = unhashable_type(items[i]);
            int verdict = pass == 0 || unhashable ? HASH_BUILTIN : hash_verdict(items[i], ci, 0);
            if (pass == 0 ? !unhashable : (unhashable || verdict >= HASH_BUILTIN))
                continue;
            PyObject *name = type_name(Py_TYPE(items[i]));
            if (name != NULL && pass == 1)
                Py_SETREF(name, PyUnicode_FromFormat(verdict == HASH_REFUSED ? "%U:user-hash" : "%U:slow-hash", name));
            if (name == NULL || PyDict_SetItem(seen, name, Py_None) < 0) {
                Py_XDECREF(name);
                Py_DECREF(seen);
                return NULL;
            }
            Py_DECREF(name);
        }
    }
    if ((sep = PyUnicode_FromString(",")) != NULL)
        joined = PyUnicode_Join(sep, seen);
    Py_XDECREF(sep);
    Py_DECREF(seen);
    return joined;
}

PyObject *
cs_unhashable_names(PyObject *key, PyObject *arg_names, PyObject *varargs, PyObject *kwd_mark)
{
    int is_tuple = PyTuple_Check(key);
    Py_ssize_t n = is_tuple ? PyTuple_GET_SIZE(key) : 1;
    PyObject *const *items = is_tuple ? &PyTuple_GET_ITEM(key, 0) : &key;
    PyObject *names = PyDict_New(); /* "name:type" -> None, first seen first */
    if (names == NULL)
        return NULL;
    int keyword = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = items[i];
        if (kwd_mark != NULL && v == kwd_mark) {
            keyword = 1;
            continue;
        }
        if (!unhashable_type(v))
            continue;
        PyObject *label = item_label(items, i, keyword && i > 0, arg_names, varargs);
        PyObject *name = label ? labelled_name(label, Py_TYPE(v)) : NULL;
        Py_XDECREF(label);
        if (name == NULL || PyDict_SetItem(names, name, Py_None) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    PyObject *joined;
    if (PyDict_GET_SIZE(names) == 0) {
        joined = PyUnicode_FromString("tuple");
    }
    else {
        PyObject *comma = PyUnicode_FromString(",");
        joined = comma ? PyUnicode_Join(comma, names) : NULL;
        Py_XDECREF(comma);
    }
    Py_DECREF(names);
    return joined;
}

PyObject *
cs_py_unhashable_args(PyObject *module, PyObject *args)
{
    PyObject *key, *arg_names = NULL, *varargs = Py_None, *kwd_mark = NULL;
    if (!PyArg_ParseTuple(args, "O|O!OO:unhashable_args", &key, &PyTuple_Type, &arg_names, &varargs, &kwd_mark))
        return NULL;
    PyObject *names = cs_unhashable_names(key, arg_names, varargs, kwd_mark);
    if (names == NULL)
        return NULL;
    return cs_callback_result(Py_BuildValue("(NN)", cs_fingerprint_object(key), names));
}

/* ---------------------------------------------------------------------------------------- */
/* The hot path: sys.monitoring callbacks (3.12+) and a C profile function (setprofile, 3.11+). */

/* ``f`` when it runs ``code``, else NULL. */
static inline _PyInterpreterFrame *
frame_of(_PyInterpreterFrame *f, PyObject *code)
{
#if PY_VERSION_HEX >= 0x030D0000
    return f != NULL && f->f_executable == code ? f : NULL;
#else
    return f != NULL && (PyObject *)f->f_code == code ? f : NULL;
#endif
}

#if PY_VERSION_HEX >= 0x030C0000
#define frame_get_var(frame, locals, name) PyFrame_GetVar((frame), (name))

/* The running frame when it is ``code``'s (the PY_START callback runs in the callee's frame). */
static _PyInterpreterFrame *
current_frame_of(PyObject *code)
{
    PyThreadState *ts = PyThreadState_GET();
#if PY_VERSION_HEX >= 0x030D0000
    return frame_of(ts->current_frame, code);
#else
    return frame_of(ts->cframe->current_frame, code);
#endif
}
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


/* The unhashable-argument names of a positional key, when its pattern (which items are
 * unhashable, and their types) is the one ci last saw: a function called with a list in the
 * same place each time labels it once (building "items:list" cost ~3,000 instructions a call).
 * New reference, or NULL (no exception) when the pattern differs. */
static PyObject *
cached_names(CodeInfoObject *ci, PyObject *const *items, Py_ssize_t n)
{
    PyObject *types = ci->names_types;
    if (types == NULL || ci->names == NULL || PyTuple_GET_SIZE(types) != n)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *type = unhashable_type(items[i]) ? (PyObject *)Py_TYPE(items[i]) : Py_None;
        if (PyTuple_GET_ITEM(types, i) != type)
            return NULL;
    }
    return Py_NewRef(ci->names);
}

static void
remember_names(CodeInfoObject *ci, PyObject *const *items, Py_ssize_t n, PyObject *names)
{
    PyObject *types = PyTuple_New(n);
    if (types == NULL) {
        PyErr_Clear(); /* only a cache */
        return;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(types, i, Py_NewRef(unhashable_type(items[i]) ? (PyObject *)Py_TYPE(items[i]) : Py_None));
    Py_XSETREF(ci->names_types, types);
    Py_XSETREF(ci->names, Py_NewRef(names));
}

/* Where a call's arguments are read from: its interpreter frame by position (3.12+), or its
 * frame object by name (3.11, the profile function's frame). */
typedef struct {
    PyFrameObject *frame;
    PyObject *locals; /* 3.11: the frame's locals mapping, taken once per key */
    _PyInterpreterFrame *iframe;
    const char *kinds; /* co_localspluskinds */
} ArgSource;

/* Parameter ``name`` at ``index`` (parameters come first in a frame's locals, in the order
 * positional, keyword-only, *args, **kwargs): a new reference, or NULL with an exception. */
static PyObject *
read_arg(ArgSource *source, PyObject *name, Py_ssize_t index)
{
    if (source->iframe != NULL) {
        PyObject *value = source->iframe->localsplus[index];
        /* captured: a cell once MAKE_CELL ran (before PY_START; 3.11's call event comes before it) */
        if (value != NULL && (source->kinds[index] & CO_FAST_CELL) && PyCell_Check(value))
            value = PyCell_GET(value);
        if (value == NULL) {
            PyErr_Format(PyExc_NameError, "variable %R does not exist", name);
            return NULL;
        }
        return Py_NewRef(value);
    }
    return frame_get_var(source->frame, source->locals, name);
}

static PyObject *minus_one; /* the cached small int -1 */

/* Whether `item`'s class hashes it with a hash of its own: not a built-in type's (the types of
 * no_user_code_hashes, tuples), and hashable. */
static int
has_own_hash(PyObject *item)
{
    hashfunc slot = Py_TYPE(item)->tp_hash;
    if (slot == PyTuple_Type.tp_hash || slot == PyObject_HashNotImplemented)
        return 0;
    for (int i = 0; i < n_no_user_code_hashes; i++) {
        if (slot == no_user_code_hashes[i])
            return 0;
    }
    return 1;
}

/* keys.stands_for_minus_one (in argument keys: own_hashes): 1 when `item` (whose hash is `lane`) is one of the values CPython
 * hashes as -2 although they equal -1: the exact int -1 (the cached small int: compared by
 * identity), the exact float -1.0, or a value of a class with a hash of its own (Python code, or
 * a C type not among the built-in ones) that hashed to -2 and compares equal to -1 (as
 * functools.lru_cache would compare two keys whose hashes collide). 0 otherwise, or when the
 * comparison raised; -1 with KeyboardInterrupt set (the application's). */
static int
stands_for_minus_one(PyObject *item, Py_hash_t lane)
{
    if (item == minus_one)
        return 1;
    if (lane != -2)
        return 0;
    if (PyFloat_CheckExact(item))
        return PyFloat_AS_DOUBLE(item) == -1.0;
    if (!has_own_hash(item))
        return 0;
    int equal = PyObject_RichCompareBool(item, minus_one, Py_EQ);
    if (equal < 0) {
        if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
            return -1;
        PyErr_Clear();
        return 0;
    }
    return equal;
}

/* keys.salted: the hash salted by `where`, the 1-based positions, summed, of the items that
 * stand for -1 (stands_for_minus_one), since CPython hashes -1 like -2. */
#define MINUS_ONE_SALT 0x9E3779B97F4A7C15ULL

static inline Py_hash_t
salted_by(Py_hash_t h, uint64_t where)
{
    return where ? (Py_hash_t)((uint64_t)h ^ where * MINUS_ONE_SALT) : h;
}

/* keys.salted of a return value (own_hashes false): the salt positions of the exact int -1 and
 * the exact float -1.0 among `n` items. */
static uint64_t
builtin_minus_one_positions(PyObject *const *items, Py_ssize_t n)
{
    uint64_t where = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[i];
        if (item == minus_one || (PyFloat_CheckExact(item) && PyFloat_AS_DOUBLE(item) == -1.0))
            where += (uint64_t)i + 1;
    }
    return where;
}

/* hash(tuple(items)) without making the tuple: CPython's tuple hash (xxHash-based, the same in
 * 3.8 to 3.13; equality with hash() is tested against keys.args_key), salted (keys.salted) by the
 * items that stand for -1. */
static Py_hash_t
tuple_hash_of(PyObject *const *items, Py_ssize_t len)
{
    uint64_t where = 0;
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
        int stands = stands_for_minus_one(items[i], (Py_hash_t)lane);
        if (stands < 0)
            return -1;
        if (stands)
            where += (uint64_t)i + 1;
        acc += lane * prime2;
        acc = XXROTATE(acc);
        acc *= prime1;
    }
#undef XXROTATE
    acc += (Py_uhash_t)len ^ (prime5 ^ 3527539UL);
    if (acc == (Py_uhash_t)-1)
        acc = 1546275796;
    return salted_by((Py_hash_t)acc, where);
}

#if PY_VERSION_HEX >= 0x030C0000
/* 1 when hashing ``item`` runs only a built-in hash (int, str, float, None...: not a tuple, whose
 * items are checked one by one, nor a class of the program's, even with CALLSPAN_USER_HASH). */
static inline int
builtin_hash(PyObject *item)
{
    hashfunc slot = Py_TYPE(item)->tp_hash;
    for (int i = 0; i < n_no_user_code_hashes; i++) {
        if (slot == no_user_code_hashes[i])
            return 1;
    }
    return 0;
}

/* cs_args_key's most common case, without copying the arguments: only positional parameters
 * (no *args, **kwargs, keyword-only), none captured by a closure, each hashed by a built-in
 * hash, self not hashed by identity. The items are the frame's own (borrowed: nothing here runs
 * the program's code). 1 with *raw set; 0 when the general path must decide. */
static int
simple_args_hash(CodeInfoObject *ci, Py_ssize_t nargs, int64_t *raw)
{
    _PyInterpreterFrame *iframe = current_frame_of(ci->code);
    if (iframe == NULL || nargs == 0)
        return 0;
    PyObject **items = iframe->localsplus;
    const char *kinds = PyBytes_AS_STRING(((PyCodeObject *)ci->code)->co_localspluskinds);
    for (Py_ssize_t i = 0; i < nargs; i++) {
        if (items[i] == NULL || (kinds[i] & CO_FAST_CELL) || !builtin_hash(items[i]))
            return 0;
    }
    if (ci->is_method && Py_TYPE(items[0])->tp_hash == PyBaseObject_Type.tp_hash && !PyType_Check(items[0]))
        return 0; /* identity-hashed self: counted, not keyed (the general path says so) */
    Py_hash_t h;
    if (nargs == 1 && (PyLong_CheckExact(items[0]) || PyUnicode_CheckExact(items[0]))) {
        /* lru_cache keys a lone int/str argument as itself */
        h = PyObject_Hash(items[0]);
        if (items[0] == minus_one)
            h = salted_by(h, 1);
    }
    else {
        h = tuple_hash_of(items, nargs);
    }
    if (h == -1 && PyErr_Occurred()) { /* a built-in hash cannot fail: let the general path see */
        PyErr_Clear();
        return 0;
    }
    *raw = (int64_t)h;
    return 1;
}
#endif

/* (raw hash or fingerprint or None, unhashable type names, self hashed by identity: only in
 * cs_identity_only_args) as
 * keys.args_key computes it, reading the arguments from the frame. The key's items are
 * gathered in a C array and hashed as the lru_cache key tuple would be; the tuple itself is
 * only made for unhashable keys (fingerprint, type names). */
PyObject *
cs_args_key(PyObject *kwd_mark, CodeInfoObject *ci, PyFrameObject *frame, int64_t *raw_out, int *kind,
            PyObject *clock)
{
    HashTimer timer = {ci, clock};
    *kind = KEY_OBJECT;
    PyObject *arg_names = ci->arg_names;
    PyObject *kwonly = ci->kwonly;
    int is_method = ci->is_method;
    Py_ssize_t nargs = PyTuple_GET_SIZE(arg_names);
    Py_ssize_t nkwonly = PyTuple_GET_SIZE(kwonly);
#if PY_VERSION_HEX >= 0x030C0000
    if (frame == NULL && nkwonly == 0 && !is_set(ci->varargs) && !is_set(ci->varkw) &&
        simple_args_hash(ci, nargs, raw_out)) {
        *kind = KEY_COMPACT; /* a Record reads it back as (raw, "", False) */
        return Py_NewRef(Py_None);
    }
#endif
    PyObject *extra = NULL, *kwdict = NULL, *key = NULL, *result = NULL;
    PyObject *stack_items[16];
    PyObject **items = stack_items;
    Py_ssize_t filled = 0; /* references held in items */
    ArgSource source = {frame, NULL, NULL, NULL};
    if (frame != NULL)
        source.iframe = frame_of(frame->f_frame, ci->code);
#if PY_VERSION_HEX >= 0x030C0000
    else if ((source.iframe = current_frame_of(ci->code)) == NULL)
        source.frame = PyEval_GetFrame(); /* not the running frame: cannot happen, stay correct */
#endif
    if (source.iframe != NULL) {
        source.kinds = PyBytes_AS_STRING(((PyCodeObject *)ci->code)->co_localspluskinds);
    }
    else if (source.frame == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no frame");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    else if ((source.locals = PyFrame_GetLocals(source.frame)) == NULL) {
        return NULL;
    }
#endif
    Py_ssize_t next_index = nargs + nkwonly; /* *args, then **kwargs */
    if (is_set(ci->varargs)) {
        extra = read_arg(&source, ci->varargs, next_index++);
        if (extra == NULL || !PyTuple_Check(extra))
            goto error;
    }
    if (is_set(ci->varkw)) {
        kwdict = read_arg(&source, ci->varkw, next_index);
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
        PyObject *value = read_arg(&source, PyTuple_GET_ITEM(arg_names, i), i);
        if (value == NULL)
            goto error;
        items[filled++] = value;
        /* self hashed by identity: counted, not keyed. A class (cls) hashes by identity too, but
         * lives as long as its module: a stable key. */
        if (i == 0 && is_method && Py_TYPE(value)->tp_hash == PyBaseObject_Type.tp_hash && !PyType_Check(value)) {
            result = Py_NewRef(cs_identity_only_args);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < nextra; i++)
        items[filled++] = Py_NewRef(PyTuple_GET_ITEM(extra, i));
    if (keyword_part) {
        items[filled++] = Py_NewRef(kwd_mark);
        for (Py_ssize_t i = 0; i < nkwonly; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwonly, i);
            PyObject *value = read_arg(&source, name, nargs + i);
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

    /* lru_cache keys a lone int/str argument as itself */
    int lone = total == 1 && (PyLong_CheckExact(items[0]) || PyUnicode_CheckExact(items[0]));
    int unhashable = 0, user = 0;
    for (Py_ssize_t i = 0; !lone && i < total; i++) {
        if (Py_TYPE(items[i])->tp_hash == PyObject_HashNotImplemented) {
            unhashable = 1;
            continue;
        }
        int verdict = hash_verdict(items[i], ci, 0);
        if (verdict < HASH_BUILTIN) { /* not keyed: see keys.hash_verdict */
            PyObject *names = skipped_type_names(items, total, ci);
            if (names == NULL)
                goto error;
            result = Py_BuildValue("(ONO)", Py_None, names, Py_False);
            goto done;
        }
        if (verdict == HASH_USER)
            user = 1;
    }
    Py_hash_t h = -1;
    if (!unhashable) {
        if (user) { /* a user __hash__ runs: timed against ci's bound */
            long long start = timer_now(&timer);
            h = tuple_hash_of(items, total);
            timer_account(&timer, start);
        }
        else {
            h = lone ? PyObject_Hash(items[0]) : tuple_hash_of(items, total);
        }
        if (lone && items[0] == minus_one)
            h = salted_by(h, 1);
        if (h == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                /* KeyboardInterrupt is the application's (see fault); anything else a user
                 * __hash__ raised (SystemExit included) must not change the program */
                if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
                    goto error;
                PyErr_Clear();
                result = PyTuple_Pack(3, Py_None, str_error, Py_False);
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
        PyObject *names = keyword_part ? NULL : cached_names(ci, items, total);
        if (names == NULL) {
            if ((names = cs_unhashable_names(hashed, arg_names, ci->varargs, kwd_mark)) == NULL)
                goto error;
            if (!keyword_part)
                remember_names(ci, items, total, names);
        }
        result = Py_BuildValue("(NNO)", fingerprint_object(hashed, &timer), names, Py_False);
    }
    else { /* compact: the raw hash only; a Record reads it back as (raw, "", False) */
        *raw_out = (int64_t)h;
        *kind = KEY_COMPACT;
        result = Py_NewRef(Py_None);
    }
done:
    for (Py_ssize_t i = 0; i < filled; i++)
        Py_DECREF(items[i]);
    if (items != stack_items)
        PyMem_Free(items);
    Py_XDECREF(extra);
    Py_XDECREF(kwdict);
    Py_XDECREF(key);
    Py_XDECREF(source.locals);
    return result;
error:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "unexpected frame variables");
    Py_CLEAR(result);
    goto done;
}

/* (raw hash or fingerprint or None, hashable) as keys.value_key computes it. */
PyObject *
cs_value_key(PyObject *value, int64_t *raw_out, int *kind, CodeInfoObject *ci, PyObject *clock)
{
    *kind = KEY_OBJECT;
    HashTimer timer = {ci, clock};
    if (Py_TYPE(value)->tp_hash != PyObject_HashNotImplemented) {
        int verdict = plainly_builtin(value) || plain_tuple(value) ? HASH_BUILTIN : hash_verdict(value, ci, 0);
        if (verdict < HASH_BUILTIN)
            return PyTuple_Pack(2, Py_None, Py_False); /* its hash is user code not allowed: not hashed */
        int user = timed(&timer, verdict);
        long long start = user ? timer_now(&timer) : 0;
        Py_hash_t h = PyObject_Hash(value);
        if (user)
            timer_account(&timer, start);
        if (h != -1 || !PyErr_Occurred()) {
            /* compact: the raw hash only; a Record reads it back as (raw, True) */
            if (PyTuple_CheckExact(value))
                h = salted_by(h, builtin_minus_one_positions(&PyTuple_GET_ITEM(value, 0), PyTuple_GET_SIZE(value)));
            else
                h = salted_by(h, builtin_minus_one_positions(&value, 1));
            *raw_out = (int64_t)h;
            *kind = KEY_COMPACT;
            return Py_NewRef(Py_None);
        }
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
                return NULL; /* an interrupt: the application's (see fault) */
            PyErr_Clear();
            return PyTuple_Pack(2, Py_None, Py_False);
        }
        PyErr_Clear();
    }
    return Py_BuildValue("(NO)", fingerprint_object(value, &timer), Py_False);
}

/* -- the four transitions (mirror callspan/recorder.py) ---------------------------------- */

int
cs_keys_init(void)
{
    if ((str_empty = PyUnicode_InternFromString("")) == NULL ||
        (str_error = PyUnicode_InternFromString("error")) == NULL ||
        (str_dict_tag = PyUnicode_InternFromString("dict")) == NULL ||
        (str_set_tag = PyUnicode_InternFromString("set")) == NULL || (type_names = PyDict_New()) == NULL || (labelled_names = PyDict_New()) == NULL ||
        (skip_decisions = PyDict_New()) == NULL ||
        (minus_one = PyLong_FromLong(-1)) == NULL ||
        (cs_identity_only_args = PyTuple_Pack(3, Py_None, str_empty, Py_True)) == NULL)
        return -1;
    PyTypeObject *types[] = {&PyLong_Type, &PyUnicode_Type, &PyBytes_Type, &PyFloat_Type, &PyComplex_Type,
                             Py_TYPE(Py_None), &PyRange_Type, &PyFrozenSet_Type, &PyBaseObject_Type,
                             &PyMethod_Type, &PyCFunction_Type, &PyCode_Type};
    n_no_user_code_hashes = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        no_user_code_hashes[n_no_user_code_hashes++] = types[i]->tp_hash;
    return 0;
}
