"""The compiled hot path's wall clock (tracer/c/_clock.c): CLOCK_MONOTONIC, read through the
time-stamp counter where the kernel keeps time with it. Checked against time.perf_counter_ns
(CLOCK_MONOTONIC) on this machine's real clock: the scale, the re-anchoring, threads, fork."""

from __future__ import annotations

import os
import platform
import threading
import time
import warnings

import pytest

import callspan
from callspan.config import Settings
from callspan.tracer.session import Session

if os.environ.get("CALLSPAN_REQUIRE_EXTENSION") == "1":
    from callspan.tracer import _hotpath as hotpath
else:
    hotpath = pytest.importorskip("callspan.tracer._hotpath")

# A reading between two perf_counter_ns readings, give or take this (an anchor's error and the
# scale's over the 0.25 ms between re-anchors: ~200 ns at worst; a scale 1% off would be ~2.5 us
# off late in a window, an anchor paired loosely several us).
TOLERANCE_NS = 2_000


def kernel_clocksource() -> str:
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_the_counter_is_read_exactly_where_the_kernel_keeps_time_with_it() -> None:
    expected = "tsc" if platform.machine() == "x86_64" and kernel_clocksource() == "tsc" else "monotonic"
    assert hotpath.clock_source() == expected


def bracketed(pauses_ns: list[int]) -> list[tuple[int, int, int]]:
    readings = []
    for pause in pauses_ns:
        deadline = time.perf_counter_ns() + pause
        while time.perf_counter_ns() < deadline:  # busy: the counter runs on, in one window or across
            pass
        readings.append((time.perf_counter_ns(), hotpath.clock_ns(), time.perf_counter_ns()))
    return readings


def test_readings_are_clock_monotonic_within_the_scale_error() -> None:
    # Pauses from nothing to several re-anchor windows (0.25 ms), so readings fall early and late in
    # windows and right after re-anchors.
    pauses = [0, 1_000, 50_000, 300_000, 700_000, 990_000, 1_500_000, 3_000_000] * 40
    for before, reading, after in bracketed(pauses):
        assert before - TOLERANCE_NS <= reading <= after + TOLERANCE_NS


def test_durations_match_perf_counter_over_sleeps() -> None:
    # Each end bracketed by perf_counter_ns readings (a thread waking from a sleep runs slowly
    # for a while: readings taken one after the other are microseconds apart).
    for seconds in (0.0005, 0.002, 0.05, 0.2):
        b0, c0, a0 = time.perf_counter_ns(), hotpath.clock_ns(), time.perf_counter_ns()
        time.sleep(seconds)
        b1, c1, a1 = time.perf_counter_ns(), hotpath.clock_ns(), time.perf_counter_ns()
        assert (b1 - a0) - TOLERANCE_NS <= c1 - c0 <= (a1 - b0) + TOLERANCE_NS
        assert c1 - c0 >= seconds * 1e9


def monotonic_run(n: int, out: list[bool]) -> None:
    previous = hotpath.clock_ns()
    ok = True
    for _ in range(n):
        now = hotpath.clock_ns()
        ok &= now >= previous
        previous = now
    out.append(ok)


def test_a_thread_never_reads_a_smaller_value_across_re_anchors() -> None:
    # ~100k readings take several ms: many re-anchors, in this thread and in four others at once.
    results: list[bool] = []
    threads = [threading.Thread(target=monotonic_run, args=(100_000, results)) for _ in range(4)]
    for thread in threads:
        thread.start()
    monotonic_run(100_000, results)
    for thread in threads:
        thread.join()
    assert results == [True] * 5


def test_other_threads_read_the_same_clock() -> None:
    readings: list[tuple[int, int, int]] = []
    thread = threading.Thread(target=lambda: readings.extend(bracketed([0, 200_000, 2_000_000] * 20)))
    thread.start()
    thread.join()
    for before, reading, after in readings:
        assert before - TOLERANCE_NS <= reading <= after + TOLERANCE_NS


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_reads_the_same_clock() -> None:
    hotpath.clock_ns()  # this thread's anchor, inherited by the child
    read, write = os.pipe()
    with warnings.catch_warnings():  # threads of earlier tests may linger; the child takes no lock
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = all(b - TOLERANCE_NS <= c <= a + TOLERANCE_NS for b, c, a in bracketed([0, 500_000, 1_500_000] * 10))
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert status == 0


class NullSink:
    def open(self, node: object) -> None: ...
    def close(self, node: object) -> None: ...
    def profile(self, *args: object) -> None: ...
    def bind(self, facts: object) -> None: ...


@pytest.mark.parametrize("core", ["csysmon", "csetprofile", "sysmon", "setprofile"])
def test_the_session_says_which_clock_it_reads(core: str) -> None:
    if core.endswith("sysmon") and not hasattr(__import__("sys"), "monitoring"):
        pytest.skip("sys.monitoring is 3.12+")
    session = Session(Settings(core=core), NullSink(), background=False)
    try:
        compiled = core.startswith("c")
        assert session.facts.clock == (hotpath.clock_source() if compiled else "monotonic")
        # The recorder's own readings (tokens, open calls at stop) are the hot path's clock.
        assert (session.recorder.clock is hotpath.clock_ns) == compiled
    finally:
        session.abandon()
    injected = Session(Settings(core=core), NullSink(), background=False, clock=lambda: 1)
    assert injected.facts.clock == "injected"


def test_spans_timed_by_the_counter_nest_in_time_and_match_a_sleep(tmp_path: object) -> None:
    # End to end through the default (compiled) core: a call that sleeps 20 ms lasts 20 ms by the
    # span's timestamps, and its callee's span lies inside it.
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with callspan.tracing(include=[__file__], tracer_provider=provider):
        outer_sleeper()
    spans = {span.name.rsplit(".", 1)[-1]: span for span in exporter.get_finished_spans()}
    outer, inner = spans["outer_sleeper"], spans["inner_sleeper"]
    assert inner.start_time >= outer.start_time and inner.end_time <= outer.end_time
    assert 20_000_000 <= inner.end_time - inner.start_time < 200_000_000


def inner_sleeper() -> None:
    time.sleep(0.02)


def outer_sleeper() -> None:
    inner_sleeper()
