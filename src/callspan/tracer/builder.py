"""Turns the records of kept calls into spans, off the hot path, in batches.

Which calls are kept is decided by the recorder when they start (schema v2, "Which calls become
spans"): whole traces, the first calls of each up to its budget, so a kept call's ancestors are
always kept too. Every call, kept or not, is also folded into the aggregates
(callspan.tracer.aggregate), which travel as ``callspan.profile`` spans: nothing here summarises.

Records arrive in the order calls finish (children before their parents); a span is opened,
with every ancestor that has none yet, outermost first, when the first record of its subtree
arrives, and closed when its own record arrives.

A minimum span duration (``min_span_ns``, CALLSPAN_MIN_SPAN_US) leaves the kept calls shorter
than it out of the spans (they stay in the aggregates): a record that arrives without a span
(none of its descendants made one) and ran shorter is elided. A synchronous call lasts at least
as long as any call inside it, so the parent of a span is never elided; a task that outlives its
creator hangs under the creator's nearest ancestor with a span (or the trace's context).

The builder knows nothing of OpenTelemetry: it hands SpanNodes to a Sink.
"""

from __future__ import annotations

from typing import Any, Protocol

from callspan.tracer.keys import KeyHasher
from callspan.tracer.record import (
    R_ARGS,
    R_CHILD_CPU,
    R_CONTEXT,
    R_CPU,
    R_END,
    R_ERROR,
    R_INCOMPLETE,
    R_INFO,
    R_OUT,
    R_PARENT,
    R_RET,
    R_RET_SIZE,
    R_START,
    R_SUSP_NS,
    R_SUSPENDS,
    R_THREAD,
    R_VIA_TASK,
    Record,
)
from callspan.tracer.selection import KIND_COROUTINE, KIND_FUNCTION, KIND_NAMES, CodeInfo

_UNKNOWN_EXCEPTION_NAMES = ("_UnknownException",)


class SpanNode:
    """One span to be: what the sink needs at open (name, parent, start) and at close."""

    __slots__ = ("name", "parent", "context", "start_ns", "end_ns", "open_attributes",
                 "attributes", "error", "events", "handle", "closed", "complete", "child_context")

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
        self.closed = False
        # Opened when its call had already finished: ``attributes`` (and end_ns, error) are final
        # at open, so a sink may start the span with every attribute at once.
        self.complete = False
        self.child_context: Any = None  # the sink's: its children's parent context, made once


class Sink(Protocol):
    def open(self, node: SpanNode) -> None: ...

    def close(self, node: SpanNode) -> None: ...

    def profile(self, columns: dict[str, list[Any]], start_ns: int, end_ns: int, final: bool) -> None: ...


# R_OUT of an elided record: no span, and none to hang children under (see SpanBuilder._open).
_ELIDED = SpanNode("", None, None, 0, {})
_ELIDED.closed = True


def _hex(digest: int | None) -> str:
    return f"{digest:016x}" if digest is not None else ""


class SpanBuilder:
    def __init__(self, sink: Sink, hasher: KeyHasher, *, clock_offset: int, cpu_enabled: bool,
                 return_size: bool = True, min_span_ns: int = 0) -> None:
        self.sink = sink
        self.hasher = hasher
        self.clock_offset = clock_offset
        self.cpu_enabled = cpu_enabled
        self.return_size = return_size  # CALLSPAN_RETURN_SIZE: export callspan.return.size
        self.min_span_ns = min_span_ns  # CALLSPAN_MIN_SPAN_US, in ns: shorter kept calls are elided
        self.spans_opened = 0
        self.spans_elided = 0
        self._keyed_memo: dict[int, int] = {}

    def _keyed(self, raw: int) -> int:
        """Keyed digest of a raw hash, memoised (bounded) since keys repeat by nature."""
        memo = self._keyed_memo
        digest = memo.get(raw)
        if digest is None:
            if len(memo) >= 1 << 16:
                memo.clear()
            digest = memo[raw] = self.hasher.digest(raw)
        return digest

    def process(self, records: list[Record]) -> None:
        min_ns = self.min_span_ns
        for record in records:
            node = record[R_OUT]
            if node is None and min_ns and record[R_END] - record[R_START] < min_ns:
                record[R_OUT] = _ELIDED  # no span opened for a descendant: left out
                self.spans_elided += 1
            elif node is None or not node.closed:  # closed: ended at stop, then finished
                self._close(record)

    # -- spans --------------------------------------------------------------------------------

    def _open(self, record: Record, complete: bool = False) -> SpanNode:
        """Open the span of ``record`` and of every ancestor that has none yet, outermost first;
        ``complete``: ``record`` has finished, its span is opened with its final attributes."""
        chain: list[Record] = []
        current: Record | None = record
        outermost = record
        while current is not None:
            out = current[R_OUT]
            if out is None:
                chain.append(current)
            elif out is not _ELIDED:
                break
            outermost = current
            current = current[R_PARENT]
        parent_node = current[R_OUT] if current is not None else None
        # Without a span above: the trace's context, which only its root record holds.
        context = outermost[R_CONTEXT] if parent_node is None else None
        for item in reversed(chain):
            parent_node = self._open_one(item, parent_node, context, complete and item is record)
            context = None  # the others hang under the span just opened
        node = record[R_OUT]
        assert node is not None
        return node

    def _open_one(self, record: Record, parent: SpanNode | None, context: Any, complete: bool) -> SpanNode:
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
        if record[R_VIA_TASK]:
            attributes["callspan.parent.via"] = "task"
        node = SpanNode(info.name, parent, context, record[R_START] + self.clock_offset, attributes)
        record[R_OUT] = node
        if complete:
            self._end_attributes(record, node)
            node.complete = True
        self.spans_opened += 1
        self.sink.open(node)
        return node

    def _close(self, record: Record) -> None:
        node = record[R_OUT]
        if node is None:  # finished before any span under it was opened: opened complete
            node = self._open(record, complete=True)
        else:
            self._end_attributes(record, node)
        node.closed = True
        self.sink.close(node)

    def _end_attributes(self, record: Record, node: SpanNode) -> None:
        """What a span learns when its call ends: attributes, end time, error."""
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

    def _key_attributes(self, record: Record, attributes: dict[str, Any]) -> None:
        info: CodeInfo = record[R_INFO]
        args = record[R_ARGS]
        keyed = self._keyed
        if args is not None:
            if args[0] is not None:
                attributes["callspan.args.hash"] = _hex(keyed(args[0]))
            if args[1]:  # hashable is the rule: only its exception is written (docs/span-schema.md)
                attributes["callspan.args.hashable"] = False
                attributes["callspan.args.unhashable"] = args[1]
            if args[2]:
                attributes["callspan.args.identity"] = True
        ret = record[R_RET]
        if ret is not None and record[R_ERROR] is None:
            if ret[0] is not None:
                attributes["callspan.return.hash"] = _hex(keyed(ret[0]))
            if not ret[1]:
                attributes["callspan.return.hashable"] = False
            if record[R_RET_SIZE] is not None and self.return_size:
                attributes["callspan.return.size"] = record[R_RET_SIZE]
        if info.is_method:
            attributes["callspan.method"] = True
