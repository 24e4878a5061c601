"""The Python API for services that configure the OpenTelemetry SDK themselves.

    import callspan
    callspan.start()                 # uses the global TracerProvider you configured
    ...
    callspan.stop()

    with callspan.tracing(include=["myapp"]):
        handle(request)

    @callspan.traced()
    async def handler(request): ...

callspan never installs a TracerProvider of its own here: spans go through yours (its
resource, sampler and span processors).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from callspan.config import load_settings
from callspan.tracer.session import Session

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_current: Session | None = None
_depth = 0


def _caller_root(depth: int) -> tuple[str, ...]:
    frame = sys._getframe(depth)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("callspan"):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return (os.getcwd(),)
    return (os.path.dirname(os.path.realpath(frame.f_code.co_filename)),)


def start(
    *,
    tracer_provider: Any = None,
    roots: tuple[str, ...] | None = None,
    **settings: Any,
) -> Session:
    """Start tracing the selected code (default: the code next to the caller's file).

    ``settings`` are those of ``callspan.config.Settings`` (include, exclude, cpu, keys, core,
    max_spans_per_trace, ...); each falls back to its CALLSPAN_* variable, then [tool.callspan].
    """
    global _current, _depth
    with _lock:
        if _current is not None:
            _depth += 1
            return _current
        from callspan.otel.bridge import OtelSink, current_context_getter, sampled_context

        resolved = load_settings(settings)
        sink = OtelSink(tracer_provider)
        session = Session(resolved, sink, default_roots=roots or _caller_root(2),
                          context_getter=current_context_getter(), trace_filter=sampled_context)
        sink.bind(session.facts)
        session.start()
        _current = session
        _depth = 1
        return session


def stop() -> None:
    """Stop tracing and hand every remaining span to the TracerProvider (no-op if not started)."""
    global _current, _depth
    with _lock:
        if _current is None:
            return
        _depth -= 1
        if _depth > 0:
            return
        session, _current = _current, None
    session.stop()


@contextmanager
def tracing(**options: Any) -> Iterator[Session]:
    """Trace while the block runs."""
    session = start(roots=options.pop("roots", None) or _caller_root(3), **options)
    try:
        yield session
    finally:
        stop()


def traced(**options: Any) -> Callable[[F], F]:
    """Decorator: trace while the decorated function (sync or async) runs."""

    def decorate(func: F) -> F:
        roots = options.pop("roots", None) or (os.path.dirname(os.path.realpath(func.__code__.co_filename)),)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start(roots=roots, **options)
                try:
                    return await func(*args, **kwargs)
                finally:
                    stop()

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start(roots=roots, **options)
            try:
                return func(*args, **kwargs)
            finally:
                stop()

        return wrapper  # type: ignore[return-value]

    return decorate
