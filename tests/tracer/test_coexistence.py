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


def _forgets_then_calls(run, x: int) -> int:  # type: ignore[no-untyped-def]
    run.session.recorder.forget_running_calls()  # as in a multiprocessing child's bootstrap
    return middle(x)


def test_forgotten_running_calls_are_not_counted_and_later_calls_are_roots(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    assert run.run(_forgets_then_calls, run, 1) == 4
    assert by_name(run.sink.closed, "_forgets_then_calls") == []
    (m,) = by_name(run.sink.closed, "middle")
    assert m.parent is None
    calls: dict[str, int] = {}
    for window in run.sink.windows:
        for name, count in zip(window["function.name"], window["function.calls"], strict=True):
            calls[name] = calls.get(name, 0) + count
    assert calls[middle.__module__ + ".middle"] == 1 and calls.get(f"{__name__}._forgets_then_calls", 0) == 0


def _blocked_signals(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as status:
        line = next(line for line in status if line.startswith("SigBlk:"))
    return int(line.split()[1], 16)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_the_builder_thread_takes_none_of_the_programs_signals(core: str) -> None:
    import signal
    import threading

    from callspan.config import Settings
    from callspan.tracer.session import Session
    from tests.conftest import RecordingSink

    main_before = _blocked_signals(threading.get_native_id())
    session = Session(Settings(core=core), RecordingSink(), background=True)
    session.start()
    try:
        assert session._thread is not None and session._thread.native_id is not None
        builder = _blocked_signals(session._thread.native_id)
        assert _blocked_signals(threading.get_native_id()) == main_before
    finally:
        session.stop()
    for taken_by_the_program in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGALRM, signal.SIGUSR1):
        assert builder & (1 << (taken_by_the_program - 1)), taken_by_the_program
    for raised_by_a_fault in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL):
        assert not builder & (1 << (raised_by_a_fault - 1)), raised_by_a_fault


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_watched_signal_is_acted_on_by_the_builder_thread_then_kills(core: str) -> None:
    """A followed child's SIGTERM: the builder thread acts while the main thread stays blocked."""
    import signal
    import threading

    from callspan import _env
    from callspan.config import Settings
    from callspan.tracer.session import Session
    from tests.conftest import RecordingSink

    if not _env.HAS_COMPILED_HOTPATH:
        pytest.skip("needs the compiled module (pip install -e .)")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            from callspan.tracer._hotpath import die_by_signal

            session = Session(Settings(core=core), RecordingSink(), background=True)
            session.start()

            def action(signum: int) -> None:
                os.write(write_end, f"acted {signum} in {threading.current_thread().name};".encode())
                die_by_signal(signum)

            watching = session.on_signal(signal.SIGTERM, action)
            default = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            os.write(write_end, f"ready {watching} {default};".encode())
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()  # held: this thread waits for good
        finally:
            os._exit(3)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        ready = b""
        while not ready.endswith(b";"):
            ready += pipe.read(1)
        os.kill(pid, signal.SIGTERM)
        acted = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert ready == b"ready True True;"
    assert acted == f"acted {int(signal.SIGTERM)} in callspan-builder;".encode()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
