"""The hook shares the interpreter: debuggers (settrace), other profilers, fork."""

from __future__ import annotations

import os
import sys

import pytest

from tests.tracer.test_core import by_name, middle


def test_a_settrace_debugger_keeps_seeing_calls(traced) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    def debugger(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and frame.f_code is middle.__code__:
            seen.append("call")
        return None

    run = traced()
    sys.settrace(debugger)
    try:
        assert run.run(middle, 1) == 4
    finally:
        sys.settrace(None)
    assert seen == ["call"]
    assert len(by_name(run.sink.closed, "middle")) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_records_its_own_calls(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    run.session.start()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: trace a call, build spans, report how many
        try:
            middle(5)
            run.session.stop()
            os.write(write_end, str(len(by_name(run.sink.closed, "middle"))).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_count = os.read(read_end, 16)
    os.waitpid(pid, 0)
    run.session.stop()
    assert child_count == b"1"
    assert by_name(run.sink.closed, "middle") == []  # the parent made no such call
