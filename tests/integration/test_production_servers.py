"""Production mode in real servers: Django under gunicorn (2 workers, sync and gthread) and
FastAPI under uvicorn (2 workers), each with the framework's OpenTelemetry instrumentation and a
10% ParentBased sampler, exporting OTLP/gRPC to the real Collector on 127.0.0.1; Django set up
by `opentelemetry-instrument` (OTLP/HTTP and gRPC) and by `callspan.production.gunicorn` after
the fork (gRPC with gRPC's fork support off); a gunicorn worker killed mid-load.

The load loop sends a traceparent with every request: every 10th carries the sampled flag, the
others not, so the application's sampler samples exactly those (ParentBased follows a remote
parent) and every expected count is exact.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import otelbins
import pytest

SERVERS = Path(__file__).resolve().parent / "servers"
REQUESTS = 2000
SAMPLED_EVERY = 10  # 10% sampling
CLIENTS = 4
SERVER_KIND = 2  # OTLP SPAN_KIND_SERVER

pytest.importorskip("django", reason="install the test extra: pip install -e '.[test]'")
pytest.importorskip("gunicorn", reason="install the test extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="install the test extra: pip install -e '.[test]'")
pytest.importorskip("fastapi", reason="install the test extra: pip install -e '.[test]'")


@dataclass
class Reply:
    n: int
    trace_id: str
    parent_id: str
    sampled: bool
    body: bytes
    worker: int
    received_ns: int  # time.time_ns() when the whole reply was read


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(argv: list[str], cwd: Path, env: dict[str, str], port: int) -> Server:
    log = cwd / f"server-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, port, log)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}:\n{log.read_text()[-3000:]}")
        return otelbins.port_is_open(otelbins.LOCALHOST, port)

    try:
        otelbins.wait_until(ready, timeout=60, what=f"server on port {port}")
    except BaseException:
        server.stop()
        raise
    return server


def server_env(collector: otelbins.Collector | None, app_dir: Path, *, callspan: bool, otel: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_"))}
    env.update(PYTHONPATH=str(app_dir), SHOP_CALLSPAN="1" if callspan else "0", SHOP_OTEL="1" if otel else "0",
               CALLSPAN_PROFILE_INTERVAL="1", CALLSPAN_FLUSH_INTERVAL="0.2")
    if collector is not None:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{collector.grpc_endpoint}", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    return env


def get(port: int, n: int, trace_id: str, parent_id: str, sampled: bool) -> Reply:
    connection = http.client.HTTPConnection(otelbins.LOCALHOST, port, timeout=30)
    try:
        connection.request("GET", f"/item/{n}",
                           headers={"traceparent": f"00-{trace_id}-{parent_id}-{'01' if sampled else '00'}"})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        return Reply(n, trace_id, parent_id, sampled, body, int(response.getheader("X-Worker", "0")), time.time_ns())
    finally:
        connection.close()


def load(port: int, count: int = REQUESTS, *, first: int = 0, on_reply: Callable[[Reply], None] | None = None,
         failed: list[int] | None = None) -> list[Reply]:
    """Requests ``first`` .. ``first + count - 1`` from CLIENTS threads (every SAMPLED_EVERY-th
    sampled). ``failed``: collect the numbers of requests that got no reply instead of raising."""
    rng = random.Random(12 + first)
    jobs = [(n, f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64):016x}", n % SAMPLED_EVERY == 0)
            for n in range(first, first + count)]

    def one(job: tuple[int, str, str, bool]) -> Reply | None:
        try:
            reply = get(port, *job)
        except (OSError, http.client.HTTPException):
            if failed is None:
                raise
            failed.append(job[0])
            return None
        if on_reply is not None:
            on_reply(reply)
        return reply

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [reply for reply in pool.map(one, jobs) if reply is not None]


def spans_by_scope(requests: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(scope attributes with the resource's under "resource.", span) for every span."""
    out = []
    for request in requests:
        for rs in request.get("resourceSpans", []):
            resource = {"resource." + a["key"]: _value(a["value"]) for a in rs.get("resource", {}).get("attributes", [])}
            for ss in rs.get("scopeSpans", []):
                scope = ss.get("scope", {})
                attrs = {a["key"]: _value(a["value"]) for a in scope.get("attributes", [])}
                attrs.update(resource, **{"scope.name": scope.get("name", "")})
                out.extend((attrs, span) for span in ss.get("spans", []))
    return out


def _value(value: dict[str, Any]) -> Any:
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return None


def profile_calls(spans: list[tuple[dict[str, Any], dict[str, Any]]], function: str) -> dict[int, int]:
    """Calls of ``function`` in the exported aggregates, per process (summed over windows and chunks)."""
    calls: dict[int, int] = defaultdict(int)
    for scope, span in spans:
        if span["name"] != "callspan.profile":
            continue
        attrs = {a["key"]: _value(a["value"]) for a in span.get("attributes", [])}
        names = attrs.get("callspan.profile.function.name") or []
        counts = attrs.get("callspan.profile.function.calls") or []
        for name, count in zip(names, counts, strict=True):
            if name == function:
                calls[scope["process.pid"]] += count
    return dict(calls)


def check_traces(replies: list[Reply], spans: list[tuple[dict[str, Any], dict[str, Any]]],
                 view: str, helper: str) -> None:
    by_trace: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for scope, span in spans:
        by_trace[span["traceId"]].append((scope, span))
    for reply in replies:
        trace = by_trace.get(reply.trace_id, [])
        if not reply.sampled:
            assert trace == [], f"unsampled request {reply.n} exported spans"
            continue
        servers = [span for _, span in trace if span["kind"] == SERVER_KIND]
        assert len(servers) == 1 and servers[0]["parentSpanId"] == reply.parent_id, reply.n
        ids = {span["spanId"]: span for _, span in trace}
        calls = [(scope, span) for scope, span in trace if scope["scope.name"] == "callspan"]
        assert sorted(span["name"] for _, span in calls) == sorted([helper, view]), (reply.n, calls)
        named = {span["name"]: span for _, span in calls}
        # the view's call nests under the request's server span (directly or through the
        # framework's own internal spans), the helper under the view
        parent = ids[named[view]["parentSpanId"]]
        while parent["kind"] != SERVER_KIND:
            parent = ids[parent["parentSpanId"]]
        assert parent is servers[0]
        assert named[helper]["parentSpanId"] == named[view]["spanId"]
        assert {scope["process.pid"] for scope, _ in calls} == {reply.worker}


def analyze(path: Path, cwd: Path) -> dict[str, Any]:
    """``callspan analyze --format json --report cache`` of the Collector's file, as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "callspan", "analyze", "--format", "json", "--report", "cache",
                             "--no-progress", "--lookup-ns", "100", str(path)],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def analyze_cache(path: Path, cwd: Path) -> dict[str, Any]:
    cache: dict[str, Any] = analyze(path, cwd)["cache"]
    return cache


def run_production_check(otelcol: otelbins.Collector, tmp_path: Path, argv_for: Any, view: str,
                         helper: str, *, plain_argv_for: Any = None, extra_env: dict[str, str] | None = None,
                         middleware: bool = True) -> None:
    app_dir = tmp_path / "app"
    shutil.copytree(SERVERS, app_dir)
    # the uninstrumented run first: the reference responses
    port = otelbins.free_port()
    plain = start_server((plain_argv_for or argv_for)(port), app_dir,
                         server_env(None, app_dir, callspan=False, otel=False), port)
    try:
        reference = {reply.n: reply.body for reply in load(port)}
    finally:
        plain.stop()
    port = otelbins.free_port()
    env = server_env(otelcol, app_dir, callspan=middleware, otel=extra_env is None) | (extra_env or {})
    server = start_server(argv_for(port), app_dir, env, port)
    try:
        replies = load(port)
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()[-3000:]
    assert {reply.n: reply.body for reply in replies} == reference  # byte-identical responses
    sampled = [reply for reply in replies if reply.sampled]
    assert len(sampled) == REQUESTS // SAMPLED_EVERY
    per_worker = dict(Counter(reply.worker for reply in sampled))
    assert len(set(reply.worker for reply in replies)) == 2, "both workers should have served requests"
    # every worker that served a sampled request exported its aggregates: exactly its calls
    spans = wait_for_calls(otelcol, helper, per_worker)
    assert profile_calls(spans, view) == per_worker
    instances = {scope["process.pid"]: scope["service.instance.id"] for scope, span in spans
                 if span["name"] == "callspan.profile"}
    assert len(set(instances.values())) == len(per_worker)
    # the master serves no request: it traces nothing
    assert server.process.pid not in {scope.get("process.pid") for scope, _ in spans}
    check_traces(replies, spans, view, helper)
    cache = analyze_cache(otelcol.output_file, tmp_path)
    (opportunity,) = [o for o in cache["opportunities"] if o["function"] == helper]
    assert opportunity["calls"] == len(sampled)
    assert opportunity["advice"]["kind"] == "lru_cache", opportunity


def _gunicorn(worker_class: str) -> Any:
    def argv(port: int) -> list[str]:
        threads = ["--threads", "4"] if worker_class == "gthread" else []
        return [sys.executable, "-m", "gunicorn", "-c", "gunicorn_conf.py", "--bind", f"127.0.0.1:{port}",
                "--worker-class", worker_class, *threads, "shop.wsgi"]
    return argv


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_django_under_gunicorn_traces_exactly_the_sampled_requests(
        otelcol: otelbins.Collector, tmp_path: Path, worker_class: str) -> None:
    run_production_check(otelcol, tmp_path, _gunicorn(worker_class), "shop.views.item", "shop.views.price")


def test_fastapi_under_uvicorn_traces_exactly_the_sampled_requests(otelcol: otelbins.Collector,
                                                                   tmp_path: Path) -> None:
    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "asgi_shop:app", "--workers", "2", "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log"]

    run_production_check(otelcol, tmp_path, argv, "asgi_shop.item", "asgi_shop.price")


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_django_under_opentelemetry_instrument_gunicorn_armed_by_environment(
        otelcol: otelbins.Collector, tmp_path: Path, protocol: str) -> None:
    """`CALLSPAN_ENABLED=1 opentelemetry-instrument gunicorn shop.wsgi`: no callspan middleware,
    no OpenTelemetry code in the application; the distro configures the SDK in the master from
    OTEL_* variables, the entry point arms callspan, each worker traces its sampled requests and
    exports them through the exporter it inherited (gRPC with gRPC's default fork handling)."""
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    if not instrument.exists():
        pytest.skip("opentelemetry-instrument not installed: pip install -e '.[test]'")

    def argv(port: int) -> list[str]:
        return [str(instrument), sys.executable, "-m", "gunicorn", "--workers", "2", "--bind",
                f"127.0.0.1:{port}", "shop.wsgi"]

    env = auto_instrumentation_env(otelcol, protocol) | {"CALLSPAN_ENABLED": "1"}
    run_production_check(otelcol, tmp_path, argv, "shop.views.item", "shop.views.price",
                         plain_argv_for=plain_gunicorn, extra_env=env, middleware=False)


def test_django_under_gunicorn_set_up_after_the_fork_exports_over_grpc_without_fork_support(
        otelcol: otelbins.Collector, tmp_path: Path) -> None:
    """`gunicorn -c python:callspan.production.gunicorn shop.wsgi`: OpenTelemetry's
    auto-instrumentation and callspan are set up in each worker after the fork, so the master
    never initializes gRPC. With gRPC's fork support off (GRPC_ENABLE_FORK_SUPPORT=0), where a
    master that built the exporter leaves no worker able to export over gRPC, both workers'
    spans and aggregates arrive."""
    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", "python:callspan.production.gunicorn", "--workers", "2",
                "--bind", f"127.0.0.1:{port}", "shop.wsgi"]

    env = auto_instrumentation_env(otelcol, "grpc") | {"GRPC_ENABLE_FORK_SUPPORT": "0"}
    run_production_check(otelcol, tmp_path, argv, "shop.views.item", "shop.views.price",
                         plain_argv_for=plain_gunicorn, extra_env=env, middleware=False)


def plain_gunicorn(port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}", "shop.wsgi"]


def auto_instrumentation_env(otelcol: otelbins.Collector, protocol: str) -> dict[str, str]:
    """OpenTelemetry configured from the environment only, as `opentelemetry-instrument` reads it."""
    endpoint = otelcol.http_endpoint if protocol == "http/protobuf" else f"http://{otelcol.grpc_endpoint}"
    return {"CALLSPAN_INCLUDE": "shop", "DJANGO_SETTINGS_MODULE": "shop.settings",
            "OTEL_SERVICE_NAME": "shop-auto", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}


def test_a_killed_gunicorn_worker_loses_only_its_unexported_window(otelcol: otelbins.Collector,
                                                                   tmp_path: Path) -> None:
    """SIGKILL one of two gunicorn workers while the load loop runs. What it exported before stays
    (every sampled request it answered before the end of its last exported window is counted);
    what it folded after is lost, and the analyzer says so for that worker: it has no final window.
    The other worker and the replacement gunicorn starts lose nothing: their aggregates are exact."""
    app_dir = tmp_path / "app"
    shutil.copytree(SERVERS, app_dir)
    port = otelbins.free_port()
    server = start_server(_gunicorn("sync")(port), app_dir, server_env(otelcol, app_dir, callspan=True, otel=True),
                          port)
    helper = "shop.views.price"
    failed: list[int] = []
    try:
        # 1. Both workers serve sampled requests and export them (waited for, exactly).
        before = load(port, 400)
        before_sampled = Counter(reply.worker for reply in before if reply.sampled)
        assert len(before_sampled) == 2, before_sampled
        wait_for_calls(otelcol, helper, before_sampled)
        # 2. Mid-load, the worker that answers the next sampled request is killed right after it.
        killed: list[int] = []

        def kill_once(reply: Reply) -> None:
            if reply.sampled and not killed:
                killed.append(reply.worker)
                os.kill(reply.worker, signal.SIGKILL)

        during = load(port, 600, first=400, on_reply=kill_once, failed=failed)
        (victim,) = killed
        (survivor,) = set(before_sampled) - {victim}
        # 3. gunicorn replaces it; the load goes on until the new worker has served sampled requests.
        after: list[Reply] = []
        for batch in range(20):
            after += load(port, 200, first=1000 + 200 * batch)
            replacements = {r.worker for r in after if r.sampled} - {victim, survivor}
            if replacements and min(Counter(r.worker for r in after if r.worker in replacements).values()) >= 5:
                break
        (replacement,) = {r.worker for r in after} - {victim, survivor}
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()[-3000:]
    replies = before + during + after
    assert len(failed) <= 1, failed  # a sync worker has one request at a time: at most that one is lost
    assert victim not in {reply.worker for reply in after}
    sampled = Counter(reply.worker for reply in replies if reply.sampled)
    # The survivor and the replacement stopped normally: exact, final windows included.
    spans = wait_for_calls(otelcol, helper, {survivor: sampled[survivor], replacement: sampled[replacement]},
                           exact=False)
    exported = profile_calls(spans, helper)
    check_traces([r for r in replies if r.worker != victim], spans, "shop.views.item", helper)
    # The analyzer groups by service.instance.id: three workers, one without a final window.
    document = analyze(otelcol.output_file, tmp_path)
    windows = {p["pid"]: p["windows"] for p in document["input"]["processes"] if p["aggregates"]}
    assert set(windows) == {victim, survivor, replacement}
    assert len({p["instance"] for p in document["input"]["processes"] if p["aggregates"]}) == 3
    assert [(pid, w["final"], w["missing"], w["missing_calls"]) for pid, w in sorted(windows.items())] == [
        (pid, pid != victim, 0, 0) for pid in sorted(windows)]
    lost_line = [w for w in document["input"]["warnings"] if "without a final callspan.profile window" in w]
    assert len(lost_line) == 1 and lost_line[0].startswith("1 process(es)") and f"pid {victim} " in lost_line[0]
    # Whatever the victim exported stays: at least every sampled request it answered before its
    # last exported window ended (the call was folded before the reply left), and no more than it
    # answered (plus the one request it may have been killed in).
    victim_end = windows[victim]["end_ns"]
    answered = [r for r in replies if r.worker == victim and r.sampled]
    assert before_sampled[victim] <= exported[victim]
    assert sum(r.received_ns < victim_end for r in answered) <= exported[victim] <= len(answered) + len(failed)
    # The analyzer merges what arrived: the helper's calls are the three workers' exported calls.
    (opportunity,) = [o for o in document["cache"]["opportunities"] if o["function"] == helper]
    assert opportunity["calls"] == sum(exported.values())
    print(f"killed worker: answered {len(answered)} sampled requests, {exported[victim]} in its exported "
          f"windows, {len(answered) - exported[victim]} lost with its last window")


def wait_for_calls(collector: otelbins.Collector, function: str, expected: dict[int, int],
                   exact: bool = True) -> list[Any]:
    """The Collector's spans once ``function``'s exported calls per process are ``expected``
    (``exact=False``: for the processes named, others may have exported any number)."""
    def arrived() -> list[Any] | None:
        spans = spans_by_scope(collector.read_output())
        calls = profile_calls(spans, function)
        got = calls if exact else {pid: calls.get(pid, 0) for pid in expected}
        return spans if got == expected else None

    try:
        return otelbins.wait_until(arrived, timeout=30, interval=0.5, what=f"{function}'s calls per worker")
    except TimeoutError:
        spans = spans_by_scope(collector.read_output())
        names = Counter(span["name"] for _, span in spans)
        raise AssertionError(f"{function}'s exported calls per worker: expected {expected}, got "
                             f"{profile_calls(spans, function)}; spans in the Collector's file: {dict(names)}") from None
