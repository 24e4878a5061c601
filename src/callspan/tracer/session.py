"""Start/stop of one tracing session: recorder + core + span builder + the builder's thread.

No OpenTelemetry here: the session is handed a Sink (callspan.otel.bridge provides the real one).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType
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
    # How call times are read: "tsc" (the compiled hot path scaling the time-stamp counter to
    # CLOCK_MONOTONIC), "monotonic" (CLOCK_MONOTONIC), or "injected" (a clock the caller gave).
    clock: str = "monotonic"


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
        selector = Selector(settings.include, settings.exclude, default_roots, settings.keys, settings.keys_exclude)
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
        if clock is not time.perf_counter_ns:
            clock_source = "injected"
        elif self.recorder.clock is not clock:  # the compiled hot path's (cores.base.compiled_hot_path)
            from callspan.tracer import _hotpath
            clock_source = _hotpath.clock_source()
        else:
            clock_source = "monotonic"
        self.facts = SessionFacts(
            core=self.core.name, core_reason=core_reason,
            cpu_counter=counter.name if counter is not None else "none",
            cpu_unit=counter.unit if counter is not None else "",
            cpu_reason=cpu_reason, cpu_interval_ns=getattr(counter, "interval_ns", 0),
            instance_id=instance_id, clock=clock_source,
        )
        self.clock = clock
        self.builder = SpanBuilder(
            sink, KeyHasher(settings.key_secret), clock_offset=time.time_ns() - self.recorder.clock(),
            cpu_enabled=counter is not None, return_size=settings.return_size,
            min_span_ns=settings.min_span_us * 1000,
        )
        self.build_faults = 0
        self.profile_faults = 0
        self.profile_windows = 0
        self.calls_exported = 0  # calls in the windows handed to the sink so far (their calls_total)
        self._window_start = 0
        self._background = background
        self._lock = threading.Lock()
        self._wake: threading.Event | _PipeWakeup = threading.Event()
        self._signal_action: Callable[[int], None] | None = None  # see on_signal
        self._thread: threading.Thread | None = None
        self._running = False
        self._paused = False  # the builder thread is stopped while the program forks

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        set_user_hash(self.settings.user_hash == "on", self.settings.user_hash_skip)
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

    def on_signal(self, signum: int, action: Callable[[int], None]) -> bool:
        """From now on, ``signum`` arriving while the program leaves it to its default action
        makes the builder thread call ``action(signum)`` (which then ends the process: a
        followed child exports, then dies by SIGTERM). The main thread is not disturbed: a
        handler run there would wait for whatever blocking call it is in. False when this cannot
        be (no compiled module, no builder thread, the signal handled or ignored already)."""
        if not (_env.HAS_COMPILED_HOTPATH and self._background and hasattr(select, "select")):
            return False
        from callspan.tracer._hotpath import watch_signal

        wake = _PipeWakeup()
        if not watch_signal(signum, wake.write_fd):
            wake.close()
            return False
        self._signal_action = action
        waiting, self._wake = self._wake, wake
        waiting.set()  # the builder thread waits on the pipe from its next turn on
        return True

    def end_signal_watch(self) -> int:
        """Give the signal of ``on_signal`` its default action back; returns it if it came but
        the builder thread did not act on it (it had stopped), else 0."""
        wake = self._wake
        if not isinstance(wake, _PipeWakeup):
            return 0
        from callspan.tracer._hotpath import unwatch_signal

        unwatch_signal()
        return wake.take()

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
        # The thread never takes the program's signals: a signal sent to the process goes to
        # one of its threads that does not block it, and one taken by the builder thread
        # would not interrupt the main thread's blocking call (a sleep, a lock), where the
        # program's handler runs, or where its default action is awaited (a single-threaded
        # program is interrupted at once). The thread inherits this thread's mask.
        blocked = _block_signals()
        try:
            self._thread.start()
        finally:
            _restore_signals(blocked)

    def _run(self) -> None:
        interval = self.settings.flush_interval
        pacer = BuildPacer(interval, self.settings.max_pending)
        while self._running and not self._paused:
            wake = self._wake
            wake.wait(interval)
            if not self._running or self._paused:
                return
            signum = wake.take() if isinstance(wake, _PipeWakeup) else 0
            if signum and self._signal_action is not None:
                self._signal_action(signum)
                return
            if pacer.defer(len(self.recorder.finished), profile_due=self._next_profile):
                continue
            self.flush()
            pacer.built()

    # -- fork: all of it here ------------------------------------------------------------------
    # The builder thread is stopped before the program forks and started again on both sides:
    # a fork with no other thread running is safe (no lock held by a thread the child lacks),
    # and Python 3.12+ then has no reason to warn that the process is multi-threaded. On Linux
    # CPython counts the process's threads in /proc/self/stat (Modules/posixmodule.c,
    # warn_about_fork_with_threads): 3.12 before the after-fork hooks, 3.13 after them.

    def _before_fork(self) -> None:
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        self._paused = True
        self._wake.set()
        thread.join(_FORK_JOIN_TIMEOUT_S)
        self._thread = None
        if _env.JOIN_RETURNS_BEFORE_THREAD_EXITS:
            _wait_until_gone(thread)

    def _after_fork_in_parent(self) -> None:
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
        if isinstance(self._wake, _PipeWakeup):  # the parent's pipe (the compiled module stopped watching)
            self._wake.close()
        self._wake = threading.Event()
        self._signal_action = None
        if self._running and self._background:
            self._start_thread()


class BuildPacer:
    """When the builder thread builds: at every flush interval while the program leaves the CPU
    idle (the builder's work then costs the program nothing), otherwise at most every
    ``BUSY_MAX_DEFER_S``. The builder shares the GIL: against a program that keeps a CPU busy,
    each pass is a run of forced GIL hand-overs that slows the program beyond the pass's own CPU
    (measured in docs/performance.md); fewer, larger passes cost less.
    A pass is never deferred past the aggregates' export time, nor while a tenth of the pending
    bound is used (records are held meanwhile: memory, and spans not built beyond the bound).

    The clocks are injectable for tests: ``wall`` (seconds), ``process_cpu`` (the process's CPU
    seconds), ``own_cpu`` (the builder thread's, subtracted: the program's share is measured)."""

    # The OpenTelemetry SDK's BatchSpanProcessor waits this long between exports by default
    # (OTEL_BSP_SCHEDULE_DELAY, 5000 ms): spans of a busy program arrive no later than with it.
    BUSY_MAX_DEFER_S = 5.0
    # The program is busy when it used this share of one CPU since the last look.
    BUSY_CPU_SHARE = 0.9

    # Set by built(): the last pass, and the clocks at the last look.
    _last_build: float
    _mark_wall: float
    _mark_process: float
    _mark_own: float

    def __init__(self, interval: float, max_pending: int, *, wall: Callable[[], float] = time.monotonic,
                 process_cpu: Callable[[], float] = time.process_time,
                 own_cpu: Callable[[], float] = time.thread_time) -> None:
        self.max_defer = max(self.BUSY_MAX_DEFER_S, interval)
        self.pending_limit = max_pending // 10
        self._wall, self._process_cpu, self._own_cpu = wall, process_cpu, own_cpu
        self.deferred = 0  # passes deferred so far
        self.built()

    def defer(self, pending: int, *, profile_due: float) -> bool:
        """Whether to skip this pass (``pending``: finished records waiting; ``profile_due``:
        when the aggregates are to be exported, on the ``wall`` clock)."""
        wall, process_cpu, own_cpu = self._wall(), self._process_cpu(), self._own_cpu()
        program_cpu = (process_cpu - self._mark_process) - (own_cpu - self._mark_own)
        busy = program_cpu >= self.BUSY_CPU_SHARE * (wall - self._mark_wall)
        self._mark_wall, self._mark_process, self._mark_own = wall, process_cpu, own_cpu
        if (busy and wall - self._last_build < self.max_defer and pending < self.pending_limit
                and wall < profile_due):
            self.deferred += 1
            return True
        return False

    def built(self) -> None:
        """A pass is done: the next look measures the program from here."""
        self._last_build = self._mark_wall = self._wall()
        self._mark_process = self._process_cpu()
        self._mark_own = self._own_cpu()


class _PipeWakeup:
    """threading.Event's set/clear/wait over a pipe, which a C signal handler may write to too
    (callspan.tracer._hotpath.watch_signal writes the signal's number; set() writes a zero)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # not inherited by programs the process executes
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)  # a signal handler never waits on a full pipe
        self.signal = 0

    def set(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except OSError:  # full: it wakes the waiter already
            pass

    def wait(self, timeout: float) -> bool:
        try:
            ready, _, _ = select.select([self.read_fd], [], [], timeout)
        except (OSError, ValueError):
            return True
        return bool(ready)

    def take(self) -> int:
        """The last signal number written (0: none), forgotten once taken; the pipe emptied."""
        self._drain()
        signum, self.signal = self.signal, 0
        return signum

    def clear(self) -> None:
        self._drain()
        if self.signal:  # not taken yet: the next wait returns at once
            self.set()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 512)
            except OSError:
                return
            if not data:
                return
            self.signal = next((byte for byte in reversed(data) if byte), self.signal)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


# Signals a program may handle or wait for: all but those a fault raises in the faulting thread.
_ASYNC_SIGNALS = frozenset(signal.valid_signals()) - {
    getattr(signal, name) for name in ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP",
                                       "SIGSYS", "SIGABRT") if hasattr(signal, name)
} if hasattr(signal, "pthread_sigmask") else frozenset()


def _block_signals() -> set[int] | None:
    if not _ASYNC_SIGNALS:
        return None
    try:
        return set(signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS))
    except (OSError, ValueError):
        return None


def _restore_signals(previous: set[int] | None) -> None:
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _wait_until_gone(thread: threading.Thread) -> None:
    """Python 3.12's join returns once the thread has released its Python state, a moment
    before the OS thread exits; a fork in that moment still counts it (measured: 37 of 200
    forks right after a join warned, none after this wait). Linux: the kernel lists a thread
    in /proc/self/task until it has exited."""
    native_id = getattr(thread, "native_id", None)
    if native_id is None or not sys.platform.startswith("linux"):
        return
    task = f"/proc/self/task/{native_id}"
    deadline = time.monotonic() + _FORK_JOIN_TIMEOUT_S
    while os.path.exists(task) and time.monotonic() < deadline:
        time.sleep(0.00005)


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


_resume_in_parent = _each_session(Session._after_fork_in_parent)

# Where the program called os.fork() (code, instruction offset), while the fork runs.
_forking_at: tuple[CodeType, int] | None = None


def _before_fork() -> None:
    global _forking_at
    caller = sys._getframe(1)  # the program's frame calling os.fork() (the hooks are called from C)
    _forking_at = (caller.f_code, caller.f_lasti)
    _each_session(Session._before_fork)()


def _after_fork_in_parent() -> None:
    # 3.13 counts the threads after the after-fork hooks, just before os.fork() returns: the
    # builder thread starts again from the main thread's next check for pending calls, once
    # os.fork() has returned (see _resume_once_forked). 3.12 counted before the hooks.
    if (_env.FORK_WARNING_AFTER_HOOKS and _env.HAS_COMPILED_HOTPATH
            and threading.current_thread() is threading.main_thread()):
        from callspan.tracer._hotpath import call_soon

        call_soon(_resume_once_forked)
    else:  # 3.12, or a fork from another thread (two threads exist anyway: Python warns)
        _resume_in_parent()


def _resume_once_forked() -> None:
    """A pending call: pending calls run between two instructions of whatever Python code runs
    in the main thread, which may still be an after-fork hook called by os.fork() (this module's
    own, or one registered after it). Then the frame that called os.fork() is further down the
    stack, still at that call: ask again at the next check."""
    global _forking_at
    forking_at = _forking_at
    try:
        frame = sys._getframe(1)  # what was running when the pending calls were checked
    except ValueError:  # no Python frame running
        forking_at = None
    if forking_at is not None:
        below = frame.f_back
        while below is not None:
            if below.f_code is forking_at[0] and below.f_lasti == forking_at[1]:
                from callspan.tracer._hotpath import call_soon

                call_soon(_resume_once_forked)
                return
            below = below.f_back
    _forking_at = None
    _resume_in_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_each_session(Session._after_fork_in_child))
