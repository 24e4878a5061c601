"""SpanNodes → spans of the application's own TracerProvider (its resource, sampler, processors)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from callspan import __version__
from callspan.tracer.builder import SpanNode
from callspan.tracer.session import SessionFacts

SCOPE_NAME = "callspan"
SCHEMA_VERSION = 2
PROFILE_SPAN_NAME = "callspan.profile"
PROFILE_PREFIX = "callspan.profile."
# Rows (functions, nodes, sketch buckets, cache rows) per callspan.profile span. The Jaeger UI
# draws every array element of a span's tags: a 10,000-node chunk took ~15 s to open there (its
# page frozen), 1,000 rows open in about a second. Far below the Collector's 4 MiB gRPC limit too.
PROFILE_CHUNK_ROWS = 1_000
# Most seconds spent flushing the chunks of one window one by one (see OtelSink.profile).
PROFILE_FLUSH_BUDGET_S = 5.0
# The groups of columns of a window (docs/span-schema.md, schema v2), chunked independently.
_GROUPS = ("node.", "wall.", "run.", "cache.", "reuse.", "edge.")


def scope_attributes(facts: SessionFacts) -> dict[str, Any]:
    attributes: dict[str, Any] = {"service.instance.id": facts.instance_id} if facts.instance_id else {}
    return attributes | {
        "callspan.schema": SCHEMA_VERSION,
        "process.pid": os.getpid(),
        "callspan.core": facts.core,
        "callspan.core.reason": facts.core_reason,
        "callspan.cpu.counter": facts.cpu_counter,
        "callspan.cpu.unit": facts.cpu_unit or "none",
        "callspan.cpu.interval_ns": facts.cpu_interval_ns,
        "callspan.clock": facts.clock,
    }



def current_context_getter() -> Callable[[], Context]:
    """What the recorder calls at every traced root: ``opentelemetry.context.get_current``.

    With the API's default runtime context (ContextVarsRuntimeContext, whose get_current is
    ``self._current_context.get()``), that ContextVar's own ``get``: the same object, without
    three Python calls per root. Any other runtime context is asked through get_current.
    """
    from contextvars import ContextVar

    from opentelemetry import context as otel_context
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if (type(runtime) is ContextVarsRuntimeContext and isinstance(var, ContextVar)
            and type(runtime).get_current is ContextVarsRuntimeContext.get_current):
        return var.get
    return otel_context.get_current

def chunk_window(columns: dict[str, list[Any]], size: int = PROFILE_CHUNK_ROWS) -> list[dict[str, list[Any]]]:
    """Cut one window's columns into chunks of at most ``size`` rows of the function table and
    the other groups together. Each function's totals are in exactly one chunk; every chunk also
    defines, with zero totals, the other functions its rows reference, so adding chunks counts
    each call once."""
    groups: dict[str, list[str]] = {group: [] for group in _GROUPS}
    for name in columns:
        for group in _GROUPS:
            if name.startswith(group):
                groups[group].append(name)
    function_columns = ("node.function", "wall.function", "run.function", "cache.function", "reuse.function",
                        "edge.caller", "edge.callee")
    function_rows = {fid: i for i, fid in enumerate(columns.get("function.id", []))}
    function_names = [name for name in columns if name.startswith("function.")]
    chunks: list[dict[str, list[Any]]] = []
    owned: list[range] = []  # per chunk, the function-table rows whose totals it carries
    current: dict[str, list[Any]] = {}
    current_owned = range(0)
    room = size
    # The function table first, then each group; a chunk is filled up before the next starts.
    for group, names in (("function.", ["function.id"] if function_rows else []), *groups.items()):
        rows = len(columns[names[0]]) if names else 0
        start = 0
        while start < rows:
            if not room:
                chunks.append(current)
                owned.append(current_owned)
                current, current_owned, room = {}, range(0), size
            stop = min(rows, start + room)
            if group == "function.":
                current_owned = range(start, stop)  # the table comes first: one range per chunk
            else:
                for name in names:
                    current.setdefault(name, []).extend(columns[name][start:stop])
            room -= stop - start
            start = stop
    if room < size or not chunks:
        chunks.append(current)
        owned.append(current_owned)
    totals = ("function.calls", "function.errors", "function.wall_ns", "function.run_ns", "function.cpu_self")
    for chunk, mine in zip(chunks, owned, strict=True):
        referenced: set[int] = set()
        for column in function_columns:
            referenced.update(chunk.get(column, ()))
        wanted = sorted(set(mine).union(function_rows[f] for f in referenced if f in function_rows))
        for name in function_names:
            values = columns[name]
            if name in totals:
                chunk[name] = [values[i] if i in mine else 0 for i in wanted]
            else:
                chunk[name] = [values[i] for i in wanted]
    return chunks


def sampled_context(context: Context) -> bool:
    """The recorder's trace filter: False when the application's current span is not sampled
    (its sampler dropped the request), so callspan keeps no spans for that trace."""
    span = trace.get_current_span(context)
    span_context = span.get_span_context()
    return not span_context.is_valid or span_context.trace_flags.sampled


class OtelSink:
    """Opens and ends SDK spans with the recorded timestamps. Never raises: faults are counted."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 profile_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        # Where the aggregates go when not through the application's provider: production mode
        # gives them a provider of their own, so that the application's sampler (1% of root
        # spans) cannot drop a window.
        self._profile_provider = profile_provider
        self._tracer: trace.Tracer | None = None
        self._profile_tracer: trace.Tracer | None = None
        self.spans_ended = 0
        self.profile_spans = 0
        self.faults = 0

    def bind(self, facts: SessionFacts) -> None:
        """Get the tracer, with callspan's per-process facts as scope attributes (again after fork)."""
        provider = self._provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(SCOPE_NAME, __version__, attributes=scope_attributes(facts))
        self._profile_tracer = self._tracer if self._profile_provider is None else (
            self._profile_provider.get_tracer(SCOPE_NAME, __version__, attributes=scope_attributes(facts)))

    def open(self, node: SpanNode) -> None:
        tracer = self._tracer
        if tracer is None:
            raise RuntimeError("OtelSink used before bind()")
        parent = node.parent
        if parent is not None and parent.handle is not None:
            context = parent.child_context  # one context for all of a span's children
            if context is None:
                context = parent.child_context = trace.set_span_in_context(parent.handle, Context())
        else:
            context = node.context if node.context is not None else Context()
        # A call that had finished already: every attribute at once (one pass of the SDK's
        # attribute checks; close then only ends the span).
        attributes = node.open_attributes | node.attributes if node.complete else node.open_attributes
        node.handle = tracer.start_span(
            node.name, context=context, kind=SpanKind.INTERNAL, attributes=attributes, start_time=node.start_ns,
        )

    def profile(self, columns: dict[str, list[Any]], start_ns: int, end_ns: int, final: bool) -> None:
        """One window of the aggregates as ``callspan.profile`` root spans (schema v2)."""
        tracer = self._profile_tracer
        if tracer is None:
            raise RuntimeError("OtelSink used before bind()")
        from callspan.tracer.aggregate import GAMMA

        window = columns.get("window", [0])[0]
        other = columns.get("other_nodes", [0])[0]
        lost = columns.get("lost_calls", [0])[0]
        lost_edges = columns.get("lost_edges", [None])[0]  # None: a tracer without call edges
        calls_total = columns.get("calls_total", [0])[0]
        data = {name: values for name, values in columns.items()
                if name not in ("window", "other_nodes", "lost_calls", "lost_edges", "calls_total")}
        chunks = chunk_window(data)
        flush: Callable[[int], bool] | None = getattr(
            self._profile_provider or self._provider or trace.get_tracer_provider(), "force_flush", None)
        flushing = len(chunks) > 1 and flush is not None
        deadline = time.monotonic() + PROFILE_FLUSH_BUDGET_S
        for index, chunk in enumerate(chunks):
            attributes: dict[str, Any] = {
                PROFILE_PREFIX + "window": window, PROFILE_PREFIX + "chunk": index,
                PROFILE_PREFIX + "chunks": len(chunks), PROFILE_PREFIX + "final": final,
                PROFILE_PREFIX + "other_nodes": other if index == 0 else 0,
                PROFILE_PREFIX + "lost_calls": lost if index == 0 else 0, PROFILE_PREFIX + "sketch.gamma": GAMMA,
                PROFILE_PREFIX + "calls_total": calls_total,  # on every chunk: any one of them says it
            }
            if lost_edges is not None:  # on every chunk (0 but on the first): says the tracer keeps edges
                attributes[PROFILE_PREFIX + "lost_edges"] = lost_edges if index == 0 else 0
            for name, values in chunk.items():
                if values:
                    attributes[PROFILE_PREFIX + name] = values
            try:
                span = tracer.start_span(PROFILE_SPAN_NAME, context=Context(), kind=SpanKind.INTERNAL,
                                         attributes=attributes, start_time=start_ns)
                span.end(end_time=end_ns)
                self.spans_ended += 1
                self.profile_spans += 1
            except Exception:
                self.faults += 1
            if flushing and index + 1 < len(chunks):
                # A batching processor would put every chunk of a window into one request: send
                # each on its own so that a request stays below the receiver's message limit.
                # Within a bounded time: a dead or slow collector stops the flushing (the
                # processor's queue and its export timeout then bound what waits).
                left = deadline - time.monotonic()
                try:
                    flushing = left > 0 and flush is not None and bool(flush(int(left * 1000)))
                except Exception:
                    self.faults += 1
                    flushing = False

    def close(self, node: SpanNode) -> None:
        span = node.handle
        try:
            if not node.complete:
                span.set_attributes(node.attributes)
            for name, timestamp, attributes in node.events:
                span.add_event(name, attributes, timestamp)
            if node.error is not None:
                span.set_status(Status(StatusCode.ERROR, node.error))
            span.end(end_time=node.end_ns)
            self.spans_ended += 1
        except Exception:
            self.faults += 1
        # Children that start later (tasks outliving their creator) only need the context.
        node.handle = NonRecordingSpan(span.get_span_context())
        node.child_context = None  # it held the ended span
