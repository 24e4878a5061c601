/* The hot path's wall clock: CLOCK_MONOTONIC's nanoseconds, read from the CPU's time-stamp
 * counter where the kernel itself keeps time with it.
 *
 * Every traced call reads the clock twice; through the vDSO a read costs ~27 ns here (a serialised
 * rdtsc, a seqlock and a scaling), a fifth of a call-heavy run's time. Where the kernel's
 * clocksource is "tsc" (it found the counter invariant and synchronised across CPUs), the hot path
 * reads the counter itself (~16 ns) and scales it:
 *
 *   ns = anchor.ns + (rdtsc() - anchor.tsc) * mult >> 32
 *
 * Each thread re-anchors on CLOCK_MONOTONIC every 0.25 ms of counter time (TSC_WINDOW_NS), so a
 * reading is never further from CLOCK_MONOTONIC than an anchor's error (a pair read within
 * TSC_PAIR_GOOD_TICKS: ~70 ns) plus the scale's over 0.25 ms (NTP slews CLOCK_MONOTONIC by up to
 * 500 ppm: ~125 ns at worst, far less when the clock is in step). The scale is
 * measured, not taken from the CPU: the monotonic time over the counter ticks since the module was
 * loaded (TSC_MIN_BASELINE_NS at least), refined at every re-anchor, so its error shrinks as the
 * baseline grows (~5e-5 at 1 ms, ~5e-8 after a second). Measured here: readings inside the
 * perf_counter_ns readings around them, by 30-45 ns. A thread's readings never decrease: a re-anchor takes the later of
 * CLOCK_MONOTONIC and the old anchor's extrapolation.
 *
 * Anywhere else (another clocksource, another architecture, a file that cannot be read) the hot
 * path reads CLOCK_MONOTONIC as before. Everything runs with the GIL held (the globals are the
 * process's; the anchors are per thread). */
#include "_callspan.h"
#include <string.h>

#define TSC_WINDOW_NS 250000LL       /* re-anchor after this much counter time */
#define TSC_MIN_BASELINE_NS 1000000LL /* the first scale is measured over at least this */
#define TSC_PAIR_GOOD_TICKS 300ULL   /* a (counter, monotonic) pair read within this is kept */
#define TSC_PAIR_ATTEMPTS 16

int cs_tsc_on;
uint64_t cs_tsc_mult;   /* ns per tick, << 32 */
uint64_t cs_tsc_window; /* ticks per TSC_WINDOW_NS */
__thread CsTscAnchor cs_tsc_anchor __attribute__((tls_model("initial-exec")));

static uint64_t base_tsc;
static long long base_ns;

#if CS_HAVE_TSC
/* A counter reading and CLOCK_MONOTONIC at the same moment: the monotonic clock read between two
 * counter readings, paired with their middle. Its error is at most half their distance (an
 * interrupt, a preemption or a slow first read in between widens it): the closest of up to
 * TSC_PAIR_ATTEMPTS tries, stopping at one within TSC_PAIR_GOOD_TICKS (~150 ns at 2 GHz; a pair
 * takes ~50 ns here). */
static void
read_pair(uint64_t *tsc, long long *ns)
{
    uint64_t best = UINT64_MAX;
    for (int attempt = 0; attempt < TSC_PAIR_ATTEMPTS; attempt++) {
        uint64_t before = __rdtsc();
        long long mono = cs_monotonic_ns();
        uint64_t after = __rdtsc();
        uint64_t spread = after - before;
        if (spread < best) {
            best = spread;
            *tsc = before + spread / 2;
            *ns = mono;
        }
        if (spread <= TSC_PAIR_GOOD_TICKS)
            break;
    }
}

/* The scale from the baseline (base_tsc, base_ns) to (tsc, ns). */
static void
rescale(uint64_t tsc, long long ns)
{
    uint64_t ticks = tsc - base_tsc;
    long long elapsed = ns - base_ns;
    if ((int64_t)ticks <= 0 || elapsed <= 0) {
        /* the counter went back (or stood still) against the baseline, e.g. on a virtual
         * machine moved to another host: measure from here on, keeping the scale meanwhile */
        base_tsc = tsc;
        base_ns = ns;
        return;
    }
    cs_tsc_mult = (uint64_t)(((unsigned __int128)(uint64_t)elapsed << 32) / ticks);
    if (cs_tsc_mult == 0)
        cs_tsc_mult = 1;
    cs_tsc_window = (uint64_t)(((unsigned __int128)TSC_WINDOW_NS << 32) / cs_tsc_mult);
}
#endif

/* The slow path of cs_clock_ns: a thread's first reading, or its anchor's window has passed.
 * ``now``: the counter reading the fast path took. */
long long
cs_tsc_reanchor(uint64_t now)
{
#if CS_HAVE_TSC
    CsTscAnchor *anchor = &cs_tsc_anchor;
    uint64_t tsc;
    long long ns;
    read_pair(&tsc, &ns);
    if (cs_tsc_mult == 0) {
        /* the first reading of the process: measure the scale over TSC_MIN_BASELINE_NS (busy, at
         * most 1 ms once, when the first traced call comes that soon after the module loaded) */
        while (ns - base_ns < TSC_MIN_BASELINE_NS || (int64_t)(tsc - base_tsc) <= 0) {
            if ((int64_t)(tsc - base_tsc) <= 0 || ns < base_ns) { /* not a usable baseline: anew */
                base_tsc = tsc;
                base_ns = ns;
            }
            read_pair(&tsc, &ns);
        }
    }
    rescale(tsc, ns);
    if (anchor->tsc != 0) {
        /* Never before a reading this thread may already have returned: the old anchor's
         * readings end with its window, so extrapolate it to the window's end at most (across a
         * longer pause the scale's error would accumulate into an anchor ahead of the clock). */
        uint64_t since = tsc - anchor->tsc;
        if (since > cs_tsc_window)
            since = cs_tsc_window;
        long long last = anchor->ns + (long long)(((unsigned __int128)since * cs_tsc_mult) >> 32);
        if (last > ns && last - ns < TSC_WINDOW_NS)
            ns = last;
    }
    anchor->tsc = tsc;
    anchor->ns = ns;
    if (now < tsc)
        return ns;
    return ns + (long long)(((unsigned __int128)(now - tsc) * cs_tsc_mult) >> 32);
#else
    (void)now;
    return cs_monotonic_ns();
#endif
}

/* Reads the kernel's clocksource; 1 when it is the counter. */
static int
kernel_keeps_time_by_tsc(void)
{
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    if (f == NULL)
        return 0;
    char name[32] = {0};
    int ok = fgets(name, sizeof name, f) != NULL;
    fclose(f);
    return ok && strcmp(name, "tsc\n") == 0;
}

const char *
cs_clock_source(void)
{
    return cs_tsc_on ? "tsc" : "monotonic";
}

void
cs_clock_init(void)
{
#if CS_HAVE_TSC
    if (kernel_keeps_time_by_tsc()) {
        read_pair(&base_tsc, &base_ns);
        cs_tsc_mult = 0;
        cs_tsc_on = 1;
    }
#endif
}

/* clock_ns(): the hot path's clock, for Python code that compares times with the hot path's. */
PyObject *
cs_py_clock_ns(PyObject *module, PyObject *unused)
{
    return PyLong_FromLongLong(cs_clock_ns());
}

/* clock_source(): "tsc" or "monotonic". */
PyObject *
cs_py_clock_source(PyObject *module, PyObject *unused)
{
    return PyUnicode_FromString(cs_clock_source());
}
