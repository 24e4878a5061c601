"""Latency per function: wall-time percentiles, running vs suspended time, awaits; slowest calls.

Percentiles are nearest-rank over the calls with their own timing (spans, and summarised calls
listed in ``callspan.calls`` events): the p-th percentile of n sorted values is the value at
rank ceil(p/100 * n). Calls summarised without a per-call listing count in ``calls`` and in the
totals but not in the percentiles (``timed_calls`` says how many did).

Processes with schema v2 aggregates (``Model.profiles``) cover every call: calls, errors, wall
and running totals come from their function table, suspended time and awaits from their call
tree, and percentiles from their wall-time sketches (each bucket stands for the value
``profile.bucket_value``, within 1% of the calls in it; same nearest-rank rule). When a function
has aggregates in some process, its percentiles are those of the aggregates (``source``
"aggregates"). Their spans are only examples (the slowest calls).

Each row also has its wall-time distribution (``LatencyRow.distribution``: calls per bin of
``BINS_PER_DECADE`` equal steps per decade on a log scale, ``bin_of``), from the same calls as
its percentiles: each call's wall time, or each sketch bucket at its value.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from callspan.analysis.cpu import CpuReport
from callspan.analysis.model import (
    S_AWAITS,
    S_CALLS,
    S_ERRORS,
    S_MAX_WALL,
    S_RUN,
    S_SUM_ERRORS,
    S_SUSPENDED,
    S_WALL,
    CallSource,
    FunctionInfo,
    Model,
)
from callspan.analysis.profile import ProfileData, Sketch, bucket_value, sketch_max, sketch_percentiles

BINS_PER_DECADE = 4
# The smallest integer wall time (ns) of each bin: bin k holds [10**(k/4), 10**((k+1)/4)), up to ~3 h.
BIN_FLOORS = [math.ceil(10 ** (k / BINS_PER_DECADE) - 1e-9) for k in range(BINS_PER_DECADE * 13)]


def bin_of(wall_ns: float) -> int:
    """The distribution bin of a wall time (bin 0 also holds 0 and 1 ns)."""
    return max(0, bisect_right(BIN_FLOORS, round(wall_ns)) - 1)


def bin_floor(index: int) -> float:
    """The lower edge of a bin, in ns."""
    return 10 ** (index / BINS_PER_DECADE)


def _bin_counts(sorted_values: Sequence[int], into: dict[int, int]) -> None:
    """Add the bins of ascending ``sorted_values`` to ``into`` (bin -> calls), by bisection."""
    if not sorted_values:
        return
    low, high = bin_of(sorted_values[0]), bin_of(sorted_values[-1])
    for index in range(low, high + 1):
        start = bisect_left(sorted_values, BIN_FLOORS[index]) if index > low else 0
        end = (bisect_left(sorted_values, BIN_FLOORS[index + 1])
               if index < high and index + 1 < len(BIN_FLOORS) else len(sorted_values))
        if end > start:
            into[index] = into.get(index, 0) + end - start


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of ascending ``sorted_values`` (0 for none)."""
    n = len(sorted_values)
    if not n:
        return 0
    rank = max(1, math.ceil(p / 100.0 * n - 1e-9))
    return sorted_values[min(n, rank) - 1]


@dataclass(slots=True)
class LatencyRow:
    name: str
    file: str
    line: int
    kind: str
    calls: int
    errors: int
    timed_calls: int
    p50: int
    p95: int
    p99: int
    max: int
    total_wall: int
    mean_running: float
    mean_suspended: float | None  # coroutines only
    awaits_per_call: float | None
    processes: int
    calls_by_process: dict[int, int]  # process index (Model.processes) -> calls there
    source: str = "spans"  # "aggregates": totals and percentiles from v2 aggregates (see the module docstring)
    distribution: dict[int, int] = field(default_factory=dict)  # bin_of(wall) -> calls, of the timed calls


@dataclass(slots=True)
class SlowCall:
    name: str
    file: str
    line: int
    wall: int
    start_ns: int
    trace_id: str
    span_id: str
    stack: list[str]


@dataclass(slots=True)
class LatencyReport:
    functions: list[LatencyRow]  # by total wall time, descending
    slowest: list[SlowCall]


def _rank(p: float, n: int) -> int:
    return min(n, max(1, math.ceil(p / 100.0 * n - 1e-9)))


Percentiles = tuple[int, int, int, int, dict[int, int]]  # timed calls, p50, p95, p99, distribution


def _percentiles(sources: list[CallSource]) -> Percentiles:
    """(timed calls, p50, p95, p99, distribution) of the calls in ``sources``."""
    distribution: dict[int, int] = {}
    if any(source.spilled for source in sources):
        n = sum(map(len, sources))
        if not n:
            return 0, 0, 0, 0, distribution

        def walls() -> Iterator[array[int]]:
            for source in sources:
                for piece in source.pieces():
                    yield array("q", map(int.__sub__, piece.end, piece.start))

        p50, p95, p99 = select_ranks(walls, [_rank(50, n), _rank(95, n), _rank(99, n)])
        for chunk in walls():
            _bin_counts(sorted(chunk), distribution)
        return n, p50, p95, p99, distribution
    values: list[int] = []
    for source in sources:
        values.extend(map(int.__sub__, source.tail.end, source.tail.start))
    values.sort()
    _bin_counts(values, distribution)
    return len(values), percentile(values, 50), percentile(values, 95), percentile(values, 99), distribution


def _percentiles_job(job: list[list[CallSource]]) -> list[Percentiles]:
    return [_percentiles(sources) for sources in job]


SELECT_COLLECT = 1 << 18  # values few enough to collect and sort
SELECT_BUCKETS = 1 << 16


def select_ranks(chunks: Callable[[], Iterable[array[int]]], ranks: list[int]) -> list[int]:
    """The values of 1-based ``ranks`` in the ascending order of all values ``chunks()`` yields.

    Exact, in memory independent of the number of values: each pass over ``chunks()`` narrows
    every rank's value range to one of ``SELECT_BUCKETS`` equal buckets (a histogram of the
    values in the range), until a range holds few enough values to sort.
    """
    lo = hi = None
    total = 0
    for chunk in chunks():
        if len(chunk):
            low, high = min(chunk), max(chunk)
            lo = low if lo is None or low < lo else lo
            hi = high if hi is None or high > hi else hi
            total += len(chunk)
    if lo is None or hi is None:
        raise ValueError("select_ranks: no values")
    # Per rank still open: [lo, hi] holds it, ``inside`` values are in the range, ``below`` under it.
    open_ranks = {rank: (lo, hi, total, 0) for rank in ranks}
    found: dict[int, int] = {}
    while open_ranks:
        ranges = {(lo, hi, inside, below) for lo, hi, inside, below in open_ranks.values()}
        collect = {r for r in ranges if r[2] <= SELECT_COLLECT or r[0] == r[1]}
        counted = {r: ((r[1] - r[0]) // SELECT_BUCKETS).bit_length() for r in ranges - collect}  # shift
        values: dict[tuple[int, int, int, int], list[int]] = {r: [] for r in collect}
        histograms: dict[tuple[int, int, int, int], Counter[int]] = {r: Counter() for r in counted}
        for chunk in chunks():
            for r in collect:
                if r[0] != r[1]:
                    values[r].extend(v for v in chunk if r[0] <= v <= r[1])
            for r, shift in counted.items():
                base = r[0]
                histograms[r].update((v - base) >> shift for v in chunk if base <= v <= r[1])
        following = {}
        for rank, r in open_ranks.items():
            lo, hi, inside, below = r
            if r in collect:
                if lo == hi:
                    found[rank] = lo
                else:
                    ordered = sorted(values[r])
                    found[rank] = ordered[rank - below - 1]
                continue
            shift = counted[r]
            histogram = histograms[r]
            for bucket in sorted(histogram):
                count = histogram[bucket]
                if below + count >= rank:
                    b_lo = lo + (bucket << shift)
                    following[rank] = (b_lo, min(hi, b_lo + (1 << shift) - 1), count, below)
                    break
                below += count
        open_ranks = following
    return [found[rank] for rank in ranks]


JOB_CALLS = 250_000  # wall-time sorts are sent to workers in jobs of about this many calls


class PendingLatency:
    """Percentiles being computed (maybe in worker processes); :meth:`finish` makes the report."""

    def __init__(self, model: Model, imap: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] = map
                 ) -> None:
        self.model = model
        groups: dict[tuple[str, str], list[int]] = {}
        for index, info in enumerate(model.functions):
            groups.setdefault((info.name, info.file), []).append(index)
        self.groups = list(groups.values())
        jobs: list[list[list[CallSource]]] = []
        size = JOB_CALLS
        profiles = model.profiles
        self.ids_by_name = {process: data.ids_by_name() for process, data in profiles.items()}
        for indices in self.groups:
            # Spans of processes with aggregates are examples: their percentiles come from sketches.
            sources = [source for index, source in zip(indices, map(model.call_source, indices), strict=True)
                       if source is not None and model.functions[index].process not in profiles]
            if size >= JOB_CALLS:
                jobs.append([])
                size = 0
            jobs[-1].append(sources)
            size += sum(map(len, sources))
        self.computed = iter(imap(_percentiles_job, jobs))  # a pool's imap starts working right away

    def finish(self, stacks: CpuReport | None) -> LatencyReport:
        model = self.model
        computed = (item for job in self.computed for item in job)
        rows = []
        for indices in self.groups:
            timed, p50, p95, p99, distribution = next(computed)
            infos = [model.functions[i] for i in indices]
            aggregates = [(model.profiles[i.process], fid) for i in infos if i.process in model.profiles
                          for fid in self.ids_by_name[i.process].get(i.name, ())]
            by_process: dict[int, int] = {}
            for i in infos:
                data = model.profiles.get(i.process)
                calls_there = i.calls if data is None else sum(
                    data.functions[fid].calls for fid in self.ids_by_name[i.process].get(i.name, ()))
                if calls_there:  # a forked child's function table holds its parent's functions
                    by_process[i.process] = by_process.get(i.process, 0) + calls_there
            if aggregates:
                rows.append(_aggregate_row(infos, aggregates, model.profiles, by_process))
                continue
            first = infos[0]
            calls = sum(i.calls for i in infos)
            span_calls = sum(i.stats[S_CALLS] for i in infos)
            suspended = sum(i.stats[S_SUSPENDED] for i in infos)
            coroutine = first.kind in ("coroutine", "async_generator") or suspended > 0
            rows.append(LatencyRow(
                name=first.name, file=first.file, line=first.line, kind=first.kind, calls=calls,
                errors=sum(i.stats[S_ERRORS] + i.stats[S_SUM_ERRORS] for i in infos), timed_calls=timed,
                p50=p50, p95=p95, p99=p99,
                max=max(i.stats[S_MAX_WALL] for i in infos),
                total_wall=sum(i.stats[S_WALL] for i in infos),
                mean_running=sum(i.stats[S_RUN] for i in infos) / calls if calls else 0.0,
                mean_suspended=suspended / span_calls if coroutine and span_calls else None,
                awaits_per_call=sum(i.stats[S_AWAITS] for i in infos) / span_calls if coroutine and span_calls else None,
                processes=len(by_process), calls_by_process=by_process, distribution=distribution,
            ))
        rows.sort(key=lambda r: (-r.total_wall, r.name))
        slowest = []
        for wall, trace, span, func, start, trace_id in sorted(model.slow, reverse=True):
            info = model.functions[func]
            stack = (stacks.stack_of(trace, span) if stacks is not None else None) or [info.name]
            slowest.append(SlowCall(info.name, info.file, info.line, wall, start, trace_id,
                                    f"{span:016x}" if span else "", stack))
        return LatencyReport(rows, slowest)


def _aggregate_row(infos: list[FunctionInfo], aggregates: list[tuple[ProfileData, int]],
                   profiles: dict[int, ProfileData], by_process: dict[int, int]) -> LatencyRow:
    """A function with v2 aggregates in some process: their exact totals, sketch percentiles,
    plus the totals of the processes that only have spans (v1)."""
    first = infos[0]
    spans_only = [i for i in infos if i.process not in profiles]
    functions = [data.functions[fid] for data, fid in aggregates]
    calls = sum(i.calls for i in spans_only) + sum(f.calls for f in functions)
    span_calls = sum(i.stats[S_CALLS] for i in spans_only)
    suspended = sum(i.stats[S_SUSPENDED] for i in spans_only)
    awaits = sum(i.stats[S_AWAITS] for i in spans_only)
    for data, fid in aggregates:
        node_suspended, node_awaits, _ = data.node_totals(fid)
        suspended += node_suspended
        awaits += node_awaits
    awaited_calls = span_calls + sum(f.calls for f in functions)
    kind = next((f.kind for f in functions if f.kind), first.kind)
    coroutine = kind in ("coroutine", "async_generator") or suspended > 0
    sketches: list[tuple[Sketch, float]] = [(data.wall_sketch.get(fid, {}), data.gamma) for data, fid in aggregates]
    timed, (p50, p95, p99) = sketch_percentiles(sketches, (50, 95, 99))
    distribution: dict[int, int] = {}
    for sketch, gamma in sketches:
        for bucket, count in sketch.items():
            if count > 0:
                index = bin_of(bucket_value(bucket, gamma))
                distribution[index] = distribution.get(index, 0) + count
    return LatencyRow(
        name=first.name, file=first.file or functions[0].file, line=first.line or functions[0].line, kind=kind,
        calls=calls, errors=sum(i.stats[S_ERRORS] + i.stats[S_SUM_ERRORS] for i in spans_only)
        + sum(f.errors for f in functions),
        timed_calls=timed, p50=p50, p95=p95, p99=p99,
        # Spans are real calls: the longest of them when it beats the sketch's top bucket value.
        max=max([sketch_max(sketches)] + [i.stats[S_MAX_WALL] for i in infos]),
        total_wall=sum(i.stats[S_WALL] for i in spans_only) + sum(f.wall_ns for f in functions),
        mean_running=(sum(i.stats[S_RUN] for i in spans_only) + sum(f.run_ns for f in functions)) / calls
        if calls else 0.0,
        mean_suspended=suspended / awaited_calls if coroutine and awaited_calls else None,
        awaits_per_call=awaits / awaited_calls if coroutine and awaited_calls else None,
        processes=len(by_process), calls_by_process=by_process, source="aggregates",
        distribution=distribution,
    )


def start(model: Model, imap: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] = map
          ) -> PendingLatency:
    """Start sorting each function's wall times (``imap``: e.g. a process pool's, results in order)."""
    return PendingLatency(model, imap)


def analyze(model: Model, stacks: CpuReport | None) -> LatencyReport:
    """The latency report, computed in this process."""
    return start(model).finish(stacks)
