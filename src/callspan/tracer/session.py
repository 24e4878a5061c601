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

from callspan import _env
from callspan.config import Settings
from callspan.tracer.aggregate import Aggregates
from callspan.tracer.builder import Sink, SpanBuilder
from callspan.tracer.cores.base import Core
from callspan.tracer.cores.select import choose_core
from callspan.tracer.counters import CpuCounter, choose_counter
from callspan.tracer.keys import KeyHasher, set_user_hash
from callspan.tracer.recorder import Clock, Recorder
from callspan.tracer.selection import Selector

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
    instance_id: str = ""  # service.instance.id of this process's session (production mode), or ""


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
        trace_filter: Callable[[Any], bool] | None = None,
        gated: bool = False,
        instance_id: str = "",
    ) -> None:
        self.settings = settings
        if isinstance(counter, str):
            counter, cpu_reason = choose_counter(settings.cpu, settings.cpu_interval_us)
        else:
            cpu_reason = "counter supplied by the caller"
        self.counter = counter
        selector = Selector(settings.include, settings.exclude, default_roots, settings.keys)
        self.recorder = Recorder(
            selector, counter=counter, clock=clock, context_getter=context_getter,
            max_pending=settings.max_pending, aggregates=self._new_aggregates(settings),
            max_spans_per_trace=settings.max_spans_per_trace,
            max_spans_per_second=settings.max_spans_per_second, trace_filter=trace_filter,
            gated=gated)
        self.core: Core
        self.core, core_reason = choose_core(self.recorder, settings.core)
        tool_note = getattr(self.core, "tool_note", None)
        if tool_note:
            core_reason = f"{core_reason}; {tool_note}"
        self.facts = SessionFacts(
            core=self.core.name, core_reason=core_reason,
            cpu_counter=counter.name if counter is not None else "none",
            cpu_unit=counter.unit if counter is not None else "",
            cpu_reason=cpu_reason, cpu_interval_ns=getattr(counter, "interval_ns", 0),
            instance_id=instance_id,
        )
        self.clock = clock
        self.builder = SpanBuilder(
            sink, KeyHasher(settings.key_secret), clock_offset=time.time_ns() - clock(),
            cpu_enabled=counter is not None, return_size=settings.return_size,
        )
        self.build_faults = 0
        self.profile_faults = 0
        self.profile_windows = 0
        self.calls_exported = 0  # calls in the windows handed to the sink so far (their calls_total)
        self._window_start = 0
        self._background = background
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._paused = False  # the builder thread is stopped while the program forks

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        set_user_hash(self.settings.user_hash == "on")
        self.core.start()
        self._window_start = time.time_ns()
        self._next_profile = time.monotonic() + self.settings.profile_interval
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

    def core_cover_current_thread(self) -> None:
        """Make sure the hook sees this thread: a setprofile core reaches the threads that existed
        before start only on 3.12+ (production mode starts while a server's threads exist)."""
        cover = getattr(self.core, "cover_current_thread", None)
        if cover is not None:
            cover()

    def abandon(self) -> None:
        """In a forked child, drop a session the parent runs: its hook removed, no thread, nothing
        exported (the parent exports its own records and aggregates)."""
        self._running = False
        self._wake.set()
        try:
            self.core.stop()
        except Exception:
            pass
        self.recorder.finished.clear()
        self._thread = None
        _sessions.discard(self)

    @staticmethod
    def _new_aggregates(settings: Settings) -> Aggregates:
        return Aggregates(max_nodes=settings.max_nodes, max_depth=settings.max_depth,
                          max_keys=settings.max_keys, max_keys_total=settings.max_keys_total,
                          key_min_ns=settings.key_min_ns)

    def flush(self, final: bool = False) -> None:
        """Build spans for every finished kept call now (the builder thread does this
        periodically); export the aggregates when their interval has passed, and when ``final``."""
        with self._lock:
            records = self.recorder.drain()
            try:
                if records:
                    self.builder.process(records)
            except Exception:
                self.build_faults += 1
            if final or time.monotonic() >= self._next_profile:
                self.export_profile(final)

    def export_profile(self, final: bool = False) -> None:
        """Hand what the aggregates gained since the last export to the sink (one window)."""
        self._next_profile = time.monotonic() + self.settings.profile_interval
        end = time.time_ns()
        try:
            columns = self.recorder.aggregates.export_window()
            # Cumulative: a reader that lacks a window (lost in transit) counts its calls from
            # any later window (calls_total in docs/span-schema.md).
            self.calls_exported += sum(columns.get("function.calls", ()))
            columns["calls_total"] = [self.calls_exported]
            self.builder.sink.profile(columns, self._window_start, end, final)
            self.profile_windows += 1
        except Exception:
            self.profile_faults += 1
        self._window_start = end

    @property
    def dropped(self) -> int:
        return self.recorder.dropped

    def _start_thread(self) -> None:
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="callspan-builder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.settings.flush_interval
        while self._running and not self._paused:
            self._wake.wait(interval)
            if not self._running or self._paused:
                return
            self.flush()

    # -- fork: all of it here ------------------------------------------------------------------
    # The builder thread is stopped before the program forks and started again on both sides:
    # a fork with no other thread running is safe (no lock held by a thread the child lacks),
    # and Python 3.12+ then has no reason to warn that the process is multi-threaded.

    def _before_fork(self) -> None:
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        self._paused = True
        self._wake.set()
        thread.join(_FORK_JOIN_TIMEOUT_S)
        self._thread = None

    def _after_fork_in_parent(self) -> None:
        # Python 3.12 counts the threads before the after-fork hooks run: the thread starts again
        # here. 3.13 counts them after the hooks (once it has restarted the world): the thread
        # starts again from the main thread's next pending-calls check, after os.fork() returns
        # unless other after-fork hooks run Python code first.
        if _env.FORK_WARNING_AFTER_HOOKS and _env.HAS_COMPILED_HOTPATH:
            from callspan.tracer._hotpath import call_soon

            call_soon(self._resume_after_fork)
        else:
            self._resume_after_fork()

    def _resume_after_fork(self) -> None:
        self._paused = False
        if self._running and self._background and self._thread is None:
            self._start_thread()

    def _after_fork_in_child(self) -> None:
        # The child inherits the parent's pending records and aggregates (the parent exports
        # them). Start clean: its own records, aggregates from the fork on, and thread.
        self._paused = False
        self._thread = None
        self.recorder.after_fork_in_child()
        self.recorder.aggregates.forget_parent()
        self.calls_exported = 0
        self._window_start = time.time_ns()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        if self._running and self._background:
            self._start_thread()


# The longest wait for a builder thread in the middle of a flush when the program forks.
_FORK_JOIN_TIMEOUT_S = 5.0



def _each_session(action: Callable[[Session], None]) -> Callable[[], None]:
    def run() -> None:
        for session in list(_sessions):
            try:
                action(session)
            except Exception:  # never into the program's fork
                session.build_faults += 1
    return run


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_each_session(Session._before_fork),
                        after_in_parent=_each_session(Session._after_fork_in_parent),
                        after_in_child=_each_session(Session._after_fork_in_child))
