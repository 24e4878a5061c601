"""The sys.monitoring core (Python 3.12+).

Per code object the decision is taken once: unselected code gets DISABLE from its first
PY_START/PY_RESUME/PY_RETURN/PY_YIELD and costs nothing afterwards. PY_UNWIND and PY_THROW are
global events and must never return DISABLE; they check the decision cache instead.
"""

from __future__ import annotations

import sys
from types import CodeType
from typing import Any

from callspan.errors import CallspanError
from callspan.tracer.recorder import Recorder

# CPython names ids 0 (debuggers), 1 (coverage), 2 (profilers: cProfile takes it) and 5
# (optimizers); 3 and 4 are nobody's. callspan takes a free one of those, so that cProfile
# and coverage run beside it, and only when both are taken one of the named ids.
_TOOL_IDS = (3, 4, 2, 5)
_TOOL_NAME = "callspan"


def choose_tool_id() -> tuple[int | None, str]:
    """The sys.monitoring tool id callspan would take now, and why."""
    monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
    taken = {i: monitoring.get_tool(i) for i in _TOOL_IDS}
    for tool_id in _TOOL_IDS:
        if taken[tool_id] is None:
            if tool_id in (3, 4):
                return tool_id, f"sys.monitoring tool id {tool_id}"
            others = ", ".join(f"{i} by {taken[i]!r}" for i in (3, 4))
            return tool_id, f"sys.monitoring tool id {tool_id} (3 and 4 are in use: {others})"
    return None, "no free sys.monitoring tool id (2-5 are all in use)"


class SysMonitoringCore:
    name = "sysmon"

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.tool_id: int | None = None
        self.tool_note = choose_tool_id()[1]

    def start(self) -> None:
        monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
        tool_id, self.tool_note = choose_tool_id()
        if tool_id is None:
            raise CallspanError(f"sys.monitoring: {self.tool_note}")
        monitoring.use_tool_id(tool_id, _TOOL_NAME)
        self.tool_id = tool_id
        events = monitoring.events
        callbacks = self._callbacks(monitoring.DISABLE)
        for event_name, callback in callbacks.items():
            monitoring.register_callback(self.tool_id, getattr(events, event_name), callback)
        mask = 0
        for event_name in callbacks:
            mask |= getattr(events, event_name)
        monitoring.set_events(self.tool_id, mask)
        # DISABLE outlives a tool's session: locations an earlier session (of any selection)
        # disabled for this tool id would stay silent. Decisions restart with this recorder.
        monitoring.restart_events()

    def stop(self) -> None:
        if self.tool_id is None:
            return
        monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
        monitoring.set_events(self.tool_id, 0)
        events = monitoring.events
        for event_name in ("PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "PY_UNWIND", "PY_THROW"):
            monitoring.register_callback(self.tool_id, getattr(events, event_name), None)
        monitoring.free_tool_id(self.tool_id)
        self.tool_id = None

    def _callbacks(self, DISABLE: Any) -> dict[str, Any]:
        recorder = self.recorder
        infos_get = recorder.infos.get
        decide = recorder.decide
        start = recorder.start
        finish = recorder.finish
        suspend = recorder.suspend
        resume = recorder.resume
        getframe = sys._getframe

        def fault() -> None:
            recorder.faults += 1

        def py_start(code: CodeType, offset: int) -> Any:
            try:
                info = infos_get(code)
                if info is None:
                    frame = getframe(1)
                    if code in recorder.infos or (info := decide(code, frame)) is None:
                        return DISABLE
                    start(info, frame)
                    return None
                start(info, getframe(1))
            except Exception:
                fault()
            return None

        def py_resume(code: CodeType, offset: int) -> Any:
            try:
                if infos_get(code) is None:
                    return DISABLE
                resume(getframe(1))
            except Exception:
                fault()
            return None

        def py_return(code: CodeType, offset: int, value: Any) -> Any:
            try:
                if infos_get(code) is None:
                    return DISABLE
                finish(code, value, None)
            except Exception:
                fault()
            return None

        def py_yield(code: CodeType, offset: int, value: Any) -> Any:
            try:
                if infos_get(code) is None:
                    return DISABLE
                suspend(code, getframe(1))
            except Exception:
                fault()
            return None

        def py_unwind(code: CodeType, offset: int, exc: BaseException) -> None:
            try:
                if infos_get(code) is not None:
                    finish(code, None, exc)
            except Exception:
                fault()

        def py_throw(code: CodeType, offset: int, exc: BaseException) -> None:
            try:
                if infos_get(code) is not None:
                    resume(getframe(1))
            except Exception:
                fault()

        return {
            "PY_START": py_start, "PY_RESUME": py_resume, "PY_RETURN": py_return,
            "PY_YIELD": py_yield, "PY_UNWIND": py_unwind, "PY_THROW": py_throw,
        }
