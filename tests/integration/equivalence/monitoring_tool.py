#: python: 3.12
"""A program claiming sys.monitoring's profiler id for itself (Python 3.12+)."""
import sys

monitoring = sys.monitoring
monitoring.use_tool_id(monitoring.PROFILER_ID, "mine")
calls = []


def on_start(code, offset):
    if code.co_name == "target":
        calls.append(code.co_name)


def target():
    return 1


monitoring.register_callback(monitoring.PROFILER_ID, monitoring.events.PY_START, on_start)
monitoring.set_events(monitoring.PROFILER_ID, monitoring.events.PY_START)
target()
target()
monitoring.set_events(monitoring.PROFILER_ID, 0)
monitoring.free_tool_id(monitoring.PROFILER_ID)
print(calls)
