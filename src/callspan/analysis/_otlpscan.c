/* The analyzer's compiled OTLP JSON reader: one request line in, decoded spans out.
 *
 * scan_request(line: bytes) -> list | None
 *
 * Returns [(resource, [(scope, spans), ...]), ...] for a line holding one
 * ExportTraceServiceRequest, where resource and scope are the raw JSON bytes of those (small)
 * objects or None, and each span is either the tuple otlp.decode_span() would build for it, or
 * the span's raw JSON bytes when it uses any encoding but the usual one (escapes in the strings
 * it reads, ints as doubles, summaries, events, duplicate keys, ...): Python decodes those.
 * Returns None for anything else, including invalid JSON: the Python reader then handles the
 * line (and reports the error), so what is valid and what it means stay defined by the Python
 * reader. This file never raises except MemoryError.
 *
 * It does not build the parse tree: it validates the whole line as strict JSON (RFC 8259,
 * UTF-8) and converts only the values the analyzer reads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64

enum { OK = 0, BAIL = 1, FAIL = -1 }; /* FAIL: a Python exception is set */

typedef struct {
    const unsigned char *p, *end;
    int depth;
} Scan;

typedef struct {
    const unsigned char *start; /* contents, without quotes */
    Py_ssize_t len;
    int escaped; /* has a backslash escape */
    int ascii;
} Str;

static inline void
ws(Scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static inline int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One UTF-8 sequence starting at p (a byte >= 0x80); its length, or 0 if invalid
 * (overlong forms, surrogates and code points above U+10FFFF are invalid). */
static inline int
utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        return (end - p >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return 0; /* above U+10FFFF */
        return 4;
    }
    return 0;
}

/* A JSON string at s->p (which is '"'). Escapes are validated, not decoded; a \u escape of a
 * surrogate that is not half of a pair makes the line BAIL (the two JSON readers behind the
 * Python path differ on those). */
static int
string(Scan *s, Str *out)
{
    const unsigned char *p = s->p + 1, *end = s->end;
    out->start = p;
    out->escaped = 0;
    out->ascii = 1;
    for (;;) {
        /* the common run: printable ASCII without quote or backslash */
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p >= end) return BAIL;
        unsigned char c = *p;
        if (c == '"') break;
        if (c == '\\') {
            out->escaped = 1;
            if (end - p < 2) return BAIL;
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p += 2;
                break;
            case 'u': {
                if (end - p < 6) return BAIL;
                int code = 0;
                for (int i = 2; i < 6; i++) {
                    int h = hexval(p[i]);
                    if (h < 0) return BAIL;
                    code = code * 16 + h;
                }
                if (code >= 0x80) out->ascii = 0;
                if (code >= 0xDC00 && code <= 0xDFFF) return BAIL; /* a lone low surrogate */
                if (code >= 0xD800 && code <= 0xDBFF) {
                    /* a high surrogate must be followed by a low one: one code point */
                    if (end - p < 12 || p[6] != '\\' || p[7] != 'u') return BAIL;
                    int low = 0;
                    for (int i = 8; i < 12; i++) {
                        int h = hexval(p[i]);
                        if (h < 0) return BAIL;
                        low = low * 16 + h;
                    }
                    if (low < 0xDC00 || low > 0xDFFF) return BAIL;
                    p += 6;
                }
                p += 6;
                break;
            }
            default:
                return BAIL;
            }
            continue;
        }
        if (c < 0x20) return BAIL; /* control characters must be escaped */
        int n = utf8_seq(p, end);
        if (!n) return BAIL;
        out->ascii = 0;
        p += n;
    }
    out->len = p - out->start;
    s->p = p + 1;
    return OK;
}

/* A JSON number at s->p. *is_int: no fraction or exponent and fits in int64 (then *value). */
static int
number(Scan *s, int *is_int, long long *value)
{
    const unsigned char *p = s->p, *end = s->end;
    int negative = 0, integral = 1, overflow = 0;
    unsigned long long acc = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p >= end) return BAIL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            unsigned d = *p - '0';
            if (acc > (ULLONG_MAX - d) / 10) overflow = 1;
            else acc = acc * 10 + d;
            p++;
        }
    } else {
        return BAIL;
    }
    if (p < end && *p == '.') {
        integral = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return BAIL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        integral = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return BAIL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    s->p = p;
    *is_int = 0;
    if (integral && !overflow) {
        if (negative && acc <= (unsigned long long)LLONG_MAX + 1) {
            *value = (long long)(0 - acc);
            *is_int = 1;
        } else if (!negative && acc <= (unsigned long long)LLONG_MAX) {
            *value = (long long)acc;
            *is_int = 1;
        }
    }
    return OK;
}

static int literal(Scan *s, const char *word, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return BAIL;
    s->p += n;
    return OK;
}

static int skip_value(Scan *s);

/* Object iteration: call open() at '{', then next_key() until it returns 0 (end of object). */
static int
open_container(Scan *s, unsigned char c)
{
    if (s->p >= s->end || *s->p != c) return BAIL;
    if (++s->depth > MAX_DEPTH) return BAIL;
    s->p++;
    return OK;
}

/* The step between a container's members: -> 0 at its end (``close``), consumed; 1 at the next
 * member (after the ',' when it is not the first); -BAIL on invalid JSON. */
static int
next_member(Scan *s, int *count, unsigned char close)
{
    ws(s);
    if (s->p >= s->end) return -BAIL;
    if (*s->p == close) {
        s->p++;
        s->depth--;
        return 0;
    }
    if (*count) {
        if (*s->p != ',') return -BAIL;
        s->p++;
        ws(s);
        if (s->p >= s->end) return -BAIL;
    }
    (*count)++;
    return 1;
}

/* Object iteration after open_container(s, '{'): -> 1 with *key read and s->p at its value,
 * 0 at the end of the object, -BAIL on invalid JSON. */
static int
next_key(Scan *s, int *count, Str *key)
{
    int r = next_member(s, count, '}');
    if (r != 1) return r;
    if (*s->p != '"' || string(s, key) != OK) return -BAIL;
    ws(s);
    if (s->p >= s->end || *s->p != ':') return -BAIL;
    s->p++;
    ws(s);
    if (s->p >= s->end) return -BAIL;
    return 1;
}

/* Array iteration: at '[' call open_container; next_item() -> 1 at an item, 0 at the end. */
static int
next_item(Scan *s, int *count)
{
    return next_member(s, count, ']');
}

static inline int
key_is(const Str *key, const char *name, size_t n)
{
    return !key->escaped && (size_t)key->len == n && memcmp(key->start, name, n) == 0;
}
#define KEY_IS(key, lit) key_is((key), (lit), sizeof(lit) - 1)

static int
skip_object(Scan *s)
{
    int count = 0, r;
    Str key;
    if (open_container(s, '{') != OK) return BAIL;
    while ((r = next_key(s, &count, &key)) == 1) {
        if (skip_value(s) != OK) return BAIL;
    }
    return r == 0 ? OK : BAIL;
}

static int
skip_array(Scan *s)
{
    int count = 0, r;
    if (open_container(s, '[') != OK) return BAIL;
    while ((r = next_item(s, &count)) == 1) {
        if (skip_value(s) != OK) return BAIL;
    }
    return r == 0 ? OK : BAIL;
}

static int
skip_value(Scan *s)
{
    if (s->p >= s->end) return BAIL;
    switch (*s->p) {
    case '{': return skip_object(s);
    case '[': return skip_array(s);
    case '"': {
        Str str;
        return string(s, &str);
    }
    case 't': return literal(s, "true", 4);
    case 'f': return literal(s, "false", 5);
    case 'n': return literal(s, "null", 4);
    default: {
        int is_int;
        long long v;
        return number(s, &is_int, &v);
    }
    }
}

/* ---- span attributes ------------------------------------------------------------------ */

enum { V_ABSENT = 0, V_OBJECT, V_OTHER };

typedef struct {
    int state;        /* V_ABSENT: null or {} (or not given); V_OBJECT: a non-empty object */
    int members;      /* members of the object */
    int odd;          /* a duplicate or escaped member name */
    int has_str;      /* stringValue: 1 a string (see str), 2 something else */
    Str str;
    int has_int;      /* intValue: 1 canonical (int_value), 2 something else */
    long long int_value;
    int has_bool;     /* boolValue: 1 true, 2 false, 3 something else */
} Value;

/* An intValue given as a JSON string: Python's int() reads more forms (spaces, '+', '_',
 * non-ASCII digits); only [-]digits within int64 are read here, the rest goes to Python. */
static int
canonical_int(const Str *str, long long *out)
{
    const unsigned char *p = str->start, *end = p + str->len;
    int negative = 0;
    unsigned long long acc = 0;
    if (str->escaped) return 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p >= end) return 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return 0;
        unsigned d = *p - '0';
        if (acc > (ULLONG_MAX - d) / 10) return 0;
        acc = acc * 10 + d;
    }
    if (negative) {
        if (acc > (unsigned long long)LLONG_MAX + 1) return 0;
        *out = (long long)(0 - acc);
    } else {
        if (acc > (unsigned long long)LLONG_MAX) return 0;
        *out = (long long)acc;
    }
    return 1;
}

/* An AnyValue (the "value" of a KeyValue). */
static int
any_value(Scan *s, Value *v)
{
    memset(v, 0, sizeof(*v));
    if (s->p >= s->end) return BAIL;
    if (*s->p == 'n') {
        v->state = V_ABSENT;
        return literal(s, "null", 4);
    }
    if (*s->p != '{') {
        v->state = V_OTHER;
        return skip_value(s);
    }
    int count = 0, r;
    Str key;
    if (open_container(s, '{') != OK) return BAIL;
    while ((r = next_key(s, &count, &key)) == 1) {
        v->members++;
        if (key.escaped) {
            v->odd = 1;
            if (skip_value(s) != OK) return BAIL;
        } else if (KEY_IS(&key, "stringValue")) {
            if (v->has_str) v->odd = 1;
            if (s->p < s->end && *s->p == '"') {
                if (string(s, &v->str) != OK) return BAIL;
                v->has_str = 1;
            } else {
                if (skip_value(s) != OK) return BAIL;
                v->has_str = 2;
            }
        } else if (KEY_IS(&key, "intValue")) {
            if (v->has_int) v->odd = 1;
            v->has_int = 2;
            if (s->p < s->end && *s->p == '"') {
                Str str;
                if (string(s, &str) != OK) return BAIL;
                if (canonical_int(&str, &v->int_value)) v->has_int = 1;
            } else if (s->p < s->end && (*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))) {
                int is_int;
                if (number(s, &is_int, &v->int_value) != OK) return BAIL;
                if (is_int) v->has_int = 1;
            } else if (skip_value(s) != OK) {
                return BAIL;
            }
        } else if (KEY_IS(&key, "boolValue")) {
            if (v->has_bool) v->odd = 1;
            if (s->p < s->end && *s->p == 't') {
                if (literal(s, "true", 4) != OK) return BAIL;
                v->has_bool = 1;
            } else if (s->p < s->end && *s->p == 'f') {
                if (literal(s, "false", 5) != OK) return BAIL;
                v->has_bool = 2;
            } else {
                if (skip_value(s) != OK) return BAIL;
                v->has_bool = 3;
            }
        } else if (skip_value(s) != OK) {
            return BAIL;
        }
    }
    if (r != 0) return BAIL;
    v->state = v->members ? V_OBJECT : V_ABSENT;
    return OK;
}

enum {
    K_FUNC, K_FILE, K_LINE, K_KIND, K_CPU_TOTAL, K_CPU_SELF, K_RUN, K_THREAD, K_ARGS, K_RET,
    K_SIZE, K_SUSPENDED, K_AWAITS, K_ARGS_HASHABLE, K_UNHASHABLE, K_RET_HASHABLE, K_METHOD,
    K_IDENTITY, K_ERROR_TYPE, K_SUMMARY, K_COUNT
};

static const char *const KEY_NAMES[K_COUNT] = {
    "code.function.name", "code.file.path", "code.line.number", "callspan.kind",
    "callspan.cpu.total", "callspan.cpu.self", "callspan.run_ns", "thread.id",
    "callspan.args.hash", "callspan.return.hash", "callspan.return.size",
    "callspan.await.suspended_ns", "callspan.await.count", "callspan.args.hashable",
    "callspan.args.unhashable", "callspan.return.hashable", "callspan.method",
    "callspan.args.identity", "error.type", "callspan.summary.function",
};
static size_t KEY_LENGTHS[K_COUNT];

static int
known_key(const Str *key)
{
    if (key->escaped) return -2; /* the name is unknown until decoded: Python decides */
    for (int i = 0; i < K_COUNT; i++) {
        if ((size_t)key->len == KEY_LENGTHS[i] && memcmp(key->start, KEY_NAMES[i], KEY_LENGTHS[i]) == 0)
            return i;
    }
    return -1;
}

typedef struct {
    int complex; /* decode in Python */
    int given[K_COUNT];
    Value values[K_COUNT];
} Attributes;

/* One KeyValue object of the attributes list. */
static int
key_value(Scan *s, Attributes *at)
{
    int count = 0, r, have_key = 0, have_value = 0, which = -1;
    Str key, name;
    Value value;
    if (open_container(s, '{') != OK) return BAIL;
    while ((r = next_key(s, &count, &key)) == 1) {
        if (KEY_IS(&key, "key")) {
            if (have_key) at->complex = 1;
            have_key = 1;
            if (s->p < s->end && *s->p == '"') {
                if (string(s, &name) != OK) return BAIL;
                which = known_key(&name);
                if (which == -2) at->complex = 1;
            } else {
                if (skip_value(s) != OK) return BAIL;
                at->complex = 1;
            }
        } else if (KEY_IS(&key, "value")) {
            if (have_value) at->complex = 1;
            have_value = 1;
            if (any_value(s, &value) != OK) return BAIL;
        } else {
            if (key.escaped) at->complex = 1;
            if (skip_value(s) != OK) return BAIL;
        }
    }
    if (r != 0) return BAIL;
    if (!have_key || !have_value) {
        at->complex = 1; /* Python reports the KeyError */
    } else if (which >= 0) {
        at->given[which] = 1;
        at->values[which] = value; /* the last one wins, as in a dict */
    }
    return OK;
}

static int
attribute_list(Scan *s, Attributes *at)
{
    if (s->p < s->end && *s->p == 'n') return literal(s, "null", 4);
    if (s->p >= s->end || *s->p != '[') {
        at->complex = 1;
        return skip_value(s);
    }
    int count = 0, r;
    if (open_container(s, '[') != OK) return BAIL;
    while ((r = next_item(s, &count)) == 1) {
        if (s->p < s->end && *s->p == '{') {
            if (key_value(s, at) != OK) return BAIL;
        } else {
            at->complex = 1;
            if (skip_value(s) != OK) return BAIL;
        }
    }
    return r == 0 ? OK : BAIL;
}

/* ---- span ------------------------------------------------------------------------------ */

enum {
    S_TRACE, S_SPAN, S_PARENT, S_NAME, S_START, S_END, S_STATUS, S_ATTRIBUTES, S_EVENTS, S_FIELDS
};

typedef struct {
    int complex;
    int seen[S_FIELDS];
    int has_trace; Str trace;       /* 0 absent/null, 1 string */
    unsigned long long span_id, parent_id;
    int has_name; Str name;
    long long start, end;
    int error;
    Attributes at;
} Span;

/* A hex span id: "" or null -> 0; 1..16 hex digits -> value; anything else -> complex. */
static int
span_id(Scan *s, Span *span, unsigned long long *out)
{
    *out = 0;
    if (*s->p == 'n') return literal(s, "null", 4);
    if (*s->p != '"') {
        span->complex = 1;
        return skip_value(s);
    }
    Str str;
    if (string(s, &str) != OK) return BAIL;
    if (str.escaped || str.len > 16) {
        span->complex = 1;
        return OK;
    }
    unsigned long long v = 0;
    for (Py_ssize_t i = 0; i < str.len; i++) {
        int h = hexval(str.start[i]);
        if (h < 0) {
            span->complex = 1; /* base64, "0x...": parse_id in Python */
            return OK;
        }
        v = (v << 4) | (unsigned)h;
    }
    *out = v;
    return OK;
}

/* int(x or 0) of a time: a canonical integer string or JSON integer; "" and null are 0. */
static int
time_ns(Scan *s, Span *span, long long *out)
{
    *out = 0;
    if (*s->p == 'n') return literal(s, "null", 4);
    if (*s->p == '"') {
        Str str;
        if (string(s, &str) != OK) return BAIL;
        if (str.len == 0) return OK;
        if (!canonical_int(&str, out)) span->complex = 1;
        return OK;
    }
    if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9')) {
        int is_int;
        if (number(s, &is_int, out) != OK) return BAIL;
        if (!is_int) span->complex = 1;
        return OK;
    }
    span->complex = 1;
    return skip_value(s);
}

/* status.code in (2, "2", "STATUS_CODE_ERROR") */
static int
status(Scan *s, Span *span)
{
    if (*s->p == 'n') return literal(s, "null", 4);
    if (*s->p != '{') {
        span->complex = 1;
        return skip_value(s);
    }
    int count = 0, r, seen_code = 0;
    Str key;
    if (open_container(s, '{') != OK) return BAIL;
    while ((r = next_key(s, &count, &key)) == 1) {
        if (key.escaped) span->complex = 1;
        if (KEY_IS(&key, "code")) {
            if (seen_code) span->complex = 1;
            seen_code = 1;
            span->error = 0;
            if (*s->p == '"') {
                Str str;
                if (string(s, &str) != OK) return BAIL;
                if (str.escaped) span->complex = 1;
                else if ((str.len == 1 && str.start[0] == '2')
                         || (str.len == 17 && memcmp(str.start, "STATUS_CODE_ERROR", 17) == 0))
                    span->error = 1;
            } else if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9')) {
                int is_int;
                long long v;
                if (number(s, &is_int, &v) != OK) return BAIL;
                if (!is_int) span->complex = 1; /* 2.0 == 2 in Python */
                else if (v == 2) span->error = 1;
            } else if (*s->p == 't' || *s->p == 'f' || *s->p == 'n') {
                if (skip_value(s) != OK) return BAIL; /* never equal to 2 */
            } else {
                span->complex = 1;
                if (skip_value(s) != OK) return BAIL;
            }
        } else if (skip_value(s) != OK) {
            return BAIL;
        }
    }
    return r == 0 ? OK : BAIL;
}

static int
span_object(Scan *s, Span *span)
{
    int count = 0, r;
    Str key;
    memset(span, 0, sizeof(*span));
    if (open_container(s, '{') != OK) return BAIL;
    while ((r = next_key(s, &count, &key)) == 1) {
        int field = -1;
        if (key.escaped) span->complex = 1;
        else if (KEY_IS(&key, "traceId")) field = S_TRACE;
        else if (KEY_IS(&key, "spanId")) field = S_SPAN;
        else if (KEY_IS(&key, "parentSpanId")) field = S_PARENT;
        else if (KEY_IS(&key, "name")) field = S_NAME;
        else if (KEY_IS(&key, "startTimeUnixNano")) field = S_START;
        else if (KEY_IS(&key, "endTimeUnixNano")) field = S_END;
        else if (KEY_IS(&key, "status")) field = S_STATUS;
        else if (KEY_IS(&key, "attributes")) field = S_ATTRIBUTES;
        else if (KEY_IS(&key, "events")) field = S_EVENTS;
        if (field >= 0) {
            if (span->seen[field]) span->complex = 1; /* a duplicate: the last wins in Python */
            span->seen[field] = 1;
        }
        if (s->p >= s->end) return BAIL;
        int rc = OK;
        switch (field) {
        case S_TRACE:
        case S_NAME: {
            int *has = field == S_TRACE ? &span->has_trace : &span->has_name;
            Str *str = field == S_TRACE ? &span->trace : &span->name;
            *has = 0;
            if (*s->p == '"') {
                rc = string(s, str);
                *has = 1;
            } else if (*s->p == 'n') {
                rc = literal(s, "null", 4);
            } else {
                span->complex = 1;
                rc = skip_value(s);
            }
            break;
        }
        case S_SPAN: rc = span_id(s, span, &span->span_id); break;
        case S_PARENT: rc = span_id(s, span, &span->parent_id); break;
        case S_START: rc = time_ns(s, span, &span->start); break;
        case S_END: rc = time_ns(s, span, &span->end); break;
        case S_STATUS: rc = status(s, span); break;
        case S_ATTRIBUTES:
            memset(&span->at, 0, sizeof(span->at));
            rc = attribute_list(s, &span->at);
            break;
        case S_EVENTS:
            if (*s->p == 'n') {
                rc = literal(s, "null", 4);
            } else if (*s->p == '[') {
                const unsigned char *at = s->p + 1;
                while (at < s->end && (*at == ' ' || *at == '\n' || *at == '\r' || *at == '\t')) at++;
                if (at >= s->end || *at != ']') span->complex = 1; /* events: read in Python */
                rc = skip_value(s);
            } else {
                span->complex = 1;
                rc = skip_value(s);
            }
            break;
        default:
            rc = skip_value(s);
        }
        if (rc != OK) return BAIL;
    }
    return r == 0 ? OK : BAIL;
}

/* ---- decoding the attributes used ----------------------------------------------------- */

/* A JSON string's value as str (new reference); escapes decoded. string() validated it:
 * every \u escape here is a BMP code point or a surrogate pair. */
static PyObject *
make_str(const Str *str)
{
    if (!str->escaped) {
        return str->ascii ? PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, str->start, str->len)
                          : PyUnicode_DecodeUTF8((const char *)str->start, str->len, NULL);
    }
    /* decoded UTF-8 is never longer than the escaped text (\uXXXX: 6 bytes -> at most 3) */
    unsigned char *buffer = PyMem_Malloc(str->len ? str->len : 1), *out = buffer;
    if (buffer == NULL) return PyErr_NoMemory();
    const unsigned char *p = str->start, *end = p + str->len;
    while (p < end) {
        if (*p != '\\') {
            *out++ = *p++;
            continue;
        }
        switch (p[1]) {
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'u': {
            unsigned code = 0;
            for (int i = 2; i < 6; i++) code = code * 16 + (unsigned)hexval(p[i]);
            if (code >= 0xD800 && code <= 0xDBFF) { /* a pair (string() checked): 4 bytes */
                unsigned low = 0;
                for (int i = 8; i < 12; i++) low = low * 16 + (unsigned)hexval(p[i]);
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                *out++ = (unsigned char)(0xF0 | (code >> 18));
                *out++ = (unsigned char)(0x80 | ((code >> 12) & 0x3F));
                *out++ = (unsigned char)(0x80 | ((code >> 6) & 0x3F));
                *out++ = (unsigned char)(0x80 | (code & 0x3F));
                p += 12;
                continue;
            }
            if (code < 0x80) {
                *out++ = (unsigned char)code;
            } else if (code < 0x800) {
                *out++ = (unsigned char)(0xC0 | (code >> 6));
                *out++ = (unsigned char)(0x80 | (code & 0x3F));
            } else {
                *out++ = (unsigned char)(0xE0 | (code >> 12));
                *out++ = (unsigned char)(0x80 | ((code >> 6) & 0x3F));
                *out++ = (unsigned char)(0x80 | (code & 0x3F));
            }
            p += 6;
            continue;
        }
        default: *out++ = p[1]; /* " \\ / */
        }
        p += 2;
    }
    PyObject *result = PyUnicode_DecodeUTF8((const char *)buffer, out - buffer, NULL);
    PyMem_Free(buffer);
    return result;
}

/* A string attribute: 1 with *out (new) | 0 absent | -1 complex | FAIL via *err. */
static int
str_attr(const Value *v, PyObject **out)
{
    if (v->state == V_ABSENT) return 0;
    if (v->state != V_OBJECT || v->odd || v->members != 1 || v->has_str != 1) return -1;
    *out = make_str(&v->str);
    return *out ? 1 : -2;
}

/* An integer attribute: 1 with *out | 0 absent | -1 complex. */
static int
int_attr(const Value *v, long long *out)
{
    if (v->state == V_ABSENT) return 0;
    if (v->state != V_OBJECT || v->odd || v->members != 1 || v->has_int != 1) return -1;
    *out = v->int_value;
    return 1;
}

/* A key hash: 16+ hex digits -> the first 16; fewer -> (first 8) << 32 | rest; 0 -> 1. */
static int
hash_attr(const Value *v, unsigned long long *out)
{
    *out = 0;
    if (v->state == V_ABSENT) return 0;
    if (v->state != V_OBJECT || v->odd || v->members != 1 || v->has_str != 1 || v->str.escaped) return -1;
    const unsigned char *p = v->str.start;
    Py_ssize_t n = v->str.len;
    if (n == 0) return -1;
    unsigned long long value = 0;
    if (n >= 16) {
        for (int i = 0; i < 16; i++) {
            int h = hexval(p[i]);
            if (h < 0) return -1;
            value = (value << 4) | (unsigned)h;
        }
    } else {
        unsigned long long high = 0, low = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            int h = hexval(p[i]);
            if (h < 0) return -1;
            if (i < 8) high = (high << 4) | (unsigned)h;
            else low = (low << 4) | (unsigned)h;
        }
        value = (high << 32) | low;
    }
    *out = value ? value : 1;
    return 1;
}

/* v.get("boolValue") is True (1) / is False (2) / neither (0); -1: not an object (complex). */
static int
bool_attr(const Value *v)
{
    if (v->state == V_ABSENT) return 0;
    if (v->state != V_OBJECT || v->odd) return -1;
    return v->has_bool == 1 ? 1 : v->has_bool == 2 ? 2 : 0;
}

static PyObject *str_unknown_name, *str_empty; /* "?", "" */

static PyObject *
optional_ll(int have, long long value)
{
    if (have) return PyLong_FromLongLong(value);
    Py_RETURN_NONE;
}

/* The decode_span() tuple, or Py_None when the span must be decoded in Python (complex). */
static PyObject *
span_tuple(Span *span)
{
    Attributes *at = &span->at;
    Value *vals = at->values;
    static const Value absent = {0};
#define VAL(k) (at->given[k] ? &vals[k] : &absent)
    if (span->complex || at->complex || at->given[K_SUMMARY]) Py_RETURN_NONE;
    PyObject *name = NULL, *kind = NULL, *file = NULL, *names = NULL, *trace = NULL;
    long long line = 0, cpu_total = 0, cpu_self = 0, run = 0, thread = 0, size = 0, suspended = 0, awaits = 0;
    unsigned long long args = 0, ret = 0;
    int has_cpu_total, has_cpu_self, has_run, has_size, has_suspended = 0, has_awaits = 0;
    int r, unhashable, ret_hashable, method, identity;

    r = str_attr(VAL(K_FUNC), &name);
    if (r == -2) return NULL;
    if (r == -1) goto complex;
    if (r == 1 && PyUnicode_GET_LENGTH(name) == 0) Py_CLEAR(name);
    if (name == NULL) {
        if (span->has_name && span->name.len > 0) {
            name = make_str(&span->name);
            if (name == NULL) return NULL;
        } else {
            name = Py_NewRef(str_unknown_name);
        }
    }
    if ((r = str_attr(VAL(K_KIND), &kind)) == -2) goto error;
    if (r == -1) goto complex;
    if ((r = str_attr(VAL(K_FILE), &file)) == -2) goto error;
    if (r == -1) goto complex;
    if (int_attr(VAL(K_LINE), &line) < 0) goto complex;
    if ((has_cpu_total = int_attr(VAL(K_CPU_TOTAL), &cpu_total)) < 0) goto complex;
    if ((has_cpu_self = int_attr(VAL(K_CPU_SELF), &cpu_self)) < 0) goto complex;
    if ((has_run = int_attr(VAL(K_RUN), &run)) < 0) goto complex;
    if (int_attr(VAL(K_THREAD), &thread) < 0) goto complex;
    if (hash_attr(VAL(K_ARGS), &args) < 0) goto complex;
    if (hash_attr(VAL(K_RET), &ret) < 0) goto complex;
    if ((has_size = int_attr(VAL(K_SIZE), &size)) < 0) goto complex;
    if ((has_suspended = int_attr(VAL(K_SUSPENDED), &suspended)) < 0) goto complex;
    if (has_suspended && (has_awaits = int_attr(VAL(K_AWAITS), &awaits)) < 0) goto complex;
    if ((unhashable = bool_attr(VAL(K_ARGS_HASHABLE))) < 0) goto complex;
    unhashable = unhashable == 2;
    if (unhashable) {
        if ((r = str_attr(VAL(K_UNHASHABLE), &names)) == -2) goto error;
        if (r == -1) goto complex;
    }
    if ((ret_hashable = bool_attr(VAL(K_RET_HASHABLE))) < 0) goto complex;
    if ((method = bool_attr(VAL(K_METHOD))) < 0) goto complex;
    if ((identity = bool_attr(VAL(K_IDENTITY))) < 0) goto complex;
    if (span->has_trace && span->trace.len) {
        trace = make_str(&span->trace);
        if (trace == NULL) goto error;
    }
    PyObject *tuple = PyTuple_New(25);
    if (tuple == NULL) goto error;
#define SET(i, expr) do { PyObject *item_ = (expr); if (item_ == NULL) { Py_DECREF(tuple); goto error; } \
                          PyTuple_SET_ITEM(tuple, i, item_); } while (0)
    SET(0, name); name = NULL;
    SET(1, kind ? kind : Py_NewRef(str_empty)); kind = NULL;
    SET(2, file ? file : Py_NewRef(str_empty)); file = NULL;
    SET(3, PyLong_FromLongLong(line));
    SET(4, PyLong_FromLongLong(span->start));
    SET(5, PyLong_FromLongLong(span->end));
    SET(6, PyBool_FromLong(span->error || at->given[K_ERROR_TYPE]));
    SET(7, optional_ll(has_cpu_total, cpu_total));
    SET(8, optional_ll(has_cpu_self, cpu_self));
    SET(9, optional_ll(has_run, run));
    SET(10, PyLong_FromLongLong(thread & 0xFFFFFFFFLL));
    SET(11, PyLong_FromUnsignedLongLong(args));
    SET(12, PyLong_FromUnsignedLongLong(ret));
    SET(13, optional_ll(has_size, size));
    SET(14, optional_ll(has_suspended, suspended));
    SET(15, optional_ll(has_awaits, awaits));
    SET(16, PyBool_FromLong(unhashable));
    SET(17, names ? names : Py_NewRef(Py_None)); names = NULL;
    SET(18, PyBool_FromLong(ret_hashable == 2));
    SET(19, PyBool_FromLong(method == 1));
    SET(20, PyBool_FromLong(identity == 1));
    SET(21, PyLong_FromUnsignedLongLong(span->span_id));
    SET(22, trace ? trace : Py_NewRef(str_empty)); trace = NULL;
    SET(23, PyLong_FromUnsignedLongLong(span->parent_id));
    SET(24, Py_NewRef(Py_None));
#undef SET
    return tuple;
complex:
    Py_XDECREF(name);
    Py_XDECREF(kind);
    Py_XDECREF(file);
    Py_XDECREF(names);
    Py_XDECREF(trace);
    Py_RETURN_NONE;
error:
    Py_XDECREF(name);
    Py_XDECREF(kind);
    Py_XDECREF(file);
    Py_XDECREF(names);
    Py_XDECREF(trace);
    return NULL;
#undef VAL
}

/* ---- structure: request > resourceSpans > scopeSpans > spans --------------------------- */

/* An object value kept as raw JSON: *out = its bytes (new) or NULL for null; *empty for {}. */
static int
raw_object(Scan *s, PyObject **out, int *empty)
{
    *out = NULL;
    *empty = 1;
    if (*s->p == 'n') return literal(s, "null", 4);
    if (*s->p != '{') return BAIL; /* Python reports it (or treats a falsy value its own way) */
    const unsigned char *start = s->p, *q = s->p + 1;
    while (q < s->end && (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t')) q++;
    *empty = q < s->end && *q == '}';
    if (skip_object(s) != OK) return BAIL;
    *out = PyBytes_FromStringAndSize((const char *)start, s->p - start);
    return *out ? OK : FAIL;
}

static int
spans_list(Scan *s, PyObject *out)
{
    if (*s->p == 'n') return literal(s, "null", 4);
    int count = 0, r;
    if (open_container(s, '[') != OK) return BAIL;
    Span span;
    while ((r = next_item(s, &count)) == 1) {
        const unsigned char *start = s->p;
        if (*s->p != '{' || span_object(s, &span) != OK) return BAIL;
        PyObject *item = span_tuple(&span);
        if (item == NULL) return FAIL;
        if (item == Py_None) {
            Py_DECREF(item);
            item = PyBytes_FromStringAndSize((const char *)start, s->p - start);
            if (item == NULL) return FAIL;
        }
        int failed = PyList_Append(out, item);
        Py_DECREF(item);
        if (failed) return FAIL;
    }
    return r == 0 ? OK : BAIL;
}

/* One scopeSpans entry -> (scope bytes or None, [span, ...]) */
static int
scope_block(Scan *s, PyObject **out)
{
    int count = 0, r, rc = OK, seen_scope = 0, seen_library = 0, seen_spans = 0;
    int scope_empty = 1, library_empty = 1;
    PyObject *scope = NULL, *library = NULL, *spans = PyList_New(0);
    Str key;
    *out = NULL;
    if (spans == NULL) return FAIL;
    if (open_container(s, '{') != OK) {
        rc = BAIL;
        goto done;
    }
    while ((r = next_key(s, &count, &key)) == 1) {
        if (KEY_IS(&key, "scope")) {
            if (seen_scope++) { rc = BAIL; goto done; }
            rc = raw_object(s, &scope, &scope_empty);
        } else if (KEY_IS(&key, "instrumentationLibrary")) {
            if (seen_library++) { rc = BAIL; goto done; }
            rc = raw_object(s, &library, &library_empty);
        } else if (KEY_IS(&key, "spans")) {
            if (seen_spans++) { rc = BAIL; goto done; }
            rc = spans_list(s, spans);
        } else if (key.escaped) {
            rc = BAIL;
        } else {
            rc = skip_value(s);
        }
        if (rc != OK) goto done;
    }
    if (r != 0) {
        rc = BAIL;
        goto done;
    }
    /* block.get("scope") or block.get("instrumentationLibrary") */
    PyObject *chosen = scope && !scope_empty ? scope : library && !library_empty ? library : Py_None;
    *out = PyTuple_Pack(2, chosen, spans);
    rc = *out ? OK : FAIL;
done:
    Py_XDECREF(scope);
    Py_XDECREF(library);
    Py_DECREF(spans);
    return rc;
}

/* A list of objects, each parsed by item(); null is an empty list; 1 in *nonempty if any. */
static int
object_list(Scan *s, PyObject **out, int (*item)(Scan *, PyObject **))
{
    *out = PyList_New(0);
    if (*out == NULL) return FAIL;
    if (*s->p == 'n') return literal(s, "null", 4);
    int count = 0, r;
    if (open_container(s, '[') != OK) return BAIL;
    while ((r = next_item(s, &count)) == 1) {
        PyObject *entry;
        if (*s->p != '{') return BAIL;
        int rc = item(s, &entry);
        if (rc != OK) return rc;
        rc = PyList_Append(*out, entry);
        Py_DECREF(entry);
        if (rc) return FAIL;
    }
    return r == 0 ? OK : BAIL;
}

/* One resourceSpans entry -> (resource bytes or None, [(scope, spans), ...]) */
static int
resource_spans(Scan *s, PyObject **out)
{
    int count = 0, r, rc = OK, seen_resource = 0, empty;
    PyObject *resource = NULL, *scopes = NULL, *library = NULL;
    Str key;
    *out = NULL;
    if (open_container(s, '{') != OK) return BAIL;
    while ((r = next_key(s, &count, &key)) == 1) {
        if (KEY_IS(&key, "resource")) {
            if (seen_resource++) { rc = BAIL; goto done; }
            rc = raw_object(s, &resource, &empty);
        } else if (KEY_IS(&key, "scopeSpans")) {
            if (scopes) { rc = BAIL; goto done; }
            rc = object_list(s, &scopes, scope_block);
        } else if (KEY_IS(&key, "instrumentationLibrarySpans")) {
            if (library) { rc = BAIL; goto done; }
            rc = object_list(s, &library, scope_block);
        } else if (key.escaped) {
            rc = BAIL;
        } else {
            rc = skip_value(s);
        }
        if (rc != OK) goto done;
    }
    if (r != 0) {
        rc = BAIL;
        goto done;
    }
    { /* rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or () */
        PyObject *blocks = scopes && PyList_GET_SIZE(scopes) ? scopes
                         : library && PyList_GET_SIZE(library) ? library : NULL;
        PyObject *none_or_empty = blocks ? NULL : PyList_New(0);
        if (!blocks && !none_or_empty) {
            rc = FAIL;
            goto done;
        }
        *out = PyTuple_Pack(2, resource ? resource : Py_None, blocks ? blocks : none_or_empty);
        Py_XDECREF(none_or_empty);
        rc = *out ? OK : FAIL;
    }
done:
    Py_XDECREF(resource);
    Py_XDECREF(scopes);
    Py_XDECREF(library);
    return rc;
}

static PyObject *
scan_request(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Scan s = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len, 0};
    PyObject *resources = NULL;
    int count = 0, r, rc = BAIL;
    Str key;
    ws(&s);
    if (s.p >= s.end || open_container(&s, '{') != OK) goto done;
    while ((r = next_key(&s, &count, &key)) == 1) {
        if (KEY_IS(&key, "resourceSpans")) {
            if (resources) { rc = BAIL; goto done; }
            rc = object_list(&s, &resources, resource_spans);
        } else if (key.escaped) {
            rc = BAIL;
        } else {
            rc = skip_value(&s);
        }
        if (rc != OK) goto done;
    }
    rc = BAIL;
    if (r != 0 || resources == NULL) goto done;
    ws(&s);
    if (s.p != s.end) goto done; /* trailing data: not one JSON document */
    rc = OK;
done:
    PyBuffer_Release(&view);
    if (rc == OK) return resources;
    Py_XDECREF(resources);
    if (rc == FAIL) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan_request", scan_request, METH_O,
     "scan_request(line) -> [(resource, [(scope, spans)])] or None: see _otlpscan.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "callspan.analysis._otlpscan",
    "The analyzer's compiled OTLP JSON request reader (optional; the Python reader is the reference).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__otlpscan(void)
{
    for (int i = 0; i < K_COUNT; i++) KEY_LENGTHS[i] = strlen(KEY_NAMES[i]);
    str_unknown_name = PyUnicode_InternFromString("?");
    str_empty = PyUnicode_InternFromString("");
    if (str_unknown_name == NULL || str_empty == NULL) return NULL;
    return PyModule_Create(&module_def);
}
