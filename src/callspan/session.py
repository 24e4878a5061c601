"""Start/stop of one tracing session: recorder + core + span builder + the builder's thread.

No OpenTelemetry here: the session is handed a Sink (callspan.otel.bridge provides the real one).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callspan.builder import Sink, SpanBuilder
from callspan.config import Settings
from callspan.cores.base import Core
from callspan.cores.select import choose_core
from callspan.counters import CpuCounter, choose_counter
from callspan.keys import KeyHasher
from callspan.recorder import Clock, Recorder
from callspan.selection import Selector

_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


@dataclass(frozen=True)
class SessionFacts:
    """Facts about the running session that readers need (scope attributes)."""

    core: str
    core_reason: str
    cpu_counter: str
    cpu_unit: str
    cpu_reason: str
    cpu_interval_ns: int = 0


class Session:
    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        *,
        default_roots: tuple[str, ...] = (),
        clock: Clock = time.perf_counter_ns,
        counter: CpuCounter | None | str = "auto",
        context_getter: Callable[[], Any] | None = None,
        background: bool = True,
        compiled_builder: bool | None = None,
    ) -> None:
        self.settings = settings
        if isinstance(counter, str):
            counter, cpu_reason = choose_counter(settings.cpu, settings.cpu_interval_us)
        else:
            cpu_reason = "counter supplied by the caller"
        self.counter = counter
        selector = Selector(settings.include, settings.exclude, default_roots, settings.keys)
        self.recorder = Recorder(selector, counter=counter, clock=clock, context_getter=context_getter,
                                 max_pending=settings.max_pending)
        self.core: Core
        self.core, core_reason = choose_core(self.recorder, settings.core)
        self.facts = SessionFacts(
            core=self.core.name, core_reason=core_reason,
            cpu_counter=counter.name if counter is not None else "none",
            cpu_unit=counter.unit if counter is not None else "",
            cpu_reason=cpu_reason, cpu_interval_ns=getattr(counter, "interval_ns", 0),
        )
        self.clock = clock
        self.builder = SpanBuilder(
            sink, KeyHasher(settings.key_secret), clock_offset=time.time_ns() - clock(),
            cpu_enabled=counter is not None, max_spans=settings.max_spans_per_trace,
            max_summary_calls=settings.max_summary_calls,
            max_spans_per_second=settings.max_spans_per_second, compiled=compiled_builder,
            max_listed_calls_per_second=settings.max_listed_calls_per_second,
        )
        self.build_faults = 0
        self._background = background
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self.core.start()
        self._running = True
        _sessions.add(self)
        if self._background:
            self._start_thread()

    def stop(self) -> None:
        """Remove the hook, end the calls still open, build every remaining span."""
        if not self._running:
            return
        self._running = False
        self.core.stop()
        self.recorder.finish_open_records()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self.flush(final=True)

    def flush(self, final: bool = False) -> None:
        """Build spans for every finished record now (the builder thread does this periodically);
        ``final`` also closes the span collecting unsampled traces."""
        with self._lock:
            records = self.recorder.drain()
            try:
                if records:
                    self.builder.process(records)
                if final:
                    self.builder.finish()
            except Exception:
                self.build_faults += 1

    @property
    def dropped(self) -> int:
        return self.recorder.dropped

    def _start_thread(self) -> None:
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="callspan-builder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.settings.flush_interval
        while self._running:
            self._wake.wait(interval)
            if not self._running:
                return
            self.flush()

    def _after_fork_in_child(self) -> None:
        # The child inherits the parent's pending records (the parent emits them) and no builder
        # thread. Start clean: its own records, its own thread.
        self.recorder.finished.clear()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        if self._running and self._background:
            self._start_thread()


def _after_fork() -> None:
    for session in list(_sessions):
        session._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
