"""The state machine both cores drive: call stacks per thread, suspended coroutines, records.

Cores translate their events into the five transitions here (start, finish, suspend, resume,
plus the decision per code object). The functions are closures so that the per-event work is
local-variable access only: no attribute lookups on self, no logging, no OpenTelemetry.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections import deque
from types import CodeType, FrameType
from typing import Any, Callable

from callspan.counters import CpuCounter
from callspan.keys import args_key, value_key
from callspan.record import (
    R_ARGS, R_CHILD_CPU, R_CPU, R_END, R_ERROR, R_INCOMPLETE, R_INFO, R_PARENT, R_PREV_CURRENT,
    R_RET, R_RET_SIZE, R_ROOT, R_SEG_CPU, R_START, R_SUSP_AT, R_SUSP_NS, R_SUSPENDS, R_THREAD,
    RECORD_SIZE, Record,
)
from callspan.selection import KIND_COROUTINE, CodeInfo, Selector

Clock = Callable[[], int]

# The innermost running traced coroutine of the current asyncio task (or context). Tasks copy
# the context when they are created, so a task's first coroutine finds its creator here.
_current_coroutine: contextvars.ContextVar[Record | None] = contextvars.ContextVar(
    "callspan_current_coroutine", default=None
)

_NOT_ERRORS = (GeneratorExit,)


class ThreadState:
    """Per-thread: the stack of running traced records and the thread's CPU reader."""

    __slots__ = ("stack", "ident", "name", "cpu")

    def __init__(self, cpu: Callable[[], int] | None) -> None:
        thread = threading.current_thread()
        self.stack: list[Record] = []
        self.ident = threading.get_ident()
        self.name = thread.name
        self.cpu = cpu


class Recorder:
    """Holds everything the hot path touches; cores call its closures."""

    def __init__(
        self,
        selector: Selector,
        *,
        counter: CpuCounter | None = None,
        clock: Clock = time.perf_counter_ns,
        context_getter: Callable[[], Any] | None = None,
        max_pending: int = 1_000_000,
        max_suspended: int = 100_000,
    ) -> None:
        self.selector = selector
        self.counter = counter
        self.clock = clock
        self.context_getter = context_getter
        self.max_pending = max_pending
        self.max_suspended = max_suspended
        self.infos: dict[CodeType, CodeInfo | None] = {}
        self.finished: deque[Record] = deque()
        self.suspended: dict[int, Record] = {}
        self.threads: list[ThreadState] = []
        self.dropped = 0          # records not kept because max_pending was reached
        self.faults = 0           # internal errors swallowed by the hot path
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
        self._local.state = state
        with self._threads_lock:
            self.threads.append(state)
        return state

    def evict_oldest_suspended(self) -> None:
        """Bound memory: a generator abandoned without close (3.13 may not tell us) ends here."""
        key = next(iter(self.suspended))
        record = self.suspended.pop(key)
        record[R_END] = record[R_SUSP_AT]
        record[R_INCOMPLETE] = True
        self.finished.append(record)

    def open_records(self) -> list[Record]:
        """Records still running or suspended (for stop): innermost first, so children end first."""
        records: list[Record] = []
        for state in self.threads:
            records.extend(reversed(state.stack))
        records.extend(self.suspended.values())
        return records

    def finish_open_records(self) -> None:
        now = self.clock()
        for record in self.open_records():
            if record[R_END] == 0:
                record[R_END] = now
                record[R_INCOMPLETE] = True
                self.finished.append(record)
        for state in self.threads:
            state.stack.clear()
        self.suspended.clear()

    def drain(self) -> list[Record]:
        out: list[Record] = []
        popleft = self.finished.popleft
        try:
            while True:
                out.append(popleft())
        except IndexError:
            return out

    # -- the hot path ------------------------------------------------------------------------

    def _build(self) -> None:
        local = self._local
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

        def start(info: CodeInfo, frame: FrameType) -> None:
            """A traced call begins (or a generator/coroutine starts for the first time)."""
            try:
                state = local.state
            except AttributeError:
                state = thread_state()
            stack = state.stack
            parent = stack[-1] if stack else None
            via_task = False
            prev = None
            if info.kind == KIND_COROUTINE:
                prev = current_get()
                if prev is not None and prev is not parent:
                    parent = prev
                    via_task = True
            elif parent is None:
                parent = current_get()
                via_task = parent is not None
            record = [None] * RECORD_SIZE
            record[R_INFO] = info
            record[R_PARENT] = parent
            if parent is None:
                record[R_ROOT] = record
                if context_getter is not None:
                    record[16] = context_getter()
            else:
                record[R_ROOT] = parent[R_ROOT]
            record[R_THREAD] = state
            record[R_PREV_CURRENT] = prev
            record[18] = via_task
            record[R_SUSPENDS] = record[R_SUSP_NS] = record[R_CPU] = record[R_CHILD_CPU] = record[R_END] = 0
            if info.keys:
                record[R_ARGS] = args_key(info, frame)
            stack.append(record)
            if info.kind == KIND_COROUTINE:
                current_set(record)
            cpu = state.cpu
            record[R_SEG_CPU] = cpu() if cpu is not None else 0
            record[R_START] = clock()

        def finish(code: CodeType, value: Any, error: BaseException | None) -> None:
            """The call on top of this thread's stack returned (value) or raised (error)."""
            now = clock()
            try:
                state = local.state
            except AttributeError:
                return
            stack = state.stack
            if not stack or stack[-1][R_INFO].code is not code:
                return  # started before tracing began
            record = stack.pop()
            cpu = state.cpu
            if cpu is not None:
                record[R_CPU] += cpu() - record[R_SEG_CPU]
            record[R_END] = now
            if error is None:
                if record[R_INFO].keys:
                    record[R_RET] = value_key(value)
                    record[R_RET_SIZE] = getsizeof(value, 0)
            elif not isinstance(error, _NOT_ERRORS):
                record[R_ERROR] = type(error)
            parent = record[R_PARENT]
            if stack and stack[-1] is parent:
                parent[R_CHILD_CPU] += record[R_CPU]
            if record[R_INFO].kind == KIND_COROUTINE:
                current_set(record[R_PREV_CURRENT])
            if len(finished) < max_pending:
                finished.append(record)
            else:
                recorder.dropped += 1

        def suspend(code: CodeType, frame: FrameType) -> None:
            """A generator yields or a coroutine suspends at an await."""
            now = clock()
            try:
                state = local.state
            except AttributeError:
                return
            stack = state.stack
            if not stack or stack[-1][R_INFO].code is not code:
                return
            record = stack.pop()
            cpu = state.cpu
            if cpu is not None:
                record[R_CPU] += cpu() - record[R_SEG_CPU]
            record[R_SUSPENDS] += 1
            record[R_SUSP_AT] = now
            if len(suspended) >= max_suspended:
                recorder.evict_oldest_suspended()
            suspended[id(frame)] = record

        def resume(frame: FrameType) -> bool:
            """A suspended generator/coroutine runs again. False if we never saw it start."""
            record = suspended.pop(id(frame), None)
            if record is None or record[R_INFO].code is not frame.f_code:
                return False
            try:
                state = local.state
            except AttributeError:
                state = thread_state()
            now = clock()
            record[R_SUSP_NS] += now - record[R_SUSP_AT]
            state.stack.append(record)
            cpu = state.cpu
            record[R_SEG_CPU] = cpu() if cpu is not None else 0
            return True

        self.start = start
        self.finish = finish
        self.suspend = suspend
        self.resume = resume
