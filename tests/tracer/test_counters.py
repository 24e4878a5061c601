"""CPU counters: perf_event software events exist here; hardware instructions may not."""

from __future__ import annotations

import threading

import pytest

from callspan.errors import CallspanError
from callspan.tracer.counters import PerfEventCounter, ThreadTimeCounter, choose_counter


def burn(n: int) -> int:
    return sum(i * i for i in range(n))


def _hw_available() -> bool:
    try:
        PerfEventCounter("instructions")
    except OSError:
        return False
    return True


def test_perf_software_task_clock_counts_this_threads_cpu() -> None:
    counter = PerfEventCounter("task-clock")
    assert counter.name == "perf:task-clock" and counter.unit == "ns"
    read = counter.thread_reader()
    before = read()
    burn(200_000)
    after = read()
    assert after > before
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(counter.thread_reader()()))
    thread.start()
    thread.join()
    assert other and other[0] < after  # a fresh thread's counter starts near zero
    counter.close()


def test_thread_time_counter_is_monotonic() -> None:
    read = ThreadTimeCounter().thread_reader()
    first = read()
    burn(50_000)
    assert read() > first


def test_auto_prefers_instructions_and_falls_back_truthfully() -> None:
    counter, reason = choose_counter("auto")
    if _hw_available():
        assert counter is not None and counter.name == "perf:instructions" and counter.unit == "instructions"
    else:
        assert counter is not None and counter.name == "thread_time" and counter.unit == "ns"
        assert reason.startswith("no hardware instruction counter")


def test_explicit_hardware_counter_fails_clearly_when_absent() -> None:
    if _hw_available():
        pytest.skip("this machine exposes hardware instructions")
    with pytest.raises(CallspanError, match="instructions"):
        choose_counter("instructions")


def test_off_means_no_counter() -> None:
    assert choose_counter("off")[0] is None


def test_session_with_perf_counter_records_cpu_per_span(core: str) -> None:
    from callspan.config import Settings
    from callspan.tracer.session import Session
    from tests.conftest import TESTS_DIR, RecordingSink

    sink = RecordingSink()
    session = Session(Settings(core=core, cpu="task-clock"), sink, default_roots=(TESTS_DIR,), background=False)
    assert session.facts.cpu_counter == "perf:task-clock"
    session.start()
    burn(100_000)
    session.stop()
    (node,) = sink.named(".burn")
    assert node.attributes["callspan.cpu.total"] > 0


@pytest.mark.parametrize("event", ["task-clock", "instructions"])
def test_compiled_perf_event_open_is_the_ctypes_syscall(event: str) -> None:
    # The compiled module opens counters (no ctypes at start-up); the ctypes path is its
    # fallback. Both give a working counter or the same error for the same event.
    import os

    hotpath = pytest.importorskip("callspan.tracer._hotpath")
    from callspan.tracer.counters import PERF_EVENTS, _perf_event_open_ctypes

    event_type, config, _ = PERF_EVENTS[event]
    outcomes = []
    for open_ in (hotpath.perf_event_open, _perf_event_open_ctypes):
        try:
            fd = open_(event_type, config, 0)
        except OSError as exc:
            outcomes.append(("error", exc.errno))
        else:
            sum(range(10_000))
            outcomes.append(("counts", int.from_bytes(os.read(fd, 8), "little") > 0))
            os.close(fd)
    assert outcomes[0] == outcomes[1]
    if event == "task-clock":
        assert outcomes[0] == ("counts", True)
