"""The state machine both cores drive: call stacks per thread, suspended coroutines, records.

Cores translate their events into the five transitions here (start, finish, suspend, resume,
plus the decision per code object). The functions are closures so that the per-event work is
local-variable access only: no attribute lookups on self, no logging, no OpenTelemetry.
"""

from __future__ import annotations

import _thread
import contextvars
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

from callspan import _env
from callspan.tracer.aggregate import Aggregates, Node
from callspan.tracer.counters import CpuCounter, native_reader
from callspan.tracer.keys import (
    IDENTITY_ONLY,
    RET_SIZE_EVERY,
    UNKEYABLE_AFTER,
    args_key,
    builtin_sizeof,
    value_key,
)
from callspan.tracer.record import (
    R_ARGS,
    R_CHILD_CPU,
    R_CPU,
    R_END,
    R_ERROR,
    R_INCOMPLETE,
    R_INFO,
    R_KEEP,
    R_NODE,
    R_PARENT,
    R_PREV_CURRENT,
    R_RET,
    R_RET_SIZE,
    R_SEG_CPU,
    R_SHADOW,
    R_START,
    R_SUSP_AT,
    R_SUSP_NS,
    R_SUSPENDS,
    SHADOWED,
    Record,
)
from callspan.tracer.selection import KIND_COROUTINE, KIND_FUNCTION, CodeInfo, Selector

Clock = Callable[[], int]

# The innermost running traced coroutine of the current asyncio task (or context). Tasks copy
# the context when they are created, so a task's first coroutine finds its creator here.
_current_coroutine: contextvars.ContextVar[Record | None] = contextvars.ContextVar(
    "callspan_current_coroutine", default=None
)

current_coroutine_var = _current_coroutine  # the compiled hot path reads and sets the same variable

# Production mode (callspan.production): True while a sampled request runs in this thread or
# asyncio task. A gated recorder starts calls only then; the request's tasks and the threads
# it hands work to with the context copied (asyncio, anyio, run_in_executor with a context)
# inherit it. Set only by the request's entry (middleware or span processor), never cleared by
# the hot path.
request_gate: contextvars.ContextVar[bool] = contextvars.ContextVar("callspan_request_gate", default=False)

_NOT_ERRORS = (GeneratorExit,)
_OBJECT_HASH = object.__hash__


if TYPE_CHECKING or not _env.HAS_COMPILED_HASH:
    class _ThreadStateBase:
        __slots__ = ("stack", "ident", "name", "cpu", "cpu_fd")

        def flush_frames(self) -> None:
            """The compiled base makes Records of the calls it keeps in C; here there are none."""
else:
    # The same fields as C struct members, read directly by the compiled hot path.
    from callspan.tracer._hotpath import ThreadStateBase as _ThreadStateBase


class ThreadState(_ThreadStateBase):
    """Per-thread: the stack of running traced records and the thread's CPU reader."""

    __slots__ = ("root_node",)
    stack: list[Record]
    ident: int
    name: str
    cpu: Callable[[], int] | None
    cpu_fd: int

    def __init__(self, cpu: Callable[[], int] | None) -> None:
        thread = threading.current_thread()
        self.stack: list[Record] = []
        self.ident = threading.get_ident()
        self.name = thread.name
        self.cpu = cpu
        # How the compiled hot path reads ``cpu`` without calling it: -2 thread CPU time,
        # a perf_event file descriptor, or -1 (call it).
        self.cpu_fd = native_reader(cpu)
        self.root_node: Node | None = None  # this thread's root in the call tree


class _ThreadSentinel:
    __slots__ = ("states", "state")

    def __init__(self, states: dict[int, ThreadState], state: ThreadState) -> None:
        self.states = states
        self.state = state

    def __del__(self) -> None:
        if self.states.get(self.state.ident) is self.state:
            del self.states[self.state.ident]


class Recorder:
    """Holds everything the hot path touches; cores call its closures."""

    def __init__(
        self,
        selector: Selector,
        *,
        counter: CpuCounter | None = None,
        clock: Clock = time.perf_counter_ns,
        context_getter: Callable[[], Any] | None = None,
        max_pending: int = 200_000,
        max_suspended: int = 100_000,
        aggregates: Aggregates | None = None,
        max_spans_per_trace: int = 2000,
        max_spans_per_second: float = 200.0,
        trace_filter: Callable[[Any], bool] | None = None,
        gated: bool = False,
    ) -> None:
        self.selector = selector
        # The ContextVar a call's start reads first when gated (the compiled hot path too).
        self.gate: contextvars.ContextVar[bool] | None = request_gate if gated else None
        self.counter = counter
        self.clock = clock
        self.context_getter = context_getter
        self.max_pending = max_pending
        self.max_suspended = max_suspended
        # Every finished call is folded here (the compiled cores replace it with their own).
        self.aggregates: Any = aggregates if aggregates is not None else Aggregates()
        # Which calls become spans (schema v2): whole traces, decided at the root.
        self.max_spans_per_trace = max_spans_per_trace
        self.max_spans_per_second = float(max_spans_per_second)
        self.trace_filter = trace_filter  # context -> False when the application does not sample it
        self.tokens = float(max_spans_per_second)
        self.refilled: int | None = None
        self.infos: dict[CodeType, CodeInfo | None] = {}
        # Appended by the hot path, drained by the builder thread (see drain: no lock needed).
        self.finished: list[Record] = []
        self.suspended: dict[int, Record] = {}
        self.dropped = 0          # spans not built because max_pending was reached (their calls are folded)
        self.faults = 0           # internal errors swallowed by the hot path
        self.states: dict[int, ThreadState] = {}
        self._local = threading.local()
        self._threads_lock = threading.Lock()
        self._build()

    # -- once per code object / thread: not the hot path --------------------------------------

    def decide(self, code: CodeType, frame: FrameType | None) -> CodeInfo | None:
        module = frame.f_globals.get("__name__", "") if frame is not None else ""
        info = self.selector.decide(code, module if isinstance(module, str) else "")
        self.infos[code] = info
        return info

    def thread_state(self) -> ThreadState:
        reader = self.counter.thread_reader() if self.counter is not None else None
        state = ThreadState(reader)
        with self._threads_lock:
            self.states[state.ident] = state
        # When the thread ends, its thread-local sentinel is deleted and forgets the state, so
        # a later thread that reuses the ident starts fresh (and memory stays bounded).
        self._local.sentinel = _ThreadSentinel(self.states, state)
        return state

    def after_fork_in_child(self) -> None:
        """In a forked child: only the forking thread exists, its CPU clock starts again (a perf
        counter still counts the parent's thread), and the parent's pending records are the
        parent's. The calls running on this thread continue here, counted from the fork."""
        self.finished.clear()
        ident = threading.get_ident()
        with self._threads_lock:
            for other in [i for i in self.states if i != ident]:
                del self.states[other]
        state = self.states.get(ident)
        if state is None:
            return
        if self.counter is not None:
            state.cpu = self.counter.thread_reader()
            state.cpu_fd = native_reader(state.cpu)
        state.flush_frames()
        now = self.clock()
        cpu_now = state.cpu() if state.cpu is not None else 0
        for record in state.stack:
            record[R_START] = now
            record[R_SEG_CPU] = cpu_now
            record[R_CPU] = record[R_CHILD_CPU] = record[R_SUSP_NS] = 0

    def forget_running_calls(self) -> None:
        """In a multiprocessing child: the calls running (or suspended) when it was forked are its
        parent's, and never return in it (multiprocessing ends the child with os._exit), so they
        are dropped and the child's own calls start their own trees."""
        state = self.states.get(threading.get_ident())
        if state is not None:
            state.flush_frames()
            state.stack.clear()
        self.suspended.clear()
        _current_coroutine.set(None)

    def evict_oldest_suspended(self) -> None:
        """Bound memory: a generator abandoned without close (3.13 may not tell us) ends here."""
        self.end_suspended(next(iter(self.suspended)))

    def end_suspended(self, key: int) -> None:
        """End the suspended record at ``key`` where it last suspended (incomplete): its generator
        was evicted, or is gone (its frame's address now belongs to another generator: a close
        that ran no event, or one the setprofile cores could not tell from a yield)."""
        record = self.suspended.pop(key)
        record[R_END] = record[R_SUSP_AT]
        record[R_INCOMPLETE] = True
        self.fold_record(record, None, False)
        if record[R_KEEP]:
            self.finished.append(record)

    def open_records(self) -> list[Record]:
        """Records still running or suspended (for stop): innermost first, so children end first."""
        records: list[Record] = []
        for state in list(self.states.values()):
            state.flush_frames()
            records.extend(reversed(state.stack))
        records.extend(self.suspended.values())
        return records

    def finish_open_records(self) -> None:
        now = self.clock()
        for record in self.open_records():
            if record[R_END] == 0:
                record[R_END] = now
                record[R_INCOMPLETE] = True
                self.fold_record(record, None, False)
                if record[R_KEEP]:
                    self.finished.append(record)
        for state in list(self.states.values()):
            state.stack.clear()
        self.suspended.clear()

    def fold_record(self, record: Record, value: Any, returned: bool) -> None:
        """Fold one finished (or abandoned) call into the aggregates; ``value`` is its return
        value when ``returned``. The hot path inlines the same steps."""
        if hasattr(self.aggregates, "fold_record"):  # the compiled aggregates (compiled cores)
            self.aggregates.fold_record(record, value, returned)
            return
        info = record[R_INFO]
        node = record[R_NODE]
        parent = record[R_PARENT]
        start = record[R_START]
        end = record[R_END]
        wall = end - start
        cpu = record[R_CPU]
        aggregates = self.aggregates
        aggregates.fold(info, node, parent is not None and parent[R_NODE] is node, record[R_ERROR] is not None,
                        wall, wall - record[R_SUSP_NS], record[R_SUSP_NS], record[R_SUSPENDS], cpu,
                        record[R_CHILD_CPU], parent[R_INFO] if parent is not None else None)
        args = record[R_ARGS]
        if args is not None:
            ret = record[R_RET]
            raw = ret[0] if returned and ret is not None else None
            shadow = record[R_SHADOW]
            aggregates.fold_key(info, args, raw, raw is not None and type(value).__hash__ is _OBJECT_HASH,
                                start, end, cpu, shadow, returned, ret is None or ret[1] is not False,
                                returned and value is None)
            if shadow:
                aggregates.end_shadow(info, shadow)

    def keep_root(self, context: Any) -> int:
        """1 when a new trace keeps spans (its root's R_KEEP), else 0: the application's
        sampling decision (trace_filter) and the process's span rate (a token bucket)."""
        if self.trace_filter is not None and not self.trace_filter(context):
            return 0
        now = self.clock()
        rate = self.max_spans_per_second
        if self.refilled is not None:
            self.tokens = min(rate, self.tokens + (now - self.refilled) * rate / 1e9)
        self.refilled = now
        if self.tokens < 1:
            return 0
        self.tokens -= 1
        return 1

    def drain(self) -> list[Record]:
        # Each step holds the GIL; the hot path only appends at the end, so the first n records
        # taken here are exactly the ones removed, whatever it appends in between.
        finished = self.finished
        n = len(finished)
        out = finished[:n]
        del finished[:n]
        return out

    # -- the hot path ------------------------------------------------------------------------

    def _build(self) -> None:
        states = self.states
        get_ident = _thread.get_ident
        clock = self.clock
        finished = self.finished
        suspended = self.suspended
        max_pending = self.max_pending
        max_suspended = self.max_suspended
        context_getter = self.context_getter
        current_get = _current_coroutine.get
        current_set = _current_coroutine.set
        thread_state = self.thread_state
        getsizeof = sys.getsizeof
        recorder = self
        aggregates = self.aggregates
        child_node = aggregates.child
        thread_root = aggregates.thread_root
        fold_record = self.fold_record
        keep_root = self.keep_root
        max_spans = self.max_spans_per_trace
        shadow_of = aggregates.shadow
        FUNCTION = KIND_FUNCTION
        COROUTINE = KIND_COROUTINE
        # Record slots as closure constants (module globals cost a dict lookup per use).
        INFO, PARENT, START, END, SEG_CPU, CPU, CHILD_CPU = R_INFO, R_PARENT, R_START, R_END, R_SEG_CPU, R_CPU, R_CHILD_CPU
        RET, RET_SIZE, ERROR, SUSPENDS, SUSP_NS, SUSP_AT, PREV = (
            R_RET, R_RET_SIZE, R_ERROR, R_SUSPENDS, R_SUSP_NS, R_SUSP_AT, R_PREV_CURRENT)
        NODE, KEEP, ARGS, SHADOW = R_NODE, R_KEEP, R_ARGS, R_SHADOW
        gate_get = self.gate.get if self.gate is not None else None

        def start(info: CodeInfo, frame: FrameType) -> None:
            """A traced call begins (or a generator/coroutine starts for the first time)."""
            if gate_get is not None and gate_get() is not True:
                return  # gated: no sampled request runs here
            state = states.get(get_ident())
            if state is None:
                state = thread_state()
            stack = state.stack
            parent = stack[-1] if stack else None
            via_task = False
            prev = None
            if info.kind == COROUTINE:
                prev = current_get()
                if prev is not None and prev is not parent:
                    parent = prev
                    via_task = True
            elif parent is None:
                parent = current_get()
                via_task = parent is not None
            if parent is None:
                root = None
                context = context_getter() if context_getter is not None else None
                keep = keep_root(context)
                parent_node = state.root_node
                if parent_node is None:
                    parent_node = state.root_node = thread_root(state.name)
            else:
                root = parent[2] or parent  # R_ROOT: None means "I am the root"
                context = None
                # The first max_spans calls of a kept trace to start are kept: their ancestors
                # started earlier, so they are kept too.
                kept = root[KEEP]
                if 0 < kept < max_spans:
                    root[KEEP] = kept + 1
                    recorder.tokens -= 1
                    keep = 1
                else:
                    keep = 0
                parent_node = parent[NODE]
            args: tuple[int | None, str, bool] | None = None
            if info.keys:
                if info.unkeyed >= UNKEYABLE_AFTER:
                    args = info.unkeyed_args  # a function whose arguments never key: not tried again
                else:
                    key = args = args_key(info, frame, clock)
                    if key[0] is None and key[1] and key[1] != "error":
                        info.unkeyed += 1
                        if info.unkeyed == UNKEYABLE_AFTER:
                            info.unkeyed_args = (None, key[1], False)
                    else:
                        info.unkeyed = 0
            # Layout: see callspan.tracer.record.
            shadow = 0
            if args is not None and args[0] is not None and info.kind == FUNCTION:
                shadow = shadow_of(info, args[0], state.ident)
            record = [info, parent, root, 0, 0, 0, 0, 0,
                      args,
                      None, 0, None, 0, 0, 0, state, context, prev, via_task, False, None,
                      child_node(parent_node, info), keep, shadow]
            stack.append(record)
            if info.kind == COROUTINE:
                current_set(record)
            cpu = state.cpu
            if cpu is not None:
                record[SEG_CPU] = cpu()
            record[START] = clock()

        def finish(code: CodeType, value: Any, error: BaseException | None) -> None:
            """The call on top of this thread's stack returned (value) or raised (error)."""
            now = clock()
            state = states.get(get_ident())
            if state is None:
                return
            stack = state.stack
            if not stack or stack[-1][INFO].code is not code:
                return  # started before tracing began
            record = stack.pop()
            cpu = state.cpu
            if cpu is not None:
                record[CPU] += cpu() - record[SEG_CPU]
            record[END] = now
            info = record[INFO]
            if error is None:
                # A shadowed call's return value is not folded (fold_key counts the call and
                # stops): unless a span shows it, it is not hashed.
                if (info.keys and info.unkeyed < UNKEYABLE_AFTER and record[ARGS] is not IDENTITY_ONLY
                        and (record[KEEP] or not record[SHADOW] & SHADOWED)):
                    record[RET] = value_key(value, info, clock)
                    # Sizes only feed memory estimates, on spans: measured on one kept call in
                    # RET_SIZE_EVERY.
                    if record[KEEP]:
                        record[RET_SIZE] = (getsizeof(value, 0) if info.sized % RET_SIZE_EVERY == 0
                                            and builtin_sizeof(value) else None)
                        info.sized += 1
            elif not isinstance(error, _NOT_ERRORS):
                record[ERROR] = type(error)
            if stack and cpu is not None:
                parent = stack[-1]
                if parent is record[PARENT]:
                    parent[CHILD_CPU] += record[CPU]
            if info.kind == COROUTINE:
                current_set(record[PREV])
            fold_record(record, value, error is None)
            if record[KEEP]:
                if len(finished) < max_pending:
                    finished.append(record)
                else:
                    recorder.dropped += 1

        def suspend(code: CodeType, frame: FrameType) -> None:
            """A generator yields or a coroutine suspends at an await."""
            now = clock()
            state = states.get(get_ident())
            if state is None:
                return
            stack = state.stack
            if not stack or stack[-1][INFO].code is not code:
                return
            record = stack.pop()
            cpu = state.cpu
            if cpu is not None:
                record[CPU] += cpu() - record[SEG_CPU]
            record[SUSPENDS] += 1
            record[SUSP_AT] = now
            key = id(frame)
            if key in suspended:
                recorder.end_suspended(key)  # a dead generator's record (its frame's address reused)
            if len(suspended) >= max_suspended:
                recorder.evict_oldest_suspended()
            suspended[key] = record

        def resume(frame: FrameType) -> bool:
            """A suspended generator/coroutine runs again. False if we never saw it start."""
            record = suspended.pop(id(frame), None)
            if record is None or record[INFO].code is not frame.f_code:
                return False
            state = states.get(get_ident())
            if state is None:
                state = thread_state()
            now = clock()
            record[SUSP_NS] += now - record[SUSP_AT]
            state.stack.append(record)
            cpu = state.cpu
            if cpu is not None:
                record[SEG_CPU] = cpu()
            return True

        self.start = start
        self.finish = finish
        self.suspend = suspend
        self.resume = resume
