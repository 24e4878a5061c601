"""SpanNodes → spans of the application's own TracerProvider (its resource, sampler, processors)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from callspan import __version__
from callspan.builder import SpanNode
from callspan.session import SessionFacts

SCOPE_NAME = "callspan"
SCHEMA_VERSION = 1


def scope_attributes(facts: SessionFacts) -> dict[str, Any]:
    return {
        "callspan.schema": SCHEMA_VERSION,
        "process.pid": os.getpid(),
        "callspan.core": facts.core,
        "callspan.core.reason": facts.core_reason,
        "callspan.cpu.counter": facts.cpu_counter,
        "callspan.cpu.unit": facts.cpu_unit or "none",
        "callspan.cpu.interval_ns": facts.cpu_interval_ns,
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

class OtelSink:
    """Opens and ends SDK spans with the recorded timestamps. Never raises: faults are counted."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        self.spans_ended = 0
        self.faults = 0

    def bind(self, facts: SessionFacts) -> None:
        """Get the tracer, with callspan's per-process facts as scope attributes (again after fork)."""
        provider = self._provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(SCOPE_NAME, __version__, attributes=scope_attributes(facts))

    def open(self, node: SpanNode) -> None:
        tracer = self._tracer
        if tracer is None:
            raise RuntimeError("OtelSink used before bind()")
        if node.parent is not None and node.parent.handle is not None:
            context = trace.set_span_in_context(node.parent.handle, Context())
        else:
            context = node.context if node.context is not None else Context()
        node.handle = tracer.start_span(
            node.name, context=context, kind=SpanKind.INTERNAL,
            attributes=node.open_attributes, start_time=node.start_ns,
        )

    def close(self, node: SpanNode) -> None:
        span = node.handle
        try:
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
