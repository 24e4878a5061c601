"""The compiled sys.monitoring core (Python 3.12+ with callspan._hotpath built).

The same events, decisions and records as the Python sysmon core, with the callbacks and the
recorder's transitions written in C (src/callspan/_hotpath.c): no Python frame per event, no
attribute lookups by name on the hot path beyond one per object.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from callspan import _env
from callspan.cores.sysmon import SysMonitoringCore
from callspan.keys import _KWD_MARK, unhashable_args, unhashable_value
from callspan.recorder import Recorder, current_coroutine_var


class CompiledSysMonitoringCore(SysMonitoringCore):
    name = "csysmon"

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        from callspan import _hotpath

        monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
        # The default clock is read natively (CLOCK_MONOTONIC, what time.perf_counter_ns reads on
        # Linux); an injected clock is called.
        native_clock = recorder.clock is time.perf_counter_ns and _env.PERF_COUNTER_IS_CLOCK_MONOTONIC
        self.hot = _hotpath.HotPath(recorder, current_coroutine_var, unhashable_args, unhashable_value,
                                    _KWD_MARK, monitoring.DISABLE, native_clock)

    def _callbacks(self, DISABLE: Any) -> dict[str, Any]:
        hot = self.hot
        return {
            "PY_START": hot.py_start, "PY_RESUME": hot.py_resume, "PY_RETURN": hot.py_return,
            "PY_YIELD": hot.py_yield, "PY_UNWIND": hot.py_unwind, "PY_THROW": hot.py_throw,
        }
