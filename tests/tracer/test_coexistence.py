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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_builder_thread_is_stopped_for_a_fork_and_started_again(traced) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    from callspan.config import Settings
    from callspan.tracer.session import Session
    from tests.conftest import RecordingSink

    session = Session(Settings(core=traced().session.core.name), RecordingSink(), background=True)
    session.start()
    try:
        before = session._thread
        assert before is not None and before.is_alive()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        assert not before.is_alive()
        deadline = time.monotonic() + 5
        while session._thread is None and time.monotonic() < deadline:
            sum(range(1000))  # Python code: the main thread runs its pending calls
        assert session._thread is not None and session._thread.is_alive()
        assert threading.active_count() == 2
    finally:
        session.stop()
