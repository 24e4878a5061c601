"""Latency per function: wall-time percentiles, running vs suspended time, awaits; slowest calls.

Percentiles are nearest-rank over the calls with their own timing (spans, and summarised calls
listed in ``callspan.calls`` events): the p-th percentile of n sorted values is the value at
rank ceil(p/100 * n). Calls summarised without a per-call listing count in ``calls`` and in the
totals but not in the percentiles (``timed_calls`` says how many did).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


def analyze(model: Model, stacks: CpuReport | None) -> LatencyReport:
    groups: dict[tuple[str, str], list[int]] = {}
    for index, info in enumerate(model.functions):
        groups.setdefault((info.name, info.file), []).append(index)
    rows = []
    for indices in groups.values():
        infos = [model.functions[i] for i in indices]
        walls: list[int] = []
        for i in indices:
            columns = model.calls[i]
            if columns is not None:
                walls.extend(map(int.__sub__, columns.end, columns.start))
        walls.sort()
        first = infos[0]
        calls = sum(i.calls for i in infos)
        span_calls = sum(i.stats[S_CALLS] for i in infos)
        suspended = sum(i.stats[S_SUSPENDED] for i in infos)
        coroutine = first.kind in ("coroutine", "async_generator") or suspended > 0
        rows.append(LatencyRow(
            name=first.name, file=first.file, line=first.line, kind=first.kind, calls=calls,
            errors=sum(i.stats[S_ERRORS] + i.stats[S_SUM_ERRORS] for i in infos), timed_calls=len(walls),
            p50=percentile(walls, 50), p95=percentile(walls, 95), p99=percentile(walls, 99),
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
