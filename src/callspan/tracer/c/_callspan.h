/* Declarations shared by the C files of callspan.tracer._hotpath (one extension module):
 *
 *   _hotpath.c   the CPU clocks, the hot path (start/finish/suspend/resume), callbacks, module init
 *   _clock.c     the wall clock: CLOCK_MONOTONIC, read from the time-stamp counter where it can
 *   _record.c    the Record type, ThreadStateBase and CodeInfoBase
 *   _keys.c      SipHash, fingerprints, argument and return-value keys
 *   _aggregate.c the per-process fold (call tree, per-function totals and sketches, cache state)
 *
 * Everything here runs with the GIL held; the GIL is the only lock (see each file).
 */
#ifndef CALLSPAN_H
#define CALLSPAN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h>

#if defined(__GNUC__)
#define CS_HIDDEN __attribute__((visibility("hidden")))
#else
#define CS_HIDDEN
#endif

/* -- errors (_hotpath.c) ------------------------------------------------------------------- */
/* Clear an error the hot path handles; keep an interrupt (KeyboardInterrupt...) for
 * cs_callback_result to raise into the application. */
CS_HIDDEN void cs_drop_error(void);
/* The callback's result, or NULL with the stashed interrupt raised. */
CS_HIDDEN PyObject *cs_callback_result(PyObject *result);

/* -- records (_record.c) ------------------------------------------------------------------- */
/* Record layout: must match callspan/tracer/record.py (checked by tests/tracer/test_hotpath.py). */
enum {
    R_INFO, R_PARENT, R_ROOT, R_START, R_END, R_SEG_CPU, R_CPU, R_CHILD_CPU, R_ARGS, R_RET,
    R_RET_SIZE, R_ERROR, R_SUSPENDS, R_SUSP_NS, R_SUSP_AT, R_THREAD, R_CONTEXT, R_PREV_CURRENT,
    R_VIA_TASK, R_INCOMPLETE, R_OUT, R_NODE, R_KEEP, R_SHADOW, RECORD_SIZE
};
/* R_SHADOW bits (callspan.tracer.record.HIT_ROOT, SHADOWED, ACTIVE) */
enum { SHADOW_NONE = 0, SHADOW_HIT_ROOT = 1, SHADOW_SHADOWED = 2, SHADOW_ACTIVE = 4 };

enum { KIND_FUNCTION, KIND_COROUTINE, KIND_GENERATOR, KIND_ASYNC_GENERATOR };

/* A Record holds the integer slots as C integers (n[]), R_NODE as the node's id in the
 * aggregates (0: none), the others as objects (o[]). */
#define N_NUM 10
#define N_OBJ (RECORD_SIZE - N_NUM - 1)
/* Index of each integer slot in n[] and of each object slot in o[] */
#define NUM_START 0
#define NUM_END 1
#define NUM_SEG_CPU 2
#define NUM_CPU 3
#define NUM_CHILD_CPU 4
#define NUM_SUSPENDS 5
#define NUM_SUSP_NS 6
#define NUM_SUSP_AT 7
#define NUM_KEEP 8
#define NUM_SHADOW 9
#define OBJ_INFO 0
#define OBJ_PARENT 1
#define OBJ_ROOT 2
#define OBJ_ARGS 3
#define OBJ_RET 4
#define OBJ_RET_SIZE 5
#define OBJ_ERROR 6
#define OBJ_THREAD 7
#define OBJ_CONTEXT 8
#define OBJ_PREV_CURRENT 9
#define OBJ_VIA_TASK 10
#define OBJ_INCOMPLETE 11
#define OBJ_OUT 12

/* Compact keys: a plain hashable argument key or return value is kept as its raw hash in C
 * (no int object, no tuple per call); the object slot then holds None and indexing the Record
 * reads the list layout back ((raw, "", False) and (raw, True)). */
enum { KEY_OBJECT = 0, KEY_COMPACT = 1 };

typedef struct {
    PyObject_HEAD
    /* INFO and THREAD are never NULL once made; any other slot may be NULL for its default
     * (record_slot): the hot path stores only what differs, so a call makes and frees two or
     * three references instead of thirteen. */
    PyObject *o[N_OBJ];
    long long n[N_NUM];
    uint32_t node;      /* R_NODE: the call-tree node's id (see _aggregate.c), 0 when none */
    uint8_t args_kind;  /* KEY_*: how R_ARGS is held (KEY_OBJECT: in o[OBJ_ARGS]) */
    uint8_t ret_kind;   /* KEY_OBJECT or KEY_COMPACT, for R_RET */
    int64_t args_raw, ret_raw;
} RecordObject;

/* A record's object slot, borrowed, its default when NULL: False for VIA_TASK and INCOMPLETE,
 * 0 for RET_SIZE, None for the others. */
CS_HIDDEN extern PyObject *cs_record_defaults[N_OBJ];
static inline PyObject *
record_slot(const RecordObject *r, int i)
{
    return r->o[i] != NULL ? r->o[i] : cs_record_defaults[i];
}

CS_HIDDEN extern PyTypeObject CS_RecordType;
/* A new Record (its slots uninitialised, like PyObject_New): from a bounded freelist when it can. */
CS_HIDDEN RecordObject *cs_record_alloc(void);
#define IS_RECORD_OBJECT(op) Py_IS_TYPE((op), &CS_RecordType)

/* A running synchronous call that has no Record (yet): the compiled hot path keeps a thread's
 * innermost calls as these while nothing needs them as objects (see _hotpath.c, "call frames"). */
typedef struct {
    PyObject *info;     /* strong: its CodeInfo */
    PyObject *args;     /* strong; NULL for None (or a compact key: args_kind) */
    long long start, seg_cpu, cpu, child_cpu, shadow;
    int64_t args_raw;
    uint32_t node;
    uint8_t args_kind;
} CallFrame;

/* Per-thread state: the Python class callspan.tracer.recorder.ThreadState derives from this. */
typedef struct {
    PyObject_HEAD
    PyObject *stack; /* list of running records, below the call frames */
    PyObject *ident;
    PyObject *name;
    PyObject *cpu;   /* the thread's CPU reader, or None */
    long cpu_fd;     /* see callspan.tracer.counters.native_reader */
    /* C only: this thread's root node in the aggregates with serial root_serial */
    uint32_t root_node;
    uint64_t root_serial;
    unsigned long thread_id; /* PyThread_get_thread_ident() of its thread (set by the hot path) */
    /* C only: the innermost running calls, above every record of the stack, innermost last */
    CallFrame *frames;
    Py_ssize_t n_frames, cap_frames;
} ThreadStateObject;

/* Makes Records of a thread's call frames (outermost first) and pushes them on its stack. 0, or
 * -1 with an exception set (the frames not made stay frames). (_hotpath.c) */
CS_HIDDEN int cs_flush_frames(ThreadStateObject *ts);

CS_HIDDEN extern PyTypeObject CS_ThreadStateType;

/* Per-code facts: the Python class callspan.tracer.selection.CodeInfo derives from this. */
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
    /* the last unhashable-argument names of a key without keyword part, and the pattern they
     * were made for: per item, its type when unhashable, else None (see cs_args_key) */
    PyObject *names_types;
    PyObject *names;
    /* the bound on its user hashing (keys.USER_HASH_BUDGET_NS): ns in timed user hashes, how
     * many, and whether they passed the bound (no user __hash__ runs for it any more) */
    long long hash_ns, hash_runs;
    char slow_hash;
    /* C only: this code's function in the aggregates with serial agg_serial (a cache) */
    void *agg_function;
    uint64_t agg_serial;
} CodeInfoObject;

CS_HIDDEN extern PyTypeObject CS_CodeInfoType;

#define UNKEYABLE_AFTER 64 /* callspan.tracer.keys.UNKEYABLE_AFTER */
#define RET_SIZE_EVERY 16  /* callspan.tracer.keys.RET_SIZE_EVERY */

CS_HIDDEN int cs_record_types_ready(PyObject *module);

/* -- the wall clock (_clock.c) ------------------------------------------------------------ */
typedef struct {
    uint64_t tsc; /* 0: no reading yet */
    long long ns;
} CsTscAnchor;
CS_HIDDEN extern int cs_tsc_on;
CS_HIDDEN extern uint64_t cs_tsc_mult, cs_tsc_window;
CS_HIDDEN extern __thread CsTscAnchor cs_tsc_anchor __attribute__((tls_model("initial-exec")));
CS_HIDDEN long long cs_tsc_reanchor(uint64_t now);
CS_HIDDEN void cs_clock_init(void);
CS_HIDDEN const char *cs_clock_source(void);
CS_HIDDEN PyObject *cs_py_clock_ns(PyObject *module, PyObject *unused);
CS_HIDDEN PyObject *cs_py_clock_source(PyObject *module, PyObject *unused);
#if defined(__x86_64__) && defined(__linux__)
#include <x86intrin.h>
#define CS_HAVE_TSC 1
#else
#define CS_HAVE_TSC 0
#endif
#include <time.h>

/* CLOCK_MONOTONIC (what time.perf_counter_ns reads), ns: the clock the counter is scaled to, and
 * the one user hashes are timed by. */
static inline long long
cs_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The hot path's wall clock, ns: CLOCK_MONOTONIC (what time.perf_counter_ns reads), through the
 * time-stamp counter when cs_tsc_on (see _clock.c). */
static inline long long
cs_clock_ns(void)
{
#if CS_HAVE_TSC
    if (cs_tsc_on) {
        uint64_t now = __rdtsc();
        uint64_t ticks = now - cs_tsc_anchor.tsc;
        if (ticks < cs_tsc_window) /* ticks * mult < 2**64: the window is 0.25 ms of ticks */
            return cs_tsc_anchor.ns + (long long)((ticks * cs_tsc_mult) >> 32);
        return cs_tsc_reanchor(now);
    }
#endif
    return cs_monotonic_ns();
}

/* -- keys (_keys.c) ------------------------------------------------------------------------ */
CS_HIDDEN uint64_t cs_siphash24_u64(uint64_t k0, uint64_t k1, uint64_t m);
CS_HIDDEN PyObject *cs_fingerprint_object(PyObject *value);
CS_HIDDEN PyObject *cs_unhashable_names(PyObject *key, PyObject *arg_names, PyObject *varargs, PyObject *kwd_mark);
CS_HIDDEN int cs_sizeof_is_python(PyObject *value);
/* (raw hash or fingerprint or None, names, identity) as keys.args_key computes it; a bare int
 * when the key is hashable and self is not hashed by identity. NULL with an exception set. */
/* (None, "", True): the argument key of a call whose self hashes by identity. Such calls are
 * counted, not keyed (keys.IDENTITY_ONLY): a per-instance key is never advised and a freed
 * instance's address makes its hits unreliable, so hashing the other arguments and the return
 * value would be cost without an answer. */
CS_HIDDEN extern PyObject *cs_identity_only_args;
/* ``clock``: the hot path's injected clock (a callable), NULL for the monotonic clock: it times
 * the user hashes of ``ci``'s keys (keys.USER_HASH_BUDGET_NS). */
CS_HIDDEN PyObject *cs_args_key(PyObject *kwd_mark, CodeInfoObject *ci, PyFrameObject *frame, int64_t *raw,
                                 int *kind, PyObject *clock);
/* (raw hash or fingerprint or None, hashable) as keys.value_key computes it; a bare int when
 * hashable. NULL only for an interrupt (or a failing injected clock). */
CS_HIDDEN PyObject *cs_value_key(PyObject *value, int64_t *raw, int *kind, CodeInfoObject *ci, PyObject *clock);
CS_HIDDEN int cs_keys_init(void);
/* module functions (tests and the builder) */
CS_HIDDEN PyObject *cs_py_siphash24(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
CS_HIDDEN PyObject *cs_py_fingerprint(PyObject *module, PyObject *value);
CS_HIDDEN PyObject *cs_py_unhashable_args(PyObject *module, PyObject *args);
CS_HIDDEN PyObject *cs_py_set_user_hash(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

static inline int
is_set(PyObject *obj)
{
    return obj != NULL && obj != Py_None;
}

/* -- the aggregates (_aggregate.c) --------------------------------------------------------- */
typedef struct Aggregates Aggregates;
CS_HIDDEN extern PyTypeObject CS_AggregatesType;
#define IS_AGGREGATES(op) Py_IS_TYPE((op), &CS_AggregatesType)

/* The node id of this thread's root (made on first use). 0 with an exception set on error. */
CS_HIDDEN uint32_t cs_thread_root(Aggregates *a, ThreadStateObject *ts);
/* aggregate.Aggregates.child: the node id of a call of ``ci`` whose logical caller is in node
 * ``parent``. 0 (no exception) when it could not be made: the call is then counted lost. */
CS_HIDDEN uint32_t cs_child(Aggregates *a, uint32_t parent, CodeInfoObject *ci);
/* A finished call as the fold reads it, from a Record or from a C call frame (_hotpath.c). */
typedef struct {
    CodeInfoObject *ci;
    uint32_t node;
    int nested;                /* its parent's node is its own (direct recursion) */
    PyObject *caller;          /* borrowed: its logical parent's CodeInfo, or NULL (a root) */
    int error;                 /* an exception escaped */
    int64_t start, end, susp_ns, suspends, cpu, child_cpu, shadow;
    uint8_t args_kind, ret_kind; /* KEY_*: the raw hash in args_raw / ret_raw, or the object */
    int64_t args_raw, ret_raw;
    PyObject *args, *ret;      /* borrowed, never NULL (None) */
} FoldCall;
/* recorder.fold_record: never fails (what cannot be folded is counted lost). */
CS_HIDDEN void cs_fold(Aggregates *a, const FoldCall *call, PyObject *value, int returned);
CS_HIDDEN void cs_fold_record(Aggregates *a, RecordObject *record, PyObject *value, int returned);
/* aggregate.Aggregates.shadow for a synchronous function's keyed call (R_SHADOW's value); its
 * argument key is args_raw (KEY_COMPACT) or the object args. */
CS_HIDDEN int cs_shadow(Aggregates *a, CodeInfoObject *ci, int args_kind, int64_t args_raw, PyObject *args,
                        unsigned long thread);
CS_HIDDEN int cs_aggregates_ready(PyObject *module);
CS_HIDDEN PyObject *cs_py_sketch_bucket(PyObject *module, PyObject *arg);

#endif
