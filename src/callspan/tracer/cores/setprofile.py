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


class SetProfileCore:
    name = "setprofile"

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._previous: Any = None
        self._hook = self._make_hook()

    def start(self) -> None:
        self._previous = sys.getprofile()
        threading.setprofile(self._hook)
        if _env.HAS_SETPROFILE_ALL_THREADS:
            threading.setprofile_all_threads(self._hook)  # type: ignore[attr-defined,unused-ignore]
        else:
            sys.setprofile(self._hook)

    def stop(self) -> None:
        threading.setprofile(None)  # type: ignore[arg-type,unused-ignore]
        if _env.HAS_SETPROFILE_ALL_THREADS:
            threading.setprofile_all_threads(None)  # type: ignore[attr-defined,unused-ignore]
        else:
            sys.setprofile(None)

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
        return_ops = _env.RETURN_OPCODES
        yield_ops = _env.YIELD_OPCODES
        unknown = _UnknownException()
        resume_op = _env.RESUME_OPCODE
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
