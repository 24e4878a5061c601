"""callspan.production in one process: the gate span processor follows the application's
sampler, calls nest under the server span, the rate for services without a sampler, and the
re-arm after a fork (the child's own session, the parent's untouched)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind

import callspan.production as production
from callspan.config import load_settings
from callspan.errors import CallspanError
from callspan.tracer.recorder import request_gate
from tests.conftest import TESTS_DIR


def view(x: int) -> int:
    return helper(x) + 1


def helper(x: int) -> int:
    return x * 2


@pytest.fixture(autouse=True)
def disarmed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")  # the aggregates' own pipeline exports nothing
    yield
    production.disarm()
    assert request_gate.get() is False


def provider(sampler: object) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    made = TracerProvider(sampler=sampler)  # type: ignore[arg-type]
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made, exporter


def test_a_sampled_server_span_traces_its_calls_under_it_and_an_unsampled_one_does_not() -> None:
    sampled_provider, exporter = provider(ALWAYS_ON)
    # every kept call a span (the default leaves out calls under 100 us: the next test)
    production.arm(tracer_provider=sampled_provider, roots=(TESTS_DIR,), flush_interval=100, min_span_us=0)
    tracer = sampled_provider.get_tracer("server")
    with tracer.start_as_current_span("GET /view", kind=SpanKind.SERVER):
        assert request_gate.get() is True
        with tracer.start_as_current_span("internal"):  # not a local root: changes nothing
            pass
        assert request_gate.get() is True and view(1) == 3
        from callspan.tracer import keys
        assert keys._user_hash is False  # production runs no user __hash__ unless asked
    assert request_gate.get() is False
    assert view(2) == 5  # outside any request: not traced
    with tracer.start_as_current_span("internal root", kind=SpanKind.INTERNAL):
        assert request_gate.get() is False  # only SERVER and CONSUMER spans are requests
    production.disarm()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server = spans["GET /view"]
    assert spans[f"{__name__}.view"].parent.span_id == server.context.span_id
    assert spans[f"{__name__}.helper"].parent.span_id == spans[f"{__name__}.view"].context.span_id
    assert sorted(spans) == sorted(["GET /view", "internal", "internal root", f"{__name__}.view",
                                    f"{__name__}.helper"])


def slow_view(x: int) -> int:
    time.sleep(0.002)
    return helper(x)


def test_by_default_a_sampled_request_makes_spans_of_its_calls_of_100_us_or_more_only() -> None:
    sampled_provider, exporter = provider(ALWAYS_ON)
    production.arm(tracer_provider=sampled_provider, roots=(TESTS_DIR,), flush_interval=100)
    tracer = sampled_provider.get_tracer("server")
    with tracer.start_as_current_span("GET /slow", kind=SpanKind.SERVER):
        assert slow_view(1) == 2 and view(1) == 3
    state = production._armed
    assert state is not None and state.session is not None
    session = state.session
    window = session.recorder.aggregates.export_window()  # every call, span or not
    assert {name: _calls(window, name) for name in ("slow_view", "view", "helper")} == \
        {"slow_view": 1, "view": 1, "helper": 2}
    production.disarm()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    # slow_view (2 ms) is a span under the server span; view and the helpers (well under 100 us)
    # are not, but every call is in the aggregates
    assert sorted(spans) == sorted(["GET /slow", f"{__name__}.slow_view"])
    assert spans[f"{__name__}.slow_view"].parent.span_id == spans["GET /slow"].context.span_id
    assert session.builder.spans_elided == 3
    assert session.settings.min_span_us == 100


def test_an_unsampled_server_span_opens_nothing() -> None:
    unsampled_provider, exporter = provider(ALWAYS_OFF)
    production.arm(tracer_provider=unsampled_provider, roots=(TESTS_DIR,))
    with unsampled_provider.get_tracer("server").start_as_current_span("GET /view", kind=SpanKind.SERVER):
        assert request_gate.get() is False
        view(1)
    # no sampled request yet: the process has not even started its session (no hook, no thread)
    assert production._armed is not None and production._armed.session is None
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize("rate, opened", [(0.0, False), (1.0, True)])
def test_without_a_span_the_sample_rate_decides(rate: float, opened: bool) -> None:
    production.arm(roots=(TESTS_DIR,), span_processor=False, sample_rate=rate)
    token = production.open_request()
    assert (token is not None) is opened and request_gate.get() is opened
    production.close_request(token)
    assert request_gate.get() is False


def test_sample_rate_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSPAN_SAMPLE_RATE", "1.5")
    with pytest.raises(CallspanError, match="CALLSPAN_SAMPLE_RATE: bad value '1.5' for sample_rate"):
        load_settings()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_session_and_the_parent_keeps_its_own() -> None:
    production.arm(roots=(TESTS_DIR,), span_processor=False)
    token = production.open_request(sampled=True)
    view(1)
    production.close_request(token)
    parent = production.session()
    assert parent is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's exit hooks
        try:
            inherited_running = parent._running
            child = production.session()
            assert child is not None
            token = production.open_request(sampled=True)
            view(2)
            view(3)
            production.close_request(token)
            calls = child.recorder.aggregates.export_window()
            child.stop()
            tools = [i for i in range(6) if hasattr(sys, "monitoring") and sys.monitoring.get_tool(i) == "callspan"]
            report = {"inherited_running": inherited_running, "same": child is parent,
                      "instance": child.facts.instance_id, "views": _calls(calls, "view"), "tools": tools}
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert report["inherited_running"] is False and report["same"] is False
    assert report["instance"] and report["instance"] != parent.facts.instance_id
    assert report["views"] == 2  # the child's own calls only
    assert len(report["tools"]) == 0  # the child's session stopped; the inherited hook was removed
    assert parent._running and production.session() is parent
    window = parent.recorder.aggregates.export_window()
    assert _calls(window, "view") == 1


def _calls(window: dict[str, list[object]], name: str) -> int:
    return sum(int(count) for function, count in zip(window.get("function.name", []),  # type: ignore[call-overload]
                                                      window.get("function.calls", []), strict=True)
               if str(function).endswith("." + name))


_INSTRUMENT_PROBE = """
import sys
from opentelemetry import trace
from opentelemetry.instrumentation.django import DjangoInstrumentor
if sys.argv[1] == "sdk-first":
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
before = trace.get_tracer_provider()
from callspan.production.gunicorn import instrument_this_process
instrument_this_process()
print(type(trace.get_tracer_provider()).__name__, trace.get_tracer_provider() is before,
      DjangoInstrumentor().is_instrumented_by_opentelemetry)
"""


@pytest.mark.parametrize("case, expected", [
    # a worker with nothing set up: the auto-instrumentation runs (SDK provider, Django instrumented)
    ("bare", "TracerProvider False True"),
    # the SDK already configured (gunicorn under opentelemetry-instrument): nothing is run again
    ("sdk-first", "TracerProvider True False"),
])
def test_instrument_this_process_sets_up_opentelemetry_once(case: str, expected: str) -> None:
    pytest.importorskip("opentelemetry.instrumentation.django")
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_"))}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    result = subprocess.run([sys.executable, "-c", _INSTRUMENT_PROBE, case], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == expected, result.stdout + result.stderr
