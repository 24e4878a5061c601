/* callspan.tracer._hotpath.Aggregates: the per-process fold of every finished call, in C.
 *
 * callspan/aggregate.py (Aggregates, CacheState) is the reference, and the windows must be equal
 * for the same calls (tests/tracer/test_fold_equivalence.py): node and function ids are given in
 * the same order, sketch buckets and SHARDS hashes are computed with the same arithmetic, and
 * export_window returns the same columns in the same order.
 *
 * What differs is only the representation, chosen for the hot path:
 * - no Python object per node, function or key: nodes live in fixed chunks (stable addresses,
 *   addressed by id), children are found through a table keyed by (parent, function) with a
 *   one-entry cache per node, and a CodeInfo caches its function (CodeInfoObject.agg_function);
 * - counters hold what changed since the last export ("pending") instead of a cumulative value
 *   and its last sent copy: a window is the pending values, which are then zeroed. (Every fold
 *   adds a call, so "changed" is "pending calls != 0", as the reference's comparisons.)
 * - reuse rows are kept only until they are exported.
 *
 * Threads: every function here runs with the GIL held and calls no Python code except where
 * noted (dict operations on str keys, which do not run Python code), so a fold is atomic with
 * respect to other threads and to export_window. export_window reads and zeroes everything in
 * C first (phase 1), then builds the Python lists (phase 2, which may run a GC and so other
 * threads' folds: those land in the next window, as in the reference).
 *
 * The object is not a GC type: it references only CodeInfo objects (which never reference it),
 * strings and a dict of strings.
 */
#include "_callspan.h"
#include <math.h>
#include <string.h>

/* -- numbers: exactly as aggregate.py computes them ------------------------------------------ */

static double log_gamma; /* math.log(GAMMA), GAMMA = (1 + ALPHA) / (1 - ALPHA), ALPHA = 0.01 */

/* The reference's bucket: ceil(log(value) / log_gamma), through libm (~100 instructions). */
static int32_t
sketch_bucket_libm(int64_t value)
{
    return (int32_t)ceil(log((double)value) / log_gamma);
}

/* sketch_bucket_libm by table: the reference's bucket, exact by construction (the tables are
 * made with sketch_bucket_libm itself, whose ceil(log(v) / log_gamma) grows with v). A value
 * v >= 64 whose top bit is t falls in one of 64 equal slices of [2**t, 2**(t+1)); a slice (its
 * values within 1/64 of each other) is narrower than a bucket (GAMMA: 2.02%), so at most one
 * bucket starts inside it: v's bucket is the slice's first value's, or the next one from where
 * that one starts. A load, a compare and a load, where the logarithm was a chain of ~30 dependent
 * floating-point operations (the larger part of the fold's time on a call-heavy run). The
 * tables of an octave are made at its first value (~1,000 libm calls, ~20 us). */
#define SLICE_BITS 6
#define MAX_BUCKETS 2300 /* > sketch_bucket_libm(INT64_MAX) = 2204, + 1 past the last */
static int16_t small_bucket[1 << SLICE_BITS];     /* v < 64 */
static int16_t slice_bucket[63][1 << SLICE_BITS]; /* [top bit][slice]: its first value's bucket */
static uint64_t bucket_start[MAX_BUCKETS + 1];    /* least v of bucket b; UINT64_MAX while unknown */
static signed char octave_state[63]; /* 0 not made yet, 1 made, -1 not by table (see octave_make) */

/* An octave's slices; 0, or -1 if a slice holds more than one bucket start (cannot happen with
 * GAMMA > 1 + 1/64; the caller then uses sketch_bucket_libm). */
static int
octave_make(int top)
{
    int shift = top - SLICE_BITS;
    for (int j = 0; j < (1 << SLICE_BITS); j++) {
        int64_t low = ((int64_t)((1 << SLICE_BITS) + j)) << shift;
        int64_t high = low + ((int64_t)1 << shift) - 1;
        int32_t bucket = sketch_bucket_libm(low), at_high = sketch_bucket_libm(high);
        if (bucket + 1 > MAX_BUCKETS || (at_high != bucket && at_high != bucket + 1)) {
            octave_state[top] = -1;
            return -1;
        }
        if (at_high == bucket + 1) { /* the next bucket starts in (low, high]: find where */
            int64_t lo = low, hi = high; /* bucket(lo) == bucket, bucket(hi) == bucket + 1 */
            while (hi - lo > 1) {
                int64_t mid = lo + (hi - lo) / 2;
                if (sketch_bucket_libm(mid) > bucket)
                    hi = mid;
                else
                    lo = mid;
            }
            bucket_start[bucket + 1] = (uint64_t)hi;
        }
        slice_bucket[top][j] = (int16_t)bucket;
    }
    octave_state[top] = 1;
    return 0;
}

static inline int32_t
sketch_bucket(int64_t value)
{
    if (value < (1 << SLICE_BITS))
        return value <= 1 ? 0 : small_bucket[value];
    int top = 63 - __builtin_clzll((unsigned long long)value);
    if (octave_state[top] != 1 && (octave_state[top] < 0 || octave_make(top) < 0))
        return sketch_bucket_libm(value);
    int32_t bucket = slice_bucket[top][(value >> (top - SLICE_BITS)) & ((1 << SLICE_BITS) - 1)];
    return bucket + ((uint64_t)value >= bucket_start[bucket + 1]);
}

/* sketch_bucket(value), for tests. */
PyObject *
cs_py_sketch_bucket(PyObject *module, PyObject *arg)
{
    long long value = PyLong_AsLongLong(arg);
    if (value == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(sketch_bucket(value));
}

static inline uint64_t
mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* SHARDS at rate 2**-level (level <= 64: beyond, the reference raises; see lower_rate). */
static inline int
sampled(uint64_t mixed, int level)
{
    return level == 0 || (level >= 64 ? mixed == 0 : (mixed >> (64 - level)) == 0);
}

/* -- structures ---------------------------------------------------------------------------- */

typedef struct {
    int32_t lo, n; /* pending counts of buckets lo .. lo + n - 1 */
    int64_t *counts;
} Sketch;

typedef struct {
    uint64_t raw, mixed;
    int64_t ret, last_end, count;
    uint32_t pos;
    uint8_t has_ret, inconsistent, fresh, identity_ret;
} Key;

typedef struct {
    int64_t distance, hits, cpu, wall; /* pending since the last export */
    uint8_t used;
} ReuseEntry;

enum { C_CALLS, C_UNHASHABLE, C_IDENTITY, C_NEW_KEYS, C_INCONSISTENT_KEYS, C_INCONSISTENT_CALLS, C_FRESH,
       C_OVERLAPS, C_SAMPLED, C_SHADOWED, C_UNHASHABLE_RETURNS, C_NONE_RETURNS, N_CACHE };

typedef struct {
    Key *keys;           /* dense; a key moves only when keys are shed (lower_rate) */
    uint32_t n_keys, cap_keys;
    uint32_t *index;     /* open addressing by mixed hash: key index + 1, 0 empty */
    uint32_t index_mask;
    int32_t *tree;       /* Fenwick tree of marked positions, tree_size entries (0 unused) */
    uint32_t *pos_key;   /* position -> key index + 1, 0 free */
    uint32_t tree_size, next_pos;
    int level, level_sent;
    int64_t probe_calls, probe_wall; /* keyed calls so far and their wall time, up to KEY_PROBE_CALLS */
    int64_t cheap_ns, cheap_sent;    /* mean wall per call when keying stopped for cheapness; 0 if not */
    int64_t cost_calls, cost_wall;   /* keyed calls and their wall ns, ever: who sheds keys first */
    int64_t pend[N_CACHE];
    ReuseEntry *reuse;   /* open addressing by distance; cleared at export */
    uint32_t reuse_mask, reuse_used;
    PyObject *types;        /* dict of unhashable type names (ordered), or NULL */
    PyObject *types_joined; /* ",".join(types), or NULL */
    int types_dirty;
} CacheState;

enum { F_CALLS, F_ERRORS, F_WALL, F_RUN, F_CPU_SELF, N_FUNC };

typedef struct FuncAgg {
    PyObject *info;  /* strong: the CodeInfo */
    uint32_t id;     /* 0 until the reference's Aggregates.function(info) would have made it */
    uint8_t used;    /* export_window: referenced by this window */
    int64_t pend[N_FUNC];
    Sketch wall, run;
    CacheState *cache;
    unsigned long shadow_owner; /* thread of the running call whose key was cached (a hit), or 0 */
    int64_t active;             /* running keyed calls (synchronous functions), all threads */
    uint8_t recursive;          /* seen running inside itself: the key lookup at start is on */
} FuncAgg;

enum { N_CALLS, N_ERRORS, N_WALL, N_RUN, N_SUSPENDED, N_AWAITS, N_CPU_TOTAL, N_CPU_SELF, N_NODE };

typedef struct Node {
    struct Node *parent, *other, *last_child;
    /* the sibling looked up after this node last time: callers call their callees in the same
     * order each time (a cache in front of the children table) */
    struct Node *after;
    FuncAgg *fn;     /* NULL for thread roots and (other) nodes */
    PyObject *label; /* thread roots: their name (strong); NULL otherwise */
    int64_t pend[N_NODE];
    uint32_t id, depth;
    uint8_t is_other, exported, folded, mark;
} Node;

typedef struct {
    Node *parent;
    FuncAgg *fn;
    Node *child;
} ChildEntry;

/* A caller -> callee pair of calls folded into (other) nodes (aggregate.Aggregates.edges). */
typedef struct {
    FuncAgg *caller, *callee;
    int64_t calls, sent;
} EdgeEntry;

#define KEY_PROBE_CALLS 1024 /* callspan.tracer.aggregate.KEY_PROBE_CALLS */

#define NODE_CHUNK_BITS 10
#define NODE_CHUNK (1u << NODE_CHUNK_BITS)

struct Aggregates {
    PyObject_HEAD
    long long max_nodes, max_depth, max_keys, max_keys_total, key_min_ns;
    uint64_t serial;                /* never reused: keys the caches in CodeInfo and ThreadState */
    Node **chunks;                  /* node id i is chunks[(i-1) >> BITS][(i-1) & (CHUNK-1)] */
    uint32_t n_chunks, cap_chunks, n_nodes;
    ChildEntry *children;           /* (parent, function) -> child */
    size_t children_mask, children_used;
    FuncAgg **ftable;               /* CodeInfo address -> function */
    size_t ftable_mask, ftable_used;
    FuncAgg **flist;                /* functions with an id, by id - 1 */
    uint32_t n_functions, cap_functions;
    PyObject *thread_roots;         /* dict: thread name, digits folded -> node id */
    long long total_keys, other_calls, sent_other_calls, lost_calls, sent_lost_calls, window;
    EdgeEntry *edges;               /* in the order first seen (the reference's dict order) */
    uint32_t n_edges, cap_edges;
    uint32_t *edge_index;           /* (caller, callee) -> 1 + index into edges; 0: empty */
    size_t edge_mask;
    long long lost_edges, sent_lost_edges;
};

static uint64_t next_serial = 1;
static PyObject *str_other_label, *str_empty_label, *kind_names[4], *str_comma, *str_name, *str_file, *str_line;

/* -- nodes ----------------------------------------------------------------------------------- */

/* The node of an id in 1 .. n_nodes. */
static inline Node *
node_ref(Aggregates *a, uint32_t id)
{
    return &a->chunks[(id - 1) >> NODE_CHUNK_BITS][(id - 1) & (NODE_CHUNK - 1)];
}

/* The node of any id, or NULL. */
static inline Node *
node_at(Aggregates *a, uint32_t id)
{
    if (id == 0 || id > a->n_nodes)
        return NULL;
    return node_ref(a, id);
}

static Node *
new_node(Aggregates *a, Node *parent, FuncAgg *fn, PyObject *label, int is_other)
{
    uint32_t index = a->n_nodes;
    if (index == UINT32_MAX - 1)
        return NULL;
    uint32_t chunk = index >> NODE_CHUNK_BITS;
    if (chunk == a->n_chunks) {
        if (a->n_chunks == a->cap_chunks) {
            uint32_t cap = a->cap_chunks ? a->cap_chunks * 2 : 16;
            Node **chunks = PyMem_Realloc(a->chunks, cap * sizeof(Node *));
            if (chunks == NULL)
                return NULL;
            a->chunks = chunks;
            a->cap_chunks = cap;
        }
        Node *fresh = PyMem_Calloc(NODE_CHUNK, sizeof(Node));
        if (fresh == NULL)
            return NULL;
        a->chunks[a->n_chunks++] = fresh;
    }
    Node *node = &a->chunks[chunk][index & (NODE_CHUNK - 1)];
    memset(node, 0, sizeof *node);
    node->parent = parent;
    node->fn = fn;
    node->label = label ? Py_NewRef(label) : NULL;
    node->id = index + 1;
    node->depth = parent ? parent->depth + 1 : 0;
    node->is_other = (uint8_t)is_other;
    a->n_nodes = index + 1;
    return node;
}

static inline size_t
pointer_hash(const void *p, const void *q)
{
    uint64_t h = ((uint64_t)(uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ULL;
    h ^= ((uint64_t)(uintptr_t)q >> 4) * 0xC2B2AE3D27D4EB4FULL;
    return (size_t)(h ^ (h >> 29));
}

/* Room for one more child entry; -1 when it cannot be made. */
static int
children_reserve(Aggregates *a)
{
    if (a->children != NULL && (a->children_used + 1) * 2 <= a->children_mask + 1)
        return 0;
    size_t size = a->children ? (a->children_mask + 1) * 2 : 1024;
    ChildEntry *fresh = PyMem_Calloc(size, sizeof(ChildEntry));
    if (fresh == NULL)
        return -1;
    ChildEntry *old = a->children;
    size_t old_size = old ? a->children_mask + 1 : 0;
    for (size_t i = 0; i < old_size; i++) {
        if (old[i].child == NULL)
            continue;
        size_t j = pointer_hash(old[i].parent, old[i].fn) & (size - 1);
        while (fresh[j].child != NULL)
            j = (j + 1) & (size - 1);
        fresh[j] = old[i];
    }
    PyMem_Free(old);
    a->children = fresh;
    a->children_mask = size - 1;
    return 0;
}

/* -- functions ------------------------------------------------------------------------------- */

static FuncAgg *
function_slow(Aggregates *a, CodeInfoObject *ci)
{
    PyObject *info = (PyObject *)ci;
    if (a->ftable != NULL) {
        size_t i = pointer_hash(info, NULL) & a->ftable_mask;
        for (; a->ftable[i] != NULL; i = (i + 1) & a->ftable_mask) {
            if (a->ftable[i]->info == info)
                return a->ftable[i];
        }
    }
    if (a->ftable == NULL || (a->ftable_used + 1) * 2 > a->ftable_mask + 1) {
        size_t size = a->ftable ? (a->ftable_mask + 1) * 2 : 256;
        FuncAgg **fresh = PyMem_Calloc(size, sizeof(FuncAgg *));
        if (fresh == NULL)
            return NULL;
        for (size_t i = 0; a->ftable != NULL && i <= a->ftable_mask; i++) {
            FuncAgg *fn = a->ftable[i];
            if (fn == NULL)
                continue;
            size_t j = pointer_hash(fn->info, NULL) & (size - 1);
            while (fresh[j] != NULL)
                j = (j + 1) & (size - 1);
            fresh[j] = fn;
        }
        PyMem_Free(a->ftable);
        a->ftable = fresh;
        a->ftable_mask = size - 1;
    }
    FuncAgg *fn = PyMem_Calloc(1, sizeof(FuncAgg));
    if (fn == NULL)
        return NULL;
    fn->info = Py_NewRef(info);
    size_t i = pointer_hash(info, NULL) & a->ftable_mask;
    while (a->ftable[i] != NULL)
        i = (i + 1) & a->ftable_mask;
    a->ftable[i] = fn;
    a->ftable_used++;
    return fn;
}

/* The function of a CodeInfo (made with no id on first use); NULL when it cannot be made. */
static inline FuncAgg *
function_of(Aggregates *a, CodeInfoObject *ci)
{
    if (ci->agg_serial == a->serial)
        return (FuncAgg *)ci->agg_function;
    FuncAgg *fn = function_slow(a, ci);
    if (fn != NULL) {
        ci->agg_function = fn;
        ci->agg_serial = a->serial;
    }
    return fn;
}

/* aggregate.Aggregates.shadow, for a synchronous function's keyed call starting on ``thread``:
 * SHADOW_ACTIVE (counted running), plus, for a function seen running inside itself,
 * SHADOW_SHADOWED inside a running call of the same function whose key was cached (a memoized
 * version would not make it) or SHADOW_HIT_ROOT when its own key is cached. */
static int key_cached(FuncAgg *fn, uint64_t raw);
static int key_args(int kind, int64_t args_raw, PyObject *args, uint64_t *raw, PyObject **names, int *identity);

int
cs_shadow(Aggregates *a, CodeInfoObject *ci, int args_kind, int64_t args_raw, PyObject *args, unsigned long thread)
{
    FuncAgg *fn = function_of(a, ci);
    if (fn == NULL)
        return SHADOW_NONE;
    if (fn->active)
        fn->recursive = 1;
    fn->active++;
    if (!fn->recursive || fn->cache == NULL) /* only recursive functions pay for the lookup */
        return SHADOW_ACTIVE;
    if (fn->shadow_owner)
        return fn->shadow_owner == thread ? SHADOW_ACTIVE | SHADOW_SHADOWED : SHADOW_ACTIVE;
    uint64_t raw;
    PyObject *names;
    int identity;
    if (!key_args(args_kind, args_raw, args, &raw, &names, &identity) || !key_cached(fn, raw))
        return SHADOW_ACTIVE;
    fn->shadow_owner = thread;
    return SHADOW_ACTIVE | SHADOW_HIT_ROOT;
}

/* Gives ``fn`` its id where the reference's Aggregates.function(info) would first be called. */
static int
function_register(Aggregates *a, FuncAgg *fn)
{
    if (fn->id != 0)
        return 0;
    if (a->n_functions == a->cap_functions) {
        uint32_t cap = a->cap_functions ? a->cap_functions * 2 : 64;
        FuncAgg **list = PyMem_Realloc(a->flist, cap * sizeof(FuncAgg *));
        if (list == NULL)
            return -1;
        a->flist = list;
        a->cap_functions = cap;
    }
    a->flist[a->n_functions++] = fn;
    fn->id = a->n_functions;
    return 0;
}

/* -- the call tree ----------------------------------------------------------------------------- */

/* "Thread-12 (worker)" -> "Thread-N (worker)": aggregate.Aggregates.thread_root's
 * re.sub("[0-9]+", "N", name). */
static PyObject *
fold_digits(PyObject *name)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    int kind = PyUnicode_KIND(name);
    const void *data = PyUnicode_DATA(name);
    Py_UCS4 *out = PyMem_Malloc((n + 1) * sizeof(Py_UCS4));
    if (out == NULL)
        return PyErr_NoMemory();
    Py_ssize_t len = 0;
    int in_digits = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= '0' && c <= '9') {
            if (!in_digits)
                out[len++] = 'N';
            in_digits = 1;
        }
        else {
            out[len++] = c;
            in_digits = 0;
        }
    }
    PyObject *folded = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out, len);
    PyMem_Free(out);
    return folded;
}

uint32_t
cs_thread_root(Aggregates *a, ThreadStateObject *ts)
{
    if (ts->root_serial == a->serial && ts->root_node != 0)
        return ts->root_node;
    PyObject *raw = ts->name;
    PyObject *text = raw != NULL && PyUnicode_Check(raw) ? Py_NewRef(raw) : PyObject_Str(raw ? raw : Py_None);
    PyObject *name = text ? fold_digits(text) : NULL;
    Py_XDECREF(text);
    if (name == NULL)
        return 0;
    uint32_t id = 0;
    PyObject *known = PyDict_GetItemWithError(a->thread_roots, name);
    if (known != NULL) {
        id = (uint32_t)PyLong_AsUnsignedLong(known);
    }
    else if (!PyErr_Occurred()) {
        Node *node = new_node(a, NULL, NULL, name, 0);
        PyObject *number = node ? PyLong_FromUnsignedLong(node->id) : PyErr_NoMemory();
        if (number != NULL && PyDict_SetItem(a->thread_roots, name, number) == 0)
            id = node->id;
        Py_XDECREF(number);
    }
    Py_DECREF(name);
    if (id != 0) {
        ts->root_node = id;
        ts->root_serial = a->serial;
    }
    return id;
}

uint32_t
cs_child(Aggregates *a, uint32_t parent_id, CodeInfoObject *ci)
{
    Node *parent = node_at(a, parent_id);
    FuncAgg *fn = parent ? function_of(a, ci) : NULL;
    if (fn == NULL)
        return 0;
    if (parent->fn == fn || parent->is_other)
        return parent->id; /* direct recursion, or below an (other) fold */
    Node *last = parent->last_child, *child;
    if (last != NULL) {
        if (last->fn == fn)
            return last->id;
        child = last->after;
        if (child != NULL && child->fn == fn && child->parent == parent) {
            parent->last_child = child;
            return child->id;
        }
    }
    size_t i = pointer_hash(parent, fn) & a->children_mask;
    for (; a->children != NULL && a->children[i].child != NULL; i = (i + 1) & a->children_mask) {
        ChildEntry *entry = &a->children[i];
        if (entry->parent == parent && entry->fn == fn) {
            if (last != NULL)
                last->after = entry->child;
            parent->last_child = entry->child;
            return entry->child->id;
        }
    }
    if ((long long)a->n_nodes >= a->max_nodes || (long long)parent->depth >= a->max_depth) {
        if (parent->other == NULL && (parent->other = new_node(a, parent, NULL, NULL, 1)) == NULL)
            return 0;
        return parent->other->id;
    }
    if (children_reserve(a) < 0 || (child = new_node(a, parent, fn, NULL, 0)) == NULL)
        return 0;
    i = pointer_hash(parent, fn) & a->children_mask;
    while (a->children[i].child != NULL)
        i = (i + 1) & a->children_mask;
    a->children[i] = (ChildEntry){parent, fn, child};
    a->children_used++;
    if (last != NULL)
        last->after = child;
    parent->last_child = child;
    return child->id;
}

/* -- sketches -------------------------------------------------------------------------------- */

static int
sketch_add(Sketch *s, int32_t bucket)
{
    if (s->counts == NULL || bucket < s->lo || bucket >= s->lo + s->n) {
        int32_t lo = s->counts ? (bucket < s->lo ? bucket : s->lo) : bucket;
        int32_t hi = s->counts ? (bucket >= s->lo + s->n ? bucket + 1 : s->lo + s->n) : bucket + 1;
        /* room around: latencies drift */
        int32_t grow = (hi - lo) / 2 + 8;
        lo = lo - grow < 0 ? 0 : lo - grow;
        hi += grow;
        int64_t *counts = PyMem_Calloc((size_t)(hi - lo), sizeof(int64_t));
        if (counts == NULL)
            return -1;
        if (s->counts != NULL) {
            memcpy(counts + (s->lo - lo), s->counts, (size_t)s->n * sizeof(int64_t));
            PyMem_Free(s->counts);
        }
        s->counts = counts;
        s->lo = lo;
        s->n = hi - lo;
    }
    s->counts[bucket - s->lo]++;
    return 0;
}

/* -- cache state ----------------------------------------------------------------------------- */

#define FIRST_TREE_SIZE 65

static void
cache_free(CacheState *s)
{
    if (s == NULL)
        return;
    PyMem_Free(s->keys);
    PyMem_Free(s->index);
    PyMem_Free(s->tree);
    PyMem_Free(s->pos_key);
    PyMem_Free(s->reuse);
    Py_XDECREF(s->types);
    Py_XDECREF(s->types_joined);
    PyMem_Free(s);
}

static CacheState *
cache_new(void)
{
    CacheState *s = PyMem_Calloc(1, sizeof(CacheState));
    if (s == NULL)
        return NULL;
    s->tree = PyMem_Calloc(FIRST_TREE_SIZE, sizeof(int32_t));
    s->pos_key = PyMem_Calloc(FIRST_TREE_SIZE, sizeof(uint32_t));
    s->index = PyMem_Calloc(16, sizeof(uint32_t));
    if (s->tree == NULL || s->pos_key == NULL || s->index == NULL) {
        cache_free(s);
        return NULL;
    }
    s->tree_size = FIRST_TREE_SIZE;
    s->next_pos = 1;
    s->index_mask = 15;
    return s;
}

static inline void
fenwick_add(CacheState *s, uint32_t pos, int32_t delta)
{
    int32_t *tree = s->tree;
    for (uint32_t n = s->tree_size; pos < n; pos += pos & (~pos + 1))
        tree[pos] += delta;
}

static inline int64_t
fenwick_prefix(CacheState *s, uint32_t pos)
{
    int64_t total = 0;
    for (; pos > 0; pos -= pos & (~pos + 1))
        total += s->tree[pos];
    return total;
}

static Key *
key_find(CacheState *s, uint64_t raw, uint64_t mixed)
{
    for (uint32_t i = (uint32_t)mixed & s->index_mask; s->index[i] != 0; i = (i + 1) & s->index_mask) {
        Key *key = &s->keys[s->index[i] - 1];
        if (key->raw == raw)
            return key;
    }
    return NULL;
}

static int
key_cached(FuncAgg *fn, uint64_t raw)
{
    CacheState *s = fn->cache;
    return s != NULL && s->index != NULL && key_find(s, raw, mix64(raw)) != NULL;
}

static int
index_rebuild(CacheState *s, uint32_t size)
{
    uint32_t *index = PyMem_Calloc(size, sizeof(uint32_t));
    if (index == NULL)
        return -1;
    for (uint32_t k = 0; k < s->n_keys; k++) {
        uint32_t i = (uint32_t)s->keys[k].mixed & (size - 1);
        while (index[i] != 0)
            i = (i + 1) & (size - 1);
        index[i] = k + 1;
    }
    PyMem_Free(s->index);
    s->index = index;
    s->index_mask = size - 1;
    return 0;
}

/* Positions run out: number the live keys 1.. in order (aggregate.CacheState._renumber). */
static int
cache_renumber(CacheState *s)
{
    uint32_t live = 0;
    for (uint32_t pos = 1; pos < s->next_pos; pos++)
        live += s->pos_key[pos] != 0;
    uint32_t size = (4 * live > 64 ? 4 * live : 64) + 1;
    int32_t *tree = PyMem_Calloc(size, sizeof(int32_t));
    uint32_t *pos_key = PyMem_Calloc(size, sizeof(uint32_t));
    if (tree == NULL || pos_key == NULL) {
        PyMem_Free(tree);
        PyMem_Free(pos_key);
        return -1;
    }
    uint32_t next = 1;
    for (uint32_t pos = 1; pos < s->next_pos; pos++) {
        uint32_t k = s->pos_key[pos];
        if (k == 0)
            continue;
        s->keys[k - 1].pos = next;
        pos_key[next] = k;
        tree[next] = 1;
        next++;
    }
    for (uint32_t pos = 1; pos < size; pos++) { /* the linear Fenwick build */
        uint32_t parent = pos + (pos & (~pos + 1));
        if (parent < size)
            tree[parent] += tree[pos];
    }
    PyMem_Free(s->tree);
    PyMem_Free(s->pos_key);
    s->tree = tree;
    s->pos_key = pos_key;
    s->tree_size = size;
    s->next_pos = next;
    return 0;
}

static int
cache_place(CacheState *s, uint32_t k)
{
    if (s->next_pos >= s->tree_size && cache_renumber(s) < 0)
        return -1;
    uint32_t pos = s->next_pos++;
    s->keys[k].pos = pos;
    s->pos_key[pos] = k + 1;
    fenwick_add(s, pos, 1);
    return 0;
}

static inline void
cache_unplace(CacheState *s, uint32_t k)
{
    uint32_t pos = s->keys[k].pos;
    fenwick_add(s, pos, -1);
    s->pos_key[pos] = 0;
}

/* Halve the SHARDS rate and forget the keys no longer sampled; returns how many. */
static uint32_t
cache_lower_rate(CacheState *s)
{
    s->level++;
    int level = s->level;
    uint32_t kept = 0, n = s->n_keys;
    for (uint32_t k = 0; k < n; k++) {
        if (sampled(s->keys[k].mixed, level)) {
            if (kept != k) {
                s->keys[kept] = s->keys[k];
                s->pos_key[s->keys[kept].pos] = kept + 1;
            }
            kept++;
        }
        else {
            cache_unplace(s, k);
        }
    }
    s->n_keys = kept;
    if (kept != n) {
        /* the index only ever shrinks in use here: rebuilt at its size (cannot fail but by memory) */
        if (index_rebuild(s, s->index_mask + 1) < 0) {
            /* keep the old table usable: clear it in place and reinsert */
            memset(s->index, 0, (size_t)(s->index_mask + 1) * sizeof(uint32_t));
            for (uint32_t k = 0; k < s->n_keys; k++) {
                uint32_t i = (uint32_t)s->keys[k].mixed & s->index_mask;
                while (s->index[i] != 0)
                    i = (i + 1) & s->index_mask;
                s->index[i] = k + 1;
            }
        }
    }
    return n - kept;
}

/* A new key (not placed yet): its index, or -1 when it cannot be made. */
static int64_t
key_insert(CacheState *s, uint64_t raw, uint64_t mixed)
{
    if (s->n_keys == s->cap_keys) {
        uint32_t cap = s->cap_keys ? s->cap_keys * 2 : 8;
        Key *keys = PyMem_Realloc(s->keys, (size_t)cap * sizeof(Key));
        if (keys == NULL)
            return -1;
        s->keys = keys;
        s->cap_keys = cap;
    }
    if ((s->n_keys + 1) * 2 > s->index_mask + 1 && index_rebuild(s, (s->index_mask + 1) * 2) < 0)
        return -1;
    uint32_t k = s->n_keys++;
    Key *key = &s->keys[k];
    memset(key, 0, sizeof *key);
    key->raw = raw;
    key->mixed = mixed;
    uint32_t i = (uint32_t)mixed & s->index_mask;
    while (s->index[i] != 0)
        i = (i + 1) & s->index_mask;
    s->index[i] = k + 1;
    return k;
}

static ReuseEntry *
reuse_row(CacheState *s, int64_t distance)
{
    if (s->reuse == NULL || (s->reuse_used + 1) * 2 > s->reuse_mask + 1) {
        uint32_t size = s->reuse ? (s->reuse_mask + 1) * 2 : 16;
        ReuseEntry *fresh = PyMem_Calloc(size, sizeof(ReuseEntry));
        if (fresh == NULL)
            return NULL;
        for (uint32_t i = 0; s->reuse != NULL && i <= s->reuse_mask; i++) {
            if (!s->reuse[i].used)
                continue;
            uint32_t j = (uint32_t)mix64((uint64_t)s->reuse[i].distance) & (size - 1);
            while (fresh[j].used)
                j = (j + 1) & (size - 1);
            fresh[j] = s->reuse[i];
        }
        PyMem_Free(s->reuse);
        s->reuse = fresh;
        s->reuse_mask = size - 1;
    }
    uint32_t i = (uint32_t)mix64((uint64_t)distance) & s->reuse_mask;
    for (; s->reuse[i].used; i = (i + 1) & s->reuse_mask) {
        if (s->reuse[i].distance == distance)
            return &s->reuse[i];
    }
    ReuseEntry *row = &s->reuse[i];
    row->used = 1;
    row->distance = distance;
    row->hits = row->cpu = row->wall = 0;
    s->reuse_used++;
    return row;
}

/* Adds the comma-separated type names to the state's set; -1 on error (exception set). */
static int
add_types(CacheState *s, PyObject *names)
{
    if (s->types == NULL && (s->types = PyDict_New()) == NULL)
        return -1;
    PyObject *parts = PyUnicode_Split(names, str_comma, -1);
    if (parts == NULL)
        return -1;
    int added = 0, rc = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts); i++) {
        PyObject *name = PyList_GET_ITEM(parts, i);
        int known = PyDict_Contains(s->types, name);
        if (known < 0 || (!known && PyDict_SetItem(s->types, name, Py_None) < 0)) {
            rc = -1;
            break;
        }
        added |= !known;
    }
    Py_DECREF(parts);
    if (added) {
        PyObject *keys = PyDict_Keys(s->types);
        PyObject *joined = keys ? PyUnicode_Join(str_comma, keys) : NULL;
        Py_XDECREF(keys);
        if (joined == NULL)
            return -1;
        Py_XSETREF(s->types_joined, joined);
        s->types_dirty = 1;
    }
    return rc;
}

/* Over the process-wide key budget: halve the rate of the function with the most keys (the
 * first of them in id order, as max() picks). */
/* aggregate.sheds_before: a lower mean wall per keyed call (exact), then more keys. */
static int
sheds_before(const CacheState *x, const CacheState *y)
{
    __int128 left = (__int128)x->cost_wall * y->cost_calls, right = (__int128)y->cost_wall * x->cost_calls;
    return left < right || (left == right && x->n_keys > y->n_keys);
}

/* aggregate.Aggregates._shed_keys: costly functions keep exact cache figures longest. */
static void
shed_keys(Aggregates *a)
{
    while (a->total_keys > a->max_keys_total) {
        CacheState *chosen = NULL;
        for (uint32_t i = 0; i < a->n_functions; i++) {
            CacheState *s = a->flist[i]->cache;
            if (s == NULL || s->n_keys == 0 || s->level >= 64)
                continue;
            if (chosen == NULL || sheds_before(s, chosen))
                chosen = s;
        }
        if (chosen == NULL)
            return;
        a->total_keys -= cache_lower_rate(chosen);
    }
}

/* Parses a call's argument key (KEY_COMPACT: args_raw; else the object ``args``): 1 with *raw
 * set, 0 for no raw hash; names/identity out. */
static int
key_args(int kind, int64_t args_raw, PyObject *args, uint64_t *raw, PyObject **names, int *identity)
{
    if (kind != KEY_OBJECT) { /* compact: (raw, "", False) */
        *raw = (uint64_t)args_raw;
        *names = NULL;
        *identity = 0;
        return 1;
    }
    if (!PyTuple_Check(args) || PyTuple_GET_SIZE(args) != 3) {
        *names = NULL;
        *identity = 0;
        return 0;
    }
    PyObject *first = PyTuple_GET_ITEM(args, 0);
    PyObject *second = PyTuple_GET_ITEM(args, 1);
    *names = PyUnicode_Check(second) && PyUnicode_GET_LENGTH(second) ? second : NULL;
    *identity = PyTuple_GET_ITEM(args, 2) == Py_True;
    if (first == Py_None || !PyLong_Check(first))
        return 0;
    *raw = PyLong_AsUnsignedLongLongMask(first);
    return 1;
}

/* aggregate.Aggregates.fold_key; -1 when something could not be recorded. */
static int
fold_key(Aggregates *a, FuncAgg *fn, const FoldCall *c, int has_ret, int64_t ret, int identity_ret,
         int64_t start, int64_t end, int64_t cpu, long long shadow, int returned, int ret_hashable,
         int ret_none)
{
    uint64_t raw = 0;
    PyObject *names;
    int identity;
    int has_raw = key_args(c->args_kind, c->args_raw, c->args, &raw, &names, &identity);
    if (!has_raw && names == NULL && !identity)
        return 0;
    CacheState *s = fn->cache;
    if (s == NULL && (s = fn->cache = cache_new()) == NULL)
        return -1;
    if (s->cheap_ns == 0 && a->key_min_ns > 0) {
        /* aggregate.KEY_PROBE_CALLS: a function cheaper than a cache lookup stops being keyed */
        s->probe_calls++;
        s->probe_wall += end - start;
        if (s->probe_calls == KEY_PROBE_CALLS && s->probe_wall < a->key_min_ns * KEY_PROBE_CALLS) {
            s->cheap_ns = s->probe_wall / KEY_PROBE_CALLS;
            if (s->cheap_ns < 1)
                s->cheap_ns = 1;
            ((CodeInfoObject *)fn->info)->keys = 0;
        }
    }
    if (names != NULL) {
        s->pend[C_UNHASHABLE]++;
        if (add_types(s, names) < 0) {
            PyErr_Clear();
            return -1;
        }
    }
    if (identity)
        s->pend[C_IDENTITY]++;
    if (!has_raw)
        return 0;
    s->pend[C_CALLS]++;
    s->cost_calls++;
    s->cost_wall += end - start;
    if (shadow & SHADOW_SHADOWED) { /* not in the sequence a memoized version would make */
        s->pend[C_SHADOWED]++;
        return 0;
    }
    if (!returned) /* raised: a miss that does not enter the cache (functools.lru_cache) */
        return 0;
    if (!ret_hashable)
        s->pend[C_UNHASHABLE_RETURNS]++;
    if (ret_none)
        s->pend[C_NONE_RETURNS]++;
    uint64_t mixed = mix64(raw);
    if (!sampled(mixed, s->level))
        return 0;
    int64_t weight = (int64_t)1 << s->level;
    Key *key = key_find(s, raw, mixed);
    if (key == NULL) {
        while ((long long)s->n_keys >= a->max_keys) {
            if (s->level >= 64)
                return 0;
            a->total_keys -= cache_lower_rate(s);
        }
        if (!sampled(mixed, s->level))
            return 0;
        weight = (int64_t)1 << s->level;
        int64_t k = key_insert(s, raw, mixed);
        if (k < 0)
            return -1;
        if (cache_place(s, (uint32_t)k) < 0) { /* undo: the key was never counted */
            s->n_keys--;
            index_rebuild(s, s->index_mask + 1);
            return -1;
        }
        s->pend[C_NEW_KEYS] += weight;
        a->total_keys++;
        if (a->total_keys > a->max_keys_total) {
            shed_keys(a);
            if ((key = key_find(s, raw, mixed)) == NULL)
                return 0; /* this very key was shed */
            weight = (int64_t)1 << s->level;
        }
        else {
            key = &s->keys[k];
        }
    }
    else {
        uint32_t k = (uint32_t)(key - s->keys);
        int64_t distance = 0;
        if (key->pos + 1 != s->next_pos) { /* the most recent key stays where it is: distance 0 */
            distance = ((int64_t)s->n_keys - fenwick_prefix(s, key->pos)) << s->level;
            cache_unplace(s, k);
            if (cache_place(s, k) < 0) {
                /* cannot happen but by memory: put it back where it was */
                fenwick_add(s, key->pos, 1);
                s->pos_key[key->pos] = k + 1;
                return -1;
            }
        }
        ReuseEntry *row = reuse_row(s, distance);
        if (row == NULL)
            return -1;
        row->hits += weight;
        row->cpu += cpu * weight;
        row->wall += (end - start) * weight;
    }
    s->pend[C_SAMPLED]++;
    key->count++;
    if (start < key->last_end)
        s->pend[C_OVERLAPS] += weight;
    if (end > key->last_end)
        key->last_end = end;
    if (has_ret) {
        if (!key->has_ret) {
            key->has_ret = 1;
            key->ret = ret;
            key->identity_ret = (uint8_t)identity_ret;
        }
        else if (key->inconsistent) {
            s->pend[C_INCONSISTENT_CALLS] += weight;
        }
        else if (key->fresh) {
        }
        else if (identity_ret || key->identity_ret) {
            /* A repeated key returning an object that hashes by identity: a new object each call
             * (equal hashes would only be address reuse), not a different value. */
            key->fresh = 1;
            s->pend[C_FRESH] += weight;
        }
        else if (ret != key->ret) {
            key->inconsistent = 1;
            s->pend[C_INCONSISTENT_KEYS] += weight;
            s->pend[C_INCONSISTENT_CALLS] += key->count * weight;
        }
    }
    return 0;
}

/* -- the fold -------------------------------------------------------------------------------- */

/* The entry of (caller, callee), made if new; NULL when the table is full (max_nodes pairs) or
 * memory ran out (*failed set). */
static EdgeEntry *
edge_of(Aggregates *a, FuncAgg *caller, FuncAgg *callee, int *failed)
{
    size_t i = pointer_hash(caller, callee) & a->edge_mask;
    for (; a->edge_index != NULL && a->edge_index[i]; i = (i + 1) & a->edge_mask) {
        EdgeEntry *e = &a->edges[a->edge_index[i] - 1];
        if (e->caller == caller && e->callee == callee)
            return e;
    }
    if ((long long)a->n_edges >= a->max_nodes)
        return NULL;
    if (a->n_edges == a->cap_edges) {
        uint32_t cap = a->cap_edges ? a->cap_edges * 2 : 256;
        EdgeEntry *grown = PyMem_Realloc(a->edges, (size_t)cap * sizeof(EdgeEntry));
        if (grown == NULL)
            goto fail;
        a->edges = grown;
        a->cap_edges = cap;
    }
    if (a->edge_index == NULL || ((size_t)a->n_edges + 1) * 2 > a->edge_mask + 1) {
        size_t size = a->edge_index ? (a->edge_mask + 1) * 2 : 512;
        uint32_t *fresh = PyMem_Calloc(size, sizeof(uint32_t));
        if (fresh == NULL)
            goto fail;
        for (uint32_t k = 0; k < a->n_edges; k++) {
            size_t j = pointer_hash(a->edges[k].caller, a->edges[k].callee) & (size - 1);
            while (fresh[j])
                j = (j + 1) & (size - 1);
            fresh[j] = k + 1;
        }
        PyMem_Free(a->edge_index);
        a->edge_index = fresh;
        a->edge_mask = size - 1;
        i = pointer_hash(caller, callee) & a->edge_mask;
        while (a->edge_index[i])
            i = (i + 1) & a->edge_mask;
    }
    if (function_register(a, caller) < 0) /* ids in the order the reference gives them */
        goto fail;
    a->edges[a->n_edges] = (EdgeEntry){caller, callee, 0, 0};
    a->edge_index[i] = ++a->n_edges;
    return &a->edges[a->n_edges - 1];
fail:
    *failed = 1;
    return NULL;
}

void
cs_fold_record(Aggregates *a, RecordObject *r, PyObject *value, int returned)
{
    PyObject *parent = record_slot(r, OBJ_PARENT);
    FoldCall c = {
        .ci = (CodeInfoObject *)r->o[OBJ_INFO], /* a CodeInfo: checked at start */
        .node = r->node,
        .nested = IS_RECORD_OBJECT(parent) && ((RecordObject *)parent)->node == r->node,
        .caller = IS_RECORD_OBJECT(parent) ? ((RecordObject *)parent)->o[OBJ_INFO] : NULL,
        .error = record_slot(r, OBJ_ERROR) != Py_None,
        .start = r->n[NUM_START], .end = r->n[NUM_END], .susp_ns = r->n[NUM_SUSP_NS],
        .suspends = r->n[NUM_SUSPENDS], .cpu = r->n[NUM_CPU], .child_cpu = r->n[NUM_CHILD_CPU],
        .shadow = r->n[NUM_SHADOW],
        .args_kind = r->args_kind, .ret_kind = r->ret_kind, .args_raw = r->args_raw, .ret_raw = r->ret_raw,
        .args = record_slot(r, OBJ_ARGS), .ret = record_slot(r, OBJ_RET),
    };
    cs_fold(a, &c, value, returned);
}

void
cs_fold(Aggregates *a, const FoldCall *c, PyObject *value, int returned)
{
    CodeInfoObject *info = c->ci;
    Node *node = node_at(a, c->node);
    FuncAgg *fn = node ? function_of(a, info) : NULL;
    if (fn == NULL || function_register(a, fn) < 0) {
        a->lost_calls++;
        return;
    }
    int nested = c->nested;
    int error = c->error;
    int64_t start = c->start, end = c->end;
    int64_t wall = end - start, suspended = c->susp_ns, run = wall - suspended;
    int64_t cpu = c->cpu, cpu_self = cpu - c->child_cpu;
    /* the node */
    int64_t *p = node->pend;
    p[N_CALLS]++;
    node->folded = 1;
    if (node->is_other)
        a->other_calls++;
    if (error)
        p[N_ERRORS]++;
    p[N_CPU_SELF] += cpu_self;
    if (!nested) {
        p[N_WALL] += wall;
        p[N_RUN] += run;
        p[N_SUSPENDED] += suspended;
        p[N_AWAITS] += c->suspends;
        p[N_CPU_TOTAL] += cpu;
    }
    /* the function */
    p = fn->pend;
    p[F_CALLS]++;
    if (error)
        p[F_ERRORS]++;
    p[F_WALL] += wall;
    p[F_RUN] += run;
    p[F_CPU_SELF] += cpu_self;
    int lost = sketch_add(&fn->wall, sketch_bucket(wall)) < 0;
    /* A plain function never suspends: its running time is its wall time (one sketch suffices). */
    if (info->kind != KIND_FUNCTION)
        lost |= sketch_add(&fn->run, sketch_bucket(run)) < 0;
    /* the caller -> callee pair of a call the tree folded (its other calls' callers are nodes) */
    if (node->is_other && c->caller != NULL) {
        PyObject *caller_info = c->caller;
        FuncAgg *caller = caller_info != (PyObject *)info ? function_of(a, (CodeInfoObject *)caller_info) : NULL;
        if (caller != NULL && caller != fn) {
            EdgeEntry *edge = edge_of(a, caller, fn, &lost);
            if (edge != NULL)
                edge->calls++;
            else if (!lost)
                a->lost_edges++;
        }
    }
    /* the key */
    if (c->args_kind != KEY_OBJECT || c->args != Py_None) {
        PyObject *ret = c->ret;
        PyObject *raw = NULL;
        int64_t ret_hash = 0;
        int has_ret = 0;
        if (returned && c->ret_kind != KEY_OBJECT) {
            ret_hash = c->ret_raw;
            has_ret = 1;
        }
        else if (returned && ret != Py_None) {
            raw = PyTuple_Check(ret) && PyTuple_GET_SIZE(ret) ? PyTuple_GET_ITEM(ret, 0) : NULL;
            has_ret = raw != NULL && raw != Py_None && PyLong_Check(raw);
        }
        if (raw != NULL && has_ret) {
            int overflow;
            ret_hash = PyLong_AsLongLongAndOverflow(raw, &overflow);
            if (overflow) /* not a hash: never happens, keep it distinct anyway */
                ret_hash = (int64_t)PyLong_AsUnsignedLongLongMask(raw);
            PyErr_Clear();
        }
        int identity_ret = has_ret && value != NULL && Py_TYPE(value)->tp_hash == PyBaseObject_Type.tp_hash;
        long long shadow = c->shadow;
        /* a returned value hash() refused: stored as (fingerprint or None, False) */
        int ret_hashable = !(returned && c->ret_kind == KEY_OBJECT && PyTuple_Check(ret) && PyTuple_GET_SIZE(ret) == 2 &&
                             PyTuple_GET_ITEM(ret, 1) == Py_False);
        lost |= fold_key(a, fn, c, has_ret, ret_hash, identity_ret, start, end, cpu, shadow, returned,
                         ret_hashable, returned && value == Py_None) < 0;
        if (shadow & SHADOW_ACTIVE)
            fn->active--;
        if (shadow & SHADOW_HIT_ROOT)
            fn->shadow_owner = 0;
    }
    if (lost)
        a->lost_calls++;
}

/* -- export ---------------------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap, item;
} Buf;

static void *
buf_push(Buf *b)
{
    if (b->len == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        char *data = PyMem_Realloc(b->data, cap * b->item);
        if (data == NULL)
            return NULL;
        b->data = data;
        b->cap = cap;
    }
    return b->data + b->item * b->len++;
}

typedef struct {
    uint32_t id, parent, function;
    PyObject *label; /* borrowed from the node (roots), or NULL */
    uint8_t is_other;
    int64_t d[N_NODE];
} NodeRow;

typedef struct {
    FuncAgg *fn;
    int64_t d[N_FUNC];
} FuncRow;

typedef struct {
    uint32_t function;
    int32_t bucket;
    int64_t count;
} SketchRow;

typedef struct {
    uint32_t function;
    int level;
    int64_t cheap_ns;
    int64_t d[N_CACHE];
    PyObject *types; /* new reference or NULL */
} CacheRow;

typedef struct {
    uint32_t function;
    int64_t distance, hits, cpu, wall;
} ReuseRow;

typedef struct {
    uint32_t caller, callee;
    int64_t calls;
} EdgeRow;

static int
compare_reuse(const void *x, const void *y)
{
    int64_t a = ((const ReuseRow *)x)->distance, b = ((const ReuseRow *)y)->distance;
    return a < b ? -1 : a > b;
}

static int
any_nonzero(const int64_t *values, int n)
{
    for (int i = 0; i < n; i++) {
        if (values[i] != 0)
            return 1;
    }
    return 0;
}

static int
export_sketch(Sketch *s, uint32_t function, Buf *rows)
{
    for (int32_t i = 0; s->counts != NULL && i < s->n; i++) {
        if (s->counts[i] == 0)
            continue;
        SketchRow *row = buf_push(rows);
        if (row == NULL)
            return -1;
        *row = (SketchRow){function, s->lo + i, s->counts[i]};
        s->counts[i] = 0;
    }
    return 0;
}

static int
export_cache(FuncAgg *fn, CacheState *s, Buf *cache_rows, Buf *reuse_rows)
{
    if (!any_nonzero(s->pend, N_CACHE) && s->reuse_used == 0 && !s->types_dirty && s->level == s->level_sent &&
        s->cheap_ns == s->cheap_sent)
        return 0;
    fn->used = 1;
    CacheRow *row = buf_push(cache_rows);
    if (row == NULL)
        return -1;
    row->function = fn->id;
    row->level = s->level;
    row->cheap_ns = s->cheap_ns;
    s->cheap_sent = s->cheap_ns;
    memcpy(row->d, s->pend, sizeof row->d);
    memset(s->pend, 0, sizeof s->pend);
    row->types = s->types_joined ? Py_NewRef(s->types_joined) : NULL;
    s->types_dirty = 0;
    s->level_sent = s->level;
    size_t first = reuse_rows->len;
    for (uint32_t i = 0; s->reuse != NULL && i <= s->reuse_mask; i++) {
        ReuseEntry *entry = &s->reuse[i];
        if (!entry->used)
            continue;
        ReuseRow *out = buf_push(reuse_rows);
        if (out == NULL)
            return -1;
        *out = (ReuseRow){fn->id, entry->distance, entry->hits, entry->cpu, entry->wall};
        entry->used = 0;
    }
    s->reuse_used = 0;
    qsort(reuse_rows->data + first * reuse_rows->item, reuse_rows->len - first, reuse_rows->item, compare_reuse);
    return 0;
}

/* The names of a window's columns, in aggregate.WINDOW_COLUMNS order. */
static const char *const WINDOW_COLUMNS[] = {
    "function.id", "function.name", "function.file", "function.line", "function.kind", "function.calls",
    "function.errors", "function.wall_ns", "function.run_ns", "function.cpu_self",
    "node.id", "node.parent", "node.function", "node.label", "node.calls", "node.errors", "node.wall_ns",
    "node.run_ns", "node.suspended_ns", "node.awaits", "node.cpu_total", "node.cpu_self",
    "wall.function", "wall.bucket", "wall.count", "run.function", "run.bucket", "run.count",
    "cache.function", "cache.calls", "cache.unhashable_calls", "cache.identity_calls", "cache.keys",
    "cache.inconsistent_keys", "cache.inconsistent_calls", "cache.fresh_keys", "cache.overlaps",
    "cache.sampled_calls", "cache.shadowed_calls", "cache.unhashable_returns", "cache.none_returns",
    "cache.unhashable_types", "cache.rate",
    "cache.cheap_ns", "reuse.function", "reuse.distance", "reuse.hits", "reuse.cpu", "reuse.wall_ns",
    "edge.caller", "edge.callee", "edge.calls",
};
enum {
    COL_FUNCTION = 0, COL_NODE = 10, COL_WALL = 22, COL_RUN = 25, COL_CACHE = 28, COL_REUSE = 44, COL_EDGE = 49,
    N_COLUMNS = 52
};
/* cache counters exported as doubles (aggregate._CACHE_DOUBLE_COLUMNS) */
static const char CACHE_DOUBLE[N_CACHE] = {0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0};

static int
append_steal(PyObject *list, PyObject *item)
{
    if (item == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *
Aggregates_export_window(Aggregates *a, PyObject *unused)
{
    Buf nodes = {NULL, 0, 0, sizeof(NodeRow)}, funcs = {NULL, 0, 0, sizeof(FuncRow)};
    Buf walls = {NULL, 0, 0, sizeof(SketchRow)}, runs = {NULL, 0, 0, sizeof(SketchRow)};
    Buf caches = {NULL, 0, 0, sizeof(CacheRow)}, reuses = {NULL, 0, 0, sizeof(ReuseRow)};
    Buf edges = {NULL, 0, 0, sizeof(EdgeRow)};
    PyObject *out = NULL, *cols[N_COLUMNS] = {NULL};
    int failed = 0;

    /* Phase 1: read and zero in C (no Python code runs, so no fold interleaves). */
    for (uint32_t id = 1; id <= a->n_nodes; id++) {
        Node *node = node_ref(a, id);
        int dirty = any_nonzero(node->pend, N_NODE);
        if (!dirty && (node->exported || !node->folded))
            continue; /* unchanged; or never folded: defined when a descendant is sent */
        for (Node *current = node; current != NULL && !current->mark; current = current->parent) {
            if (current != node && current->exported)
                break;
            current->mark = 1;
        }
    }
    for (uint32_t id = 1; id <= a->n_nodes; id++) {
        Node *node = node_ref(a, id);
        if (!node->mark)
            continue;
        node->mark = 0;
        NodeRow *row = failed ? NULL : buf_push(&nodes);
        if (row == NULL) {
            failed = 1;
            continue;
        }
        row->id = id;
        row->parent = node->parent ? node->parent->id : 0;
        row->function = 0;
        if (node->fn != NULL) {
            if (function_register(a, node->fn) < 0)
                failed = 1;
            row->function = node->fn->id;
            node->fn->used = 1;
        }
        row->label = node->label;
        row->is_other = node->is_other;
        memcpy(row->d, node->pend, sizeof row->d);
        memset(node->pend, 0, sizeof node->pend);
        node->exported = 1;
    }
    for (uint32_t i = 0; i < a->n_functions && !failed; i++) {
        FuncAgg *fn = a->flist[i];
        if (any_nonzero(fn->pend, N_FUNC)) {
            fn->used = 1;
            if (export_sketch(&fn->wall, fn->id, &walls) < 0 || export_sketch(&fn->run, fn->id, &runs) < 0)
                failed = 1;
        }
        if (fn->cache != NULL && export_cache(fn, fn->cache, &caches, &reuses) < 0)
            failed = 1;
    }
    for (uint32_t i = 0; i < a->n_edges && !failed; i++) {
        EdgeEntry *e = &a->edges[i];
        if (e->calls == e->sent)
            continue;
        EdgeRow *row = buf_push(&edges);
        if (row == NULL) {
            failed = 1;
            break;
        }
        *row = (EdgeRow){e->caller->id, e->callee->id, e->calls - e->sent};
        e->sent = e->calls;
        e->caller->used = e->callee->used = 1;
    }
    for (uint32_t i = 0; i < a->n_functions; i++) {
        FuncAgg *fn = a->flist[i];
        if (!fn->used)
            continue;
        fn->used = 0;
        FuncRow *row = failed ? NULL : buf_push(&funcs);
        if (row == NULL) {
            failed = 1;
            continue;
        }
        row->fn = fn;
        memcpy(row->d, fn->pend, sizeof row->d);
        memset(fn->pend, 0, sizeof fn->pend);
    }
    long long other = a->other_calls - a->sent_other_calls, lost = a->lost_calls - a->sent_lost_calls;
    long long lost_edges = a->lost_edges - a->sent_lost_edges;
    a->sent_other_calls = a->other_calls;
    a->sent_lost_calls = a->lost_calls;
    a->sent_lost_edges = a->lost_edges;
    long long window = a->window++;
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }

    /* Phase 2: the columns. */
    if ((out = PyDict_New()) == NULL)
        goto done;
    for (int c = 0; c < N_COLUMNS; c++) {
        if ((cols[c] = PyList_New(0)) == NULL || PyDict_SetItemString(out, WINDOW_COLUMNS[c], cols[c]) < 0)
            goto error;
    }
    for (size_t i = 0; i < funcs.len; i++) {
        FuncRow *row = (FuncRow *)funcs.data + i;
        CodeInfoObject *ci = (CodeInfoObject *)row->fn->info;
        PyObject **col = cols + COL_FUNCTION;
        if (append_steal(col[0], PyLong_FromUnsignedLong(row->fn->id)) < 0 ||
            append_steal(col[1], PyObject_GetAttr((PyObject *)ci, str_name)) < 0 ||
            append_steal(col[2], PyObject_GetAttr((PyObject *)ci, str_file)) < 0 ||
            append_steal(col[3], PyObject_GetAttr((PyObject *)ci, str_line)) < 0 ||
            PyList_Append(col[4], kind_names[ci->kind >= 0 && ci->kind < 4 ? ci->kind : 0]) < 0)
            goto error;
        for (int k = 0; k < N_FUNC; k++) {
            if (append_steal(col[5 + k], PyLong_FromLongLong(row->d[k])) < 0)
                goto error;
        }
    }
    for (size_t i = 0; i < nodes.len; i++) {
        NodeRow *row = (NodeRow *)nodes.data + i;
        PyObject **col = cols + COL_NODE;
        PyObject *label = row->label ? row->label : row->is_other ? str_other_label : str_empty_label;
        if (append_steal(col[0], PyLong_FromUnsignedLong(row->id)) < 0 ||
            append_steal(col[1], PyLong_FromUnsignedLong(row->parent)) < 0 ||
            append_steal(col[2], PyLong_FromUnsignedLong(row->function)) < 0 || PyList_Append(col[3], label) < 0)
            goto error;
        for (int k = 0; k < N_NODE; k++) {
            if (append_steal(col[4 + k], PyLong_FromLongLong(row->d[k])) < 0)
                goto error;
        }
    }
    Buf *sketches[2] = {&walls, &runs};
    for (int which = 0; which < 2; which++) {
        PyObject **col = cols + (which ? COL_RUN : COL_WALL);
        for (size_t i = 0; i < sketches[which]->len; i++) {
            SketchRow *row = (SketchRow *)sketches[which]->data + i;
            if (append_steal(col[0], PyLong_FromUnsignedLong(row->function)) < 0 ||
                append_steal(col[1], PyLong_FromLong(row->bucket)) < 0 ||
                append_steal(col[2], PyLong_FromLongLong(row->count)) < 0)
                goto error;
        }
    }
    for (size_t i = 0; i < caches.len; i++) {
        CacheRow *row = (CacheRow *)caches.data + i;
        PyObject **col = cols + COL_CACHE;
        if (append_steal(col[0], PyLong_FromUnsignedLong(row->function)) < 0)
            goto error;
        for (int k = 0; k < N_CACHE; k++) {
            PyObject *item = CACHE_DOUBLE[k] ? PyFloat_FromDouble((double)row->d[k]) : PyLong_FromLongLong(row->d[k]);
            if (append_steal(col[1 + k], item) < 0)
                goto error;
        }
        if (PyList_Append(col[1 + N_CACHE], row->types ? row->types : str_empty_label) < 0 ||
            append_steal(col[2 + N_CACHE], PyFloat_FromDouble(ldexp(1.0, -row->level))) < 0 ||
            append_steal(col[3 + N_CACHE], PyLong_FromLongLong(row->cheap_ns)) < 0)
            goto error;
    }
    for (size_t i = 0; i < reuses.len; i++) {
        ReuseRow *row = (ReuseRow *)reuses.data + i;
        PyObject **col = cols + COL_REUSE;
        if (append_steal(col[0], PyLong_FromUnsignedLong(row->function)) < 0 ||
            append_steal(col[1], PyLong_FromLongLong(row->distance)) < 0 ||
            append_steal(col[2], PyFloat_FromDouble((double)row->hits)) < 0 ||
            append_steal(col[3], PyFloat_FromDouble((double)row->cpu)) < 0 ||
            append_steal(col[4], PyFloat_FromDouble((double)row->wall)) < 0)
            goto error;
    }
    for (size_t i = 0; i < edges.len; i++) {
        EdgeRow *row = (EdgeRow *)edges.data + i;
        PyObject **col = cols + COL_EDGE;
        if (append_steal(col[0], PyLong_FromUnsignedLong(row->caller)) < 0 ||
            append_steal(col[1], PyLong_FromUnsignedLong(row->callee)) < 0 ||
            append_steal(col[2], PyLong_FromLongLong(row->calls)) < 0)
            goto error;
    }
    PyObject *tail = Py_BuildValue("[L]", other);
    if (tail == NULL || PyDict_SetItemString(out, "other_nodes", tail) < 0) {
        Py_XDECREF(tail);
        goto error;
    }
    Py_DECREF(tail);
    if ((tail = Py_BuildValue("[L]", lost_edges)) == NULL || PyDict_SetItemString(out, "lost_edges", tail) < 0) {
        Py_XDECREF(tail);
        goto error;
    }
    Py_DECREF(tail);
    if ((tail = Py_BuildValue("[L]", window)) == NULL || PyDict_SetItemString(out, "window", tail) < 0) {
        Py_XDECREF(tail);
        goto error;
    }
    Py_DECREF(tail);
    if ((tail = Py_BuildValue("[L]", lost)) == NULL || PyDict_SetItemString(out, "lost_calls", tail) < 0) {
        Py_XDECREF(tail);
        goto error;
    }
    Py_DECREF(tail);
    goto done;
error:
    Py_CLEAR(out);
done:
    for (int c = 0; c < N_COLUMNS; c++)
        Py_XDECREF(cols[c]);
    for (size_t i = 0; i < caches.len; i++)
        Py_XDECREF(((CacheRow *)caches.data + i)->types);
    PyMem_Free(nodes.data);
    PyMem_Free(funcs.data);
    PyMem_Free(walls.data);
    PyMem_Free(runs.data);
    PyMem_Free(caches.data);
    PyMem_Free(reuses.data);
    PyMem_Free(edges.data);
    return out;
}

/* In a forked child: everything folded so far is the parent's; the child's first window starts
 * here, with its nodes defined again (aggregate.Aggregates.forget_parent). */
static PyObject *
Aggregates_forget_parent(Aggregates *a, PyObject *unused)
{
    for (uint32_t id = 1; id <= a->n_nodes; id++) {
        Node *node = node_ref(a, id);
        memset(node->pend, 0, sizeof node->pend);
        node->exported = 0;
        node->mark = 0;
    }
    for (uint32_t i = 0; i < a->n_functions; i++) {
        FuncAgg *fn = a->flist[i];
        memset(fn->pend, 0, sizeof fn->pend);
        fn->used = 0;
        if (fn->wall.counts)
            memset(fn->wall.counts, 0, (size_t)fn->wall.n * sizeof(int64_t));
        if (fn->run.counts)
            memset(fn->run.counts, 0, (size_t)fn->run.n * sizeof(int64_t));
        CacheState *s = fn->cache;
        if (s != NULL) {
            memset(s->pend, 0, sizeof s->pend);
            s->types_dirty = 0;
            s->level_sent = s->level;
            s->cheap_sent = s->cheap_ns;
            if (s->reuse)
                memset(s->reuse, 0, (size_t)(s->reuse_mask + 1) * sizeof(ReuseEntry));
            s->reuse_used = 0;
        }
    }
    for (uint32_t i = 0; i < a->n_edges; i++)
        a->edges[i].sent = a->edges[i].calls;
    a->sent_other_calls = a->other_calls;
    a->sent_lost_calls = a->lost_calls;
    a->sent_lost_edges = a->lost_edges;
    a->window = 0;
    Py_RETURN_NONE;
}

/* fold_record(record, value, returned): recorder.fold_record for a compiled Record (calls
 * ended at stop or evicted while suspended; the hot path folds the others itself). */
static PyObject *
Aggregates_fold_record(Aggregates *a, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !IS_RECORD_OBJECT(args[0]) ||
        !PyObject_TypeCheck(((RecordObject *)args[0])->o[OBJ_INFO], &CS_CodeInfoType)) {
        PyErr_SetString(PyExc_TypeError, "fold_record(record, value, returned) takes a callspan.tracer._hotpath.Record");
        return NULL;
    }
    int returned = PyObject_IsTrue(args[2]);
    if (returned < 0)
        return NULL;
    cs_fold_record(a, (RecordObject *)args[0], args[1], returned);
    Py_RETURN_NONE;
}

/* -- the type ------------------------------------------------------------------------------ */

static void
Aggregates_release(Aggregates *a)
{
    for (uint32_t c = 0; c < a->n_chunks; c++) {
        Node *chunk = a->chunks[c];
        for (uint32_t i = 0; i < NODE_CHUNK && c * NODE_CHUNK + i < a->n_nodes; i++)
            Py_XDECREF(chunk[i].label);
        PyMem_Free(chunk);
    }
    PyMem_Free(a->chunks);
    a->chunks = NULL;
    a->n_chunks = a->cap_chunks = a->n_nodes = 0;
    for (size_t i = 0; a->ftable != NULL && i <= a->ftable_mask; i++) {
        FuncAgg *fn = a->ftable[i];
        if (fn == NULL)
            continue;
        Py_XDECREF(fn->info);
        PyMem_Free(fn->wall.counts);
        PyMem_Free(fn->run.counts);
        cache_free(fn->cache);
        PyMem_Free(fn);
    }
    PyMem_Free(a->ftable);
    a->ftable = NULL;
    a->ftable_mask = a->ftable_used = 0;
    PyMem_Free(a->flist);
    a->flist = NULL;
    a->n_functions = a->cap_functions = 0;
    PyMem_Free(a->children);
    a->children = NULL;
    a->children_mask = a->children_used = 0;
    PyMem_Free(a->edges);
    PyMem_Free(a->edge_index);
    a->edges = NULL;
    a->edge_index = NULL;
    a->n_edges = a->cap_edges = 0;
    a->edge_mask = 0;
    Py_CLEAR(a->thread_roots);
}

static void
Aggregates_dealloc(Aggregates *a)
{
    Aggregates_release(a);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static int
Aggregates_init(Aggregates *a, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"max_nodes", "max_depth", "max_keys", "max_keys_total", "key_min_ns", NULL};
    long long max_nodes = 100000, max_depth = 256, max_keys = 4096, max_keys_total = 1 << 20, key_min_ns = 400;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$LLLLL:Aggregates", names, &max_nodes, &max_depth, &max_keys,
                                     &max_keys_total, &key_min_ns))
        return -1;
    Aggregates_release(a);
    a->max_nodes = max_nodes;
    a->max_depth = max_depth;
    a->max_keys = max_keys;
    a->max_keys_total = max_keys_total;
    a->key_min_ns = key_min_ns;
    a->serial = next_serial++;
    a->total_keys = a->other_calls = a->sent_other_calls = a->lost_calls = a->sent_lost_calls = a->window = 0;
    a->lost_edges = a->sent_lost_edges = 0;
    if ((a->thread_roots = PyDict_New()) == NULL)
        return -1;
    return 0;
}

static PyObject *
Aggregates_get_node_count(Aggregates *a, void *closure)
{
    return PyLong_FromUnsignedLong(a->n_nodes);
}

static PyMemberDef Aggregates_members[] = {
    {"max_nodes", T_LONGLONG, offsetof(Aggregates, max_nodes), 0, "call-tree nodes (beyond: (other) nodes)"},
    {"max_depth", T_LONGLONG, offsetof(Aggregates, max_depth), 0, "call-tree depth (beyond: (other) nodes)"},
    {"max_keys", T_LONGLONG, offsetof(Aggregates, max_keys), 0, "distinct keys per function kept exactly"},
    {"max_keys_total", T_LONGLONG, offsetof(Aggregates, max_keys_total), 0, "distinct keys per process"},
    {"key_min_ns", T_LONGLONG, offsetof(Aggregates, key_min_ns), 0,
     "a function whose mean call is shorter stops being keyed after KEY_PROBE_CALLS keyed calls (0: never)"},
    {"total_keys", T_LONGLONG, offsetof(Aggregates, total_keys), READONLY, "distinct keys held"},
    {"other_calls", T_LONGLONG, offsetof(Aggregates, other_calls), READONLY, "calls folded into (other) nodes"},
    {"lost_edges", T_LONGLONG, offsetof(Aggregates, lost_edges), READONLY,
     "calls folded into (other) nodes whose caller -> callee pair the full edge table could not keep"},
    {"lost_calls", T_LONGLONG, offsetof(Aggregates, lost_calls), READONLY,
     "calls that could not be folded (entirely): out of memory"},
    {"window", T_LONGLONG, offsetof(Aggregates, window), READONLY, "the next window's number"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Aggregates_getset[] = {
    {"node_count", (getter)Aggregates_get_node_count, NULL, "call-tree nodes made", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Aggregates_methods[] = {
    {"export_window", (PyCFunction)Aggregates_export_window, METH_NOARGS,
     "what changed since the last call, as the columns of schema v2 (plus lost_calls)"},
    {"forget_parent", (PyCFunction)Aggregates_forget_parent, METH_NOARGS,
     "in a forked child: start the windows from here"},
    {"fold_record", (PyCFunction)(void (*)(void))Aggregates_fold_record, METH_FASTCALL,
     "fold_record(record, value, returned): fold one finished or abandoned call"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject CS_AggregatesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "callspan.tracer._hotpath.Aggregates",
    .tp_basicsize = sizeof(Aggregates),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled twin of callspan.tracer.aggregate.Aggregates, folded by the compiled hot path.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Aggregates_init,
    .tp_dealloc = (destructor)Aggregates_dealloc,
    .tp_members = Aggregates_members,
    .tp_getset = Aggregates_getset,
    .tp_methods = Aggregates_methods,
};

int
cs_aggregates_ready(PyObject *module)
{
    volatile double alpha = 0.01; /* computed at run time with the libm Python's math module uses */
    log_gamma = log((1 + alpha) / (1 - alpha));
    for (int v = 0; v < (1 << SLICE_BITS); v++)
        small_bucket[v] = (int16_t)(v <= 1 ? 0 : sketch_bucket_libm(v));
    for (int b = 0; b <= MAX_BUCKETS; b++)
        bucket_start[b] = UINT64_MAX;
    static const char *const kinds[4] = {"function", "coroutine", "generator", "async_generator"};
    for (int i = 0; i < 4; i++) {
        if ((kind_names[i] = PyUnicode_InternFromString(kinds[i])) == NULL)
            return -1;
    }
    if ((str_other_label = PyUnicode_InternFromString("(other)")) == NULL ||
        (str_empty_label = PyUnicode_InternFromString("")) == NULL ||
        (str_comma = PyUnicode_InternFromString(",")) == NULL ||
        (str_name = PyUnicode_InternFromString("name")) == NULL ||
        (str_file = PyUnicode_InternFromString("file")) == NULL ||
        (str_line = PyUnicode_InternFromString("line")) == NULL)
        return -1;
    if (PyType_Ready(&CS_AggregatesType) < 0)
        return -1;
    Py_INCREF(&CS_AggregatesType);
    if (PyModule_AddObject(module, "Aggregates", (PyObject *)&CS_AggregatesType) < 0) {
        Py_DECREF(&CS_AggregatesType);
        return -1;
    }
    return 0;
}
