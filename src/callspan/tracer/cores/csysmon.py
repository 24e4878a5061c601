"""The compiled sys.monitoring core (Python 3.12+ with callspan.tracer._hotpath built).

The same events, decisions and records as the Python sysmon core, with the callbacks and the
recorder's transitions written in C (src/callspan/tracer/c/_hotpath.c): no Python frame per event, no
attribute lookups by name on the hot path beyond one per object.
"""

from __future__ import annotations

import sys
from typing import Any

from callspan.tracer.cores.base import compiled_hot_path
from callspan.tracer.cores.sysmon import SysMonitoringCore
from callspan.tracer.recorder import Recorder


class CompiledSysMonitoringCore(SysMonitoringCore):
    name = "csysmon"

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.hot = compiled_hot_path(recorder, sys.monitoring.DISABLE)  # type: ignore[attr-defined,unused-ignore]

    def _callbacks(self, DISABLE: Any) -> dict[str, Any]:
        hot = self.hot
        return {
            "PY_START": hot.py_start, "PY_RESUME": hot.py_resume, "PY_RETURN": hot.py_return,
            "PY_YIELD": hot.py_yield, "PY_UNWIND": hot.py_unwind, "PY_THROW": hot.py_throw,
        }
