"""CPU by complete logical call stack, plus folded-stacks and speedscope export.

A span's stack is the chain of span names from its trace's root (or from the first ancestor
present in the input) down to it, following parent links; the tracer already links asyncio
task children to the logical parent that created them, so stacks cross task boundaries.
Calls summarised on a span (``callspan.summary.*``) are leaves under that span.

Cost is ``callspan.cpu.self`` (unit: the process's ``callspan.cpu.unit``). Without any CPU data
the report falls back to running wall time (``callspan.run_ns``), self = own running time minus
the running time of traced children, clamped at 0 (an approximation when children are tasks
running concurrently).

Processes with schema v2 aggregates (``Model.profiles``) cover every call: their stacks are the
call tree's paths (function names from the thread's outermost call; the thread root itself is
not a frame, as span stacks have none; calls the tracer folded under its node or depth cap are a
frame ``(other)``), with the nodes' exact calls, self and total CPU (running time without CPU
data). Their spans are then only examples: resolved for the stacks asked for, not counted.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress, repeat

from callspan.analysis.model import S_CPU_CALLS, Model, RowColumns
from callspan.analysis.profile import ProfileData
from callspan.untrusted import printable

ROOT = 0  # stack id of the empty stack
UNRESOLVED = 0xFFFFFFFF


@dataclass(slots=True)
class StackStat:
    stack: int
    self_cost: int
    total_cost: int
    calls: int


class Stacks:
    """Interned stacks: each is (parent stack, frame name id)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.name_index: dict[str, int] = {}
        self.parent = array("I", [ROOT])
        self.frame = array("I", [0])
        self.index: dict[tuple[int, int], int] = {}

    def name_id(self, name: str) -> int:
        index = self.name_index.get(name)
        if index is None:
            index = self.name_index[name] = len(self.names)
            self.names.append(name)
        return index

    def child(self, parent: int, name_id: int) -> int:
        key = (parent, name_id)
        stack = self.index.get(key)
        if stack is None:
            stack = self.index[key] = len(self.parent)
            self.parent.append(parent)
            self.frame.append(name_id)
        return stack

    def frames(self, stack: int) -> list[int]:
        out = []
        while stack != ROOT:
            out.append(self.frame[stack])
            stack = self.parent[stack]
        out.reverse()
        return out

    def path(self, stack: int) -> list[str]:
        return [self.names[i] for i in self.frames(stack)]


@dataclass(slots=True)
class CpuReport:
    basis: str  # "cpu" or "wall"
    unit: str  # "ns", "instructions", ... ("ns" for the wall basis)
    total_self: int
    stacks: list[StackStat]  # every stack with a cost or a call, by self cost descending
    table: Stacks
    frame_files: dict[str, tuple[str, int]]  # frame name -> (file, line) when known
    spans: int
    orphans: int  # spans whose parent was not in the input (their stack starts at them)
    wanted: dict[tuple[int, int], list[str]]  # (trace key, span id) -> stack, as asked
    aggregate_processes: int = 0  # processes whose costs came from v2 aggregates, not spans

    def stack_of(self, trace: int, span: int) -> list[str] | None:
        return self.wanted.get((trace, span))


def resolve(model: Model, wanted: Iterable[tuple[int, int]] = ()) -> CpuReport:
    """Resolve every row's stack and aggregate cost per stack.

    ``wanted``: (trace key, span id) pairs whose stacks the caller needs (slowest calls),
    available afterwards through ``CpuReport.stack_of``. Rows are resolved one partition at a
    time (``Model.row_partitions``: every row of a trace in one), so memory follows the
    partition, not the input; stacks are ranked by cost, then by path, whatever the order.
    """
    table = Stacks()
    frame_files: dict[str, tuple[str, int]] = {}
    func_name = []
    for info in model.functions:
        func_name.append(table.name_id(info.name))
        if info.file and info.name not in frame_files:
            frame_files[info.name] = (info.file, info.line)
    profiles = model.profiles
    for data in profiles.values():
        for function in data.functions.values():
            if function.file and function.name not in frame_files:
                frame_files[function.name] = (function.file, function.line)
    units: dict[str, int] = {}
    for info in model.functions:
        unit = model.processes[info.process].cpu_unit
        if unit and unit != "none" and info.stats[S_CPU_CALLS] and info.process not in profiles:
            units[unit] = units.get(unit, 0) + info.stats[S_CPU_CALLS]
    for process, data in profiles.items():
        unit = model.processes[process].cpu_unit
        if data.has_cpu:
            unit = unit if unit and unit != "none" else "unknown"
            units[unit] = units.get(unit, 0) + sum(f.calls for f in data.functions.values())
    # Rows of v2 processes are examples, not counted: only theirs make the row basis.
    counted = bytes(0 if info.process in profiles else 1 for info in model.functions)
    has_cpu = bool(units) if profiles else model.rows_with_cpu > 0
    basis = "cpu" if has_cpu else "wall"
    unit = (max(units, key=units.__getitem__) if units else "unknown") if has_cpu else "ns"
    if len(units) > 1:
        unit = "mixed"
    self_by: list[int] = []
    total_by: list[int] = []
    calls_by: list[int] = []
    found: dict[tuple[int, int], list[str]] = {}
    wanted_set = set(wanted)
    wanted_spans = {span for _, span in wanted_set}
    spans_seen = orphans = traces = 0
    for rows in model.row_partitions():
        n = len(rows)
        spans_seen += n
        traces += len(set(rows.trace))  # a trace's rows are all in one partition
        row_stack, lost = _resolve_rows(table, rows, func_name)
        orphans += lost
        grow = len(table.parent) - len(self_by)
        self_by.extend(repeat(0, grow))
        total_by.extend(repeat(0, grow))
        calls_by.extend(repeat(0, grow))
        self_cost = rows.self_cost if has_cpu else _wall_self(rows)
        total_cost = rows.total_cost if has_cpu else rows.run
        if profiles:
            for s, c, t, k, f in zip(row_stack, self_cost, total_cost, rows.count, rows.func, strict=True):
                if counted[f]:
                    self_by[s] += c
                    total_by[s] += t
                    calls_by[s] += k
        else:
            for s, c, t, k in zip(row_stack, self_cost, total_cost, rows.count, strict=True):
                self_by[s] += c
                total_by[s] += t
                calls_by[s] += k
        if wanted_set:
            # Only rows with a wanted span id can match: find them in C.
            for i in compress(range(n), map(wanted_spans.__contains__, rows.span)):
                pair = (rows.trace[i], rows.span[i])
                if pair in wanted_set:
                    found[pair] = table.path(row_stack[i])
    for data in profiles.values():
        for stack, self_cost_of, total_cost_of, calls in _profile_stacks(table, data, has_cpu):
            grow = len(table.parent) - len(self_by)
            if grow > 0:
                self_by.extend(repeat(0, grow))
                total_by.extend(repeat(0, grow))
                calls_by.extend(repeat(0, grow))
            self_by[stack] += self_cost_of
            total_by[stack] += total_cost_of
            calls_by[stack] += calls
    stats = [StackStat(s, self_by[s], total_by[s], calls_by[s]) for s in range(1, len(self_by)) if calls_by[s]]
    stats.sort(key=lambda st: (-st.self_cost, -st.total_cost, table.path(st.stack)))
    model.trace_count = traces
    return CpuReport(basis, unit, sum(self_by), stats, table, frame_files, spans_seen, orphans, found,
                     len(profiles))


def _profile_stacks(table: Stacks, data: ProfileData, has_cpu: bool) -> list[tuple[int, int, int, int]]:
    """(stack, self cost, total cost, calls) of every call-tree node of one process (thread roots
    aside). Without CPU: total = running time, self = that minus the children's, clamped at 0."""
    nodes = data.nodes
    child_run: dict[int, int] = {}
    if not has_cpu:
        for node in nodes.values():
            if node.parent in nodes:
                child_run[node.parent] = child_run.get(node.parent, 0) + node.run_ns
    # Node id -> stack, parents first (walking up to the first node with a known stack).
    stack_of: dict[int, int] = {}
    out = []
    for nid in nodes:
        chain: list[int] = []
        on_chain: set[int] = set()
        current = nid
        base = ROOT
        while True:
            known = stack_of.get(current)
            if known is not None:
                base = known
                break
            step = nodes.get(current)
            if step is None or current in on_chain:
                break  # a parent missing from the input, or a cycle: the stack starts below it
            chain.append(current)
            on_chain.add(current)
            if not step.parent:
                break
            current = step.parent
        for member in reversed(chain):
            node = nodes[member]
            if not node.is_thread_root:  # span stacks have no thread frame
                base = table.child(base, table.name_id(data.frame_name(node)))
            stack_of[member] = base
        stack = stack_of[nid]
        if stack == ROOT:
            continue
        node = nodes[nid]
        if has_cpu:
            out.append((stack, node.cpu_self, node.cpu_total, node.calls))
        else:
            out.append((stack, max(0, node.run_ns - child_run.get(nid, 0)), node.run_ns, node.calls))
    return out


def _resolve_rows(table: Stacks, rows: RowColumns, func_name: list[int]) -> tuple[array[int], int]:
    """Each row's stack (interned in ``table``), and how many rows' parents were absent."""
    n = len(rows)
    row_stack = array("I", [UNRESOLVED]) * n
    traces = rows.trace
    spans = rows.span
    parents = rows.parent
    funcs = rows.func
    # Stable sort: within a trace, rows stay in arrival order, which is end order (exporters
    # write a span when it ends), so walking a trace's rows backwards meets parents first.
    order = sorted(range(n), key=traces.__getitem__)
    index = table.index
    stack_parent = table.parent
    stack_frame = table.frame
    orphans = 0
    start = 0
    while start < n:
        trace = traces[order[start]]
        end = start + 1
        while end < n and traces[order[end]] == trace:
            end += 1
        group = order[start:end]
        by_span = {spans[i]: i for i in group}
        by_span.pop(0, None)
        for i in reversed(group):
            p = parents[i]
            base = ROOT
            if p:
                pr = by_span.get(p)
                if pr is None:
                    orphans += 1
                else:
                    base = row_stack[pr]
                    if base == UNRESOLVED:
                        base = _resolve_chain(table, pr, by_span, parents, funcs, func_name, row_stack)
            key = (base, func_name[funcs[i]])
            stack = index.get(key)
            if stack is None:
                stack = index[key] = len(stack_parent)
                stack_parent.append(base)
                stack_frame.append(key[1])
            row_stack[i] = stack
        start = end
    return row_stack, orphans


def _resolve_chain(table: Stacks, row: int, by_span: dict[int, int], parents: array[int], funcs: array[int],
                   func_name: list[int], row_stack: array[int]) -> int:
    """Stack of ``row`` when its ancestors are not resolved yet (spans out of end order)."""
    chain = [row]
    base = ROOT
    r = row
    while len(chain) <= len(by_span) + 1:
        p = parents[r]
        pr = by_span.get(p) if p else None
        if pr is None:
            break
        if row_stack[pr] != UNRESOLVED:
            base = row_stack[pr]
            break
        chain.append(pr)
        r = pr
    else:  # a parent cycle in malformed input: cut it at the row asked for
        chain = [row]
        base = ROOT
    for r in reversed(chain):
        base = table.child(base, func_name[funcs[r]])
        row_stack[r] = base
    return base


def _wall_self(rows: RowColumns) -> array[int]:
    """Running time minus the running time of traced children (clamped at 0)."""
    n = len(rows)
    child_run = array("q", bytes(8 * n))
    by_span: dict[tuple[int, int], int] = {}
    for i in range(n):
        if rows.span[i]:
            by_span[(rows.trace[i], rows.span[i])] = i
    for i in range(n):
        p = rows.parent[i]
        if p:
            pr = by_span.get((rows.trace[i], p))
            if pr is not None:
                child_run[pr] += rows.run[i]
    return array("q", (max(0, rows.run[i] - child_run[i]) for i in range(n)))


def _clean(name: str) -> str:
    # ";" separates frames, a newline stacks; other controls are escaped as in every output
    # (a folded file is read with cat and less too).
    return printable(name.replace(";", ":").replace("\n", " ").replace("\r", " ")) or "?"


def folded(report: CpuReport) -> str:
    """Brendan Gregg's folded stacks: ``root;child;leaf <self cost>`` per line."""
    lines = []
    for st in report.stacks:
        if st.self_cost > 0 and st.stack != ROOT:
            lines.append(";".join(_clean(n) for n in report.table.path(st.stack)) + f" {st.self_cost}")
    lines.sort()
    return "\n".join(lines) + ("\n" if lines else "")


_SPEEDSCOPE_UNITS = {"ns": "nanoseconds"}


def speedscope(report: CpuReport, name: str = "callspan: CPU by call stack") -> dict[str, object]:
    """A speedscope file (https://www.speedscope.app/file-format-schema.json), one sampled profile."""
    frames: list[dict[str, object]] = []
    frame_of: dict[int, int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    for st in sorted(report.stacks, key=lambda s: report.table.path(s.stack)):
        if st.self_cost <= 0 or st.stack == ROOT:
            continue
        sample = []
        for name_id in report.table.frames(st.stack):
            index = frame_of.get(name_id)
            if index is None:
                index = frame_of[name_id] = len(frames)
                frame_name = report.table.names[name_id]
                frame: dict[str, object] = {"name": frame_name}
                where = report.frame_files.get(frame_name)
                if where and where[0]:
                    frame["file"] = where[0]
                    if where[1]:
                        frame["line"] = where[1]
                frames.append(frame)
            sample.append(index)
        samples.append(sample)
        weights.append(st.self_cost)
    unit = _SPEEDSCOPE_UNITS.get(report.unit, "none")
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "version": "0.6.0",
        "name": name,
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [{
            "type": "sampled",
            "name": f"self {'CPU' if report.basis == 'cpu' else 'running time'} ({report.unit})",
            "unit": unit,
            "startValue": 0,
            "endValue": sum(weights),
            "samples": samples,
            "weights": weights,
        }],
    }


def speedscope_json(report: CpuReport) -> str:
    return json.dumps(speedscope(report), separators=(",", ":"))
