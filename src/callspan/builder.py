"""Turns finished call records into spans, off the hot path, in batches.

Budget per trace (schema: "Summaries"): a trace keeps at most ``max_spans`` spans:
- the first half of the budget keeps every call;
- after that, only calls slower (wall) than the 90th percentile of the trace's recent calls
  (the last 256, kept or not), until the budget is spent;
- the root, and every ancestor of a kept span, is always kept (ancestors may exceed the budget
  by at most the depth of the stack);
- every other call is summarised on its nearest kept (or still running) ancestor: per-function
  totals, plus its cache-key and return hashes in call order (SHARDS-sampled by key hash
  beyond ``max_summary_calls`` per function), so no cost disappears.

The builder knows nothing of OpenTelemetry: it hands SpanNodes to a Sink.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from callspan import _env
from callspan.keys import KeyHasher
from callspan.record import (
    R_ARGS,
    R_CHILD_CPU,
    R_CPU,
    R_END,
    R_ERROR,
    R_INCOMPLETE,
    R_INFO,
    R_OUT,
    R_PARENT,
    R_RET,
    R_RET_SIZE,
    R_ROOT,
    R_START,
    R_SUSP_NS,
    R_SUSPENDS,
    R_THREAD,
    RECORD_SIZE,
    Record,
)
from callspan.selection import KIND_COROUTINE, KIND_FUNCTION, KIND_NAMES, CodeInfo

# _UNSAMPLED: a root whose trace goes to the unsampled window (decided at its first call that
# found no span token, so every call of the trace is folded there once, not merged up a chain).
_PENDING, _OPEN, _CLOSED, _SUMMARISED, _UNSAMPLED = range(5)
_UNKNOWN_EXCEPTION_NAMES = ("_UnknownException",)


class SpanNode:
    """One span to be: what the sink needs at open (name, parent, start) and at close."""

    __slots__ = ("name", "parent", "context", "start_ns", "end_ns", "open_attributes",
                 "attributes", "error", "events", "handle")

    def __init__(self, name: str, parent: SpanNode | None, context: Any, start_ns: int,
                 open_attributes: dict[str, Any]) -> None:
        self.name = name
        self.parent = parent
        self.context = context
        self.start_ns = start_ns
        self.end_ns = 0
        self.open_attributes = open_attributes
        self.attributes: dict[str, Any] = {}
        self.error: str | None = None
        self.events: list[tuple[str, int, dict[str, Any]]] = []
        self.handle: Any = None


class Sink(Protocol):
    def open(self, node: SpanNode) -> None: ...

    def close(self, node: SpanNode) -> None: ...


class _SummaryMethods:
    """The summary operations; the compiled builder (callspan._hotpath) implements the same."""

    if not TYPE_CHECKING:  # (mypy would refuse assignments to the annotated names below)
        __slots__ = ()
    count: int
    errors: int
    wall: int
    run: int
    cpu_total: int
    cpu_self: int
    calls: list[tuple[int | None, int | None, int, int, int]]
    rate: float

    def merge(self, other: _SummaryMethods, cap: int) -> None:
        self.count += other.count
        self.errors += other.errors
        self.wall += other.wall
        self.run += other.run
        self.cpu_total += other.cpu_total
        self.cpu_self += other.cpu_self
        if other.rate < self.rate:
            self.rate = other.rate
            self._resample()
        for call in other.calls:
            self.add_call(call, cap)

    def add_call(self, call: tuple[int | None, int | None, int, int, int], cap: int) -> None:
        if self.rate < 1.0 and not _sampled(call[0], self.rate):
            return
        self.calls.append(call)
        while len(self.calls) > cap:
            self.rate /= 2
            self._resample()

    def _resample(self) -> None:
        rate = self.rate
        self.calls = [c for c in self.calls if _sampled(c[0], rate)]


class _Summary(_SummaryMethods):
    __slots__ = ("info", "count", "errors", "wall", "run", "cpu_total", "cpu_self", "calls", "rate")

    def __init__(self, info: CodeInfo) -> None:
        self.info = info
        self.count = self.errors = self.wall = self.run = self.cpu_total = self.cpu_self = 0
        self.calls = []
        self.rate = 1.0


def _sampled(args_digest: int | None, rate: float) -> bool:
    # SHARDS spatial sampling: keep a key iff its (uniform, keyed) hash falls below the rate:
    # the high 32 bits, i.e. the first 8 hex digits the analyzer reads.
    return args_digest is not None and (args_digest >> 32) < rate * 0x100000000


def _hex(digest: int | None) -> str:
    return f"{digest:016x}" if digest is not None else ""


class _Out:
    """Builder state of one record (lives in its R_OUT slot)."""

    __slots__ = ("state", "node", "summaries", "kept", "walls", "seen", "threshold")

    def __init__(self) -> None:
        self.state = _PENDING
        self.node: SpanNode | None = None
        self.summaries: dict[CodeInfo, _Summary] | None = None
        # Trace budget, used on root records only.
        self.kept = 0
        self.walls: deque[int] | None = None  # recent walls of the trace's calls
        self.seen = 0
        self.threshold = -1


class _SyntheticInfo:
    """Stands in for a CodeInfo on the span that collects unsampled traces."""

    name = "callspan.unsampled_calls"
    file = ""
    line = 0
    kind = KIND_FUNCTION
    keys = False
    is_method = False


class _SyntheticThread:
    ident = 0
    name = "callspan"


_UNSAMPLED_INFO = _SyntheticInfo()
_UNSAMPLED_THREAD = _SyntheticThread()

class _Implementation:
    """The builder's record-level types and loop: pure Python, or compiled (callspan._hotpath)."""

    def __init__(self, out_type: Any, summary_type: Any, process_records: Any) -> None:
        self.out_type = out_type
        self.summary_type = summary_type
        self.process_records = process_records
        self.summarised_out = out_type()
        self.summarised_out.state = _SUMMARISED


PYTHON_BUILDER = _Implementation(_Out, _Summary, None)
COMPILED_BUILDER: _Implementation | None = None
if _env.HAS_COMPILED_HASH:
    from callspan import _hotpath

    # The compiled loop does all summary operations itself: the bare C types suffice.
    COMPILED_BUILDER = _Implementation(_hotpath.Out, _hotpath.Summary, _hotpath.process_records)


class SpanBuilder:
    def __init__(self, sink: Sink, hasher: KeyHasher, *, clock_offset: int, cpu_enabled: bool,
                 max_spans: int = 2000, max_summary_calls: int = 10_000,
                 max_spans_per_second: float = 2000.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 compiled: bool | None = None, unsampled_window: float = 5.0,
                 max_listed_calls_per_second: float = 20_000.0) -> None:
        self.sink = sink
        self.hasher = hasher
        if compiled is None:
            compiled = COMPILED_BUILDER is not None
        implementation = COMPILED_BUILDER if compiled else PYTHON_BUILDER
        if implementation is None:
            raise ValueError("the compiled builder (callspan._hotpath) is not built")
        self.compiled = compiled
        self._out_type = implementation.out_type
        self._summary_type = implementation.summary_type
        self._summarised_out = implementation.summarised_out
        self._process_records = implementation.process_records
        self._sip_key = (hasher.k0, hasher.k1)
        self.clock_offset = clock_offset
        self.cpu_enabled = cpu_enabled
        self.max_spans = max_spans
        # Process-wide span rate: a token bucket holding one second's worth. Every opened span
        # takes a token; without tokens, calls are summarised, and whole traces (roots too) go
        # to the current "callspan.unsampled_calls" span instead of becoming spans of their own.
        self.max_spans_per_second = max_spans_per_second
        self._monotonic = monotonic
        self._tokens = max_spans_per_second
        self._refilled = monotonic()
        # Per-call cache records listed in callspan.calls events, process-wide: a second bucket,
        # refilled once per pass. Beyond it, summarised calls are counted but not listed (the
        # analyzer scales from the listed ones), so export volume stays bounded whatever the
        # call rate of the traces that are kept.
        self.max_listed_calls_per_second = max_listed_calls_per_second
        self._listed_tokens = max_listed_calls_per_second
        self._listed_refilled = self._refilled
        self.calls_unlisted = 0
        self._unsampled: Record | None = None
        self._unsampled_opened = 0.0
        # One unsampled_calls span collects this many seconds of traces: its per-call cache
        # records are capped per function, so fewer, longer windows export far fewer of them.
        self.unsampled_window = unsampled_window
        self.traces_unsampled = 0
        self.max_summary_calls = max_summary_calls
        self.spans_opened = 0
        self.calls_summarised = 0
        self._keyed_memo: dict[int, int] = {}

    def _keyed(self, raw: int) -> int:
        """Keyed digest of a raw hash, memoised (bounded) since keys repeat by nature."""
        memo = self._keyed_memo
        digest = memo.get(raw)
        if digest is None:
            if len(memo) >= 1 << 18:
                memo.clear()
            digest = memo[raw] = self.hasher.digest(raw)
        return digest

    # -- decisions ----------------------------------------------------------------------------

    def process(self, records: list[Record]) -> None:
        now = self._monotonic()
        rate = self.max_listed_calls_per_second
        self._listed_tokens = min(rate, self._listed_tokens + max(0.0, now - self._listed_refilled) * rate)
        self._listed_refilled = now
        if self._process_records is not None:
            self._process_records(self, records)
        else:
            self._process_python(records)
        if self._unsampled is not None and self._monotonic() - self._unsampled_opened >= self.unsampled_window:
            self.finish()

    def finish(self) -> None:
        """Close the open ``callspan.unsampled_calls`` span, if any (at stop, and per window)."""
        unsampled = self._unsampled
        if unsampled is not None:
            self._unsampled = None
            self._close(unsampled, self._out(unsampled))

    def _process_python(self, records: list[Record]) -> None:
        for record in records:
            out = record[R_OUT]
            state = _PENDING if out is None else out.state
            if state == _OPEN:
                self._close(record, out)
                continue
            root = record[R_ROOT]
            if state == _UNSAMPLED or (root is None and state == _PENDING and not self._has_token()):
                self.traces_unsampled += 1
                self._summarise(record, self._unsampled_record(record))
                continue
            if state != _PENDING:
                continue  # already closed or summarised (e.g. ended at stop, then finished)
            if root is None:
                self._close(record, self._out(record))
                continue
            root_out = root[R_OUT]
            if root_out is not None and root_out.state == _UNSAMPLED:
                self._summarise(record, self._unsampled_record(record))
            elif self._accept(record):
                self._close(record, self._out(record))
            elif self._tokens < 1 and self._out(root).state == _PENDING and self._out(root).kept == 0:
                # No span token and none of this trace kept yet: the whole trace is unsampled.
                self._out(root).state = _UNSAMPLED
                self._summarise(record, self._unsampled_record(record))
            elif not self._summarise(record):
                self._close(record, self._out(record))

    def _has_token(self) -> bool:
        now = self._monotonic()
        rate = self.max_spans_per_second
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        return self._tokens >= 1

    def _unsampled_record(self, record: Record) -> Record:
        """The synthetic root that collects this batch's traces beyond the span rate."""
        holder = self._unsampled
        if holder is None:
            holder = [None] * RECORD_SIZE
            holder[R_INFO] = _UNSAMPLED_INFO
            holder[R_THREAD] = _UNSAMPLED_THREAD
            holder[R_START] = record[R_START]
            for slot in (R_END, R_CPU, R_CHILD_CPU, R_SUSPENDS, R_SUSP_NS):
                holder[slot] = 0
            holder[18] = False
            self._unsampled = holder
            self._unsampled_opened = self._monotonic()
        holder[R_START] = min(holder[R_START], record[R_START])
        holder[R_END] = max(holder[R_END], record[R_END])
        return holder

    def _out(self, record: Record) -> _Out:
        out = record[R_OUT]
        if out is None:
            out = record[R_OUT] = self._out_type()
        return out

    def _accept(self, record: Record) -> bool:
        budget = self._out(record[R_ROOT] or record)
        if budget.kept >= self.max_spans or not self._has_token():
            return False
        wall = record[R_END] - record[R_START]
        walls = budget.walls
        if walls is None:
            walls = budget.walls = deque(maxlen=256)
        walls.append(wall)
        budget.seen += 1
        if budget.kept < self.max_spans // 2:
            return True
        if budget.seen <= 256 or budget.seen % 64 == 0:
            ordered = sorted(walls)
            budget.threshold = ordered[int(len(ordered) * 0.9)]
        return wall > budget.threshold

    def _kept_ancestor(self, record: Record) -> Record | None:
        """The nearest ancestor not summarised (it has a span, or is still undecided)."""
        parent = record[R_PARENT]
        while parent is not None:
            out = parent[R_OUT]
            if out is None or out.state != _SUMMARISED:
                return parent
            parent = parent[R_PARENT]
        return None

    def _summary_target(self, record: Record) -> Record | None:
        """Where a summarised call goes: the nearest ancestor whose span is open (it will be
        kept for sure, so the summary never moves again); else the nearest undecided one."""
        parent = record[R_PARENT]
        undecided = None
        while parent is not None:
            out = parent[R_OUT]
            if out is None or out.state == _PENDING:
                if undecided is None:
                    undecided = parent
            elif out.state == _OPEN:
                return parent
            elif out.state == _CLOSED:
                return undecided
            parent = parent[R_PARENT]
        return undecided

    # -- summarising --------------------------------------------------------------------------

    def _summarise(self, record: Record, target: Record | None = None) -> bool:
        if target is None:
            target = self._summary_target(record)
        if target is None:
            return False  # no ancestor can take it (e.g. a task outliving its creator's span)
        target_out = self._out(target)
        if target_out.summaries is None:
            target_out.summaries = {}
        summaries = target_out.summaries
        cap = self.max_summary_calls
        info: CodeInfo = record[R_INFO]
        summary = summaries.get(info)
        if summary is None:
            summary = summaries[info] = self._summary_type(info)
        summary.count += 1
        if record[R_ERROR] is not None:
            summary.errors += 1
        start = record[R_START]
        end = record[R_END]
        cpu = record[R_CPU]
        summary.wall += end - start
        summary.run += end - start - record[R_SUSP_NS]
        summary.cpu_total += cpu
        summary.cpu_self += cpu - record[R_CHILD_CPU]
        if record[R_ARGS] is not None or record[R_RET] is not None:
            args_digest, ret_digest = self._digests(record)
            if args_digest is not None or ret_digest is not None:
                if summary.rate < 1.0 and not _sampled(args_digest, summary.rate):
                    pass  # not in the SHARDS sample
                elif self._listed_tokens >= 1:
                    self._listed_tokens -= 1
                    offset = self.clock_offset
                    summary.add_call((args_digest, ret_digest, start + offset, end + offset, cpu), cap)
                else:
                    self.calls_unlisted += 1
        own = record[R_OUT]
        if own is not None and own.summaries:
            for child_info, child in own.summaries.items():
                mine = summaries.get(child_info)
                if mine is None:
                    summaries[child_info] = child
                else:
                    mine.merge(child, cap)
        record[R_OUT] = self._summarised_out
        self.calls_summarised += 1
        return True

    def _digests(self, record: Record) -> tuple[int | None, int | None]:
        """Keyed digests of the record's argument key and return value (None when absent)."""
        args = record[R_ARGS]
        ret = record[R_RET]
        keyed = self._keyed
        args_digest = keyed(args[0]) if args is not None and args[0] is not None else None
        ret_digest = keyed(ret[0]) if ret is not None and ret[0] is not None and record[R_ERROR] is None else None
        return args_digest, ret_digest

    # -- spans --------------------------------------------------------------------------------

    def _open(self, record: Record) -> SpanNode:
        """Open the span of ``record`` and of every ancestor that has none yet, outermost first."""
        chain: list[Record] = []
        current: Record | None = record
        while current is not None:
            out = current[R_OUT]
            if out is None:
                out = current[R_OUT] = self._out_type()
            if out.node is not None:
                break
            chain.append(current)
            current = self._kept_ancestor(current)
        parent_node = current[R_OUT].node if current is not None else None
        for item in reversed(chain):
            parent_node = self._open_one(item, parent_node)
        node = record[R_OUT].node
        assert node is not None
        return node

    def _open_one(self, record: Record, parent: SpanNode | None) -> SpanNode:
        info: CodeInfo = record[R_INFO]
        thread = record[R_THREAD]
        attributes: dict[str, Any] = {
            "code.function.name": info.name,
            "code.file.path": info.file,
            "code.line.number": info.line,
            "thread.id": thread.ident,
            "thread.name": thread.name,
            "callspan.kind": KIND_NAMES[info.kind],
        }
        if record[18]:
            attributes["callspan.parent.via"] = "task"
        context = record[16] if parent is None else None
        node = SpanNode(info.name, parent, context, record[R_START] + self.clock_offset, attributes)
        out = self._out(record)
        out.node = node
        out.state = _OPEN
        self._out(record[R_ROOT] or record).kept += 1
        self._tokens -= 1
        self.spans_opened += 1
        self.sink.open(node)
        return node

    def _close(self, record: Record, out: _Out) -> None:
        node = out.node if out.node is not None else self._open(record)
        info: CodeInfo = record[R_INFO]
        attributes = node.attributes
        wall = record[R_END] - record[R_START]
        attributes["callspan.run_ns"] = wall - record[R_SUSP_NS]
        if info.kind == KIND_COROUTINE:
            attributes["callspan.await.count"] = record[R_SUSPENDS]
            attributes["callspan.await.suspended_ns"] = record[R_SUSP_NS]
        elif info.kind != KIND_FUNCTION:
            attributes["callspan.yield.count"] = record[R_SUSPENDS]
        if self.cpu_enabled:
            attributes["callspan.cpu.total"] = record[R_CPU]
            attributes["callspan.cpu.self"] = record[R_CPU] - record[R_CHILD_CPU]
        if info.keys:
            self._key_attributes(record, attributes)
        error = record[R_ERROR]
        if error is not None:
            if error.__name__ in _UNKNOWN_EXCEPTION_NAMES and error.__module__.startswith("callspan"):
                node.error = attributes["error.type"] = "_OTHER"
            else:
                node.error = error.__qualname__
                attributes["error.type"] = f"{error.__module__}.{error.__qualname__}"
        if record[R_INCOMPLETE]:
            attributes["callspan.incomplete"] = True
        node.end_ns = record[R_END] + self.clock_offset
        if out.summaries:
            self._summary_attributes(node, out.summaries)
            out.summaries = None
        out.state = _CLOSED
        self.sink.close(node)

    def _key_attributes(self, record: Record, attributes: dict[str, Any]) -> None:
        info: CodeInfo = record[R_INFO]
        args_digest, ret_digest = self._digests(record)
        args_hex, ret_hex = _hex(args_digest), _hex(ret_digest)
        args = record[R_ARGS]
        if args is not None:
            if args_hex:
                attributes["callspan.args.hash"] = args_hex
            attributes["callspan.args.hashable"] = not args[1]
            if args[1]:
                attributes["callspan.args.unhashable"] = args[1]
            if args[2]:
                attributes["callspan.args.identity"] = True
        ret = record[R_RET]
        if ret is not None and record[R_ERROR] is None:
            if ret_hex:
                attributes["callspan.return.hash"] = ret_hex
            attributes["callspan.return.hashable"] = ret[1]
            if record[R_RET_SIZE] is not None:
                attributes["callspan.return.size"] = record[R_RET_SIZE]
        if info.is_method:
            attributes["callspan.method"] = True

    def _summary_attributes(self, node: SpanNode, summaries: dict[CodeInfo, _Summary]) -> None:
        items = list(summaries.values())
        attributes = node.attributes
        attributes["callspan.summary.function"] = [s.info.name for s in items]
        attributes["callspan.summary.file"] = [s.info.file for s in items]
        attributes["callspan.summary.line"] = [s.info.line for s in items]
        attributes["callspan.summary.kind"] = [KIND_NAMES[s.info.kind] for s in items]
        attributes["callspan.summary.count"] = [s.count for s in items]
        attributes["callspan.summary.errors"] = [s.errors for s in items]
        attributes["callspan.summary.wall_ns"] = [s.wall for s in items]
        attributes["callspan.summary.run_ns"] = [s.run for s in items]
        if self.cpu_enabled:
            attributes["callspan.summary.cpu_total"] = [s.cpu_total for s in items]
            attributes["callspan.summary.cpu_self"] = [s.cpu_self for s in items]
        for summary in items:
            if not summary.calls and summary.rate == 1.0:
                continue  # nothing keyed (keys off, or no hashable values)
            calls = sorted(summary.calls, key=lambda c: c[2])
            node.events.append(("callspan.calls", calls[0][2] if calls else node.start_ns, {
                "callspan.function": summary.info.name,
                "callspan.args.hash": [_hex(c[0]) for c in calls],
                "callspan.return.hash": [_hex(c[1]) for c in calls],
                "callspan.start_ns": [c[2] for c in calls],
                "callspan.end_ns": [c[3] for c in calls],
                "callspan.cpu": [c[4] for c in calls],
                "callspan.sample_rate": summary.rate,
            }))
