"""Latency per function: wall-time percentiles, running vs suspended time, awaits; slowest calls.

Percentiles are nearest-rank over the calls with their own timing (spans, and summarised calls
listed in ``callspan.calls`` events): the p-th percentile of n sorted values is the value at
rank ceil(p/100 * n). Calls summarised without a per-call listing count in ``calls`` and in the
totals but not in the percentiles (``timed_calls`` says how many did).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
    Model,
)


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


def _percentiles(columns: list[tuple[array[int], array[int]]]) -> tuple[int, int, int, int]:
    """(timed calls, p50, p95, p99) of the calls in ``columns`` ((end, start) arrays)."""
    walls: list[int] = []
    for ends, starts in columns:
        walls.extend(map(int.__sub__, ends, starts))
    walls.sort()
    return len(walls), percentile(walls, 50), percentile(walls, 95), percentile(walls, 99)


def _percentiles_job(job: list[list[tuple[array[int], array[int]]]]) -> list[tuple[int, int, int, int]]:
    return [_percentiles(columns) for columns in job]


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
        jobs: list[list[list[tuple[array[int], array[int]]]]] = []
        size = JOB_CALLS
        for indices in self.groups:
            columns = [(c.end, c.start) for c in map(model.calls.__getitem__, indices) if c is not None]
            if size >= JOB_CALLS:
                jobs.append([])
                size = 0
            jobs[-1].append(columns)
            size += sum(len(ends) for ends, _ in columns)
        self.computed = iter(imap(_percentiles_job, jobs))  # a pool's imap starts working right away

    def finish(self, stacks: CpuReport | None) -> LatencyReport:
        model = self.model
        computed = (item for job in self.computed for item in job)
        rows = []
        for indices in self.groups:
            timed, p50, p95, p99 = next(computed)
            infos = [model.functions[i] for i in indices]
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
                processes=len({i.process for i in infos}),
            ))
        rows.sort(key=lambda r: (-r.total_wall, r.name))
        slowest = []
        for wall, trace, span, func, start in sorted(model.slow, reverse=True):
            info = model.functions[func]
            stack = (stacks.stack_of(trace, span) if stacks is not None else None) or [info.name]
            slowest.append(SlowCall(info.name, info.file, info.line, wall, start, model.traces[trace],
                                    f"{span:016x}" if span else "", stack))
        return LatencyReport(rows, slowest)


def start(model: Model, imap: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] = map
          ) -> PendingLatency:
    """Start sorting each function's wall times (``imap``: e.g. a process pool's, results in order)."""
    return PendingLatency(model, imap)


def analyze(model: Model, stacks: CpuReport | None) -> LatencyReport:
    """The latency report, computed in this process."""
    return start(model).finish(stacks)
