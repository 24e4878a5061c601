"""Production mode: trace the requests the application's OpenTelemetry sampler samples.

    import callspan.production
    callspan.production.arm()                      # once per process (idempotent, fork-safe)
    app = callspan.production.wsgi.CallspanMiddleware(app)    # or .asgi / .django

A process is *armed* once; nothing runs until its first sampled request, which starts the
process's session (hook, span builder thread, key secret, ``service.instance.id``). A pre-fork
master that serves no request therefore traces nothing, and each worker starts its own session
after the fork (a session inherited through a fork is dropped in the child, see
``_after_fork_in_child``).

Which requests are traced (the *gate*, ``callspan.tracer.recorder.request_gate``, a context
variable read first by the hot path at every selected call's start):

* a request whose local root span (SERVER or CONSUMER, started by the framework's OpenTelemetry
  instrumentation) is sampled: ``GateSpanProcessor`` opens the gate when that span starts and
  closes it when it ends; unsampled spans never reach a span processor;
* a request that reaches callspan's middleware with no OpenTelemetry span: sampled at
  ``sample_rate`` (CALLSPAN_SAMPLE_RATE), for services without a sampler.

The calls of a traced request nest under the request's current span (its server span). Their
aggregates (call tree, latency sketches, cache state) export every ``profile_interval`` seconds
and when the process exits, per process (``service.instance.id`` in the scope).
"""

from __future__ import annotations

import atexit
import os
import random
import threading
import uuid
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any

# The API only (the application's instrumentation has imported it already). Imported here, not
# in the functions run per request and per span: ``from package import name`` inside a function
# runs importlib's Python-level _handle_fromlist each time (~10,000 instructions a request).
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from callspan.config import Settings, load_settings
from callspan.tracer.recorder import request_gate
from callspan.tracer.session import Session

__all__ = ["arm", "disarm", "armed", "open_request", "close_request", "GateSpanProcessor", "session"]


@dataclass
class _Armed:
    settings: Settings
    roots: tuple[str, ...]
    tracer_provider: Any
    session: Session | None = None
    session_pid: int = 0
    pipeline: Any = None  # the session's own export pipeline for its aggregates
    processors: list[Any] = field(default_factory=list)


_lock = threading.Lock()
_armed: _Armed | None = None
_atexit_registered = False


def arm(*, tracer_provider: Any = None, roots: tuple[str, ...] | None = None,
        span_processor: bool = True, **settings: Any) -> None:
    """Arm this process for production mode (again: no-op). Starts nothing yet.

    ``settings`` are those of ``callspan.config.Settings`` (include, exclude, keys, sample_rate,
    profile_interval, ...), each falling back to its CALLSPAN_* variable, then [tool.callspan].
    ``roots``: the code traced by default (default: the current directory, where a server is
    started from). ``span_processor``: add ``GateSpanProcessor`` to the tracer provider when it
    takes span processors (the OpenTelemetry SDK's), so that sampled server spans open the gate.
    """
    global _armed, _atexit_registered
    with _lock:
        if _armed is not None:
            return
        # In a server no user code runs in the hook unless asked (CALLSPAN_USER_HASH=on), and
        # calls under 100 us are not made spans (CALLSPAN_MIN_SPAN_US): a span costs the SDK and
        # its exporter ~80-130 us, more than such a call (docs/performance.md, production at 1%).
        _armed = _Armed(load_settings(settings, defaults={"user_hash": "off", "min_span_us": 100}), roots or (os.getcwd(),),
                        tracer_provider)
        if not _atexit_registered:
            atexit.register(disarm)
            _atexit_registered = True
    if span_processor:
        add_gate_processor(tracer_provider)


def add_gate_processor(tracer_provider: Any = None) -> bool:
    """Add a GateSpanProcessor to ``tracer_provider`` (default: the global one). False when that
    provider takes no span processors (e.g. the API's proxy before the SDK is configured)."""
    provider = tracer_provider or trace.get_tracer_provider()
    add = getattr(provider, "add_span_processor", None)
    if add is None:
        return False
    processor = GateSpanProcessor()
    add(processor)
    if _armed is not None:
        _armed.processors.append(processor)
    return True


def armed() -> bool:
    return _armed is not None


def session() -> Session | None:
    """This process's session, started on first use (None when not armed)."""
    state = _armed
    if state is None:
        return None
    current = state.session
    if current is not None and state.session_pid == os.getpid():
        return current
    with _lock:
        if state.session is None or state.session_pid != os.getpid():
            state.session = _start_session(state)
            state.session_pid = os.getpid()
        return state.session


def _start_session(state: _Armed) -> Session:
    from callspan.otel.bridge import OtelSink, current_context_getter, sampled_context

    state.pipeline = _profile_pipeline(state.tracer_provider)
    sink = OtelSink(state.tracer_provider, profile_provider=state.pipeline.provider)
    started = Session(state.settings, sink, default_roots=state.roots, context_getter=current_context_getter(),
                      trace_filter=sampled_context, gated=True, instance_id=str(uuid.uuid4()))
    sink.bind(started.facts)
    started.start()
    return started


def _profile_pipeline(tracer_provider: Any) -> Any:
    """The aggregates' own pipeline, made in the process that exports (after a fork): the
    application's resource, every span sampled (OTEL_TRACES_SAMPLER is the application's), the
    exporter the standard OTEL_* variables choose."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from callspan.otel.setup import build_pipeline

    resource = getattr(tracer_provider or trace.get_tracer_provider(), "resource", None)
    attributes = dict(getattr(resource, "attributes", None) or {})
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if chosen == "none":
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        from callspan.otel.setup import DEFAULT_EXPORT_TIMEOUT_S, Pipeline

        return Pipeline(TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False,
                                       sampler=ALWAYS_ON), [], DEFAULT_EXPORT_TIMEOUT_S)
    return build_pipeline(service_name=str(attributes.get("service.name") or "unknown_service"),
                          output=None, otlp=chosen == "otlp", otlp_endpoint=None, otlp_protocol=None,
                          resource_attributes=attributes, sampler=ALWAYS_ON)


def disarm() -> None:
    """Stop this process's session and export its last aggregates (at exit: bounded by the
    export timeout, never raises); forget the arming."""
    global _armed
    with _lock:
        state, _armed = _armed, None
    if state is None or state.session is None or state.session_pid != os.getpid():
        return
    try:
        state.session.stop()
    except Exception:
        pass
    # Flushed, not shut down: at interpreter exit no thread can be started, and the providers'
    # own exit hooks shut them down. A dead collector costs at most the export timeout each.
    for provider in (state.pipeline.provider if state.pipeline is not None else None,
                     state.tracer_provider or trace.get_tracer_provider()):
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            try:
                flush(int(state.pipeline.export_timeout * 1000) if state.pipeline is not None else 10_000)
            except Exception:
                pass


# -- the gate -----------------------------------------------------------------------------------

def open_request(sampled: bool | None = None) -> Token[bool] | None:
    """Open the gate for the request now running in this thread or task when it is sampled.

    ``sampled``: the decision when the caller has one; None: the current OpenTelemetry span's
    sampled flag when there is a span, else ``sample_rate``. Returns the token for
    close_request, or None when nothing was opened (not armed, not sampled, already open).
    """
    state = _armed
    if state is None or request_gate.get():
        return None
    if sampled is None:
        sampled = _sampled_now(state.settings.sample_rate)
    if not sampled:
        return None
    current = session()
    if current is None:
        return None
    current.core_cover_current_thread()
    return request_gate.set(True)


def close_request(token: Token[bool] | None) -> None:
    if token is None:
        return
    try:
        request_gate.reset(token)
    except ValueError:  # closed from another context than it was opened in
        request_gate.set(False)


def _sampled_now(rate: float) -> bool:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return bool(span_context.trace_flags.sampled)
    return rate > 0 and random.random() < rate


class GateSpanProcessor:
    """An OpenTelemetry span processor: a sampled local root span of kind SERVER or CONSUMER
    (a request or a message, started by the framework's instrumentation) opens the gate while
    it runs. The SDK calls span processors only for recording spans: the sampler decides."""

    def __init__(self) -> None:
        self._tokens: dict[int, Token[bool]] = {}

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        try:
            if span.kind not in (SpanKind.SERVER, SpanKind.CONSUMER):
                return
            parent = trace.get_current_span(parent_context).get_span_context()
            if parent.is_valid and not parent.is_remote:
                return  # not the process's first span of this request
            context = span.get_span_context()
            if not context.trace_flags.sampled:
                return
            token = open_request(sampled=True)
            if token is not None:
                self._tokens[context.span_id] = token
        except Exception:
            pass  # never into the application

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        context = span.context
        token = self._tokens.pop(context.span_id, None) if context is not None else None
        close_request(token)

    def shutdown(self) -> None:
        self._tokens.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


# -- pre-fork servers ---------------------------------------------------------------------------

def _after_fork_in_child() -> None:
    """The one place production mode handles fork: a session the parent started belongs to the
    parent (it exports its own windows). The child drops it without exporting (its hook removed,
    no thread) and starts its own on its first sampled request: a new hook, builder thread, key
    secret and service.instance.id. Gate tokens of the parent's requests are forgotten."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    state = _armed
    if state is None:
        return
    inherited, state.session, state.session_pid = state.session, None, 0
    state.pipeline = None  # the parent's: its threads did not survive the fork
    for processor in state.processors:
        processor._tokens.clear()
    if inherited is not None:
        inherited.abandon()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
