"""The analyzer's compact model of a set of traces.

Spans are folded into this model one export request at a time and then dropped; what stays is

- per process: a few identifying facts (``ProcessInfo``);
- per (process, function): a row of integer totals (``S_*`` indices) and, when the cache or
  latency report needs them, one entry per call in typed arrays (``CallColumns``: start, end,
  args hash, return hash, CPU, thread, flags: 45 bytes per call, no Python object per call);
- when the CPU or latency report needs call stacks: one entry per span in typed arrays
  (``RowColumns``: trace key, span id, parent id, function, self, total, running, count, flags:
  57 bytes per span), resolved into stacks once all input is read (spans of one trace may
  arrive in different lines or files, children usually before their parents);
- when the cache report runs: the call graph between functions (``Model.call_edges``), a set of
  (caller, callee) function pairs. Parent links are resolved within each chunk of input; a
  parent may arrive in a later chunk (or, for a task outliving its creator, an earlier one), so
  every span's (span id, function) stays (the rows' arrays when there are rows, else 12 bytes
  per span), and so does each child left unresolved in its chunk, until the links are joined
  once all input is read.

The per-call and per-span arrays are what grows with the input: beyond ``memory_budget`` bytes
they are spilled to disk (``callspan.analysis.spill``) and read back by ``call_source``,
``row_partitions`` and ``call_edges``, with the same results. What stays in memory then grows
with the functions, keys and call-graph edges only.

A ``Batch`` is the same thing for one chunk of input with local indices; batches are built in
worker processes, pickled cheaply (typed arrays pickle as bytes) and merged into a ``Model``.
"""
from __future__ import annotations

import hashlib
import heapq
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import is_, itemgetter
from typing import Any, TypeVar

from callspan.analysis import spill
from callspan.analysis.profile import ProfileData
from callspan.analysis.spill import (
    PARTS,
    SORT_SLICE,
    AppendFile,
    Partitions,
    Run,
    Runs,
    SpillDir,
    all_pieces,
    merged_pieces,
    sort_columns,
)

_first = itemgetter(0)
_second = itemgetter(1)

# Per-function integer totals: indices into a stats row.
UNFINISHED_LISTED = 4  # processes without a final window named in the one warning about them

S_CALLS = 0  # calls seen as spans
S_ERRORS = 1  # of which raised
S_CPU_TOTAL = 2  # sum of callspan.cpu.total (spans + summaries)
S_CPU_SELF = 3  # sum of callspan.cpu.self (spans + summaries)
S_CPU_CALLS = 4  # spans that carried callspan.cpu.total
S_WALL = 5  # sum of span durations (spans + summaries), ns
S_RUN = 6  # sum of callspan.run_ns (spans + summaries)
S_SUSPENDED = 7  # sum of callspan.await.suspended_ns
S_AWAITS = 8  # sum of callspan.await.count
S_RET_SIZE = 9  # sum of callspan.return.size
S_RET_SIZE_N = 10  # spans that carried callspan.return.size
S_ARGS_UNHASHABLE = 11  # spans with callspan.args.hashable = false
S_RET_UNHASHABLE = 12  # spans with callspan.return.hashable = false
S_METHOD = 13  # spans with callspan.method = true
S_NO_KEY = 14  # spans without callspan.args.hash
S_SUM_CALLS = 15  # calls folded in from callspan.summary.* arrays
S_SUM_ERRORS = 16
S_SUM_LISTED = 17  # summarised calls listed one by one in callspan.calls events
S_MAX_WALL = 18  # longest single call (spans and listed summarised calls), ns
S_IDENTITY = 19  # spans with callspan.args.identity = true (self hashed by identity)
S_COUNT = 20

# Per-call flags.
F_ERROR = 1  # the call raised
F_SUMMARY = 2  # listed in a callspan.calls event rather than a span of its own
F_UNHASHABLE = 4  # callspan.args.hashable = false (hash is a structural fingerprint)
F_NO_ARGS = 8  # no usable args hash: lru_cache could not key it
F_NO_RETURN = 16  # no return hash
F_IDENTITY = 32  # callspan.args.identity = true: self hashed by identity (id-based key)

# Per-row flags.
R_HAS_CPU = 1
R_SUMMARY = 2
_HAS_CPU = bytes(flags & R_HAS_CPU for flags in range(256))  # translate table: 0 = no CPU

UNKNOWN_KIND = "span"  # spans that are not callspan function spans (e.g. an HTTP server span)

# Impossible figures in the input, by kind: clamped to the nearest possible value as they are read
# (``otlp``, ``profile``), counted, and reported in ``input.impossible`` and ``input.warnings``.
IMPOSSIBLE = {
    "end_before_start": "span(s) or listed call(s) ended before they started: end set to start (wall time 0)",
    "negative_time": "negative start or end time(s): set to 0",
    "negative_cpu": "negative CPU figure(s): set to 0",
    "cpu_self_above_total": "span(s) or summaries with self CPU above their total CPU: self set to the total",
    "negative_value": "negative duration(s) or count(s) (running, suspended, awaits, return size, summarised "
                      "calls): set to 0",
    "negative_aggregate": "negative or non-finite figure(s) in callspan.profile aggregates: set to 0",
}


@dataclass(slots=True)
class ProcessInfo:
    """One traced process (cache keys are only comparable within one)."""

    key: str
    service: str = ""
    pid: int | None = None
    instance: str = ""
    host: str = ""
    cpu_unit: str = ""  # "ns", "instructions", "none" or "" (unknown)
    cpu_counter: str = ""
    schema: int = 0  # callspan.schema of its scope (0: unknown, e.g. Jaeger input)

    @property
    def label(self) -> str:
        parts = [self.service or "?"]
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        elif self.instance:
            parts.append(self.instance[:13])
        if self.host:
            parts.append(f"on {self.host}")
        return " ".join(parts)

    def absorb(self, other: ProcessInfo) -> None:
        for name in ("service", "instance", "host", "cpu_unit", "cpu_counter"):
            if not getattr(self, name) and getattr(other, name):
                setattr(self, name, getattr(other, name))
        if self.pid is None:
            self.pid = other.pid
        self.schema = max(self.schema, other.schema)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "service": self.service, "pid": self.pid,
                "instance": self.instance or None, "host": self.host or None,
                "cpu_unit": self.cpu_unit or None, "cpu_counter": self.cpu_counter or None,
                "schema": self.schema or None}


@dataclass(slots=True)
class FunctionInfo:
    """Static facts of one function in one process, and its totals."""

    process: int
    name: str
    file: str = ""
    line: int = 0
    kind: str = UNKNOWN_KIND
    stats: list[int] = field(default_factory=lambda: [0] * S_COUNT)
    unhashable: set[str] = field(default_factory=set)  # type names from callspan.args.unhashable
    sample_rate: float = 1.0  # smallest callspan.sample_rate of its callspan.calls events

    def absorb_facts(self, file: str, line: int, kind: str) -> None:
        if not self.file and file:
            self.file = file
        if not self.line and line:
            self.line = line
        if self.kind == UNKNOWN_KIND and kind != UNKNOWN_KIND:
            self.kind = kind

    def merge(self, other: FunctionInfo) -> None:
        self.absorb_facts(other.file, other.line, other.kind)
        mine = self.stats
        for i, value in enumerate(other.stats):
            if i == S_MAX_WALL:
                if value > mine[i]:
                    mine[i] = value
            else:
                mine[i] += value
        self.unhashable |= other.unhashable
        if other.sample_rate < self.sample_rate:
            self.sample_rate = other.sample_rate

    @property
    def calls(self) -> int:
        return self.stats[S_CALLS] + self.stats[S_SUM_CALLS]


class ColumnSet:
    """Typed arrays of equal length named by ``__slots__``: pickled as the arrays, in that order."""

    __slots__: tuple[str, ...] = ()

    def __getstate__(self) -> tuple[array[Any], ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[array[Any], ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    def columns(self) -> list[array[Any]]:
        return list(self.__getstate__())

    @classmethod
    def of(cls: type[_Set], columns: Sequence[array[Any]]) -> _Set:
        out = cls.__new__(cls)
        out.__setstate__(tuple(columns))
        return out


_Set = TypeVar("_Set", bound=ColumnSet)


class CallColumns(ColumnSet):
    """One entry per call of one function: what the cache and latency analyses need."""

    __slots__ = ("start", "end", "args", "ret", "cpu", "thread", "flags")

    def __init__(self) -> None:
        self.start = array("q")
        self.end = array("q")
        self.args = array("Q")  # 64-bit args hash, 0 = none
        self.ret = array("Q")  # 64-bit return hash, 0 = none
        self.cpu = array("q")  # callspan.cpu.total, 0 when absent
        self.thread = array("I")  # low 32 bits of thread.id (nesting of sync recursive calls)
        self.flags = array("B")

    def __len__(self) -> int:
        return len(self.start)

    def extend(self, other: CallColumns) -> None:
        self.start.extend(other.start)
        self.end.extend(other.end)
        self.args.extend(other.args)
        self.ret.extend(other.ret)
        self.cpu.extend(other.cpu)
        self.thread.extend(other.thread)
        self.flags.extend(other.flags)


CALL_TYPECODES = "".join(c.typecode for c in CallColumns().columns())
REPLAY_BLOCK = 1 << 16  # calls handed to the cache replay at a time (compiled column sort)
CALL_BYTES = sum(c.itemsize for c in CallColumns().columns())


class CallSource:
    """All calls of one function: runs spilled to disk (each sorted by start) and those in memory.

    Picklable (a path and offsets), so a worker process reads the runs itself.
    """

    __slots__ = ("path", "runs", "tail")

    def __init__(self, path: str, runs: list[Run], tail: CallColumns) -> None:
        self.path = path
        self.runs = runs
        self.tail = tail

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.path, self.runs, self.tail)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.path, self.runs, self.tail = state

    def __len__(self) -> int:
        return sum(n for _, n in self.runs) + len(self.tail)

    @property
    def spilled(self) -> bool:
        return bool(self.runs)

    def blocks(self) -> Iterator[tuple[CallColumns, Sequence[int]]]:
        """(calls, the indices of those to take next, in order), successive blocks in start order.

        The order is that of one stable sort of every call by start time in arrival order,
        whether or not some were spilled (``spill.merged_pieces``). With the compiled column sort,
        each merged piece is sorted once and handed out in ranges of ``REPLAY_BLOCK`` calls (the
        replay's per-call temporaries stay small); without it, as one piece and its sort order.
        """
        if not self.runs:
            pieces: Iterable[list[array[Any]]] = [self.tail.columns()] if len(self.tail) else []
        else:
            ordered = sort_columns(self.tail.columns(), self.tail.start)
            pieces = merged_pieces(Runs(self.path, CALL_TYPECODES), self.runs, ordered, 0)
        for columns in pieces:
            if spill.SORT_COLUMNS is None:
                block = CallColumns.of(columns)
                yield block, sorted(range(len(block)), key=block.start.__getitem__)
                continue
            block = CallColumns.of(spill.SORT_COLUMNS(columns, columns[0]))
            n = len(block)
            for lo in range(0, n, REPLAY_BLOCK):
                yield block, range(lo, min(n, lo + REPLAY_BLOCK))

    def gather(self) -> CallColumns:
        """Every call in one ``CallColumns`` (runs first): for tests and small inputs."""
        out = CallColumns()
        for piece in self.pieces():
            out.extend(piece)
        return out

    def pieces(self) -> Iterator[CallColumns]:
        """Every call, in no particular order, a piece at a time."""
        for columns in all_pieces(Runs(self.path, CALL_TYPECODES), self.runs):
            yield CallColumns.of(columns)
        if len(self.tail):
            yield self.tail


class RowColumns(ColumnSet):
    """One entry per span (and per summarised function on a span): the stack analysis input."""

    __slots__ = ("trace", "span", "parent", "func", "self_cost", "total_cost", "run", "count", "flags")

    def __init__(self) -> None:
        self.trace = array("Q")  # in a Batch: its trace index; in a Model: ``trace_key`` of the trace id
        self.span = array("Q")  # 0 for summary rows (never a parent)
        self.parent = array("Q")  # 0 = none
        self.func = array("I")
        self.self_cost = array("q")
        self.total_cost = array("q")
        self.run = array("q")
        self.count = array("I")
        self.flags = array("B")

    def __len__(self) -> int:
        return len(self.trace)


ROW_TYPECODES = "".join(c.typecode for c in RowColumns().columns())
ROW_BYTES = sum(c.itemsize for c in RowColumns().columns())
LINK_BYTES = 12  # per span id and function, and per pending (parent id, child function)
# Memory of a row while its partition's stacks are resolved (the row, its place in the sort
# order, its stack, the per-trace span lookup), for sizing partitions to the budget.
ROW_RESOLVE_BYTES = ROW_BYTES + 160
MIN_PARTITION_ROWS = 1 << 12  # partitions are not split below this (tiny budgets)


class Links:
    """Caller -> callee edges between functions, and what is needed to find the rest.

    ``edges`` holds resolved (caller function, callee function) pairs. Until ``resolve``, the
    children whose parent span was not found are kept as (parent span id, child function) in
    typed arrays, and every span as (span id, function) (in a ``Batch`` that keeps rows, the
    rows' own arrays, with id 0 for summary rows). Span ids are taken as unique; 0 is none.
    """

    __slots__ = ("edges", "span", "func", "parent", "child")

    JOIN_CHUNK = 1 << 18  # spans per transient lookup dict when joining

    def __init__(self) -> None:
        self.edges: set[tuple[int, int]] = set()  # (caller, callee) function indices
        self.span = array("Q")  # span id of every span read (parents to be)
        self.func = array("I")  # its function
        self.parent = array("Q")  # parent span id of each child not yet joined
        self.child = array("I")  # that child's function

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.edges, self.span, self.func, self.parent, self.child)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.edges, self.span, self.func, self.parent, self.child) = state

    def resolve(self) -> None:
        """Join the pending children to the spans seen; children whose parent is absent stay."""
        if not self.parent:
            return
        step = self.JOIN_CHUNK
        span, func = self.span, self.func
        chunks = ((span[lo:lo + step], func[lo:lo + step]) for lo in range(0, len(span), step))
        self.parent, self.child = self.join(self.parent, self.child, chunks)

    def join(self, parent: array[int], child: array[int], spans: Iterable[tuple[array[int], array[int]]]
             ) -> tuple[array[int], array[int]]:
        """Add the edges from pending (parent, child) pairs to the (span id, function) chunks
        ``spans``; returns the pairs whose parent was not found."""
        # Per-span work stays in C (zip, map, dict, compress); Python loops only over function pairs.
        remaining = list(set(zip(parent, child, strict=True)))
        for span, func in spans:
            if not remaining:
                break
            by_id = dict(zip(span, func, strict=True))
            callers = list(map(by_id.get, map(_first, remaining)))
            self.edges.update((caller, callee) for caller, callee in set(zip(callers, map(_second, remaining),
                                                                             strict=True)) if caller is not None)
            remaining = list(compress(remaining, map(is_, callers, repeat(None))))
        return array("Q", map(_first, remaining)), array("I", map(_second, remaining))

    def drop_spans(self) -> None:
        """After the last ``resolve``: the per-span arrays are no longer needed."""
        self.span = array("Q")
        self.func = array("I")
        self.parent = array("Q")
        self.child = array("I")

    def merge(self, other: Links, function_map: list[int], spans: bool = True) -> None:
        """Fold in a chunk's links (its function indices mapped through ``function_map``);
        ``spans``: also its (span id, function) arrays (not when they are shared with rows)."""
        remap = function_map.__getitem__
        self.edges.update((remap(a), remap(b)) for a, b in other.edges)
        if spans:
            self.span.extend(other.span)
            self.func.extend(array("I", map(remap, other.func)))
        self.parent.extend(other.parent)
        self.child.extend(array("I", map(remap, other.child)))


def _appenders(columns: CallColumns | None) -> tuple[Any, ...] | None:
    if columns is None:
        return None
    return (columns.start.append, columns.end.append, columns.args.append, columns.ret.append,
            columns.cpu.append, columns.thread.append, columns.flags.append)


# A slow-call candidate: (wall_ns, trace index, span id, function index, start_ns).
SlowCall = tuple[int, int, int, int, int]
# In a Model: (wall_ns, trace key, span id, function index, start_ns, trace id).
ModelSlowCall = tuple[int, int, int, int, int, str]
_TRACE_KEY_MASK = (1 << 64) - 1
_HEX = frozenset("0123456789abcdefABCDEF")


def trace_key(trace_id: str) -> int:
    """A 64-bit key for a trace id, kept per row instead of a table of every trace id: the id's
    128 bits folded to 64 (hex ids, as OTLP and Jaeger write them), else a digest of the text.
    Two traces with one key would only share a lookup scope: span ids, not traces, link spans."""
    if 0 < len(trace_id) <= 32 and _HEX.issuperset(trace_id):
        value = int(trace_id, 16)
        return (value >> 64) ^ (value & _TRACE_KEY_MASK)
    return int.from_bytes(hashlib.blake2b(trace_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class Batch:
    """What one chunk of input contributes, with chunk-local process/function/trace indices."""

    def __init__(self, want_calls: bool = True, want_rows: bool = True, slow_keep: int = 0) -> None:
        self.want_calls = want_calls
        self.want_rows = want_rows
        self.slow_keep = slow_keep
        self.processes: list[ProcessInfo] = []
        self.process_index: dict[str, int] = {}
        self.functions: list[FunctionInfo] = []
        self.function_index: dict[tuple[int, str], int] = {}
        self.by_process: list[dict[str, int]] = []  # per process: function name -> index
        self.calls: list[CallColumns | None] = []
        self.appenders: list[tuple[Any, ...] | None] = []  # per function: bound appends of calls
        self.rows = RowColumns()
        self.links = Links() if want_calls else None
        if self.links is not None and want_rows:
            # The rows already hold every span's (span id, function): the links share those
            # arrays (their extra entries have span id 0, which no parent link names).
            self.links.span = self.rows.span
            self.links.func = self.rows.func
        self.traces: list[str] = []
        self.trace_index: dict[str, int] = {}
        self.slow: list[SlowCall] = []  # min-heap on wall
        self.profiles: dict[int, ProfileData] = {}  # process index -> its schema v2 aggregates
        self.spans = 0
        self.requests = 0
        self.first_ns = 0
        self.last_ns = 0
        self.warnings: list[str] = []
        self.impossible: dict[str, int] = {}  # IMPOSSIBLE kind -> figures clamped

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("process_index", "function_index", "trace_index", "by_process", "appenders"):
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.process_index = {p.key: i for i, p in enumerate(self.processes)}
        self.function_index = {(f.process, f.name): i for i, f in enumerate(self.functions)}
        self.trace_index = {t: i for i, t in enumerate(self.traces)}
        self.by_process = [{} for _ in self.processes]
        for i, f in enumerate(self.functions):
            self.by_process[f.process][f.name] = i
        self.appenders = [_appenders(c) for c in self.calls]

    def process(self, info: ProcessInfo) -> int:
        index = self.process_index.get(info.key)
        if index is None:
            index = self.process_index[info.key] = len(self.processes)
            self.processes.append(info)
            self.by_process.append({})
        else:
            self.processes[index].absorb(info)
        return index

    def names_of(self, process: int) -> dict[str, int]:
        """Function name -> index, for one process."""
        return self.by_process[process]

    def function(self, process: int, name: str) -> int:
        key = (process, name)
        index = self.function_index.get(key)
        if index is None:
            index = self.function_index[key] = len(self.functions)
            self.by_process[process][name] = index
            self.functions.append(FunctionInfo(process, name))
            columns = CallColumns() if self.want_calls else None
            self.calls.append(columns)
            self.appenders.append(_appenders(columns))
        return index

    def profile(self, process: int) -> ProfileData:
        data = self.profiles.get(process)
        if data is None:
            data = self.profiles[process] = ProfileData()
        return data

    def trace(self, trace_id: str) -> int:
        index = self.trace_index.get(trace_id)
        if index is None:
            index = self.trace_index[trace_id] = len(self.traces)
            self.traces.append(trace_id)
        return index

    def resolve_links(self) -> None:
        """Join this chunk's children to their parents in it (done in the worker that read it)."""
        if self.links is not None:
            self.links.resolve()

    def offer_slow(self, item: SlowCall) -> None:
        slow = self.slow
        if len(slow) < self.slow_keep:
            heapq.heappush(slow, item)
        elif slow and item > slow[0]:
            heapq.heapreplace(slow, item)

    def note_time(self, start: int, end: int) -> None:
        start, end = max(start, 0), max(end, 0)
        if start and (not self.first_ns or start < self.first_ns):
            self.first_ns = start
        if end > self.last_ns:
            self.last_ns = end


class Model:
    """Everything read so far, merged from batches, with global indices.

    ``memory_budget`` (bytes, 0 = none): when the per-call and per-span arrays held in memory
    grow beyond it, they are spilled to a temporary directory (``spill``) under ``spill_parent``
    (default: the system's). Read them back through ``call_source``, ``row_partitions`` and
    ``call_edges``, which give the same results either way.
    """

    def __init__(self, want_calls: bool = True, want_rows: bool = True, slow_keep: int = 0,
                 memory_budget: int = 0, spill_parent: str | None = None) -> None:
        self.memory_budget = memory_budget
        self.spill_parent = spill_parent
        self.held = 0  # bytes of per-call and per-span arrays in memory
        self.spills = 0
        self._spill: SpillDir | None = None
        self._call_file: AppendFile | None = None
        self._call_runs: dict[int, list[Run]] = {}
        self._row_parts: Partitions | None = None
        self._link_spans: Partitions | None = None
        self._link_pending: Partitions | None = None
        self.rows_with_cpu = 0
        self.want_calls = want_calls
        self.want_rows = want_rows
        self.slow_keep = slow_keep
        self.processes: list[ProcessInfo] = []
        self.process_index: dict[str, int] = {}
        self.functions: list[FunctionInfo] = []
        self.function_index: dict[tuple[int, str], int] = {}
        self.calls: list[CallColumns | None] = []
        self.keyed_calls: list[int] = []  # per function: calls with an args hash (in memory or spilled)
        self.rows = RowColumns()
        self.links = Links() if want_calls else None
        self._share_rows_with_links()
        self.trace_count: int | None = None  # distinct traces, once counted (``cpu.resolve``)
        self.slow: list[ModelSlowCall] = []
        # Process index -> its schema v2 aggregates (``callspan.profile`` spans): where present,
        # the reports take that process's totals from them and its spans are only examples.
        self.profiles: dict[int, ProfileData] = {}
        self.spans = 0
        self.requests = 0
        self.first_ns = 0
        self.last_ns = 0
        self.warnings: list[str] = []
        self.sources: list[str] = []
        self.impossible: dict[str, int] = {}  # IMPOSSIBLE kind -> figures clamped

    def input_warnings(self) -> list[str]:
        """Incomplete or repeated aggregates, and impossible figures clamped, once all input is
        read (added to ``warnings``)."""
        out = []
        unfinished = []
        for process, data in sorted(self.profiles.items()):
            out.extend(data.warnings(self.processes[process].label))
            if data.impossible:
                self.impossible["negative_aggregate"] = self.impossible.get("negative_aggregate", 0) + data.impossible
            coverage = data.coverage()
            if coverage.received and not coverage.final:
                after = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(coverage.end_ns / 1e9)) if coverage.end_ns else "?"
                unfinished.append(f"{self.processes[process].label} after window {coverage.last}, {after} UTC")
        if unfinished:
            shown = "; ".join(unfinished[:UNFINISHED_LISTED])
            more = f"; and {len(unfinished) - UNFINISHED_LISTED} more" if len(unfinished) > UNFINISHED_LISTED else ""
            out.append(f"{len(unfinished)} process(es) without a final callspan.profile window (still running, or "
                       f"ended without exporting it, e.g. killed): what each folded after its last window is not "
                       f"in the input: {shown}{more}")
        out.extend(f"input: {count:,} {IMPOSSIBLE[kind]}" for kind, count in sorted(self.impossible.items()))
        self.warnings.extend(out)
        return out

    def new_batch(self) -> Batch:
        return Batch(self.want_calls, self.want_rows, self.slow_keep)

    def merge(self, batch: Batch) -> None:
        process_map = []
        for process in batch.processes:
            index = self.process_index.get(process.key)
            if index is None:
                index = self.process_index[process.key] = len(self.processes)
                self.processes.append(process)
            else:
                self.processes[index].absorb(process)
            process_map.append(index)
        function_map = []
        for local, info in enumerate(batch.functions):
            key = (process_map[info.process], info.name)
            index = self.function_index.get(key)
            theirs = batch.calls[local]
            keyed = len(theirs) - theirs.args.count(0) if theirs is not None else 0
            if index is None:
                index = self.function_index[key] = len(self.functions)
                info.process = key[0]
                self.functions.append(info)
                self.calls.append(theirs)
                self.keyed_calls.append(keyed)
            else:
                self.functions[index].merge(info)
                mine = self.calls[index]
                if mine is not None and theirs is not None:
                    mine.extend(theirs)
                self.keyed_calls[index] += keyed
            function_map.append(index)
        trace_map = list(map(trace_key, batch.traces))
        rows = batch.rows
        if len(rows):
            mine_rows = self.rows
            mine_rows.trace.extend(array("Q", map(trace_map.__getitem__, rows.trace)))
            mine_rows.func.extend(array("I", map(function_map.__getitem__, rows.func)))
            mine_rows.span.extend(rows.span)
            mine_rows.parent.extend(rows.parent)
            mine_rows.self_cost.extend(rows.self_cost)
            mine_rows.total_cost.extend(rows.total_cost)
            mine_rows.run.extend(rows.run)
            mine_rows.count.extend(rows.count)
            mine_rows.flags.extend(rows.flags)
        if self.links is not None and batch.links is not None:
            batch.resolve_links()
            self.links.merge(batch.links, function_map, spans=not self.want_rows)
        for wall, trace, span, func, start in batch.slow:
            item = (wall, trace_map[trace], span, function_map[func], start, batch.traces[trace])
            if len(self.slow) < self.slow_keep:
                heapq.heappush(self.slow, item)
            elif self.slow and item > self.slow[0]:
                heapq.heapreplace(self.slow, item)
        for local, data in batch.profiles.items():
            mine_profile = self.profiles.get(process_map[local])
            if mine_profile is None:
                self.profiles[process_map[local]] = data
            else:
                mine_profile.merge(data)
        self.spans += batch.spans
        self.requests += batch.requests
        if batch.first_ns and (not self.first_ns or batch.first_ns < self.first_ns):
            self.first_ns = batch.first_ns
        if batch.last_ns > self.last_ns:
            self.last_ns = batch.last_ns
        self.warnings.extend(batch.warnings)
        for kind, count in batch.impossible.items():
            self.impossible[kind] = self.impossible.get(kind, 0) + count
        if len(rows):
            self.rows_with_cpu += len(rows.flags) - bytes(rows.flags).translate(_HAS_CPU).count(0)
        link_entries = 0
        if batch.links is not None:
            link_entries = len(batch.links.child) + (0 if self.want_rows else len(batch.links.func))
        self.held += (CALL_BYTES * sum(len(c) for c in batch.calls if c is not None) + ROW_BYTES * len(rows)
                      + LINK_BYTES * link_entries)
        if self.memory_budget and self.held > self.memory_budget:
            self.spill()

    # -- spilling -------------------------------------------------------------------------------

    def spill(self) -> None:
        """Move every per-call and per-span array to disk (see ``callspan.analysis.spill``)."""
        if self._spill is None:
            self._spill = SpillDir(self.spill_parent)
            self._call_file = AppendFile(self._spill.new_file("calls"))
            self._row_parts = Partitions(self._spill, "rows", ROW_TYPECODES, 0)
            self._link_spans = Partitions(self._spill, "spans", "QI", 0)
            self._link_pending = Partitions(self._spill, "pending", "QI", 0)
        assert self._call_file is not None
        for index, columns in enumerate(self.calls):
            if columns is not None and len(columns):
                runs = self._call_runs.setdefault(index, [])
                # Sorted in slices (runs of at most SORT_SLICE calls): the sort order list, a
                # Python int per entry, stays small.
                for lo in range(0, len(columns), SORT_SLICE):
                    part = [c[lo:lo + SORT_SLICE] for c in columns.columns()]
                    runs.append((self._call_file.write(sort_columns(part, part[0])), len(part[0])))
                self.calls[index] = CallColumns()
        self._spill_links()  # first: with rows, the links' span ids are the rows'
        self._spill_rows()
        self.held = 0
        self.spills += 1

    def spill_rest(self) -> None:
        """After loading, once anything was spilled: spill what is still in memory too, so that
        work sent to worker processes is a path and offsets, not copies of arrays."""
        if self._spill is not None and self.held:
            self.spill()

    def _share_rows_with_links(self) -> None:
        # With rows, they hold every span's (span id, function): the links use those arrays.
        if self.links is not None and self.want_rows:
            self.links.span = self.rows.span
            self.links.func = self.rows.func

    def _spill_rows(self) -> None:
        if self._row_parts is not None and len(self.rows):
            self._row_parts.add(self.rows.columns())
            self.rows = RowColumns()
            self._share_rows_with_links()

    def _spill_links(self) -> None:
        links = self.links
        if links is None or self._link_spans is None or self._link_pending is None:
            return
        links.resolve()
        if not self.want_rows:
            self._link_spans.add([links.span, links.func])
        self._link_pending.add([links.parent, links.child])
        links.drop_spans()
        self._share_rows_with_links()

    def close(self) -> None:
        """Remove the spill files (also done when the model is collected, or at exit)."""
        for parts in (self._row_parts, self._link_spans, self._link_pending):
            if parts is not None:
                parts.file.close()
        if self._call_file is not None:
            self._call_file.close()
        if self._spill is not None:
            self._spill.close()

    def call_source(self, function: int) -> CallSource | None:
        """All calls of ``function`` (None when read without ``want_calls``)."""
        columns = self.calls[function]
        if columns is None:
            return None
        runs = self._call_runs.get(function, [])
        return CallSource(self._call_file.path if runs and self._call_file else "", runs, columns)

    def call_count(self, function: int) -> int:
        columns = self.calls[function]
        return (len(columns) if columns is not None else 0) + sum(n for _, n in self._call_runs.get(function, ()))

    def partition_rows(self) -> int:
        """Rows per partition that fit the budget while their stacks are resolved."""
        return max(MIN_PARTITION_ROWS, self.memory_budget // ROW_RESOLVE_BYTES) if self.memory_budget else 1 << 62

    def row_partitions(self) -> Iterator[RowColumns]:
        """Every row, one partition at a time: all rows of a trace come in one partition, in arrival order."""
        if self._row_parts is None:
            yield self.rows
            return
        self._spill_rows()
        for columns in self._row_parts.parts(self.partition_rows()):
            yield RowColumns.of(columns)

    def call_edges(self) -> set[tuple[int, int]]:
        """(caller, callee) function index pairs: parent span links and summarised calls.

        Joins the links left unresolved by each chunk once; afterwards only the (small) set of
        edges is kept. Empty when the model was read without ``want_calls``.
        """
        links = self.links
        if links is None:
            return set()
        if self._spill is not None and self._link_spans is not None and self._link_pending is not None:
            self._spill_links()
            spans, pending = self._link_spans, self._link_pending
            left_parent, left_child = array("Q"), array("I")
            if self.want_rows:
                # Span ids are in the row partitions (by trace; pending children have no trace):
                # join as many pending children as fit against one pass over all of them.
                group: list[list[array[Any]]] = []
                for p in range(PARTS):
                    group.append(pending.load(p))
                    if p == PARTS - 1 or sum(len(g[0]) for g in group) + pending.count(p + 1) > self.partition_rows():
                        parent, child = array("Q"), array("I")
                        for g_parent, g_child in group:
                            parent.extend(g_parent)
                            child.extend(g_child)
                        chunks = ((rows.span, rows.func) for rows in self.row_partitions())
                        parent, child = links.join(parent, child, chunks)
                        left_parent.extend(parent)
                        left_child.extend(child)
                        group = []
            else:
                for p in range(PARTS):
                    # A pending child lands in the partition of its parent's span id, as that span does.
                    parent, child = pending.load(p)
                    if len(parent):
                        parent, child = links.join(parent, child, spans.pieces(p))  # type: ignore[arg-type]
                        left_parent.extend(parent)
                        left_child.extend(child)
            pending.close()
            self._link_pending = Partitions(self._spill, "pending", "QI", 0)
            links.parent, links.child = left_parent, left_child
            self._share_rows_with_links()
            return links.edges
        links.resolve()
        links.drop_spans()
        return links.edges

