"""The sys.setprofile core (Python 3.11, and a fallback on 3.12+).

setprofile cannot disable events per code object, so unselected code still pays one dict
lookup per call. It reports yields, returns and exception exits all as "return"; the opcode at
frame.f_lasti tells them apart (see _env). It cannot see which exception escaped.
"""

from __future__ import annotations

import sys
import threading
from types import FrameType
from typing import Any

from callspan import _env
from callspan.tracer.recorder import Recorder
from callspan.tracer.selection import KIND_FUNCTION


class _UnknownException(Exception):
    """Stands in for an exception the setprofile hook saw leave a frame but cannot name."""


class PreviousProfile:
    """The profile functions in place before a setprofile core started (this thread's and
    threading's, for new threads), given back when it stops: a profiler that was running
    (cProfile, yappi, a sys.setprofile function) keeps running.

    With the compiled module, the thread's C profile function itself is saved (cProfile's on
    3.11 is one, and sys.getprofile() only shows its object); without it, a Python function
    is given back with sys.setprofile. Other threads' own profile functions are not restored:
    on 3.12+ the core had replaced them in every thread (threading.setprofile_all_threads)."""

    def __init__(self) -> None:
        self.thread: Any = None
        self.new_threads: Any = None

    def save(self) -> None:
        self.new_threads = threading.getprofile()
        if _env.HAS_COMPILED_HOTPATH:
            from callspan.tracer._hotpath import saved_profile

            self.thread = saved_profile()
        else:
            self.thread = sys.getprofile()

    def restore(self) -> None:
        threading.setprofile(self.new_threads)
        previous, self.thread = self.thread, None
        if _env.HAS_COMPILED_HOTPATH:
            from callspan.tracer._hotpath import restore_profile

            restore_profile(previous)
        else:
            sys.setprofile(previous if callable(previous) else None)


class SetProfileCore:
    name = "setprofile"

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._previous = PreviousProfile()
        self._hook = self._make_hook()

    def start(self) -> None:
        self._previous.save()
        threading.setprofile(self._hook)
        if _env.HAS_SETPROFILE_ALL_THREADS:
            threading.setprofile_all_threads(self._hook)  # type: ignore[attr-defined,unused-ignore]
        else:
            sys.setprofile(self._hook)

    def cover_current_thread(self) -> None:
        if sys.getprofile() is not self._hook:
            sys.setprofile(self._hook)

    def stop(self) -> None:
        if _env.HAS_SETPROFILE_ALL_THREADS:
            threading.setprofile_all_threads(None)  # type: ignore[attr-defined,unused-ignore]
        self._previous.restore()

    def _make_hook(self) -> Any:
        recorder = self.recorder
        infos = recorder.infos
        infos_get = infos.get
        decide = recorder.decide
        start = recorder.start
        finish = recorder.finish
        suspend = recorder.suspend
        resume = recorder.resume
        suspended = recorder.suspended
        end_suspended = recorder.end_suspended
        return_ops = _env.RETURN_OPCODES
        yield_ops = _env.YIELD_OPCODES
        unknown = _UnknownException()
        resume_op = _env.RESUME_OPCODE
        start_mask = _env.RESUME_AT_START_OPARG_MASK
        resume_follows_yield = _env.YIELD_REPORTED_AT_NEXT_RESUME

        def hook(frame: FrameType, event: str, arg: Any) -> None:
            try:
                if event == "call":
                    code = frame.f_code
                    info = infos_get(code)
                    if info is None:
                        if code in infos or (info := decide(code, frame)) is None:
                            return
                    if info.kind != KIND_FUNCTION and id(frame) in suspended:
                        lasti = frame.f_lasti
                        co_code = code.co_code
                        if lasti >= 0 and co_code[lasti] == resume_op and not co_code[lasti + 1] & start_mask:
                            # RESUME 0: this frame starts; the record at its address is a dead
                            # generator's (closed without an event, or its close taken for a yield)
                            end_suspended(id(frame))
                            start(info, frame)
                        else:
                            resume(frame)
                    else:
                        start(info, frame)
                elif event == "return":
                    code = frame.f_code
                    info = infos_get(code)
                    if info is None:
                        return
                    lasti = frame.f_lasti
                    co_code = code.co_code
                    opcode = co_code[lasti] if lasti >= 0 else -1
                    if resume_follows_yield and opcode == resume_op and lasti >= 2:
                        opcode = co_code[lasti - 2]
                    if opcode in return_ops:
                        finish(code, arg, None)
                    elif opcode in yield_ops and info.kind != KIND_FUNCTION:
                        suspend(code, frame)
                    else:
                        finish(code, None, unknown)
            except Exception:
                recorder.faults += 1

        return hook
