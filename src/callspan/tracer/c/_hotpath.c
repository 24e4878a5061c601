/* callspan.tracer._hotpath: the compiled hot path.
 *
 * The same state machine as callspan/recorder.py (start, finish, suspend, resume, keep_root,
 * fold_record) and the same records (callspan/tracer/record.py layout), driven by sys.monitoring
 * callbacks written in C (3.12+) or a C profile function (3.11+). The Python recorder is the
 * reference: this file reads the same clocks and counters in the same order, so injected clocks
 * give equal records and equal aggregates (tests/tracer/test_fold_equivalence.py).
 *
 * Rules for everything reachable from a callback: never leave an exception set (it would be
 * raised into the application); count the fault on the recorder instead.
 *
 * Threads: everything here runs with the GIL held. Python code may run (and so the GIL may pass
 * to another thread) only where the reference calls Python too (the clock or CPU reader in
 * tests, the context getter and trace_filter at roots, __hash__ of keys, evict_oldest_suspended)
 * or where CPython may (DECREF, the context variable): state that must stay consistent across
 * such a point is per thread (the stack, the record being made) or re-read after it.
 */
#include "_callspan.h"
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>

#if PY_VERSION_HEX >= 0x030D0000
PyAPI_FUNC(size_t) _PySys_GetSizeOf(PyObject *); /* exported; declared in an internal header in 3.13 */
#endif

/* KeyboardInterrupt, SystemExit and other non-Exception errors raised by user code the hot path
 * runs (a __hash__, when a signal arrives) are the application's: kept here and raised when the
 * callback returns (see cs_callback_result), never swallowed. Under the GIL: one at a time. */
static PyObject *stash_type, *stash_value, *stash_tb;

void
cs_drop_error(void) /* clear an error the hot path handles; keep an interrupt */
{
    /* only KeyboardInterrupt is kept: a user __hash__ raising SystemExit must not end the program */
    if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) && stash_type == NULL) {
        PyErr_Fetch(&stash_type, &stash_value, &stash_tb);
        return;
    }
    PyErr_Clear();
}

/* IntervalThreadClock (callspan/counters.py) over the real clocks, one per OS thread. */
static unsigned int fork_generation = 1;

/* watch_signal: a signal the program leaves to its default action (SIGTERM in a followed child)
 * is caught here instead, its number written to a pipe the builder thread waits on; the builder
 * thread exports and then lets the signal kill the process (die_by_signal). Python's handler
 * table is left alone: signal.getsignal() still says SIG_DFL, and signal.signal() replaces this
 * handler as it would the default action. */
static volatile sig_atomic_t watched_signal = 0;
static volatile sig_atomic_t watch_fd = -1;

static void
on_watched_signal(int signum)
{
    int saved = errno;
    unsigned char byte = (unsigned char)signum;
    if (watch_fd >= 0)
        (void)!write(watch_fd, &byte, 1);
    errno = saved;
}

static void
default_action(int signum)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    (void)sigaction(signum, &dfl, NULL);
}

static void
stop_watching(void)
{
    if (watched_signal) {
        struct sigaction current;
        if (sigaction(watched_signal, NULL, &current) == 0 && !(current.sa_flags & SA_SIGINFO) &&
            current.sa_handler == on_watched_signal)
            default_action(watched_signal); /* not a handler the program installed since */
    }
    watched_signal = 0;
    watch_fd = -1;
}

static void
after_fork_in_child(void)
{
    fork_generation++;
    stop_watching(); /* the pipe is the parent's: a child that wants it watches again */
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
thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* perf_event_open(type, config, flags): a counter of this thread (pid 0, any CPU), its file
 * descriptor (close-on-exec); OSError as the syscall fails. The attribute is PERF_ATTR_SIZE_VER0
 * (64 bytes), laid out as counters._perf_event_open_ctypes packs it: type, size, config,
 * sample_period, sample_type, read_format, the flag bits, wakeup_events, bp_type, config1.
 * Here so that choosing a counter needs no ctypes (~3 ms at start-up). */
static PyObject *
py_perf_event_open(PyObject *module, PyObject *args)
{
    unsigned int type;
    unsigned long long config, flags;
    if (!PyArg_ParseTuple(args, "IKK:perf_event_open", &type, &config, &flags))
        return NULL;
#ifdef SYS_perf_event_open
    struct {
        uint32_t type, size;
        uint64_t config, sample_period, sample_type, read_format, flags;
        uint32_t wakeup_events, bp_type;
        uint64_t config1;
    } attr;
    memset(&attr, 0, sizeof attr);
    attr.type = type;
    attr.size = 64;
    attr.config = config;
    attr.flags = flags;
    long fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 8UL /* PERF_FLAG_FD_CLOEXEC */);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(fd);
#else
    errno = ENOSYS;
    return PyErr_SetFromErrno(PyExc_OSError);
#endif
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
/* The hot path: sys.monitoring callbacks (3.12+) and a C profile function (setprofile, 3.11+). */

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
    PyObject *finished;       /* list of finished kept records (drained by the builder) */
    PyObject *suspended;      /* dict: id(frame) -> record */
    PyObject *evict;          /* recorder.evict_oldest_suspended() */
    PyObject *end_suspended;  /* recorder.end_suspended(key): a dead generator's record */
    PyObject *clock;          /* NULL: CLOCK_MONOTONIC (what time.perf_counter_ns reads) */
    PyObject *context_getter; /* NULL or callable */
    PyObject *gate;           /* NULL, or recorder.gate: the ContextVar that is True while a sampled
                               * request runs (production mode); calls start only then */
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
    Aggregates *aggs;         /* recorder.aggregates: every finished call is folded there */
    /* Which calls become spans (recorder.keep_root and start): the token bucket lives here
     * (tokens, refilled) rather than on the recorder, read and written under the GIL. */
    double tokens;            /* may go below 0: a kept trace overdraws by its own spans */
    double rate;              /* recorder.max_spans_per_second */
    long long refilled;       /* clock reading at the last refill; has_refilled: 0 before the first */
    int has_refilled;
    long long max_spans;      /* recorder.max_spans_per_trace */
} HotPath;

static PyObject *str_faults, *str_dropped, *str_trace_filter;

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
    cs_drop_error();
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
PyObject *
cs_callback_result(PyObject *result)
{
    if (!raise_stash())
        return result;
    Py_XDECREF(result);
    return NULL;
}

static int read_clock_python(HotPath *hp, long long *out);

static inline int
read_clock(HotPath *hp, long long *out)
{
    if (hp->clock == NULL) {
        *out = cs_clock_ns();
        return 0;
    }
    return read_clock_python(hp, out);
}

static int
read_clock_python(HotPath *hp, long long *out)
{
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
static int read_cpu_other(ThreadStateObject *ts, long long *out, long long wall_now);

static inline int
read_cpu(ThreadStateObject *ts, long long *out, long long wall_now)
{
    if (ts->cpu_fd == -3 && wall_now >= 0) { /* the default: inline, from the caller's clock reading */
        IntervalClock *clock = &thread_interval_clock;
        int need_real;
        *out = interval_step(clock, cpu_interval_ns, wall_now, &need_real);
        if (need_real)
            *out = interval_commit(clock, wall_now, thread_cpu_ns());
        return 0;
    }
    return read_cpu_other(ts, out, wall_now);
}

static int
read_cpu_other(ThreadStateObject *ts, long long *out, long long wall_now)
{
    PyObject *cpu = ts->cpu;
    if (cpu == NULL || cpu == Py_None)
        return 1; /* no counter */
    long fd = ts->cpu_fd;
    if (fd == -3) {
        IntervalClock *clock = &thread_interval_clock;
        /* the clock reading the caller just took, when it is this same clock (saves a read) */
        long long now = wall_now >= 0 ? wall_now : cs_clock_ns();
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

static inline __attribute__((always_inline)) ThreadStateObject *
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
    unsigned long thread_id = PyThread_get_thread_ident();
    PyObject *key = PyLong_FromUnsignedLong(thread_id);
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
    if (!PyObject_TypeCheck(state, &CS_ThreadStateType) || ((ThreadStateObject *)state)->stack == NULL ||
        !PyList_Check(((ThreadStateObject *)state)->stack)) {
        PyErr_SetString(PyExc_TypeError, "thread state is not a callspan.tracer._hotpath.ThreadStateBase with a stack");
        return NULL;
    }
    ((ThreadStateObject *)state)->thread_id = thread_id;
    return (ThreadStateObject *)state;
}

/* PyObject_TypeCheck(op, &CS_CodeInfoType) without walking the MRO at every call: the CodeInfo
 * subclass seen last is remembered (a strong reference, so its address cannot be reused). */
static PyTypeObject *known_code_info_type;

static inline int
is_code_info(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    if (type == known_code_info_type || type == &CS_CodeInfoType)
        return 1;
    if (!PyType_IsSubtype(type, &CS_CodeInfoType))
        return 0;
    Py_XSETREF(known_code_info_type, (PyTypeObject *)Py_NewRef((PyObject *)type));
    return 1;
}

static CodeInfoObject *
as_info(PyObject *info)
{
    if (!is_code_info(info)) {
        PyErr_SetString(PyExc_TypeError, "not a callspan.tracer._hotpath.CodeInfoBase");
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


/* -- which calls become spans (recorder.keep_root) ---------------------------------------- */

/* 1 when a new trace keeps spans, 0 when not, -1 on error: the application's sampling decision
 * (recorder.trace_filter, read at each root as the reference does) and the span rate (a token
 * bucket refilled from the clock, read after the filter as the reference reads it). */
static int
keep_root(HotPath *hp, PyObject *context)
{
    PyObject *filter = PyObject_GetAttr(hp->recorder, str_trace_filter);
    if (filter == NULL)
        return -1;
    if (filter != Py_None) {
        PyObject *verdict = PyObject_CallOneArg(filter, context ? context : Py_None);
        Py_DECREF(filter);
        int yes = verdict ? PyObject_IsTrue(verdict) : -1;
        Py_XDECREF(verdict);
        if (yes <= 0)
            return yes;
    }
    else {
        Py_DECREF(filter);
    }
    long long now;
    if (read_clock(hp, &now) < 0)
        return -1;
    double rate = hp->rate;
    if (hp->has_refilled) {
        double tokens = hp->tokens + (double)(now - hp->refilled) * rate / 1e9;
        hp->tokens = rate <= tokens ? rate : tokens; /* min(rate, tokens) */
    }
    hp->refilled = now;
    hp->has_refilled = 1;
    if (hp->tokens < 1)
        return 0;
    hp->tokens -= 1;
    return 1;
}

/* -- the four transitions (mirror callspan/recorder.py) ---------------------------------- */

/* PyList_Append(stack, record), without the call while the list has room. */
static inline int
push_record(PyObject *stack, PyObject *record)
{
    PyListObject *list = (PyListObject *)stack;
    Py_ssize_t size = Py_SIZE(list);
    if (size < list->allocated) {
        list->ob_item[size] = Py_NewRef(record);
        Py_SET_SIZE(list, size + 1);
        return 0;
    }
    return PyList_Append(stack, record);
}

/* The argument key of a call of ``ci`` starting (keys.args_key): *args a new reference (None
 * for a compact key, then *raw and *kind say it). -1 with an exception set. */
static int
start_key(HotPath *hp, CodeInfoObject *ci, PyFrameObject *frame, PyObject **args, int64_t *raw, int *kind)
{
    if (ci->unkeyed >= UNKEYABLE_AFTER && is_set(ci->unkeyed_args)) {
        *args = Py_NewRef(ci->unkeyed_args); /* never keyable: not tried again */
        return 0;
    }
    /* frame NULL (sys.monitoring): the arguments are read from the running frame */
    PyObject *key = cs_args_key(hp->kwd_mark, ci, frame, raw, kind, hp->clock);
    if (key == NULL)
        return -1;
    *args = key;
    /* a compact key (a raw hash) is keyed; a tuple is unkeyed when it has no hash */
    PyObject *names = *kind != KEY_OBJECT ? NULL : PyTuple_GET_ITEM(key, 1);
    if (names != NULL && PyTuple_GET_ITEM(key, 0) == Py_None && PyUnicode_GET_LENGTH(names) &&
        PyUnicode_CompareWithASCIIString(names, "error") != 0) {
        if (++ci->unkeyed == UNKEYABLE_AFTER) {
            PyObject *fixed = PyTuple_Pack(3, Py_None, names, Py_False);
            if (fixed == NULL)
                return -1;
            Py_XSETREF(ci->unkeyed_args, fixed);
        }
    }
    else {
        ci->unkeyed = 0;
    }
    return 0;
}

/* recorder.shadow_of: a keyed call with a hash (the shadow state applies to synchronous ones) */
static inline int
keyed_with_hash(PyObject *args, int args_kind)
{
    return args != NULL && (args_kind != KEY_OBJECT || (PyTuple_Check(args) && PyTuple_GET_SIZE(args) == 3 &&
                                                        PyLong_Check(PyTuple_GET_ITEM(args, 0))));
}

/* -- call frames --------------------------------------------------------------------------
 * A synchronous function's call whose trace keeps no span (the common case) needs no object
 * while it runs: it is pushed as a CallFrame on its thread's array and folded from there when it
 * returns. The frames always sit above every Record of the thread's stack: anything that puts a
 * Record on the stack (a coroutine or generator starting or resuming, a kept call) or reads it
 * from Python (stop, fork) first makes Records of the frames (cs_flush_frames), outermost first,
 * each with the Record below as its parent, exactly as if it had been a Record from its start. */

int
cs_flush_frames(ThreadStateObject *ts)
{
    Py_ssize_t done = 0;
    int rc = 0;
    for (; done < ts->n_frames; done++) {
        CallFrame *f = &ts->frames[done];
        PyObject *stack = ts->stack;
        Py_ssize_t depth = stack != NULL && PyList_Check(stack) ? PyList_GET_SIZE(stack) : 0;
        PyObject *parent = depth ? PyList_GET_ITEM(stack, depth - 1) : NULL;
        if (parent == NULL || !IS_RECORD_OBJECT(parent)) { /* cannot happen: a frame has a parent */
            PyErr_SetString(PyExc_RuntimeError, "a call frame without a parent record");
            rc = -1;
            break;
        }
        RecordObject *made = cs_record_alloc();
        if (made == NULL) {
            rc = -1;
            break;
        }
        memset(made->o, 0, sizeof(made->o));
        made->o[OBJ_INFO] = f->info; /* the frame's references move to the record */
        made->o[OBJ_ARGS] = f->args;
        made->o[OBJ_THREAD] = Py_NewRef((PyObject *)ts);
        made->o[OBJ_PARENT] = Py_NewRef(parent);
        PyObject *root = record_slot((RecordObject *)parent, OBJ_ROOT);
        made->o[OBJ_ROOT] = Py_NewRef(root == Py_None ? parent : root);
        memset(made->n, 0, sizeof(made->n));
        made->n[NUM_START] = f->start;
        made->n[NUM_SEG_CPU] = f->seg_cpu;
        made->n[NUM_CPU] = f->cpu;
        made->n[NUM_CHILD_CPU] = f->child_cpu;
        made->n[NUM_SHADOW] = f->shadow;
        made->args_kind = f->args_kind;
        made->args_raw = f->args_raw;
        made->ret_kind = KEY_OBJECT;
        made->ret_raw = 0;
        made->node = f->node;
        if (push_record(stack, (PyObject *)made) < 0) {
            made->o[OBJ_INFO] = made->o[OBJ_ARGS] = NULL; /* still the frame's */
            Py_DECREF(made);
            rc = -1;
            break;
        }
        Py_DECREF(made);
    }
    if (done > 0) {
        memmove(ts->frames, ts->frames + done, (size_t)(ts->n_frames - done) * sizeof(CallFrame));
        ts->n_frames -= done;
    }
    return rc;
}

/* Starts a call of ``ci`` as a CallFrame when it can be one: a synchronous function under a
 * running call of this thread, in a trace that keeps no span. 1 started, 0 not such a call
 * (nothing done), -1 error (as hp_start's). */
static int
start_frame(HotPath *hp, ThreadStateObject *ts, CodeInfoObject *ci, PyFrameObject *frame)
{
    PyObject *stack = ts->stack;
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    PyObject *top = depth ? PyList_GET_ITEM(stack, depth - 1) : NULL;
    if (top == NULL || !IS_RECORD_OBJECT(top))
        return 0;
    PyObject *root = record_slot((RecordObject *)top, OBJ_ROOT);
    long long root_keep = ((RecordObject *)(root == Py_None ? top : root))->n[NUM_KEEP];
    if (0 < root_keep && root_keep < hp->max_spans)
        return 0; /* it would be kept (hp_start): a span needs a Record */
    PyObject *args = NULL;
    int64_t args_raw = 0;
    int args_kind = KEY_OBJECT;
    /* the key first: hashing may run Python code, whose calls come and go on this stack */
    if (ci->keys && start_key(hp, ci, frame, &args, &args_raw, &args_kind) < 0)
        return -1;
    if (ts->n_frames == ts->cap_frames) {
        Py_ssize_t cap = ts->cap_frames ? ts->cap_frames * 2 : 64;
        CallFrame *frames = PyMem_Realloc(ts->frames, (size_t)cap * sizeof(CallFrame));
        if (frames == NULL) {
            Py_XDECREF(args);
            PyErr_NoMemory();
            return -1;
        }
        ts->frames = frames;
        ts->cap_frames = cap;
    }
    long long shadow = keyed_with_hash(args, args_kind)
                           ? cs_shadow(hp->aggs, ci, args_kind, args_raw, args, ts->thread_id)
                           : 0;
    uint32_t parent_node = ts->n_frames ? ts->frames[ts->n_frames - 1].node : ((RecordObject *)top)->node;
    Py_ssize_t index = ts->n_frames++;
    CallFrame *f = &ts->frames[index];
    f->info = Py_NewRef((PyObject *)ci);
    if (args == Py_None) { /* compact, or keys off */
        Py_DECREF(args);
        args = NULL;
    }
    f->args = args;
    f->args_raw = args_raw;
    f->args_kind = (uint8_t)args_kind;
    f->shadow = shadow;
    f->start = f->seg_cpu = f->cpu = f->child_cpu = 0;
    /* 0 when the node could not be made (out of memory): the call is counted lost at its fold */
    f->node = cs_child(hp->aggs, parent_node, ci);
    long long start, value;
    if (read_clock(hp, &start) < 0)
        return -1;
    int got = read_cpu(ts, &value, hp->clock == NULL ? start : -1);
    if (got < 0)
        return -1;
    if (index < ts->n_frames) { /* an injected clock is Python code: re-read the frame */
        f = &ts->frames[index];
        if (got == 0)
            f->seg_cpu = value;
        f->start = start;
    }
    return 1;
}

/* hp_finish for the innermost call frame, at clock reading ``now``. */
static int
finish_frame(HotPath *hp, ThreadStateObject *ts, PyObject *code, PyObject *value, PyObject *error, long long now)
{
    CallFrame f = ts->frames[ts->n_frames - 1];
    CodeInfoObject *ci = (CodeInfoObject *)f.info;
    if (ci->code != code) /* started before tracing began */
        return 0;
    ts->n_frames--; /* popped: its references are f's */
    int rc = -1;
    PyObject *ret = NULL;
    int64_t ret_raw = 0;
    int ret_kind = KEY_OBJECT;
    long long cpu_now;
    int counted = read_cpu(ts, &cpu_now, hp->clock == NULL ? now : -1);
    if (counted < 0)
        goto finally;
    if (counted == 0)
        f.cpu += cpu_now - f.seg_cpu;
    PyObject *args = f.args != NULL ? f.args : Py_None;
    if (error == NULL && ci->keys && ci->unkeyed < UNKEYABLE_AFTER && args != cs_identity_only_args &&
        !(f.shadow & SHADOW_SHADOWED)) {
        /* never kept: no return size (only spans carry it); a shadowed call's return value is
         * not folded (fold_key counts the call and stops), so it is not hashed either */
        if ((ret = cs_value_key(value, &ret_raw, &ret_kind, ci, hp->clock)) == NULL)
            goto finally;
    }
    /* the caller is the innermost call again: a frame, or the stack's top record */
    uint32_t parent_node = 0;
    int has_parent = 1;
    PyObject *caller = NULL;
    if (ts->n_frames > 0) {
        CallFrame *parent = &ts->frames[ts->n_frames - 1];
        if (counted == 0)
            parent->child_cpu += f.cpu;
        parent_node = parent->node;
        caller = parent->info;
    }
    else {
        Py_ssize_t depth = PyList_GET_SIZE(ts->stack);
        PyObject *parent = depth ? PyList_GET_ITEM(ts->stack, depth - 1) : NULL;
        has_parent = parent != NULL && IS_RECORD_OBJECT(parent);
        if (has_parent) {
            if (counted == 0)
                ((RecordObject *)parent)->n[NUM_CHILD_CPU] += f.cpu;
            parent_node = ((RecordObject *)parent)->node;
            caller = ((RecordObject *)parent)->o[OBJ_INFO];
        }
    }
    /* Field by field: an initializer zeroes the whole struct first (a `rep stos` per call). */
    FoldCall call;
    call.ci = ci;
    call.node = f.node;
    call.nested = has_parent && parent_node == f.node;
    call.caller = caller;
    call.error = error != NULL && !PyObject_TypeCheck(error, (PyTypeObject *)hp->generator_exit);
    call.start = f.start;
    call.end = now;
    call.susp_ns = call.suspends = 0;
    call.cpu = f.cpu;
    call.child_cpu = f.child_cpu;
    call.shadow = f.shadow;
    call.args_kind = f.args_kind;
    call.ret_kind = (uint8_t)ret_kind;
    call.args_raw = f.args_raw;
    call.ret_raw = ret_raw;
    call.args = args;
    call.ret = ret != NULL ? ret : Py_None;
    cs_fold(hp->aggs, &call, error == NULL ? value : NULL, error == NULL);
    rc = 0;
finally:
    Py_XDECREF(ret);
    Py_DECREF(f.info);
    Py_XDECREF(f.args);
    return rc;
}

/* ``info``: a CodeInfo from the decision cache (checked by as_info when it was put there). */
static int
hp_start(HotPath *hp, PyObject *info, PyFrameObject *frame)
{
    PyObject *parent = NULL, *prev = NULL;
    PyObject *record = NULL, *args = NULL, *context = NULL;
    int rc = -1;
    int64_t args_raw = 0;
    int args_kind = KEY_OBJECT;
    CodeInfoObject *ci = (CodeInfoObject *)info;
    ThreadStateObject *ts = get_state(hp, 1);
    if (ts == NULL)
        goto finally;
    int kind = ci->kind;
    if (kind == KIND_FUNCTION) {
        int started = start_frame(hp, ts, ci, frame);
        if (started != 0)
            return started < 0 ? -1 : 0;
    }
    if (ts->n_frames > 0 && cs_flush_frames(ts) < 0) /* a Record goes on top of them */
        goto finally;
    PyObject *stack = ts->stack;
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
    long long keep;
    uint32_t parent_node;
    if (parent == Py_None) {
        root = Py_None;
        if (hp->context_getter != NULL && (context = PyObject_CallNoArgs(hp->context_getter)) == NULL)
            goto finally;
        int kept = keep_root(hp, context);
        if (kept < 0)
            goto finally;
        keep = kept;
        if ((parent_node = cs_thread_root(hp->aggs, ts)) == 0)
            goto finally;
    }
    else {
        if (!IS_RECORD_OBJECT(parent)) {
            PyErr_SetString(PyExc_TypeError, "parent is not a record");
            goto finally;
        }
        root = record_slot((RecordObject *)parent, OBJ_ROOT);
        if (root == Py_None)
            root = parent;
        /* The first max_spans calls of a kept trace to start are kept: their ancestors started
         * earlier, so they are kept too. */
        long long *root_keep = &((RecordObject *)root)->n[NUM_KEEP];
        if (0 < *root_keep && *root_keep < hp->max_spans) {
            ++*root_keep;
            hp->tokens -= 1;
            keep = 1;
        }
        else {
            keep = 0;
        }
        parent_node = ((RecordObject *)parent)->node;
    }
    if (ci->keys && start_key(hp, ci, frame, &args, &args_raw, &args_kind) < 0)
        goto finally;
    RecordObject *made = cs_record_alloc();
    if (made == NULL)
        goto finally;
    record = (PyObject *)made;
    PyObject **o = made->o;
    memset(o, 0, sizeof(made->o)); /* NULL: the slot's default (record_slot) */
    o[OBJ_INFO] = Py_NewRef(info);
    o[OBJ_THREAD] = Py_NewRef((PyObject *)ts);
    if (parent != Py_None)
        o[OBJ_PARENT] = Py_NewRef(parent);
    if (root != Py_None)
        o[OBJ_ROOT] = Py_NewRef(root);
    if (args != NULL && args != Py_None)
        o[OBJ_ARGS] = Py_NewRef(args);
    if (context != NULL && context != Py_None)
        o[OBJ_CONTEXT] = Py_NewRef(context);
    if (prev != Py_None)
        o[OBJ_PREV_CURRENT] = Py_NewRef(prev);
    if (via_task != Py_False)
        o[OBJ_VIA_TASK] = Py_NewRef(via_task);
    memset(made->n, 0, sizeof(made->n));
    made->n[NUM_KEEP] = keep;
    made->args_kind = (uint8_t)args_kind;
    made->args_raw = args_raw;
    made->ret_kind = KEY_OBJECT;
    made->ret_raw = 0;
    /* Python: recorder.start, shadow_of (a keyed call of a synchronous function with a hash) */
    if (kind == KIND_FUNCTION && keyed_with_hash(args, args_kind))
        made->n[NUM_SHADOW] = cs_shadow(hp->aggs, ci, args_kind, args_raw, args, ts->thread_id);
    /* 0 when the node could not be made (out of memory): the call is counted lost at its fold */
    made->node = cs_child(hp->aggs, parent_node, ci);
    if (push_record(stack, record) < 0)
        goto finally;
    if (kind == KIND_COROUTINE) {
        PyObject *token = PyContextVar_Set(hp->current, record);
        if (token == NULL)
            goto finally;
        Py_DECREF(token);
    }
    long long value, start;
    if (read_clock(hp, &start) < 0)
        goto finally;
    int got = read_cpu(ts, &value, hp->clock == NULL ? start : -1);
    if (got < 0)
        goto finally;
    if (got == 0)
        made->n[NUM_SEG_CPU] = value;
    made->n[NUM_START] = start;
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
static RecordObject *
pop_own(HotPath *hp, PyObject *code, ThreadStateObject **ts_out)
{
    ThreadStateObject *ts = get_state(hp, 0);
    *ts_out = ts;
    if (ts == NULL || ts->n_frames > 0) /* the innermost call is a frame (finish_frame) */
        return NULL;
    PyObject *stack = ts->stack;
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    if (depth == 0)
        return NULL;
    PyObject *top = PyList_GET_ITEM(stack, depth - 1);
    if (!IS_RECORD_OBJECT(top)) {
        PyErr_SetString(PyExc_TypeError, "not a compiled record");
        return NULL;
    }
    /* its CodeInfo was checked when it started (a record's INFO is never reassigned by callspan) */
    PyObject *info = ((RecordObject *)top)->o[OBJ_INFO];
    if (!is_code_info(info)) {
        PyErr_SetString(PyExc_TypeError, "not a callspan.tracer._hotpath.CodeInfoBase");
        return NULL;
    }
    if (((CodeInfoObject *)info)->code != code) /* started before tracing began */
        return NULL;
    /* Pop: the list keeps its capacity; the reference moves to the caller. */
    PyList_SET_ITEM(stack, depth - 1, NULL);
    Py_SET_SIZE(stack, depth - 1);
    return (RecordObject *)top;
}

/* record[CPU] += cpu() - record[SEG_CPU]; 1 when there is no counter. */
static int
close_segment(ThreadStateObject *ts, RecordObject *record, long long wall_now)
{
    long long now;
    int got = read_cpu(ts, &now, wall_now);
    if (got != 0)
        return got;
    record->n[NUM_CPU] += now - record->n[NUM_SEG_CPU];
    return 0;
}

static int
hp_finish(HotPath *hp, PyObject *code, PyObject *value, PyObject *error)
{
    long long now;
    if (read_clock(hp, &now) < 0)
        return -1;
    ThreadStateObject *ts = get_state(hp, 0);
    if (ts != NULL && ts->n_frames > 0)
        return finish_frame(hp, ts, code, value, error, now);
    RecordObject *record = pop_own(hp, code, &ts);
    if (record == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int rc = -1;
    CodeInfoObject *ci = (CodeInfoObject *)record->o[OBJ_INFO]; /* checked by pop_own */
    int counted = close_segment(ts, record, hp->clock == NULL ? now : -1);
    if (counted < 0)
        goto finally;
    record->n[NUM_END] = now;
    if (error == NULL) {
        if (ci->keys && ci->unkeyed < UNKEYABLE_AFTER && record->o[OBJ_ARGS] != cs_identity_only_args) {
            int64_t ret_raw = 0;
            int ret_kind;
            PyObject *ret = cs_value_key(value, &ret_raw, &ret_kind, ci, hp->clock);
            if (ret == NULL)
                goto finally;
            Py_XSETREF(record->o[OBJ_RET], ret);
            record->ret_kind = (uint8_t)ret_kind;
            record->ret_raw = ret_raw;
            /* sizes only feed memory estimates, on spans: one kept call in RET_SIZE_EVERY */
            if (!record->n[NUM_KEEP]) {
            }
            else if (ci->sized++ % RET_SIZE_EVERY == 0 && !cs_sizeof_is_python(value)) {
                size_t bytes = _PySys_GetSizeOf(value); /* sys.getsizeof(value, 0) */
                if (bytes == (size_t)-1 && PyErr_Occurred()) {
                    if (!PyErr_ExceptionMatches(PyExc_TypeError))
                        goto finally;
                    PyErr_Clear();
                    bytes = 0;
                }
                PyObject *size = PyLong_FromSize_t(bytes);
                if (size == NULL)
                    goto finally;
                Py_XSETREF(record->o[OBJ_RET_SIZE], size);
            }
            else {
                Py_XSETREF(record->o[OBJ_RET_SIZE], Py_NewRef(Py_None));
            }
        }
    }
    else if (!PyObject_TypeCheck(error, (PyTypeObject *)hp->generator_exit)) {
        Py_XSETREF(record->o[OBJ_ERROR], Py_NewRef((PyObject *)Py_TYPE(error)));
    }
    Py_ssize_t depth = PyList_GET_SIZE(ts->stack);
    if (depth && counted == 0) {
        PyObject *parent = PyList_GET_ITEM(ts->stack, depth - 1);
        if (parent == record_slot(record, OBJ_PARENT) && IS_RECORD_OBJECT(parent))
            ((RecordObject *)parent)->n[NUM_CHILD_CPU] += record->n[NUM_CPU];
    }
    if (ci->kind == KIND_COROUTINE) {
        PyObject *token = PyContextVar_Set(hp->current, record_slot(record, OBJ_PREV_CURRENT));
        if (token == NULL)
            goto finally;
        Py_DECREF(token);
    }
    cs_fold_record(hp->aggs, record, error == NULL ? value : NULL, error == NULL);
    rc = 0;
    if (record->n[NUM_KEEP]) {
        if (PyList_GET_SIZE(hp->finished) < hp->max_pending) {
            if (PyList_Append(hp->finished, (PyObject *)record) < 0)
                rc = -1;
        }
        else {
            count_on_recorder(hp, str_dropped);
        }
    }
finally:
    Py_DECREF(record);
    return rc;
}

/* recorder.end_suspended(key): the record suspended at a frame address now used by another
 * generator ends where it last suspended (rare: a generator closed without an event). */
#define RESUME_AT_START_OPARG_MASK 3 /* _env.RESUME_AT_START_OPARG_MASK */

static int
end_suspended(HotPath *hp, PyObject *key)
{
    PyObject *done = PyObject_CallOneArg(hp->end_suspended, key);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return 0;
}

/* The instruction at byte ``offset`` of ``code`` (its argument in *oparg): -1 when out of range. */
static int
opcode_at(PyCodeObject *code, int offset, int *oparg)
{
    PyObject *bytes = PyCode_GetCode(code);
    int opcode = -1;
    *oparg = 0;
    if (bytes != NULL && PyBytes_Check(bytes) && offset >= 0 && offset + 1 < PyBytes_GET_SIZE(bytes)) {
        const unsigned char *ops = (const unsigned char *)PyBytes_AS_STRING(bytes);
        opcode = ops[offset];
        *oparg = ops[offset + 1];
    }
    Py_XDECREF(bytes);
    PyErr_Clear();
    return opcode;
}

/* setprofile's "call" of a generator or coroutine frame: 1 when the frame starts (f_lasti at a
 * RESUME whose oparg's low bits are 0: _env.RESUME_AT_START_OPARG_MASK), 0 when it resumes. */
static int
frame_starts(HotPath *hp, PyFrameObject *frame)
{
    PyCodeObject *code = PyFrame_GetCode(frame);
    int oparg;
    int opcode = opcode_at(code, PyFrame_GetLasti(frame), &oparg);
    Py_DECREF(code);
    return opcode == hp->resume_op && (oparg & RESUME_AT_START_OPARG_MASK) == 0;
}

static int
hp_suspend(HotPath *hp, PyObject *code, PyFrameObject *frame)
{
    long long now;
    if (read_clock(hp, &now) < 0)
        return -1;
    ThreadStateObject *ts;
    RecordObject *record = pop_own(hp, code, &ts);
    if (record == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int rc = -1;
    PyObject *key = NULL;
    if (close_segment(ts, record, hp->clock == NULL ? now : -1) < 0)
        goto finally;
    record->n[NUM_SUSPENDS]++;
    record->n[NUM_SUSP_AT] = now;
    if ((key = PyLong_FromVoidPtr(frame)) == NULL)
        goto finally;
    int stale = PyDict_Contains(hp->suspended, key);
    if (stale < 0 || (stale && end_suspended(hp, key) < 0)) /* recorder.suspend: a dead generator's */
        goto finally;
    if (PyDict_GET_SIZE(hp->suspended) >= hp->max_suspended) {
        PyObject *done = PyObject_CallNoArgs(hp->evict);
        if (done == NULL)
            goto finally;
        Py_DECREF(done);
    }
    if (PyDict_SetItem(hp->suspended, key, (PyObject *)record) < 0)
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
    PyObject *found = PyDict_GetItemWithError(hp->suspended, key);
    if (found == NULL) {
        Py_DECREF(key);
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(found);
    int deleted = PyDict_DelItem(hp->suspended, key);
    Py_DECREF(key);
    if (deleted < 0) {
        Py_DECREF(found);
        return -1;
    }
    int rc = -1;
    PyCodeObject *code = PyFrame_GetCode(frame);
    if (!IS_RECORD_OBJECT(found)) {
        PyErr_SetString(PyExc_TypeError, "not a compiled record");
        goto finally;
    }
    RecordObject *record = (RecordObject *)found;
    CodeInfoObject *ci = as_info(record->o[OBJ_INFO]);
    if (ci == NULL)
        goto finally;
    if (ci->code != (PyObject *)code) {
        rc = 0;
        goto finally;
    }
    ThreadStateObject *ts = get_state(hp, 1);
    if (ts == NULL)
        goto finally;
    long long now;
    if (read_clock(hp, &now) < 0)
        goto finally;
    record->n[NUM_SUSP_NS] += now - record->n[NUM_SUSP_AT];
    if (ts->n_frames > 0 && cs_flush_frames(ts) < 0) /* the record goes on top of them */
        goto finally;
    if (PyList_Append(ts->stack, found) < 0)
        goto finally;
    int got = read_cpu(ts, &now, hp->clock == NULL ? now : -1);
    if (got < 0)
        goto finally;
    if (got == 0)
        record->n[NUM_SEG_CPU] = now;
    rc = 0;
finally:
    Py_XDECREF(code);
    Py_DECREF(found);
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
    if (info != Py_None && as_info(info) == NULL) /* the hot path trusts what the table holds */
        return -1;
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

/* -- the production gate ------------------------------------------------------------------ */

/* 1 when no call may start now: the session is gated and this thread's (or asyncio task's)
 * gate is not True, i.e. no sampled request runs here. Read before anything else of a
 * selected call (one context-variable read, cached by CPython per thread and context). */
static inline int
gate_closed(HotPath *hp)
{
    if (hp->gate == NULL)
        return 0;
    PyObject *value = NULL;
    if (PyContextVar_Get(hp->gate, Py_None, &value) < 0) {
        cs_drop_error();
        return 1;
    }
    int closed = value != Py_True;
    Py_XDECREF(value);
    return closed;
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
    if (gate_closed(hp))
        Py_RETURN_NONE; /* selected code outside a sampled request: stays enabled, not recorded */
    /* No frame object: keys read the arguments from the running frame (cs_args_key). */
    if (hp_start(hp, info, frame) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

/* The CodeInfo of the code in args[0] when it is traced and the event brought at least `need`
 * arguments; NULL otherwise (a failed lookup faults the hot path). */
static inline PyObject *
traced_info(HotPath *hp, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t need)
{
    PyObject *info = nargs >= need ? info_of(hp, args[0]) : NULL;
    if (info == NULL || info == Py_None) {
        if (PyErr_Occurred())
            fault(hp);
        return NULL;
    }
    return info;
}

static PyObject *
cb_py_resume_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    if (traced_info(hp, args, nargs, 1) == NULL)
        return Py_NewRef(hp->disable);
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL || hp_resume(hp, frame) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

/* 1 when the innermost record of this thread is a call of ``code``: its return is traced, and
 * the decision cache need not be asked. */
static inline int
innermost_is(HotPath *hp, PyObject *code)
{
    if (thread_cache.serial != hp->serial)
        return 0;
    ThreadStateObject *ts = thread_cache.state;
    if (ts->n_frames > 0)
        return ((CodeInfoObject *)ts->frames[ts->n_frames - 1].info)->code == code;
    PyObject *stack = ts->stack;
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    if (depth == 0)
        return 0;
    PyObject *top = PyList_GET_ITEM(stack, depth - 1);
    return IS_RECORD_OBJECT(top) && is_code_info(((RecordObject *)top)->o[OBJ_INFO]) &&
           ((CodeInfoObject *)((RecordObject *)top)->o[OBJ_INFO])->code == code;
}

static PyObject *
cb_py_return_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs < 3 || !innermost_is(hp, args[0])) && traced_info(hp, args, nargs, 3) == NULL)
        return Py_NewRef(hp->disable);
    if (hp_finish(hp, args[0], args[2], NULL) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

static PyObject *
cb_py_yield_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    if (traced_info(hp, args, nargs, 1) == NULL)
        return Py_NewRef(hp->disable);
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL || hp_suspend(hp, args[0], frame) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

/* PY_UNWIND and PY_THROW are global events: they must never return DISABLE. */
static PyObject *
cb_py_unwind_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    if (traced_info(hp, args, nargs, 3) == NULL)
        Py_RETURN_NONE;
    if (hp_finish(hp, args[0], Py_None, args[2]) < 0)
        fault(hp);
    Py_RETURN_NONE;
}

static PyObject *
cb_py_throw_impl(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)
{
    if (traced_info(hp, args, nargs, 1) == NULL)
        Py_RETURN_NONE;
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL || hp_resume(hp, frame) < 0)
        fault(hp);
    Py_RETURN_NONE;
}


/* The registered callbacks: each event's implementation, its result mapped by cs_callback_result. */
#define MONITORING_CALLBACK(event)                                              \
    static PyObject *                                                           \
    cb_##event(HotPath *hp, PyObject *const *args, Py_ssize_t nargs)            \
    {                                                                           \
        return cs_callback_result(cb_##event##_impl(hp, args, nargs));         \
    }
MONITORING_CALLBACK(py_start)
MONITORING_CALLBACK(py_resume)
MONITORING_CALLBACK(py_return)
MONITORING_CALLBACK(py_yield)
MONITORING_CALLBACK(py_unwind)
MONITORING_CALLBACK(py_throw)
#undef MONITORING_CALLBACK

/* -- the setprofile hook: a C profile function (as cProfile's) ---------------------------- */
/* Mirrors callspan/tracer/cores/setprofile.py: "call" starts a record (or resumes a suspended
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
        int resumes = suspended > 0 && !frame_starts(hp, frame);
        int failed = suspended < 0;
        if (resumes)
            failed = hp_resume(hp, frame) < 0;
        else if (suspended > 0) /* it starts at a suspended record's address: a dead generator's */
            failed = end_suspended(hp, key) < 0;
        Py_XDECREF(key);
        if (failed)
            fault(hp);
        if (failed || resumes)
            goto done;
    }
    if (!gate_closed(hp) && hp_start(hp, info, frame) < 0)
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
    int kind = is_code_info(info) ? ((CodeInfoObject *)info)->kind : KIND_FUNCTION;
    int lasti = PyFrame_GetLasti(frame);
    int oparg;
    int opcode = opcode_at((PyCodeObject *)code, lasti, &oparg);
    if (hp->yield_at_resume && opcode == hp->resume_op && lasti >= 2)
        opcode = opcode_at((PyCodeObject *)code, lasti - 2, &oparg);
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

/* profile_install_thread(): the C profile function for the calling thread only (a thread that
 * existed before profile_install on 3.11). */
static PyObject *
hp_profile_install_thread(HotPath *hp, PyObject *unused)
{
    if (hp->profiling)
        PyEval_SetProfile(profile_func, (PyObject *)hp);
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
    Py_VISIT(self->end_suspended);
    Py_VISIT(self->clock);
    Py_VISIT(self->context_getter);
    Py_VISIT(self->gate);
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
    Py_CLEAR(self->end_suspended);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->context_getter);
    Py_CLEAR(self->gate);
    Py_CLEAR(self->current);
    Py_CLEAR(self->disable);
    Py_CLEAR(self->kwd_mark);
    Py_CLEAR(self->generator_exit);
    Py_CLEAR(self->unknown_exc);
    Py_CLEAR(self->aggs);
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
attr_ll(PyObject *obj, const char *name, long long *out)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* HotPath(recorder, current_var, kwd_mark, disable, native_clock): recorder.aggregates must be a
 * callspan.tracer._hotpath.Aggregates (see callspan.tracer.cores.base.compiled_hot_path). */
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
        (self->evict = PyObject_GetAttrString(recorder, "evict_oldest_suspended")) == NULL ||
        (self->end_suspended = PyObject_GetAttrString(recorder, "end_suspended")) == NULL ||
        (self->aggs = (Aggregates *)PyObject_GetAttrString(recorder, "aggregates")) == NULL)
        return -1;
    if (!PyDict_Check(self->infos) || !PyDict_Check(self->states) || !PyDict_Check(self->suspended) ||
        !PyList_Check(self->finished)) {
        PyErr_SetString(PyExc_TypeError, "recorder.infos, states and suspended must be dicts, finished a list");
        return -1;
    }
    if (!IS_AGGREGATES((PyObject *)self->aggs)) {
        PyErr_SetString(PyExc_TypeError, "recorder.aggregates must be a callspan.tracer._hotpath.Aggregates");
        return -1;
    }
    if (!native_clock && (self->clock = PyObject_GetAttrString(recorder, "clock")) == NULL)
        return -1;
    self->context_getter = attr_or_null(recorder, "context_getter");
    if (self->context_getter == NULL && PyErr_Occurred())
        return -1;
    self->gate = attr_or_null(recorder, "gate");
    if (self->gate == NULL && PyErr_Occurred())
        return -1;
    if (self->gate != NULL && !PyContextVar_CheckExact(self->gate)) {
        PyErr_SetString(PyExc_TypeError, "recorder.gate must be a ContextVar or None");
        return -1;
    }
    long long max_pending, max_suspended;
    if (attr_ll(recorder, "max_pending", &max_pending) < 0 || attr_ll(recorder, "max_suspended", &max_suspended) < 0 ||
        attr_ll(recorder, "max_spans_per_trace", &self->max_spans) < 0 ||
        attr_double(recorder, "max_spans_per_second", &self->rate) < 0 ||
        attr_double(recorder, "tokens", &self->tokens) < 0)
        return -1;
    self->max_pending = (Py_ssize_t)max_pending;
    self->max_suspended = (Py_ssize_t)max_suspended;
    PyObject *refilled = PyObject_GetAttrString(recorder, "refilled");
    if (refilled == NULL)
        return -1;
    self->has_refilled = refilled != Py_None;
    self->refilled = self->has_refilled ? PyLong_AsLongLong(refilled) : 0;
    Py_DECREF(refilled);
    if (PyErr_Occurred())
        return -1;
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

static PyMemberDef HotPath_members[] = {
    {"tokens", T_DOUBLE, offsetof(HotPath, tokens), 0,
     "the span token bucket (recorder.tokens of the Python hot path)"},
    {"aggregates", T_OBJECT, offsetof(HotPath, aggs), READONLY, "the aggregates every call is folded into"},
    {"max_pending", T_PYSSIZET, offsetof(HotPath, max_pending), 0, "recorder.max_pending, read when made"},
    {"max_suspended", T_PYSSIZET, offsetof(HotPath, max_suspended), 0, "recorder.max_suspended, read when made"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef HotPath_methods[] = {
    {"py_start", (PyCFunction)(void (*)(void))cb_py_start, METH_FASTCALL, "PY_START callback"},
    {"py_resume", (PyCFunction)(void (*)(void))cb_py_resume, METH_FASTCALL, "PY_RESUME callback"},
    {"py_return", (PyCFunction)(void (*)(void))cb_py_return, METH_FASTCALL, "PY_RETURN callback"},
    {"py_yield", (PyCFunction)(void (*)(void))cb_py_yield, METH_FASTCALL, "PY_YIELD callback"},
    {"py_unwind", (PyCFunction)(void (*)(void))cb_py_unwind, METH_FASTCALL, "PY_UNWIND callback"},
    {"py_throw", (PyCFunction)(void (*)(void))cb_py_throw, METH_FASTCALL, "PY_THROW callback"},
    {"configure_setprofile", (PyCFunction)hp_configure_setprofile, METH_VARARGS, "opcodes for the profile hook"},
    {"profile_install", (PyCFunction)hp_profile_install, METH_NOARGS, "install the C profile function"},
    {"profile_install_thread", (PyCFunction)hp_profile_install_thread, METH_NOARGS,
     "install the C profile function for the calling thread"},
    {"profile_uninstall", (PyCFunction)hp_profile_uninstall, METH_NOARGS, "remove the C profile function"},
    {"thread_bootstrap", (PyCFunction)(void (*)(void))hp_thread_bootstrap, METH_FASTCALL,
     "threading.setprofile hook that installs the C profile function in a new thread"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HotPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan.tracer._hotpath.HotPath",
    .tp_basicsize = sizeof(HotPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "sys.monitoring callbacks driving a callspan Recorder",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HotPath_init,
    .tp_dealloc = (destructor)HotPath_dealloc,
    .tp_traverse = (traverseproc)HotPath_traverse,
    .tp_clear = (inquiry)HotPath_clear,
    .tp_methods = HotPath_methods,
    .tp_members = HotPath_members,
};


/* -- the profile function installed before callspan's, given back at stop ------------------- */

typedef struct {
    Py_tracefunc func;
    PyObject *obj;
} SavedProfile;

static void
saved_profile_free(PyObject *capsule)
{
    SavedProfile *saved = PyCapsule_GetPointer(capsule, "callspan.saved_profile");
    if (saved != NULL) {
        Py_XDECREF(saved->obj);
        PyMem_Free(saved);
    }
}

/* saved_profile(): this thread's profile function (a C one such as cProfile's on 3.11, or
 * sys.setprofile's trampoline with its Python callable), or None. sys.getprofile() only shows
 * the object, which cannot be installed again from Python when the function is C. */
static PyObject *
py_saved_profile(PyObject *module, PyObject *unused)
{
    PyThreadState *tstate = PyThreadState_Get();
    if (tstate->c_profilefunc == NULL)
        Py_RETURN_NONE;
    SavedProfile *saved = PyMem_Malloc(sizeof(SavedProfile));
    if (saved == NULL)
        return PyErr_NoMemory();
    saved->func = tstate->c_profilefunc;
    saved->obj = Py_XNewRef(tstate->c_profileobj);
    PyObject *capsule = PyCapsule_New(saved, "callspan.saved_profile", saved_profile_free);
    if (capsule == NULL) {
        Py_XDECREF(saved->obj);
        PyMem_Free(saved);
    }
    return capsule;
}

/* restore_profile(saved): install what saved_profile() returned on this thread (None: none). */
static PyObject *
py_restore_profile(PyObject *module, PyObject *capsule)
{
    if (capsule == Py_None) {
        PyEval_SetProfile(NULL, NULL);
        Py_RETURN_NONE;
    }
    SavedProfile *saved = PyCapsule_GetPointer(capsule, "callspan.saved_profile");
    if (saved == NULL)
        return NULL;
    PyEval_SetProfile(saved->func, saved->obj);
    Py_RETURN_NONE;
}


/* call_soon(func): call func() from the main thread's next check for pending calls (after a
 * fork returns, say: Python 3.13 warns about threads after the fork hooks have run). */
static int
run_soon(void *func)
{
    PyObject *result = PyObject_CallNoArgs((PyObject *)func);
    Py_DECREF((PyObject *)func);
    if (result == NULL)
        PyErr_Clear(); /* the caller's function handles its own faults */
    Py_XDECREF(result);
    return 0;
}

static PyObject *
py_call_soon(PyObject *module, PyObject *func)
{
    Py_INCREF(func);
    if (Py_AddPendingCall(run_soon, func) < 0) {
        Py_DECREF(func);
        PyErr_SetString(PyExc_RuntimeError, "pending calls queue full");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
py_watch_signal(PyObject *module, PyObject *args)
{
    int signum, fd;
    if (!PyArg_ParseTuple(args, "ii:watch_signal", &signum, &fd))
        return NULL;
    struct sigaction current;
    if (sigaction(signum, NULL, &current) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if ((current.sa_flags & SA_SIGINFO) || current.sa_handler != SIG_DFL)
        Py_RETURN_FALSE; /* the program (or a library) handles or ignores it */
    stop_watching();
    watch_fd = fd;
    watched_signal = signum;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_handler = on_watched_signal;
    sigemptyset(&ours.sa_mask);
    ours.sa_flags = SA_RESTART; /* the program's system calls go on as if nothing happened */
    if (sigaction(signum, &ours, NULL) != 0) {
        watched_signal = 0;
        watch_fd = -1;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_TRUE;
}

static PyObject *
py_unwatch_signal(PyObject *module, PyObject *unused)
{
    stop_watching();
    Py_RETURN_NONE;
}

static PyObject *
py_die_by_signal(PyObject *module, PyObject *arg)
{
    long signum = PyLong_AsLong(arg);
    if (signum == -1 && PyErr_Occurred())
        return NULL;
    stop_watching();
    default_action((int)signum);
    /* To the process: a thread that does not block it (not callspan's) takes it, and the
     * default action ends the process. */
    if (kill(getpid(), (int)signum) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* The calling thread's recursion depth as CPython counts it against the recursion limit, and
 * a way to count ``n`` fewer: `callspan run` runs the program's module under frames of its own
 * (the console script's, cli.main's), which python does not have, so the program would reach
 * the limit that many calls earlier. sys.getrecursionlimit() is left alone, and
 * sys.setrecursionlimit() keeps the difference (it recomputes from limit - remaining). */
static PyObject *
py_recursion_depth(PyObject *module, PyObject *unused)
{
    PyThreadState *tstate = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030C0000
    return PyLong_FromLong((long)tstate->py_recursion_limit - tstate->py_recursion_remaining);
#else
    return PyLong_FromLong((long)tstate->recursion_limit - tstate->recursion_remaining);
#endif
}

static PyObject *
py_forgive_recursion(PyObject *module, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > 64) {
        PyErr_SetString(PyExc_ValueError, "forgive_recursion: 0 to 64 frames");
        return NULL;
    }
    PyThreadState *tstate = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030C0000
    tstate->py_recursion_remaining += (int)n;
#else
    tstate->recursion_remaining += (int)n;
#endif
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"siphash24", (PyCFunction)(void (*)(void))cs_py_siphash24, METH_FASTCALL,
     "siphash24(k0, k1, message): SipHash-2-4 of one little-endian 64-bit word under the key (k0, k1)"},
    {"fingerprint", (PyCFunction)cs_py_fingerprint, METH_O,
     "fingerprint(value): as callspan.tracer.keys.fingerprint(value, [16]) computes it (tests)"},
    {"unhashable_args", (PyCFunction)cs_py_unhashable_args, METH_VARARGS,
     "unhashable_args(key, arg_names=(), varargs=None, kwd_mark=None): as callspan.tracer.keys.unhashable_args "
     "computes it (tests)"},
    {"watch_signal", (PyCFunction)py_watch_signal, METH_VARARGS,
     "watch_signal(signum, fd): when signum, left to its default action, arrives, write its number to fd "
     "(False: the signal is handled or ignored already)"},
    {"unwatch_signal", (PyCFunction)py_unwatch_signal, METH_NOARGS,
     "unwatch_signal(): give the watched signal its default action back"},
    {"die_by_signal", (PyCFunction)py_die_by_signal, METH_O,
     "die_by_signal(signum): restore signum's default action and send it to this process"},
    {"recursion_depth", (PyCFunction)py_recursion_depth, METH_NOARGS,
     "recursion_depth(): this thread's depth as counted against the recursion limit"},
    {"forgive_recursion", (PyCFunction)py_forgive_recursion, METH_O,
     "forgive_recursion(n): count this thread's depth n lower against the recursion limit"},
    {"call_soon", (PyCFunction)py_call_soon, METH_O,
     "call_soon(func): call func() at the main thread's next pending-calls check"},
    {"saved_profile", (PyCFunction)py_saved_profile, METH_NOARGS,
     "saved_profile(): this thread's profile function, to give back with restore_profile"},
    {"restore_profile", (PyCFunction)py_restore_profile, METH_O,
     "restore_profile(saved): install a profile function saved by saved_profile (None: none)"},
    {"set_user_hash", (PyCFunction)(void (*)(void))cs_py_set_user_hash, METH_FASTCALL,
     "set_user_hash(allowed, type_skipped=None): as callspan.tracer.keys.set_user_hash\n"
     "(CALLSPAN_USER_HASH; type_skipped(type) -> bool decides CALLSPAN_USER_HASH_SKIP once per type)"},
    {"perf_event_open", (PyCFunction)py_perf_event_open, METH_VARARGS,
     "perf_event_open(type, config, flags): this thread's counter, a file descriptor (OSError on failure)"},
    {"clock_ns", (PyCFunction)cs_py_clock_ns, METH_NOARGS,
     "the hot path's wall clock (CLOCK_MONOTONIC ns, through the time-stamp counter where clock_source() says so)"},
    {"clock_source", (PyCFunction)cs_py_clock_source, METH_NOARGS,
     "how the hot path reads its wall clock: 'tsc' (the time-stamp counter, scaled) or 'monotonic'"},
    {"sketch_bucket", (PyCFunction)cs_py_sketch_bucket, METH_O,
     "sketch_bucket(value): the latency sketch's bucket of value, as the compiled fold computes it (tests)"},
    {"interval_clock_replay", (PyCFunction)py_interval_clock_replay, METH_VARARGS,
     "interval_clock_replay(interval, walls, reals): the interval thread clock's values (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "callspan.tracer._hotpath", "callspan's compiled hot path", -1, module_methods,
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
        PyModule_AddIntConstant(module, "R_NODE", R_NODE) < 0 ||
        PyModule_AddIntConstant(module, "R_KEEP", R_KEEP) < 0 ||
        PyModule_AddIntConstant(module, "UNKEYABLE_AFTER", UNKEYABLE_AFTER) < 0 ||
        PyModule_AddIntConstant(module, "RET_SIZE_EVERY", RET_SIZE_EVERY) < 0)
        goto error;
    cs_clock_init();
    if (cs_keys_init() < 0 || cs_record_types_ready(module) < 0 || cs_aggregates_ready(module) < 0)
        goto error;
    if ((str_faults = PyUnicode_InternFromString("faults")) == NULL ||
        (str_dropped = PyUnicode_InternFromString("dropped")) == NULL ||
        (str_trace_filter = PyUnicode_InternFromString("trace_filter")) == NULL)
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
