"""Cache opportunities: LRU hit ratios at every cache size, in one pass per function.

For each (process, function) the calls are replayed in start order as accesses to an LRU cache
keyed by ``callspan.args.hash``. Mattson's stack algorithm gives each access its *stack
distance* (1 + the number of distinct other keys used since the previous use of its key): an
LRU cache of size N hits exactly the accesses whose distance is <= N, so one histogram of
distances is the hit count at every size at once. For up to ``MTF_MAX_KEYS`` distinct keys the
distances come from an explicit LRU stack of byte codes (searched and moved in C); beyond, from a
Fenwick tree over access positions marking the latest use of each key: O(log gap) per access.

Modelled like ``functools.lru_cache``: a call that raised, or whose arguments could not be keyed,
is a miss and does not enter the cache; every other call is a hit if its key is cached and is
then the most recent entry, or a miss that inserts its key (evicting the least recent).

Sampled summaries: summarised calls may be key-sampled (``callspan.sample_rate`` R < 1): the
tracer lists a call iff ``int(args_hash[:8], 16) < R * 2**32`` (``key_sampled``: the high 32 bits of
the 64-bit key; rates are powers of two, so a smaller rate keeps a subset of a larger one's keys).
Estimates then come from one of two replays:
- ``shards``: the whole function filtered at its smallest R (SHARDS): the sampled distance d
  stands for size d/R, counts scale by (keyed calls / sampled calls), distinct keys by 1/R. Only
  as good as the number of sampled keys, so used when at least ``SHARDS_MIN_KEYS`` distinct keys
  survive the filter;
- ``listed``: otherwise (few distinct keys, e.g. a recursive function of one small int), every
  call that is known one by one is replayed, sizes unscaled, counts scaled by all calls / replayed
  calls; the unlisted calls are assumed to behave like the listed ones.

The replay is of the traced (uncached) program: for a recursive function, calls nested inside a
call that would have hit would not happen at all with the cache. Savings count the cost of such
nested hits once (inside their outermost hit, same thread, synchronous functions); hit ratios
are reported as replayed.

Identity keys: when ``self`` hashes by identity (``callspan.args.identity``), a key means "this
object" only while it lives; a new object at a freed one's address gets the same key, so a key
returning different values is counted as an identity key collision, not as inconsistency. Such
functions get the ``method`` advice and are never recommended.

Purity: a key whose returns differ by value makes the function inconsistent; when at most
``MOSTLY_CONSISTENT`` of its keys do, it is ``mostly_consistent`` (ranked, with the share shown).
Returns that differ only by being new objects hashed by identity (iterators, generators, objects
without value equality) are not impurity: the function ``fresh_object`` (not cacheable as is), and
its callers unaffected. A function that calls an inconsistent function, directly or through other
traced functions, in the logical call graph (parent span links, the aggregates' call tree) stays
ranked by its savings with a caveat naming the callee and the share of its keys that differed
(``calls_impure``): caching it would skip those calls. Caveated advice never has a paste line.

Schema v2 aggregates (``Model.profiles``): the tracer already kept, per function and process, the
LRU stack distance of every keyed call (the number of distinct other keys since the key's last
call: a hit of a cache of size s iff distance < s, i.e. Mattson distance distance + 1 <= s) with
the hits' CPU and wall, the distinct keys, the keys that returned different values and the
in-flight overlaps, scaled by 1/rate where it sampled keys (SHARDS). ``aggregate_result`` makes
the ``ProcessResult`` of such a function from those, with no replay; its spans are examples. The
call graph for impurity then includes the call tree's parent -> child functions.
"""

from __future__ import annotations

import functools
import math
import time
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

from callspan.analysis.model import (
    F_ERROR,
    F_IDENTITY,
    F_NO_ARGS,
    F_SUMMARY,
    S_CPU_CALLS,
    S_CPU_SELF,
    S_CPU_TOTAL,
    S_ERRORS,
    S_IDENTITY,
    S_METHOD,
    S_RET_SIZE,
    S_RET_SIZE_N,
    S_RET_UNHASHABLE,
    S_SUM_ERRORS,
    S_WALL,
    CallColumns,
    CallSource,
    FunctionInfo,
    Model,
)
from callspan.analysis.profile import ProfileCache, ProfileData

TWO32 = 1 << 32
SHARDS_MIN_KEYS = 64  # fewer sampled distinct keys than this: replay the listed calls instead
# Functions with at most this many distinct keys get their distances from an explicit LRU stack
# of byte codes (``_mtf_distances``); more keys, from a Fenwick tree (``_fenwick_distances``).
MTF_MAX_KEYS = 2048  # the worst case (every access at the largest distance) costs about a Fenwick replay
MTF_CODES = 1 << 14  # distinct keys that two-byte codes can tell apart
# flags byte -> 1 when a call with these flags is replayed (did not raise, has a key)
_REPLAYABLE = bytes(0 if flags & (F_ERROR | F_NO_ARGS) else 1 for flags in range(256))
DEFAULT_MAXSIZE = 128  # functools.lru_cache's default
# Worth it by the function's own economics (``_advise``): a call must cost at least
# ``CacheOptions.min_cost_ratio`` times a cache hit (functools.lru_cache's lookup, measured on
# this machine by ``measure_lookup_cost``), and caching it must save at least
# ``CacheOptions.min_saved_ns`` (CPU ns, or wall ns without a CPU counter in ns).
MIN_COST_RATIO = 2.0
MIN_SAVED_NS = 1_000_000  # 1 ms
LOOKUP_ITERATIONS = 10_000  # calls per timing
LOOKUP_REPEATS = 5  # timings per variant; the fastest is kept (the least disturbed)

ADVICE_KINDS = ("lru_cache", "lru_cache_convert_args", "method", "async_cache", "inflight_coalescing",
                "mostly_consistent", "mutable_return", "calls_impure", "inconsistent", "fresh_object", "not_cacheable",
                "closure", "callees_unknown", "returns_none", "not_worth_it")
NOT_RECOMMENDED = ("inconsistent", "fresh_object", "not_cacheable", "method", "closure", "slow_hash")
# The kind the tracer gives a value it stopped hashing for a function because the function's user
# __hash__ calls passed its bound ("Name:slow-hash": callspan.tracer.keys.USER_HASH_MAX_NS).
SLOW_HASH_KIND = "slow-hash"
# Protocol methods that act on their object (initialise, change or advance it): a cache would skip
# that for every repeated key, whatever they return.
STATEFUL_PROTOCOL = frozenset({
    "__init__", "__post_init__", "__init_subclass__", "__set_name__", "__setattr__", "__delattr__", "__setitem__",
    "__delitem__", "__set__", "__delete__", "__enter__", "__exit__", "__aenter__", "__aexit__", "__iter__",
    "__aiter__", "__next__", "__anext__", "__del__"})
# Protocol methods a cache key needs: functools.lru_cache hashes its arguments, self included, so
# a cached __hash__ calls itself until RecursionError, whatever its hit ratio.
KEY_PROTOCOL = frozenset({"__hash__"})
# Ranked by savings with a caveat the user must weigh; never given a paste line.
CAVEATED = ("mostly_consistent", "mutable_return", "calls_impure", "callees_unknown", "returns_none")
# The report's tiers, in order: each is ranked by savings on its own (its own table, its own top N).
# Clean advice can be applied as said (a paste line, or a conversion the text spells out); caveated
# advice needs the user's judgement first, however large its savings; then the rest.
TIERS = ("recommended", "caveated", "not_worth_it", "not_recommended")


def tier(kind: str) -> str:
    """The report tier of an advice kind (``TIERS``)."""
    if kind in NOT_RECOMMENDED:
        return "not_recommended"
    if kind == "not_worth_it":
        return "not_worth_it"
    return "caveated" if kind in CAVEATED else "recommended"


# At most this share of a function's keys returned different values: "mostly consistent", ranked
# with the share shown (a cache would return stale values for those keys); above it, inconsistent.
MOSTLY_CONSISTENT = 0.05
# What to convert an unhashable argument to before caching, by type.
HASHABLE_FORM = {"list": "a tuple", "set": "a frozenset", "dict": "a frozenset of its items (or a sorted tuple)",
                 "bytearray": "bytes"}


@dataclass(frozen=True, slots=True)
class LookupCost:
    """What a hit of ``functools.lru_cache`` costs here: wall ns per call of the cached wrapper
    (key built from the arguments, dict lookup, LRU link update), the loop's own cost subtracted."""

    one_arg_ns: float  # f(1)
    three_args_ns: float  # f(1, 2, 3)
    iterations: int
    repeats: int
    source: str = "measured"  # or "option" (CacheOptions.lookup_ns)

    @property
    def ns(self) -> float:
        """The reference cost a call is judged against: the larger (three arguments)."""
        return max(self.one_arg_ns, self.three_args_ns)


def _time_lookups(iterations: int, repeats: int) -> tuple[float, float]:
    """Wall ns per hit of an ``lru_cache`` wrapper called with (1) and with (1, 2, 3): the whole
    call as a caller pays it instead of the function's, minus the bare loop's own cost."""
    perf = time.perf_counter_ns

    @functools.lru_cache(maxsize=DEFAULT_MAXSIZE)
    def one(a: int) -> int:
        return a

    @functools.lru_cache(maxsize=DEFAULT_MAXSIZE)
    def three(a: int, b: int, c: int) -> int:
        return a

    one(1)
    three(1, 2, 3)
    loop = range(iterations)
    empty = first = third = math.inf
    for _ in range(repeats):
        t = perf()
        for _ in loop:
            pass
        empty = min(empty, perf() - t)
        t = perf()
        for _ in loop:
            one(1)
        first = min(first, perf() - t)
        t = perf()
        for _ in loop:
            three(1, 2, 3)
        third = min(third, perf() - t)
    return max(1.0, (first - empty) / iterations), max(1.0, (third - empty) / iterations)


@functools.cache
def measure_lookup_cost(iterations: int = LOOKUP_ITERATIONS, repeats: int = LOOKUP_REPEATS) -> LookupCost:
    """Time an ``lru_cache`` hit with one int argument and with three (``time.perf_counter_ns``,
    ``repeats`` timings of ``iterations`` calls, the fastest kept). Once per process: a few ms."""
    one, three = _time_lookups(iterations, repeats)
    return LookupCost(one, three, iterations, repeats)


def key_sampled(key: int, rate: float) -> bool:
    """The tracer's key-sampling rule on a 64-bit key from ``parse_hash``.

    The tracer lists a summarised call iff ``int(args_hash[:8], 16) < rate * 2**32``; the high 32
    bits of the key are exactly ``int(args_hash[:8], 16)``. Calls without an args hash (key 0)
    are never listed.
    """
    return key != 0 and (key >> 32) < rate * TWO32


def lru_histogram(keys: Iterable[int]) -> tuple[list[int], int]:
    """Stack-distance histogram of ``keys`` (hist[d] = accesses at distance d) and the cold misses.

    hits(N) == sum(hist[1:N+1]) for an LRU cache of N entries. A standalone, key-only version of
    what ``analyze_calls`` does, for tests and tools.
    """
    distances = _fenwick_distances(list(keys))
    hist = [0] * (len(distances) + 2)
    for d in distances:
        hist[d] += 1
    cold = hist[0]
    hist[0] = 0
    return hist, cold


def _fenwick_distances(keys: Sequence[int]) -> list[int]:
    """Stack distance of each access in ``keys`` (0 = first use of its key): O(log gap) each."""
    replay = StackDistances(mtf_max_keys=-1)
    return replay.feed(keys)


def _mtf_distances(keys: Sequence[int], distinct: dict[int, None]) -> list[int]:
    """The same distances as ``_fenwick_distances``, from an explicit LRU stack (``StackDistances``)."""
    count = len(distinct)
    if count > MTF_CODES:
        raise ValueError(f"{count} distinct keys: more than {MTF_CODES}")
    replay = StackDistances(mtf_max_keys=MTF_CODES)
    return replay.feed(keys)


class StackDistances:
    """Stack distances of a stream of keys fed in blocks; memory grows with distinct keys only.

    Up to ``mtf_max_keys`` distinct keys, an explicit LRU stack in a bytearray: each key gets a
    code of one byte (up to 256 keys) or two (a first byte >= 0x80 and a second < 0x80, so a
    search can only match at a code boundary), the stack holds the codes, least recent first, and
    finding a key's code (searching backwards from the most recent end) and moving it to the end
    are byte searches and moves in C. Beyond, a Fenwick tree over access positions marking each
    key's latest use: O(log gap) per access; when positions run past the tree, the live keys are
    renumbered 1..D in recency order (so the tree stays about twice the distinct keys).
    """

    def __init__(self, mtf_max_keys: int | None = None) -> None:
        self.mtf_max_keys = min(MTF_CODES, MTF_MAX_KEYS if mtf_max_keys is None else mtf_max_keys)
        self.codes: dict[int, int] = {}  # key -> code, in order of first use (move-to-front mode)
        self.keys_by_code: list[int] = []
        self.stack = bytearray()
        self.width = 1  # bytes per code
        self.fenwick = self.mtf_max_keys < 0
        self.last: dict[int, int] = {}  # key -> position of its latest use (Fenwick mode)
        self.tree: list[int] = [0, 0]
        self.size = 1
        self.position = 0

    @property
    def distinct(self) -> int:
        return len(self.last) if self.fenwick else len(self.codes)

    def feed(self, keys: Sequence[int]) -> list[int]:
        """Distances of the accesses ``keys`` (0 = first use of the key), continuing the stream."""
        if not self.fenwick:
            codes = self.codes
            for key in dict.fromkeys(keys):
                if key not in codes:
                    codes[key] = len(codes)
                    self.keys_by_code.append(key)
            if len(codes) > self.mtf_max_keys:
                self._to_fenwick()
            else:
                return self._feed_mtf(keys)
        return self._feed_fenwick(keys)

    def _feed_mtf(self, keys: Sequence[int]) -> list[int]:
        out: list[int] = []
        put = out.append
        count = len(self.codes)
        if count > 256 and self.width == 1:
            self.stack = bytearray(b"".join(self._pair(code) for code in self.stack))
            self.width = 2
        stack = self.stack
        find = stack.rindex
        fresh = len(stack) // self.width  # codes below ``fresh`` are in the stack: used before
        codes = map(self.codes.__getitem__, keys)
        # One loop per code width keeps the per-access work free of branches on it.
        if self.width == 1:
            push = stack.append
            for code in codes:
                if code < fresh:
                    i = find(code)
                    put(fresh - i)
                    del stack[i]
                else:
                    fresh += 1
                    put(0)
                push(code)
        else:
            pairs = [self._pair(code) for code in range(count)]
            extend = stack.extend
            for code in codes:
                pair = pairs[code]
                if code < fresh:
                    i = find(pair)
                    put(fresh - (i >> 1))
                    del stack[i:i + 2]
                else:
                    fresh += 1
                    put(0)
                extend(pair)
        return out

    @staticmethod
    def _pair(code: int) -> bytes:
        return bytes((0x80 | (code >> 7), code & 0x7F))

    def _to_fenwick(self) -> None:
        """Switch to the Fenwick tree; the stack's keys get positions 1..D, least recent first."""
        if self.width == 1:
            used = list(self.stack)
        else:
            s = self.stack
            used = [((s[i] & 0x7F) << 7) | s[i + 1] for i in range(0, len(s), 2)]
        self.last = {self.keys_by_code[code]: position for position, code in enumerate(used, 1)}
        self.codes = {}
        self.keys_by_code = []
        self.stack = bytearray()
        self.fenwick = True
        self._renumber(0)

    def _renumber(self, room: int) -> None:
        """Give the live keys positions 1..D in recency order, in a tree with ``room`` more."""
        last = self.last
        live = len(last)
        if live:
            for position, key in enumerate(sorted(last, key=last.__getitem__), 1):
                last[key] = position
        size = 1
        while size < 2 * live + room + 1:
            size <<= 1
        # Node j counts the marked positions in (j - lowbit(j), j]; positions 1..D are marked.
        self.tree = [0] + [max(0, min(j, live) - (j - (j & -j))) for j in range(1, size + 1)]
        self.size = size
        self.position = live

    def _feed_fenwick(self, keys: Sequence[int]) -> list[int]:
        if self.position + len(keys) > self.size:
            self._renumber(len(keys))
        tree = self.tree
        size = self.size
        last = self.last
        out = [0] * len(keys)
        position = self.position
        for n, key in enumerate(keys):
            position += 1
            p = last.get(key)
            last[key] = position
            if p is None:
                j = position
                while j <= size:
                    tree[j] += 1
                    j += j & -j
            else:
                out[n] = _distance_and_move(tree, p, position)
        self.position = position
        return out


def _distance_and_move(tree: list[int], p: int, i: int) -> int:
    """Distance of an access at position i whose key was last used at p; moves the mark p -> i."""
    # Marks strictly between p and i: prefix(i-1) - prefix(p), walking both down until they meet.
    a = i - 1
    b = p
    s = 0
    while a != b:
        if a > b:
            s += tree[a]
            a &= a - 1
        else:
            s -= tree[b]
            b &= b - 1
    # Unmark p along its update path up to the first node that also covers i, then mark i
    # along its path up to that node (from there on, -1 and +1 cancel).
    j = p
    while j < i:
        tree[j] -= 1
        j += j & -j
    meet = j
    j = i
    while j < meet:
        tree[j] += 1
        j += j & -j
    return s + 1


@dataclass(slots=True)
class ProcessResult:
    """One function in one process."""

    function: int  # index into Model.functions
    process: int
    calls: int
    accesses: int  # calls replayed (after SHARDS filtering), unscaled
    sample_rate: float
    estimator: str  # "exact", "shards", "listed" or "tracer_shards" (v2 aggregates, keys sampled)
    count_scale: float  # estimated calls per replayed call
    size_scale: float  # cache size per replayed stack distance
    distinct_keys: float
    hits_unbounded: float
    steps: list[tuple[int, float]]  # (cache size, extra hits from that size on), ascending
    inconsistent_keys: int
    overlapping: int
    identity_collisions: int = 0  # keys with different returns whose self was hashed by identity
    # (stack distance, CPU, wall) of the hits, summed per distance, unscaled: a cache of N entries
    # saves the sum over distances <= N / size_scale. Negative entries take back the cost of a
    # hit nested (same thread, synchronous) in a hit at that distance or above: it is part of
    # the outer call's cost.
    saved_by_distance: list[tuple[int, float, float]] = field(default_factory=list, repr=False)
    hits_by_distance: list[tuple[int, float]] = field(default_factory=list, repr=False)
    # From v2 aggregates ("aggregates") rather than a replay of calls ("spans"); the fields below
    # are set for aggregates only (for spans they are in the function's stats).
    source: str = "spans"
    errors: int = 0
    cpu_total: int = 0  # total CPU of its calls (from the call tree)
    wall_total: int = 0  # total wall time of its calls, ns (from the function table)
    cpu_calls: int = 0  # calls with CPU data
    unhashable_calls: int = 0
    unhashable_types: list[str] = field(default_factory=list)
    fresh_keys: float = 0.0  # keys whose returns differed only by new objects (hashed by identity)
    cheap_ns: int = 0  # aggregates: the tracer stopped keying it, its calls taking this many ns on average
    shadowed_calls: int = 0  # aggregates: recursive calls nested in a hit, left out (memoized sequence)
    unhashable_returns: int = 0  # aggregates: returned values hash() refused
    none_returns: int = 0  # aggregates: calls that returned None
    keyed_calls: int = 0  # aggregates: calls with a key (unsampled; none_returns counts among them)

    def hits_at(self, size: int) -> float:
        return sum(h for s, h in self.steps if s <= size)


def analyze_calls(function: int, info: FunctionInfo, calls: CallSource | CallColumns,
                  identity: bool | None = None) -> ProcessResult:
    """Replay one function's calls (one process) through every LRU size at once.

    ``calls`` are streamed in start order (``CallSource.blocks``); what is kept grows with the
    distinct keys, not with the calls. ``identity``: whether ``self`` is hashed by identity in
    calls that cannot say so themselves (summarised calls); default: whether any of this
    function's spans here said so.
    """
    source = calls if isinstance(calls, CallSource) else CallSource("", [], calls)
    n = len(source)
    rate = info.sample_rate if 0 < info.sample_rate < 1 else 1.0
    estimator = "exact"
    count_scale = size_scale = 1.0
    threshold = 0.0  # key_sampled() inlined, when > 0
    if rate < 1:
        threshold = rate * TWO32
        unkeyed = sampled_calls = 0
        sampled_keys: set[int] = set()
        for piece in source.pieces():
            unkeyed += piece.args.count(0)
            sampled = [key for key in piece.args if key and (key >> 32) < threshold]
            sampled_calls += len(sampled)
            sampled_keys.update(sampled)
        if len(sampled_keys) >= SHARDS_MIN_KEYS:
            estimator = "shards"
            size_scale = 1.0 / rate
            # Normalised by the sampled share of the keyed calls rather than 1/R, so that the
            # hit ratio is the sampled one (errors in the number of sampled keys cancel out).
            count_scale = (info.calls - unkeyed) / sampled_calls
        else:
            estimator = "listed"
            threshold = 0.0
            count_scale = info.calls / n if n else 1.0
        del sampled_keys
    track_overlap = info.kind in ("coroutine", "async_generator")
    nested_exclusion = info.kind == "function"
    if identity is None:
        identity = info.stats[S_IDENTITY] > 0
    # A listed (summarised) call carries no callspan.args.identity: it follows the function's spans.
    identity_flags = F_IDENTITY | (F_SUMMARY if identity else 0)
    replay = StackDistances()
    hist: Counter[int] = Counter()
    saved_cpu: dict[int, int] = {}
    saved_wall: dict[int, int] = {}
    first_return: dict[int, int] = {}
    inconsistent: set[int] = set()
    collisions: set[int] = set()
    max_end: dict[int, int] = {}
    open_hits: dict[int, list[tuple[int, int]]] = {}  # thread -> (end, smallest distance) of enclosing hits
    overlapping = 0
    accesses = 0
    for block, order in source.blocks():
        keys = block.args
        if threshold:
            order = [i for i in order if keys[i] and (keys[i] >> 32) < threshold]
        accesses += len(order)
        # The calls replayed, in order: all but those that raised or have no key (per-call work in C).
        replayable = bytes(block.flags).translate(_REPLAYABLE)
        replayed = array("I", compress(order, map(replayable.__getitem__, order)))
        replayed_keys = array("Q", map(keys.__getitem__, replayed))
        distances = replay.feed(replayed_keys)
        hist.update(distances)
        _check_returns(replayed, replayed_keys, block, first_return, inconsistent, collisions, identity_flags)
        starts, ends = block.start, block.end
        if track_overlap:
            for index, key, d in zip(replayed, replayed_keys, distances, strict=True):
                if not d:
                    max_end[key] = ends[index]
                    continue
                end = max_end[key]
                if starts[index] < end:
                    overlapping += 1
                if ends[index] > end:
                    max_end[key] = ends[index]
        cpus = block.cpu
        threads = block.thread
        for index, d in compress(zip(replayed, distances, strict=True), distances):
            start, end = starts[index], ends[index]
            if nested_exclusion:
                # Nested in an earlier hit at distance m on this thread: at sizes >= m this hit's
                # cost is already in the outer one's.
                enclosing = open_hits.get(threads[index])
                if enclosing is None:
                    enclosing = open_hits[threads[index]] = []
                while enclosing and enclosing[-1][0] <= start:
                    enclosing.pop()
                m = enclosing[-1][1] if enclosing else 0
                enclosing.append((end, min(m, d) if m else d))
                if m:
                    if m <= d:
                        continue  # whenever this is a hit, so is the outer call
                    saved_cpu[m] = saved_cpu.get(m, 0) - cpus[index]
                    saved_wall[m] = saved_wall.get(m, 0) - (end - start)
            saved_cpu[d] = saved_cpu.get(d, 0) + cpus[index]
            saved_wall[d] = saved_wall.get(d, 0) + (end - start)
    hits_by: list[tuple[int, float]] = sorted((d, h) for d, h in hist.items() if d)
    # Sizes that round to the same value (sampling) merge into one step.
    merged: list[tuple[int, float]] = []
    for d, h in hits_by:
        s = math.ceil(d * size_scale - 1e-9)
        if merged and merged[-1][0] == s:
            merged[-1] = (s, merged[-1][1] + h * count_scale)
        else:
            merged.append((s, h * count_scale))
    key_scale = size_scale  # distinct keys scale with SHARDS sampling only
    return ProcessResult(
        function=function, process=info.process, calls=info.calls, accesses=accesses, sample_rate=rate,
        estimator=estimator, count_scale=count_scale, size_scale=size_scale,
        distinct_keys=replay.distinct * key_scale, hits_unbounded=sum(h for _, h in hits_by) * count_scale,
        steps=merged, inconsistent_keys=round(len(inconsistent) * key_scale),
        overlapping=round(overlapping * count_scale), identity_collisions=round(len(collisions) * key_scale),
        saved_by_distance=sorted((d, saved_cpu[d], saved_wall[d]) for d in saved_cpu),
        hits_by_distance=hits_by,
    )


def aggregate_result(function: int, info: FunctionInfo, data: ProfileData, fids: Sequence[int],
                     identity: bool, has_cpu: bool, process_cpu: float = math.inf) -> ProcessResult:
    """The ``ProcessResult`` of one function in one process from its v2 aggregates (the function
    ids ``fids`` of that process: one name may have several), without replaying any call.

    ``identity``: whether ``self`` hashes by identity for this function (any process): its keys
    that returned different values are then identity key collisions, not inconsistency (the
    aggregates do not say which keys were identity keys). ``process_cpu``: the process's traced
    CPU (its call tree's self CPU), which no function's own total can exceed."""
    calls = errors = cpu_total = wall_total = 0
    state = ProfileCache()
    reuse: dict[int, list[float]] = {}
    for fid in fids:
        facts = data.functions.get(fid)
        node_cpu = data.node_totals(fid)[2]
        if facts is not None:
            calls += facts.calls
            errors += facts.errors
            wall_total += facts.wall_ns
            # Calls folded into "(other)" nodes (beyond the node or depth cap) are in no node of
            # this function; their self CPU still is in its function-table row: a lower bound.
            node_cpu = max(node_cpu, facts.cpu_self)
        # So is the CPU of its hits (each measured whole, none nested in another counted hit):
        # deep in recursion, where every call is folded, it can be most of the function's cost.
        rows = data.reuse.get(fid, {})
        cpu_total += max(node_cpu, round(min(sum(row[1] for row in rows.values()), process_cpu)))
        cached = data.cache.get(fid)
        if cached is not None:
            state.add(cached)
        for distance, row in rows.items():
            total = reuse.setdefault(distance, [0.0, 0.0, 0.0])
            for k in range(3):
                total[k] += row[k]
    # A call at distance d hits a cache of size s iff d < s: Mattson's distance is d + 1.
    ordered = sorted(reuse.items())
    hits_by = [(d + 1, row[0]) for d, row in ordered if row[0]]
    inconsistent = round(state.inconsistent_keys)
    collisions = 0
    if identity:
        inconsistent, collisions = 0, inconsistent
    coroutine = info.kind in ("coroutine", "async_generator")
    unhashable_types = list(state.unhashable_types)
    if state.unhashable_calls and not unhashable_types:
        unhashable_types = ["(unknown type)"]
    # A recursive function is sized on the calls its memoized version makes: the calls nested in
    # hits of the same key are not among them (the tracer left them out of the replay).
    calls -= min(calls, state.shadowed_calls)
    return ProcessResult(
        function=function, process=info.process, calls=calls, accesses=state.sampled_calls,
        sample_rate=state.rate, estimator="exact" if state.rate >= 1 else "tracer_shards",
        count_scale=1.0, size_scale=1.0, distinct_keys=state.keys,
        hits_unbounded=sum(h for _, h in hits_by), steps=list(hits_by), inconsistent_keys=inconsistent,
        # As for replays: only coroutines' overlaps are in-flight duplicates worth coalescing.
        overlapping=round(state.overlaps) if coroutine else 0, identity_collisions=collisions,
        saved_by_distance=[(d + 1, row[1], row[2]) for d, row in ordered], hits_by_distance=hits_by,
        source="aggregates", errors=errors, cpu_total=cpu_total, wall_total=wall_total,
        cpu_calls=calls if has_cpu else 0,
        unhashable_calls=state.unhashable_calls, unhashable_types=unhashable_types, fresh_keys=state.fresh_keys,
        cheap_ns=state.cheap_ns, shadowed_calls=state.shadowed_calls, unhashable_returns=state.unhashable_returns,
        none_returns=state.none_returns, keyed_calls=state.calls,
    )


def _check_returns(replayed: array[int], replayed_keys: array[int], block: CallColumns, first_return: dict[int, int],
                   inconsistent: set[int], collisions: set[int], identity_flags: int) -> None:
    """Find keys whose return differs from the first one returned for them (in call order)."""
    rets = array("Q", map(block.ret.__getitem__, replayed))
    with_return = list(compress(zip(replayed_keys, rets, strict=True), rets))
    # First return of each key in this block (later pairs overwrite: so feed them backwards).
    for key, ret in dict(reversed(with_return)).items():
        first_return.setdefault(key, ret)
    suspects = {key for key, ret in set(with_return) if first_return[key] != ret}
    if not suspects:
        return
    flags = block.flags
    for index, key, ret in zip(replayed, replayed_keys, rets, strict=True):
        if key in suspects and ret and ret != first_return[key] and key not in inconsistent \
                and key not in collisions:
            if flags[index] & identity_flags:
                collisions.add(key)  # another object at a freed one's address, probably
            else:
                inconsistent.add(key)


@dataclass(slots=True)
class Savings:
    cpu: float = 0.0
    wall: float = 0.0
    hits: float = 0.0


def savings_at(result: ProcessResult, size: int) -> Savings:
    """CPU and wall of the calls that would have hit a cache of ``size`` entries.

    For synchronous functions, a hit nested inside an earlier hit of the same function on the
    same thread is counted as a hit but its cost is not added again: it is part of the outer
    call's ``callspan.cpu.total`` (see ``ProcessResult.saved_by_distance``).
    """
    out = Savings()
    if size <= 0:
        return out
    threshold = size / result.size_scale + 1e-9
    cpu = wall = hits = 0.0
    for d, c, w in result.saved_by_distance:
        if d > threshold:
            break
        cpu += c
        wall += w
    for d, h in result.hits_by_distance:
        if d > threshold:
            break
        hits += h
    scale = result.count_scale
    out.cpu = cpu * scale
    out.wall = wall * scale
    out.hits = hits * scale
    return out


@dataclass(slots=True)
class Advice:
    kind: str
    text: str
    paste: str | None = None


@dataclass(slots=True)
class Opportunity:
    """One function, summed over the processes it ran in."""

    name: str
    file: str
    line: int
    kind: str
    method: bool
    calls: int
    errors: int
    distinct_keys: float
    hits_unbounded: float
    hit_ratio: float
    hit_ratio_at_128: float
    recommended_maxsize: int | None
    hit_ratio_at_recommended: float | None
    consistent: bool
    inconsistent_keys: int
    overlapping: int
    sample_rate: float
    estimator: str  # "exact", "shards", "listed" or "mixed" (see the module docstring)
    unhashable_types: list[str]  # type names
    returns_unhashable: bool
    cpu_unit: str
    savings: Savings
    share: float | None
    memory_bytes: int | None
    mean_cost: float | None  # CPU per call (unit cpu_unit), None without CPU data
    curve: list[tuple[int, float]]  # (size, hit ratio) points
    processes: list[dict[str, object]]
    advice: Advice = field(default_factory=lambda: Advice("lru_cache", ""))
    source: str = "spans"  # "aggregates" (v2, every call), "spans" (replayed calls) or "mixed" (processes differ)
    fresh_keys: float = 0.0  # aggregates: keys whose returns differed only by new objects each call
    cheap_ns: int = 0  # aggregates: mean wall ns per call when the tracer stopped keying it (too cheap)
    shadowed_calls: int = 0  # aggregates: recursive calls a memoized version would not make (left out)
    returns_none: bool = False  # aggregates: every call that returned returned None
    identity: bool = False  # some call's self was hashed by identity (callspan.args.identity)
    identity_collisions: int = 0  # keys with different returns explained by identity keys
    impure_callees: list[str] = field(default_factory=list)  # inconsistent functions it calls, nearest first
    estimate_error: float | None = None  # SHARDS estimates: relative standard error of distinct keys
    mean_wall: float | None = None  # wall ns per call
    own_cpu: float = 0.0  # its own total CPU (sum of its calls' callspan.cpu.total), unit cpu_unit
    own_wall: float = 0.0  # its own total wall time, ns
    unhashable_args: list[tuple[str, str]] = field(default_factory=list)  # (argument, type); "?" when not named
    impure_keys: list[tuple[float, float]] = field(default_factory=list)  # per impure callee: (its inconsistent keys, its keys)
    hit_steps: list[tuple[int, float]] = field(default_factory=list, repr=False)  # (size, extra hits from it on)
    # One-to-one call chains (``link_chains``): the functions whose figures this one's row shows
    # (each of their calls made by it, once per call, same keys and hits at every size), and for
    # such a function, the name of the function whose row shows it.
    covers: list[Opportunity] = field(default_factory=list, repr=False)
    covered_by: str | None = None

    @property
    def inconsistent_share(self) -> float:
        """The share of its keys that returned different values for the same arguments."""
        return self.inconsistent_keys / self.distinct_keys if self.distinct_keys > 0 else 0.0

    @property
    def mostly_consistent(self) -> bool:
        return 0 < self.inconsistent_keys and self.inconsistent_share <= MOSTLY_CONSISTENT

    @property
    def estimated(self) -> bool:
        return self.estimator != "exact" or self.curve_exact_from is not None

    @property
    def curve_exact_from(self) -> int | None:
        """Recursive functions (``shadowed_calls``): the smallest size whose figures are exact.
        The replay is of the calls an unbounded cache leaves; a smaller cache makes the memoized
        function repeat nested calls the trace cannot replay, so hits below it are estimated."""
        return math.ceil(self.distinct_keys) if self.shadowed_calls else None


@dataclass(slots=True)
class CacheOptions:
    target: float = 0.95
    min_calls: int = 2
    # Optional extra filter, off by default: below this share of all CPU saved, "not worth it".
    min_share: float | None = None
    curve_points: int = 200
    min_saved_ns: float = MIN_SAVED_NS  # savings at the recommended size below this: not worth it
    min_cost_ratio: float = MIN_COST_RATIO  # a call must cost this many cache lookups
    lookup_ns: float | None = None  # the cost of a cache hit; None: measured (measure_lookup_cost)


class Clamps:
    """Invariants enforced by clamping a figure, counted per invariant and named per function:
    never silently (the report shows them)."""

    EXAMPLES = 20

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.messages: list[str] = []

    def check(self, invariant: str, function: str, value: float, limit: float, what: str) -> float:
        """``value`` if it is at most ``limit``; else ``limit``, counted under ``invariant``."""
        if value <= limit + 1e-9 * max(1.0, abs(limit)):
            return value
        self.counts[invariant] = self.counts.get(invariant, 0) + 1
        if len(self.messages) < self.EXAMPLES:
            self.messages.append(f"{function}: {what} {value:,.6g} > {limit:,.6g}, clamped ({invariant})")
        return limit

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class CacheReport:
    opportunities: list[Opportunity]
    total_cpu: dict[str, int]  # unit -> sum of callspan.cpu.self over everything
    functions_analyzed: int
    functions_without_reuse: int
    functions_without_keys: int
    options: CacheOptions
    lookup: LookupCost = field(default_factory=lambda: LookupCost(0.0, 0.0, 0, 0, "none"))
    clamps: Clamps = field(default_factory=Clamps)
    functions_without_keys_slow_hash: int = 0  # of functions_without_keys: user __hash__ too slow to key


def _summed_steps(results: Sequence[ProcessResult]) -> list[tuple[int, float]]:
    if len(results) == 1:
        return results[0].steps
    merged: dict[int, float] = {}
    for result in results:
        for s, h in result.steps:
            merged[s] = merged.get(s, 0.0) + h
    return sorted(merged.items())


def _cumulative(steps: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    sizes: list[int] = []
    totals: list[float] = []
    running = 0.0
    for s, h in steps:
        running += h
        sizes.append(s)
        totals.append(running)
    return sizes, totals


def _hits_at(sizes: list[int], totals: list[float], size: int) -> float:
    i = bisect_right(sizes, size)
    return totals[i - 1] if i else 0.0


def recommend(sizes: list[int], totals: list[float], target: float) -> int | None:
    """Smallest size whose hits reach ``target`` of the unbounded hits."""
    if not totals or totals[-1] <= 0:
        return None
    goal = target * totals[-1] - 1e-9 * totals[-1]
    for s, t in zip(sizes, totals, strict=True):
        if t >= goal:
            return s
    return sizes[-1]


def _curve_points(sizes: list[int], totals: list[float], calls: int, limit: int) -> list[tuple[int, float]]:
    if not sizes or calls <= 0:
        return []
    if len(sizes) <= limit:
        return [(s, min(1.0, t / calls)) for s, t in zip(sizes, totals, strict=True)]
    top = sizes[-1]
    points = sorted({max(1, round(math.exp(math.log(top) * k / (limit - 1)))) for k in range(limit)})
    return [(s, min(1.0, _hits_at(sizes, totals, s) / calls)) for s in points]


def _format_count(value: float) -> str:
    return f"{value:,.0f}"


def cost_basis(op: Opportunity) -> tuple[float | None, float, str]:
    """(cost per call, savings at the recommended size, what they are) in ns, for judging a
    function against a cache lookup (ns): CPU when the counter is in ns, else wall time."""
    if op.cpu_unit == "ns":
        return op.mean_cost, op.savings.cpu, "CPU"
    return op.mean_wall, op.savings.wall, "wall"


def not_worth_it_reasons(op: Opportunity, options: CacheOptions, lookup: LookupCost) -> list[str]:
    """Why caching ``op`` would not pay for itself (empty: it would), with the numbers."""
    reasons: list[str] = []
    per_call, saved, what = cost_basis(op)
    lookup_ns = lookup.ns
    if per_call is not None and lookup_ns > 0 and per_call < options.min_cost_ratio * lookup_ns:
        reasons.append(f"a call costs ~{fmt_ns(per_call)} {what}, less than {options.min_cost_ratio:g}x a "
                       f"functools.lru_cache hit ({fmt_ns(lookup_ns)}, {lookup.source} here)")
    if saved < options.min_saved_ns:
        at = f" at maxsize={op.recommended_maxsize:,}" if op.recommended_maxsize else ""
        reasons.append(f"it would save {fmt_ns(saved)} {what}{at}, below the {fmt_ns(options.min_saved_ns)} "
                       "floor (--min-saved-ms)")
    if options.min_share is not None and op.share is not None and op.share < options.min_share:
        reasons.append(f"it would save {op.share:.2%} of all CPU, below --min-share {options.min_share:.2%}")
    return reasons


def fmt_ns(ns: float) -> str:
    """A duration for advice texts: 3 significant digits and a unit."""
    for scale, unit in ((1e9, "s"), (1e6, "ms"), (1e3, "us")):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def _advise(op: Opportunity, options: CacheOptions, lookup: LookupCost) -> Advice:
    where = f"{op.file}:{op.line}" if op.file else op.name
    size = op.recommended_maxsize
    paste = f"@functools.lru_cache(maxsize={size})  # {where}" if size else None
    slow = [name for name, kind in op.unhashable_args if kind == SLOW_HASH_KIND]
    if slow:
        return Advice("slow_hash", f"user __hash__ too slow to key: the __hash__ of {', '.join(slow)} took over "
                      "10 us per call on average (once 1 ms was spent hashing its keys), so the tracer stopped "
                      "calling it for this function and its cache figures cover only the calls keyed before; "
                      "functools.lru_cache would run that __hash__ on every call too: give the "
                      "type a cheaper (or cached) __hash__, or cache a function of the plain values the result "
                      "depends on")
    if op.hits_unbounded <= 0 and op.method and not op.identity:
        return Advice("method", f"self is part of the cache key and no key repeated "
                      f"({_format_count(op.calls)} calls, {_format_count(op.distinct_keys)} distinct keys): "
                      "if the result does not depend on the instance, cache a module-level function of the "
                      "other arguments instead")
    method_name = op.name.rsplit(".", 1)[-1]
    if method_name in KEY_PROTOCOL:
        return Advice("not_cacheable", f"{method_name}: functools.lru_cache hashes the arguments, self included, to "
                      "look a call up, so a cached __hash__ calls itself until RecursionError; compute the hash "
                      "once and keep it on the instance (an attribute set in __init__ or on first use) instead")
    if method_name in STATEFUL_PROTOCOL:
        return Advice("not_cacheable", f"{method_name} is a protocol method that acts on its object "
                      "(initialises, changes or advances it): a cache would skip that for every repeated key; "
                      "cache what it computes in a function of its own instead")
    enclosing, nested, _ = op.name.partition(".<locals>.")
    if nested and op.kind not in ("generator", "async_generator"):  # a genexpr: said below
        return Advice("closure", f"defined inside {enclosing}: a new function object each time that code runs "
                      "(each call, or each decoration), and a functools.lru_cache on it is a new, empty cache "
                      "with each; these figures merge the calls of all of them, whose captured variables are not "
                      "part of the key and may differ: to cache it, move it to module level with what it "
                      "captures as arguments")
    if not op.consistent and not op.mostly_consistent:
        return Advice("inconsistent", f"not cacheable as is: {op.inconsistent_keys:,} of "
                      f"{_format_count(op.distinct_keys)} argument keys ({op.inconsistent_share:.1%}) returned "
                      "different values for the same arguments (the result depends on more than the arguments: "
                      "state, a clock, randomness)")
    if op.fresh_keys:
        return Advice("fresh_object", f"returns a new object each call: for {_format_count(op.fresh_keys)} of "
                      f"{_format_count(op.distinct_keys)} argument keys the returns differed only by being new "
                      "objects without value equality (an iterator, a generator, a class without __eq__), so "
                      "it is not cacheable as is: a cache would hand every caller the same object (an exhausted "
                      "iterator, shared mutable state); return an immutable value (a tuple, a frozen "
                      "dataclass) or cache what it is built from")
    if op.kind in ("generator", "async_generator"):
        return Advice("not_cacheable", f"a {op.kind.replace('_', ' ')} function: lru_cache would cache the "
                      "generator object, which can be iterated once; cache a function returning a tuple of "
                      "its values instead")
    if op.identity:
        reuse = ""
        if op.hits_unbounded > 0:
            collided = (f" and {op.identity_collisions:,} keys returning different values"
                        if op.identity_collisions else "")
            reuse = (f" (so {_format_count(op.hits_unbounded)} apparent hits{collided} can be address reuse, "
                     "not evidence of impurity)")
        return Advice("method", "self is hashed by identity, so keys are per instance (id-based) and mean "
                      "\"this object\" only while it lives: a new object at a freed one's address gets the same "
                      f"key{reuse}; functools.lru_cache on a method keeps every cached instance alive until "
                      "evicted: cache a module-level function of the values the result depends on instead, or "
                      "give the class value-based __eq__ and __hash__")
    if op.cheap_ns:
        return Advice("not_worth_it", f"not worth it: its calls took ~{op.cheap_ns:,} ns each (wall, over its "
                      "first 1,024 keyed calls), about what a cache lookup costs; the tracer stopped keying it "
                      "there (CALLSPAN_KEY_MIN_NS), so its cache figures cover those calls only")
    reasons = not_worth_it_reasons(op, options, lookup)
    if reasons:
        return Advice("not_worth_it", "not worth it: " + "; ".join(reasons))
    if op.kind == "coroutine":
        text = ("async def: functools.lru_cache would cache the coroutine object (awaiting it a second time "
                "raises RuntimeError); cache the awaited result instead, e.g. a dict of results, or of "
                "asyncio.Tasks keyed by the arguments")
        if op.overlapping:
            return Advice("inflight_coalescing", f"{_format_count(op.overlapping)} calls started while an "
                          "identical call was still running: share one in-flight asyncio.Task per key "
                          "(coalescing) and cache its result; " + text.split(": ", 1)[1])
        return Advice("async_cache", text)
    note = ("; a method: self is part of the key, hits only repeat per instance, and the cache keeps "
            "instances alive until evicted") if op.method else ""
    if op.returns_none:
        convert = "; and " + convert_args_text(op) if op.unhashable_types else ""
        return Advice("returns_none", "returned None on every call: it is called for what it does (changing its "
                      "arguments or an object's state, output), which a cache would skip for every repeated key; "
                      f"only if doing it once per key is the point{convert}: functools.lru_cache(maxsize={size})"
                      + note)
    if op.unhashable_types and not op.returns_unhashable:
        # Never a bare lru_cache line: it would raise TypeError on the first such call.
        return Advice("lru_cache_convert_args", convert_args_text(op) + ", then cache the function of the "
                      f"converted arguments with functools.lru_cache(maxsize={size})" + note)
    if op.mostly_consistent:
        mutable = ("; returns a mutable value: callers would share (and could mutate) the cached object"
                   if op.returns_unhashable else "")
        return Advice("mostly_consistent", f"{op.inconsistent_keys:,} of {_format_count(op.distinct_keys)} "
                      f"argument keys ({op.inconsistent_share:.1%}) returned different values for the same "
                      "arguments: a cache would return a stale value for those; if that is acceptable, "
                      f"functools.lru_cache(maxsize={size})" + note + mutable)
    if op.returns_unhashable:
        convert = "; and " + convert_args_text(op) if op.unhashable_types else ""
        return Advice("mutable_return", "returns a mutable value (a list, dict, set or object without a hash): "
                      "a cache hands every caller the same object, so a caller that changes it changes what "
                      "later callers get; if no caller mutates the result (or after returning an immutable "
                      f"copy: tuple, frozenset, a frozen dataclass){convert}, functools.lru_cache(maxsize={size})"
                      + note)
    return Advice("lru_cache", f"cache it with functools.lru_cache(maxsize={size})" + note, paste)


def convert_args_text(op: Opportunity) -> str:
    """What to convert before caching, naming each unhashable argument."""
    named = [(arg, kind) for arg, kind in op.unhashable_args if arg != "?"]
    if not named:
        return (f"some arguments are unhashable ({', '.join(op.unhashable_types)}; functools.lru_cache raises "
                "TypeError on them): convert them to hashable equivalents first (tuple, frozenset)")
    parts = [f"{arg} ({kind}) to {HASHABLE_FORM.get(kind, 'a hashable equivalent')}" for arg, kind in named]
    unnamed = [kind for arg, kind in op.unhashable_args if arg == "?"]
    if unnamed:
        parts.append(f"the other unhashable arguments ({', '.join(unnamed)}) likewise")
    return ("unhashable arguments (functools.lru_cache raises TypeError on them): convert " + ", ".join(parts)
            + " first (in a thin wrapper)")


def split_unhashable(items: Iterable[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """``name:type`` items (bare type names from older tracers) as ((argument, type) pairs with
    "?" for an argument not named, type names), each sorted."""
    pairs: set[tuple[str, str]] = set()
    for item in items:
        name, sep, kind = item.rpartition(":")
        pairs.add((name, kind) if sep else ("?", item))
    ordered = sorted(pairs, key=lambda p: (p[0] == "?", p))
    return ordered, sorted({kind for _, kind in ordered})


JOB_CALLS = 200_000  # per-function replays are sent to workers in jobs of about this many calls


# One replay: (function index, its info, its calls, identity).
ReplayItem = tuple[int, FunctionInfo, CallSource, bool]


def _analyze_job(job: list[ReplayItem]) -> list[ProcessResult]:
    return [analyze_calls(function, info, source, identity) for function, info, source, identity in job]


class PendingAnalysis:
    """Replays started (maybe in worker processes); :meth:`finish` gathers them into a report."""

    def __init__(self, model: Model, options: CacheOptions,
                 imap: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]) -> None:
        self.model = model
        self.options = options
        profiles = model.profiles
        self.ids_by_name = {process: data.ids_by_name() for process, data in profiles.items()}
        total_cpu: dict[str, int] = {}
        for info in model.functions:
            if info.process not in profiles:
                unit = model.processes[info.process].cpu_unit or "unknown"
                total_cpu[unit] = total_cpu.get(unit, 0) + info.stats[S_CPU_SELF]
        self.process_cpu: dict[int, int] = {}
        for process, data in profiles.items():
            # The call tree's self CPU adds up to the process's traced CPU, exactly.
            unit = model.processes[process].cpu_unit or "unknown"
            self.process_cpu[process] = sum(node.cpu_self for node in data.nodes.values())
            total_cpu[unit] = total_cpu.get(unit, 0) + self.process_cpu[process]
        self.total_cpu = total_cpu
        groups: dict[tuple[str, str], list[int]] = {}
        for index, info in enumerate(model.functions):
            if (self._fids(index) if info.process in profiles else model.call_count(index)):
                groups.setdefault((info.name, info.file), []).append(index)
        self.without_keys = 0
        self.without_keys_slow_hash = 0  # of those, functions whose user __hash__ was too slow to key
        self.with_nodes: dict[int, set[int]] = {}  # process -> function ids with a call-tree node
        for key, indices in list(groups.items()):
            if sum(map(self._calls, indices)) < options.min_calls:
                del groups[key]
                continue
            if not any(map(self._keyed, indices)):
                self.without_keys += 1
                self.without_keys_slow_hash += any(map(self._slow_hash, indices))
                del groups[key]
        self.groups = groups
        # Whether self hashes by identity is a fact of the function: any span of it, in any process.
        self.identity = {key: any(model.functions[i].stats[S_IDENTITY] or self._identity_calls(i) for i in indices)
                         for key, indices in groups.items()}
        jobs: list[list[ReplayItem]] = []
        size = JOB_CALLS
        for key, indices in groups.items():
            for i in indices:
                if model.functions[i].process in profiles:
                    continue  # from its aggregates, in finish()
                source = model.call_source(i)
                assert source is not None
                if size >= JOB_CALLS:
                    jobs.append([])
                    size = 0
                jobs[-1].append((i, model.functions[i], source, self.identity[key]))
                size += len(source)
        self.replayed = iter(imap(_analyze_job, jobs))  # a pool's imap starts working right away

    def _fids(self, function: int) -> list[int]:
        """The v2 function ids of ``function`` in its process (none without aggregates)."""
        info = self.model.functions[function]
        return self.ids_by_name.get(info.process, {}).get(info.name, [])

    def _calls(self, function: int) -> int:
        info = self.model.functions[function]
        data = self.model.profiles.get(info.process)
        if data is None:
            return info.calls
        return sum(data.functions[fid].calls for fid in self._fids(function))

    def _in_call_tree(self, function: int) -> bool:
        """Whether what ``function`` calls is known: some call of it has a node of the call tree,
        or the tracer kept every caller-callee pair of the calls it folded into "(other)" nodes
        (beyond its node or depth cap); false when every call was folded and pairs were lost (or
        not kept: older tracers). Processes without aggregates: true (their spans link callers)."""
        info = self.model.functions[function]
        data = self.model.profiles.get(info.process)
        if data is None or data.callees_known:
            return True
        with_nodes = self.with_nodes.get(info.process)
        if with_nodes is None:
            with_nodes = self.with_nodes[info.process] = {node.function for node in data.nodes.values()}
        return any(fid in with_nodes for fid in self._fids(function))

    def _keyed(self, function: int) -> bool:
        data = self.model.profiles.get(self.model.functions[function].process)
        if data is None:
            return bool(self.model.keyed_calls[function])
        return any(fid in data.cache and data.cache[fid].calls for fid in self._fids(function))

    def _slow_hash(self, function: int) -> bool:
        """Whether some call of ``function`` was not keyed because its user __hash__ was too slow
        (the tracer's ``Name:slow-hash``)."""
        info = self.model.functions[function]
        data = self.model.profiles.get(info.process)
        types = set(info.unhashable)
        if data is not None:
            for fid in self._fids(function):
                if fid in data.cache:
                    types.update(data.cache[fid].unhashable_types)
        return any(t.endswith(":" + SLOW_HASH_KIND) for t in types)

    def _identity_calls(self, function: int) -> int:
        data = self.model.profiles.get(self.model.functions[function].process)
        if data is None:
            return 0
        return sum(data.cache[fid].identity_calls for fid in self._fids(function) if fid in data.cache)

    def _result(self, function: int, identity: bool, replayed: Iterator[ProcessResult]) -> ProcessResult:
        info = self.model.functions[function]
        data = self.model.profiles.get(info.process)
        if data is None:
            return next(replayed)
        return aggregate_result(function, info, data, self._fids(function), identity, data.has_cpu,
                                self.process_cpu[info.process])

    def finish(self) -> CacheReport:
        model, options = self.model, self.options
        results_flat = (result for batch in self.replayed for result in batch)
        opportunities: list[Opportunity] = []
        keys: list[tuple[str, str]] = []  # the group of each opportunity
        impure: list[tuple[str, str]] = []
        impure_ops: dict[str, Opportunity] = {}
        without_reuse = 0
        lookup = (LookupCost(options.lookup_ns, options.lookup_ns, 0, 0, "option") if options.lookup_ns is not None
                  else measure_lookup_cost())
        clamps = Clamps()
        for key, indices in self.groups.items():
            results = [self._result(i, self.identity[key], results_flat) for i in indices]
            op = _opportunity(model, results, self.total_cpu, options, self.identity[key], lookup, clamps)
            # A closure's keys leave out what each of its function objects captured (the property
            # getters one factory makes, say): its differing returns are expected, not evidence of
            # a side effect for its callers, as address reuse is not for identity keys.
            if op.inconsistent_keys and ".<locals>." not in op.name:
                impure.append(key)
                impure_ops.setdefault(op.name, op)
            # (a function whose keys stopped for a slow __hash__ is listed with that reason)
            if op.hits_unbounded <= 0 and not op.method and op.advice.kind != "slow_hash":
                without_reuse += 1
                continue
            opportunities.append(op)
            keys.append(key)
        if impure:
            reach = impure_reach(model, impure)
            for op in opportunities:
                paths = reach.get((op.name, op.file))
                if paths:
                    _calls_impure(op, paths, impure_ops)
        for key, op in zip(keys, opportunities, strict=True):
            if tier(op.advice.kind) == "recommended" and not any(map(self._in_call_tree, self.groups[key])):
                _callees_unknown(op)
        opportunities.sort(key=rank_key)
        link_chains(opportunities, call_counts(model))
        return CacheReport(opportunities, self.total_cpu, len(self.groups), without_reuse, self.without_keys,
                           options, lookup, clamps, self.without_keys_slow_hash)


def rank_key(op: Opportunity) -> tuple[int, float, float, float, str, str, int]:
    """By tier (``TIERS``: clean advice, caveated, not worth it, never recommended), each by
    savings (CPU, wall, hits), ties by name, file and line: the same input always gives the same
    order. Caveated functions are often callers of the clean ones, with larger (overlapping)
    savings: in one ranking they would push every clean opportunity out of sight."""
    return (TIERS.index(tier(op.advice.kind)), -(op.savings.cpu or 0), -op.savings.wall, -op.hits_unbounded,
            op.name, op.file, op.line)


def start(model: Model, options: CacheOptions | None = None,
          imap: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] = map) -> PendingAnalysis:
    """Start the replays (``imap``: e.g. a process pool's, results in order); finish() reports."""
    return PendingAnalysis(model, options or CacheOptions(), imap)


def analyze(model: Model, options: CacheOptions | None = None,
            imap: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] = map) -> CacheReport:
    """Cache opportunities of every function in ``model``, ranked by savings."""
    return start(model, options, imap).finish()


def _clamp_result(result: ProcessResult, name: str, clamps: Clamps) -> None:
    """Hits <= calls (scaling the hits at every size alike), distinct keys <= calls and
    inconsistent keys <= distinct keys, per process."""
    hits = clamps.check("hits_le_calls", name, result.hits_unbounded, result.calls, "hits")
    if hits < result.hits_unbounded:
        factor = hits / result.hits_unbounded
        result.steps = [(s, h * factor) for s, h in result.steps]
        result.hits_by_distance = [(d, h * factor) for d, h in result.hits_by_distance]
        result.hits_unbounded = hits
    result.distinct_keys = clamps.check("keys_le_calls", name, result.distinct_keys, result.calls,
                                        "distinct keys")
    result.inconsistent_keys = round(clamps.check("inconsistent_keys_le_keys", name, result.inconsistent_keys,
                                                  math.ceil(result.distinct_keys), "inconsistent keys"))


def _opportunity(model: Model, results: list[ProcessResult], total_cpu: dict[str, int],
                 options: CacheOptions, identity: bool = False, lookup: LookupCost | None = None,
                 clamps: Clamps | None = None) -> Opportunity:
    clamps = clamps if clamps is not None else Clamps()
    infos = [model.functions[r.function] for r in results]
    first = infos[0]
    for result in results:
        _clamp_result(result, first.name, clamps)
    # Aggregates (v2) cover every call: their figures replace the spans' (examples) stats.
    replayed = [(r, i) for r, i in zip(results, infos, strict=True) if r.source != "aggregates"]
    aggregated = [r for r in results if r.source == "aggregates"]
    calls = sum(r.calls for r in results)
    errors = (sum(i.stats[S_ERRORS] + i.stats[S_SUM_ERRORS] for _, i in replayed)
              + sum(r.errors for r in aggregated))
    steps = _summed_steps(results)
    sizes, totals = _cumulative(steps)
    hits = totals[-1] if totals else 0.0
    size = recommend(sizes, totals, options.target)
    units = {model.processes[i.process].cpu_unit or "unknown" for i in infos}
    unit = units.pop() if len(units) == 1 else "mixed"
    has_cpu = any(i.stats[S_CPU_CALLS] for _, i in replayed) or any(r.cpu_calls for r in aggregated)
    inconsistent = sum(r.inconsistent_keys for r in results)
    # Identity-keyed hits may be address reuse: never recommended, so nothing is counted as saved.
    # Mostly consistent functions keep their figures (ranked with the share shown); inconsistent
    # ones would save nothing a user should take.
    all_keys = sum(r.distinct_keys for r in results)
    unusable = bool(inconsistent) and not (all_keys > 0 and inconsistent / all_keys <= MOSTLY_CONSISTENT)
    blocked = unusable or identity
    savings = Savings()
    per_process: list[dict[str, object]] = []
    wall_total = wall_calls = own_cpu_total = 0
    for result, info in zip(results, infos, strict=True):
        saved = Savings() if not size or blocked else savings_at(result, size)
        # A function's savings cannot exceed its own total cost (CPU and wall), nor its hits all hits.
        aggregate = result.source == "aggregates"
        own_wall = result.wall_total if aggregate else info.stats[S_WALL]
        wall_total += own_wall
        wall_calls += result.calls + result.shadowed_calls if aggregate else result.calls
        own_cpu = result.cpu_total if aggregate else info.stats[S_CPU_TOTAL]
        own_cpu_total += own_cpu
        saved.cpu = clamps.check("cpu_savings_le_cost", first.name, saved.cpu, own_cpu,
                                 "CPU saved vs its own total CPU")
        saved.wall = clamps.check("wall_savings_le_cost", first.name, saved.wall, own_wall,
                                  "wall saved vs its own total wall")
        saved.hits = clamps.check("hits_at_size_le_hits", first.name, saved.hits, result.hits_unbounded,
                                  "hits at the recommended size vs unbounded hits")
        savings.cpu += saved.cpu
        savings.wall += saved.wall
        savings.hits += saved.hits
        p_sizes, p_totals = _cumulative(result.steps)
        process = model.processes[result.process]
        per_process.append({
            "process": process.key, "label": process.label, "calls": result.calls,
            "distinct_keys": round(result.distinct_keys), "hit_ratio": _ratio(result.hits_unbounded, result.calls),
            "hit_ratio_at_128": _ratio(_hits_at(p_sizes, p_totals, DEFAULT_MAXSIZE), result.calls),
            "recommended_maxsize": recommend(p_sizes, p_totals, options.target),
            "inconsistent_keys": result.inconsistent_keys, "identity_key_collisions": result.identity_collisions,
            "sample_rate": result.sample_rate,
            "estimator": result.estimator, "source": result.source,
            "savings": {"cpu": round(saved.cpu), "wall_ns": round(saved.wall), "hits": round(saved.hits)},
            "own_cost": {"cpu": own_cpu, "wall_ns": own_wall},
        })
    cpu_total_all = total_cpu.get(unit)
    share = savings.cpu / cpu_total_all if has_cpu and cpu_total_all else None
    if share is not None:
        share = clamps.check("share_le_one", first.name, share, 1.0, "share of all CPU")
    ret_size = sum(i.stats[S_RET_SIZE] for i in infos)
    ret_n = sum(i.stats[S_RET_SIZE_N] for i in infos)
    memory = round(size * ret_size / ret_n) if size and ret_n else None
    cpu_calls = sum(i.stats[S_CPU_CALLS] for _, i in replayed) + sum(r.cpu_calls for r in aggregated)
    cpu_total = sum(i.stats[S_CPU_TOTAL] for _, i in replayed) + sum(r.cpu_total for r in aggregated if r.cpu_calls)
    mean_cost = cpu_total / cpu_calls if cpu_calls else None
    unhashable: set[str] = set()
    for _, info in replayed:
        unhashable |= info.unhashable
    for result in aggregated:
        unhashable.update(result.unhashable_types)
    unhashable_args, unhashable_types = split_unhashable(unhashable)
    sources = {r.source for r in results}
    estimator = _estimator(results)
    rate = min(r.sample_rate for r in results)
    keys = sum(r.distinct_keys for r in results)
    # SHARDS: the sampled keys are Binomial(K, R); K estimated as sampled / R has relative standard
    # error sqrt((1 - R) / (K R)). The listed estimator's error is not known (it assumes the
    # unlisted calls behave like the listed ones).
    error = (math.sqrt((1 - rate) / (keys * rate)) if estimator in ("shards", "tracer_shards", "mixed")
             and 0 < rate < 1 and keys > 0 else None)
    op = Opportunity(
        name=first.name, file=first.file, line=first.line, kind=first.kind,
        method=any(i.stats[S_METHOD] for i in infos), calls=calls, errors=errors,
        distinct_keys=sum(r.distinct_keys for r in results), hits_unbounded=hits,
        hit_ratio=_ratio(hits, calls), hit_ratio_at_128=_ratio(_hits_at(sizes, totals, DEFAULT_MAXSIZE), calls),
        recommended_maxsize=size if not unusable else None,
        hit_ratio_at_recommended=_ratio(_hits_at(sizes, totals, size), calls) if size else None,
        consistent=not inconsistent, inconsistent_keys=inconsistent,
        overlapping=sum(r.overlapping for r in results), sample_rate=rate,
        estimator=estimator, estimate_error=error, own_cpu=own_cpu_total, own_wall=wall_total, mean_wall=wall_total / wall_calls if wall_calls else None,
        unhashable_types=unhashable_types, unhashable_args=unhashable_args,
        returns_unhashable=(any(i.stats[S_RET_UNHASHABLE] for i in infos)
                            or any(r.unhashable_returns for r in aggregated)),
        cpu_unit=unit if has_cpu else "none", savings=savings, share=share,
        memory_bytes=memory if not unusable else None, mean_cost=mean_cost,
        curve=_curve_points(sizes, totals, calls, options.curve_points), processes=per_process, hit_steps=steps,
        identity=identity, identity_collisions=sum(r.identity_collisions for r in results),
        source=sources.pop() if len(sources) == 1 else "mixed", fresh_keys=sum(r.fresh_keys for r in aggregated),
        cheap_ns=max((r.cheap_ns for r in aggregated), default=0),
        shadowed_calls=sum(r.shadowed_calls for r in aggregated),
        # Every keyed call that returned returned None (the tracer's errors are not split by key:
        # a call that raised may have been keyed or not). Aggregates only: spans do not say.
        returns_none=bool(aggregated) and len(aggregated) == len(results) and all(
            r.none_returns > 0 and r.none_returns + r.errors >= r.keyed_calls - r.shadowed_calls for r in aggregated),
    )
    op.advice = _advise(op, options, lookup or LookupCost(0.0, 0.0, 0, 0, "none"))
    if op.advice.kind in NOT_RECOMMENDED:
        op.recommended_maxsize = None
        op.hit_ratio_at_recommended = None
        op.memory_bytes = None
        op.advice.paste = None
    if op.advice.kind == "not_worth_it" or op.advice.kind in CAVEATED:
        op.advice.paste = None
    return op


def impure_reach(model: Model, impure: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[list[str]]]:
    """For each function that calls one of ``impure``: a shortest call path to each, nearest first.

    Functions are (name, file) as in the report; the call graph is ``Model.call_edges`` (parent
    span links and summarised calls, across processes). A path runs from the caller to the
    impure function, e.g. ``["a", "b", "impure"]`` for a -> b -> impure; self-calls are ignored.
    """
    functions = model.functions
    callers: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for caller_index, callee_index in model.call_edges() | profile_edges(model):
        a, b = functions[caller_index], functions[callee_index]
        ka, kb = (a.name, a.file), (b.name, b.file)
        if ka != kb:
            callers.setdefault(kb, set()).add(ka)
    found: dict[tuple[str, str], list[list[str]]] = {}
    for seed in sorted(impure):
        via: dict[tuple[str, str], tuple[str, str]] = {}  # reached caller -> the callee it was reached from
        frontier = [seed]
        while frontier:
            following = []
            for callee in frontier:
                for caller in sorted(callers.get(callee, ())):
                    if caller != seed and caller not in via:
                        via[caller] = callee
                        following.append(caller)
            frontier = following
        for node in via:
            path = [node[0]]
            step = node
            while step != seed:
                step = via[step]
                path.append(step[0])
            found.setdefault(node, []).append(path)
    for paths in found.values():
        paths.sort(key=lambda path: (len(path), path[-1]))
    return found


def profile_edges(model: Model) -> set[tuple[int, int]]:
    """(caller, callee) function index pairs from the v2 aggregates: a node's function calls its
    children's, and the tracer's pairs of calls folded into (other) nodes (every call, not only
    the spans kept)."""
    out: set[tuple[int, int]] = set()
    for process, data in model.profiles.items():
        for caller, callee in data.edges():
            a = model.function_index.get((process, data.functions[caller].name)) if caller in data.functions else None
            b = model.function_index.get((process, data.functions[callee].name)) if callee in data.functions else None
            if a is not None and b is not None and a != b:
                out.add((a, b))
    return out


def call_counts(model: Model) -> dict[tuple[tuple[str, str], tuple[str, str]], int]:
    """Calls made per (caller, callee) pair, functions as (name, file) like the report's, from
    the v2 aggregates: the callee's call-tree nodes under the caller's nodes plus the tracer's
    pairs of calls folded into (other) nodes (the tracer's own account: exact when none were
    lost, and a callee's direct recursion is in its node). Processes without aggregates: none."""
    counts: dict[tuple[tuple[str, str], tuple[str, str]], int] = {}
    for process, data in model.profiles.items():
        named: dict[int, tuple[str, str] | None] = {}
        pairs: list[tuple[int, int, int]] = [(a, b, calls) for (a, b), calls in data.call_edges.items()]
        for node in data.nodes.values():
            parent = data.nodes.get(node.parent) if node.function and node.parent else None
            if parent is not None and parent.function:
                pairs.append((parent.function, node.function, node.calls))
        for caller, callee, calls in pairs:
            a, b = _report_name(model, process, data, caller, named), _report_name(model, process, data, callee, named)
            if a is not None and b is not None and a != b:
                counts[(a, b)] = counts.get((a, b), 0) + calls
    return counts


def _report_name(model: Model, process: int, data: ProfileData, fid: int,
                 named: dict[int, tuple[str, str] | None]) -> tuple[str, str] | None:
    """The (name, file) the report knows function ``fid`` of ``process`` by (memoised in ``named``)."""
    if fid not in named:
        info = data.functions.get(fid)
        index = model.function_index.get((process, info.name)) if info is not None else None
        named[fid] = None if index is None else (model.functions[index].name, model.functions[index].file)
    return named[fid]


def _one_to_one(outer: Opportunity, inner: Opportunity, calls_made: int) -> bool:
    """Every call of ``inner`` was made by ``outer``, once per call of ``outer``, with as many
    distinct keys and the same hits at every cache size (and, for recursive ones, as many calls
    left out as nested in hits): the keys correspond one to one as far as the figures can tell,
    so a cache on ``outer`` skips every call a cache on ``inner`` would. Aggregates only (spans
    carry no call counts). Same tier, advised: the row keeps the outer one's advice."""
    made = outer.calls + outer.shadowed_calls  # every call, as the call counts are
    return (outer.source == inner.source == "aggregates" and outer.shadowed_calls == inner.shadowed_calls
            and made == inner.calls + inner.shadowed_calls == calls_made > 0 and outer.calls == inner.calls
            and tier(outer.advice.kind) == tier(inner.advice.kind) in ("recommended", "caveated")
            and round(outer.distinct_keys) == round(inner.distinct_keys) and outer.hits_unbounded == inner.hits_unbounded
            and outer.hit_steps == inner.hit_steps)


def link_chains(opportunities: Sequence[Opportunity],
                counts: dict[tuple[tuple[str, str], tuple[str, str]], int]) -> None:
    """Group one-to-one call chains (``_one_to_one``: e.g. ``diff`` > ``_derivative_dispatch`` >
    ``Derivative.__new__``) into one row: the outermost function's, which covers the others
    (``covers``, in ``opportunities`` order; each has ``covered_by``). Otherwise each would take
    a row of its own with the same hits and nested savings, pushing other functions out of the
    table's top N."""
    by_key = {(op.name, op.file): op for op in opportunities}
    outer_of: dict[tuple[str, str], tuple[str, str]] = {}
    for (caller, callee), calls in counts.items():
        outer, inner = by_key.get(caller), by_key.get(callee)
        if outer is not None and inner is not None and _one_to_one(outer, inner, calls):
            outer_of[callee] = caller  # at most one caller makes every call
    for op in opportunities:
        key = root = (op.name, op.file)
        seen = {key}
        while root in outer_of and outer_of[root] not in seen:
            root = outer_of[root]
            seen.add(root)
        if root != key and root not in outer_of:  # (a cycle has no outermost function)
            outer = by_key[root]
            op.covered_by = outer.name
            outer.covers.append(op)


def _calls_impure(op: Opportunity, paths: list[list[str]], impure: dict[str, Opportunity]) -> None:
    """``op`` calls impure functions (``paths``, nearest first; ``impure`` by name). A function
    otherwise recommended stays ranked with its savings, under a caveat naming the callee and the
    share of the callee's keys whose returns differed: caching ``op`` would skip those calls and
    their side effects, so the user decides (and gets no paste line)."""
    op.impure_callees = [path[-1] for path in paths]
    for path in paths:
        callee = impure.get(path[-1])
        op.impure_keys.append((callee.inconsistent_keys, callee.distinct_keys) if callee else (0.0, 0.0))
    if op.advice.kind in NOT_RECOMMENDED or op.advice.kind == "not_worth_it":
        return  # not recommended for a reason of its own; impure_callees says the rest
    nearest = paths[0]
    text = f"calls impure {nearest[-1]}"
    if len(nearest) > 2:
        text += " (via " + " > ".join(nearest[1:-1]) + ")"
    bad, keys = op.impure_keys[0]
    if keys:
        text += f", which returned different values for {bad:,.0f} of {keys:,.0f} argument keys ({bad / keys:.1%})"
    if len(paths) > 1:
        text += f", and {len(paths) - 1} other impure function{'s' if len(paths) > 2 else ''}"
    text += (": caching this function skips those calls and their side effects; its own returns were "
             "consistent, so if the callee's differences do not matter here: " + op.advice.text)
    op.advice = Advice("calls_impure", text)


def _callees_unknown(op: Opportunity) -> None:
    """Every call of ``op`` was folded beyond the tracer's call-tree cap and the tracer's pairs
    of callers and callees are incomplete: what it calls is not known, so it cannot be cleared of
    calling functions with side effects (which a cache would skip). Its advice keeps its size
    under that caveat, without a paste line."""
    op.advice = Advice("callees_unknown", "what it calls is not known (the tracer folded all its calls into "
                       "\"(other)\" call-tree nodes, beyond CALLSPAN_MAX_NODES or CALLSPAN_MAX_DEPTH, and lost "
                       "caller-callee pairs beyond its table of CALLSPAN_MAX_NODES pairs, or kept none: an older "
                       "tracer), so it may call functions with side effects that caching it would skip; if it does "
                       "not: " + op.advice.text)


def _estimator(results: list[ProcessResult]) -> str:
    kinds = {r.estimator for r in results} - {"exact"}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "exact")


def _ratio(part: float, whole: float) -> float:
    return min(1.0, part / whole) if whole > 0 else 0.0

