"""The version facts in callspan._env, checked against this interpreter."""

from __future__ import annotations

import asyncio
import sys

import pytest

from callspan import _env


@pytest.mark.skipif(not _env.HAS_SYS_MONITORING, reason="sys.monitoring is 3.12+")
def test_await_chain_yields_innermost_first_and_resumes_outermost_first() -> None:
    monitoring = sys.monitoring
    events = monitoring.events
    seen: list[tuple[str, str]] = []

    async def inner() -> None:
        await asyncio.sleep(0)

    async def outer() -> None:
        await inner()

    codes = {inner.__code__: "inner", outer.__code__: "outer"}

    def on(kind: str):  # type: ignore[no-untyped-def]
        def callback(code, offset, *rest):  # type: ignore[no-untyped-def]
            if code in codes:
                seen.append((kind, codes[code]))
        return callback

    tool = 5
    monitoring.use_tool_id(tool, "callspan-env-test")
    try:
        for kind in ("PY_YIELD", "PY_RESUME", "PY_THROW"):
            monitoring.register_callback(tool, getattr(events, kind), on(kind))
        monitoring.set_events(tool, events.PY_YIELD | events.PY_RESUME | events.PY_THROW)
        asyncio.run(outer())
    finally:
        monitoring.set_events(tool, 0)
        monitoring.free_tool_id(tool)
    assert seen == [("PY_YIELD", "inner"), ("PY_YIELD", "outer"), ("PY_RESUME", "outer"), ("PY_RESUME", "inner")]


def test_return_and_yield_opcodes_exist() -> None:
    assert _env.RETURN_OPCODES and _env.YIELD_OPCODES
    assert _env.YIELD_REPORTED_AT_NEXT_RESUME == (sys.version_info >= (3, 13))


def test_setprofile_hides_the_exception_in_flight() -> None:
    seen: list[object] = []

    def fails() -> None:
        raise ValueError

    def hook(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "return" and frame.f_code is fails.__code__:
            seen.append(sys.exc_info()[0])

    sys.setprofile(hook)
    try:
        fails()
    except ValueError:
        pass
    finally:
        sys.setprofile(None)
    assert seen == [None]  # so the setprofile core reports error.type "_OTHER"
    assert _env.SETPROFILE_SEES_EXCEPTION_TYPE is False
