"""The tracing `callspan run` adds to one process: a session, the OpenTelemetry pipeline and the
sink between them; started once, re-armed in a forked child, finished at exit. The program's
process has one, and so has each child that ``--follow-children`` traces.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from callspan.config import Settings


@dataclass(frozen=True)
class TracingPlan:
    """What a process traces and where it sends it: everything a spawned child needs to trace
    as its parent does (pickled to it with multiprocessing's preparation data)."""

    settings: Settings
    default_roots: tuple[str, ...]
    service: str
    output: str | None
    otlp: bool
    otlp_endpoint: str | None
    otlp_protocol: str | None
    export_timeout: float


class RunTracing:
    """``output_fd``: the parent's output file, open for appending (a spawned child's)."""

    def __init__(self, plan: TracingPlan, output_fd: int | None = None) -> None:
        # Importing the OpenTelemetry SDK installs a warnings filter of its own: the program
        # must see Python's filters only.
        saved_filters = list(warnings.filters)
        try:
            self._build(plan, output_fd)
        finally:
            _restore_warning_filters(saved_filters)
        self.plan = plan
        self._finish_lock = threading.Lock()
        self._finished = False
        self._deadly_signal = 0  # a signal that ends the process once the finish is done
        # callspan.children, in a followed child: its multiprocessing finalizer, and the pid of
        # the process that watches SIGTERM with it.
        self.exit_finalizer: Any = None
        self.signal_watched_in = 0

    def _build(self, plan: TracingPlan, output_fd: int | None) -> None:
        from callspan.otel.bridge import OtelSink, current_context_getter, sampled_context, scope_attributes
        from callspan.otel.setup import build_pipeline
        from callspan.tracer.session import Session

        # The session is created first so that its facts (core, counter) go into the resource.
        placeholder = OtelSink()
        self.session = Session(plan.settings, placeholder, default_roots=plan.default_roots,
                               context_getter=current_context_getter(), trace_filter=sampled_context)
        self.pipeline = build_pipeline(
            service_name=plan.service, output=plan.output, otlp=plan.otlp, otlp_endpoint=plan.otlp_endpoint,
            otlp_protocol=plan.otlp_protocol, export_timeout=plan.export_timeout,
            resource_attributes=scope_attributes(self.session.facts), output_fd=output_fd,
        )
        self.sink = OtelSink(self.pipeline.provider)
        self.sink.bind(self.session.facts)
        self.session.builder.sink = self.sink

    def start(self) -> None:
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)
        self.session.start()

    def _after_fork_in_child(self) -> None:
        # The session has re-armed itself (callspan.tracer.session); the child's spans carry
        # its pid.
        try:
            self.pipeline.after_fork_in_child()
            for destination in self.pipeline.destinations:
                after = getattr(destination.exporter.inner, "after_fork_in_child", None)
                if after is not None:
                    after()
            self.sink.bind(self.session.facts)
        except Exception:
            self.sink.faults += 1

    def child_plan(self) -> TracingPlan:
        """The plan for a child: this one, with the core this process uses."""
        from dataclasses import replace

        return replace(self.plan, settings=replace(self.plan.settings, core=self.session.core.name))

    def finish(self) -> bool | None:
        """Stop tracing and export what is left: True if every destination finished within the
        export timeout; None when this process has finished already. Waits for a finish the
        builder thread began on a signal (the process ends with it)."""
        with self._finish_lock:
            if self._finished:
                return None
            self._finished = True
            return self._finish()

    def finish_and_die_by(self, signum: int) -> None:
        """On a signal left to its default action (the builder thread, or a Python handler):
        export what was traced, then let the signal end the process as it would have at once.
        A finish under way (the main thread's, at exit) ends by the signal instead: this
        thread does not wait for it, as that finish waits for the builder thread."""
        self._deadly_signal = signum
        if not self._finish_lock.acquire(blocking=False):
            return
        try:
            if not self._finished:
                self._finished = True
                self._finish()
        finally:
            self._finish_lock.release()

    def _finish(self) -> bool:
        try:
            self.session.stop()
            return self.pipeline.shutdown()
        finally:
            # A signal that came meanwhile is acted on once everything is exported (until then
            # it only wrote to the builder thread's pipe).
            signum = self.session.end_signal_watch() or self._deadly_signal
            if signum:
                _die_by(signum)

    @property
    def faults(self) -> int:
        session = self.session
        return session.build_faults + session.profile_faults + self.sink.faults + session.recorder.faults


def _die_by(signum: int) -> None:
    """Let ``signum`` end the process by its default action (from any thread)."""
    try:
        from callspan.tracer._hotpath import die_by_signal
    except ImportError:  # no compiled module: only the main thread gets here
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
    else:
        die_by_signal(signum)


def _restore_warning_filters(saved: list[Any]) -> None:
    filters: list[Any] = warnings.filters  # type: ignore[assignment]
    if filters != saved:
        filters[:] = saved
        mutated = getattr(warnings, "_filters_mutated", None)
        if mutated is not None:
            mutated()
