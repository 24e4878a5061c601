"""Production mode under load: requests/s, p99 latency and server CPU per request of the same
Django (gunicorn) and FastAPI (uvicorn) application, with and without callspan (issue 12).

    flock /tmp/callspan-timing.lock python benchmarks/bench_production.py          # ~15 min
    python benchmarks/bench_production.py --servers asgi --variants otel-1%,callspan-1% --rounds 5
    python benchmarks/bench_production.py --python .venv-3.11/bin/python --json /tmp/prod-311.json

Needs the real Collector (``set -a; eval "$(bash scripts/build-otel-binaries.sh)"; set +a``) and
the test extra (django, gunicorn, uvicorn, fastapi, the OpenTelemetry instrumentations) in the
server's interpreter (``--python``).

The application is benchmarks/workloads/webshop/ (workloads/request_mix.py's handler, ~13 calls
of user code per request). Each run starts the server (``--workers``, default 1) and a Collector
on free ports of 127.0.0.1, then a load generator in its own process: ``--concurrency``
connections in a closed loop (gunicorn's sync worker closes every connection; uvicorn keeps
them), ``--warmup`` seconds unrecorded, then ``--seconds`` recorded. Every request carries a
W3C traceparent; its sampled flag is set on every 100/R-th request for R% sampling, so the
application's ParentBased sampler samples exactly that share.

Variants (all but ``plain`` with the service's OpenTelemetry set-up exporting OTLP/gRPC):

  plain           no OpenTelemetry, no callspan
  otel-0%         OpenTelemetry alone, no request sampled
  otel-1%         OpenTelemetry alone, 1% of requests sampled: the reference of the 1% target
  callspan-R%     OpenTelemetry and callspan's middleware (production mode), R% sampled
                  (0, 1, 10, 100). At 0% no session ever starts (a process starts tracing at
                  its first sampled request): nothing is hooked
  callspan-hooked-0%   only the first request (in the warm-up) sampled: the session runs and
                  every measured request takes the unsampled path
  callspan-1%-spans-1/s   callspan-1% keeping the function spans of at most one trace a second
                  (CALLSPAN_MAX_SPANS_PER_SECOND=1): what the spans of the sampled requests cost
  otel-100%       OpenTelemetry alone, every request sampled
  cProfile-100%   otel-100% with cProfile on in the worker for every request

Reported per server and variant, medians over ``--rounds`` rounds (the variants' order rotates
each round, the servers alternate): requests/s, p50 and p99 latency, and the server's CPU time
per request (utime + stime of every process of the server, from /proc, over the recorded
seconds: the whole processes, the exporter's and callspan's threads included), each also as a
ratio to otel-1% (and, for the 100% rows, to otel-100%).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP = HERE / "workloads" / "webshop"
SERVICE_SETUP = REPO / "tests" / "integration" / "servers"  # otel_setup.py: the service's OpenTelemetry
LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Variant:
    otel: bool
    callspan: bool
    cprofile: bool
    every: int  # every n-th request sampled (0: none)
    env: tuple[tuple[str, str], ...] = ()  # more variables for the server


VARIANTS = {
    "plain": Variant(False, False, False, 100),
    "otel-0%": Variant(True, False, False, 0),
    "otel-1%": Variant(True, False, False, 100),
    "callspan-0%": Variant(True, True, False, 0),
    # the unsampled path with the hook installed: only request 0 (in the warm-up) is sampled,
    # which starts the process's session; none of the measured requests is
    "callspan-hooked-0%": Variant(True, True, False, 10**12),
    "callspan-1%": Variant(True, True, False, 100),
    "callspan-10%": Variant(True, True, False, 10),
    "callspan-100%": Variant(True, True, False, 1),
    # diagnostics for --instructions: the hooked unsampled path without the builder thread's
    # periodic passes and windows (valgrind runs ~50x slower: wall-clock work is over-counted
    # per request there), and the sampled requests keeping one span each (their outermost call)
    "callspan-hooked-0%-idle": Variant(True, True, False, 10**12, (("CALLSPAN_FLUSH_INTERVAL", "1000"),
                                                                  ("CALLSPAN_PROFILE_INTERVAL", "1000"))),
    "callspan-1%-idle": Variant(True, True, False, 100, (("CALLSPAN_FLUSH_INTERVAL", "1000"),
                                                         ("CALLSPAN_PROFILE_INTERVAL", "1000"))),
    "callspan-1%-one-span-idle": Variant(True, True, False, 100, (("CALLSPAN_MAX_SPANS_PER_TRACE", "1"),
                                                                  ("CALLSPAN_FLUSH_INTERVAL", "1000"),
                                                                  ("CALLSPAN_PROFILE_INTERVAL", "1000"))),
    "callspan-1%-one-span": Variant(True, True, False, 100, (("CALLSPAN_MAX_SPANS_PER_TRACE", "1"),)),
    # every kept call a span (production's CALLSPAN_MIN_SPAN_US default leaves out calls under
    # 100 us: natively every call of this handler, ~60 us in all)
    "callspan-1%-every-span": Variant(True, True, False, 100, (("CALLSPAN_MIN_SPAN_US", "0"),)),
    "callspan-10%-every-span": Variant(True, True, False, 10, (("CALLSPAN_MIN_SPAN_US", "0"),)),
    # armed as `CALLSPAN_ENABLED=1 opentelemetry-instrument` arms it: the span processor, no middleware
    "callspan-1%-processor": Variant(True, True, False, 100, (("SHOP_CALLSPAN", "processor"),)),
    "callspan-hooked-0%-processor-idle": Variant(True, True, False, 10**12, (("SHOP_CALLSPAN", "processor"),
                                                                            ("CALLSPAN_FLUSH_INTERVAL", "1000"),
                                                                            ("CALLSPAN_PROFILE_INTERVAL", "1000"))),
    # an option measured: the sampled requests' function spans capped at one trace per second
    # (the aggregates still count every call)
    "callspan-1%-spans-1/s": Variant(True, True, False, 100, (("CALLSPAN_MAX_SPANS_PER_SECOND", "1"),)),
    "otel-100%": Variant(True, False, False, 1),
    "cProfile-100%": Variant(True, False, True, 1),
}
REFERENCE = "otel-1%"


@dataclass
class Measurement:
    server: str
    variant: str
    round: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_s: float  # the server's processes, over the recorded seconds

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6


# -- the load generator (its own process) -------------------------------------------------------

async def _client(port: int, keepalive: bool, every: int, counter: list[int], stop_at: float,
                  record_from: float, latencies: list[float], errors: list[int]) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    rng = random.Random()
    connection = b"keep-alive" if keepalive else b"close"
    while True:
        began = time.perf_counter()
        if began >= stop_at:
            break
        n = counter[0]
        counter[0] += 1
        flags = "01" if every and n % every == 0 else "00"
        request = (f"GET /item/{n} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\n"
                   f"traceparent: 00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-{flags}\r\n"
                   ).encode() + b"Connection: " + connection + b"\r\n\r\n"
        ok = False
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(LOCALHOST, port)
            assert reader is not None
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            ok = head.startswith(b"HTTP/1.1 200")
            length = None
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length is not None:
                await reader.readexactly(length)
            else:
                await reader.read()
            keep = keepalive and length is not None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            keep = False
        if not keep and writer is not None:
            writer.close()
            reader = writer = None
        ended = time.perf_counter()
        if began >= record_from and ended <= stop_at:
            if ok:
                latencies.append(ended - began)
            else:
                errors.append(n)


async def _load(port: int, keepalive: bool, every: int, concurrency: int, warmup: float, seconds: float) -> None:
    start = time.perf_counter()
    record_from = start + warmup
    stop_at = record_from + seconds
    latencies: list[float] = []
    errors: list[int] = []
    counter = [0]
    clients = [asyncio.ensure_future(_client(port, keepalive, every, counter, stop_at, record_from, latencies,
                                             errors)) for _ in range(concurrency)]
    await asyncio.sleep(max(0.0, record_from - time.perf_counter()))
    print("START", flush=True)
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    print("END", flush=True)
    await asyncio.gather(*clients)
    latencies.sort()

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    print(json.dumps({"requests": len(latencies), "errors": len(errors), "seconds": seconds,
                      "p50_ms": percentile(0.50), "p99_ms": percentile(0.99)}), flush=True)


# -- instructions per request, in process (valgrind) ---------------------------------------------

def requests_in_process(server: str, name: str, count: int, warmup: int = 0) -> float:
    """``warmup`` then ``count`` requests through the application's WSGI or ASGI callable in
    this process, as the server would make them (no HTTP, no server): what the variant costs the
    application. Returns the process's CPU seconds (every thread) from the first counted request
    until their spans and callspan's aggregates are exported."""
    variant = VARIANTS[name]
    os.environ.update(SHOP_OTEL="1" if variant.otel else "0", SHOP_CALLSPAN="1" if variant.callspan else "0",
                      BENCH_CPROFILE="1" if variant.cprofile else "0", DJANGO_SETTINGS_MODULE="webshop.settings")
    os.environ.update(variant.env)
    sys.path[:0] = [str(APP), str(SERVICE_SETUP), str(HERE / "workloads")]
    os.chdir(APP)
    rng = random.Random(7)

    def traceparent(n: int) -> bytes:
        flags = "01" if variant.every and n % variant.every == 0 else "00"
        return f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-{flags}".encode()

    def settled() -> float:
        """After the warm-up: its spans built and exported (the exporter's channel connected),
        then the CPU clock read."""
        from opentelemetry import trace

        import callspan.production

        state = callspan.production._armed  # session() would start one: at 0% none may start
        session = state.session if state is not None else None
        if session is not None:
            session.flush()
        flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if flush is not None:
            flush()
        return time.process_time()

    if server == "django":
        import otel_setup
        import webshop_profile

        otel_setup.configure("django")  # what gunicorn_conf.post_fork does
        webshop_profile.start()
        from webshop.wsgi import application

        def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            assert status.startswith("200"), status
            return None

        for n in range(warmup + count):
            if n == warmup:
                began = settled()
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/item/{n}", "QUERY_STRING": "",
                       "SERVER_NAME": LOCALHOST, "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
                       "HTTP_HOST": LOCALHOST, "HTTP_TRACEPARENT": traceparent(n).decode(), "REMOTE_ADDR": LOCALHOST,
                       "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
                       "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
                       "wsgi.version": (1, 0)}
            result = application(environ, start_response)
            b"".join(result)
            close = getattr(result, "close", None)
            if close is not None:
                close()
    else:
        import webshop_asgi

        async def requests() -> None:
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            for n in range(warmup + count):
                if n == warmup:
                    started.append(settled())
                scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                         "scheme": "http", "path": f"/item/{n}", "raw_path": f"/item/{n}".encode(),
                         "query_string": b"", "root_path": "", "server": (LOCALHOST, 8000),
                         "client": (LOCALHOST, 40000), "headers": [(b"host", LOCALHOST.encode()),
                                                                  (b"traceparent", traceparent(n))]}
                await webshop_asgi.app(scope, receive, send)
                assert sent[0]["status"] == 200, sent[0]
                sent.clear()

        started: list[float] = []
        asyncio.run(requests())
        began = started[0]
    from opentelemetry import trace

    import callspan.production

    callspan.production.disarm()  # the last spans built, the last window exported, inside the count
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush()  # these requests' spans exported now, inside the count
    return time.process_time() - began


def instructions_per_request(args: argparse.Namespace, server: str, name: str, endpoint: str) -> float:
    counts = []
    for count in (args.requests, 2 * args.requests):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_", "SHOP_", "BENCH_"))}
            env.update(PYTHONHASHSEED="0", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
            result = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", args.python,
                                     __file__, "--in-process", server, name, str(count)],
                                    env=env, capture_output=True, text=True, check=False)
            match = re.search(r"Collected : (\d+)", result.stderr)
            if result.returncode != 0 or match is None:
                raise SystemExit(f"{server} {name}: exit {result.returncode}\n{result.stderr[-3000:]}")
            counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) / args.requests


def instruction_table(args: argparse.Namespace, servers: list[str], variants: list[str], endpoint: str) -> None:
    print(f"instructions per request, in process (valgrind --tool=callgrind, {args.requests} and "
          f"{2 * args.requests} requests, the difference / {args.requests}):", flush=True)
    for server in servers:
        rows = {}
        for name in variants:
            rows[name] = instructions_per_request(args, server, name, endpoint)
            print(f"  {server:<6} {name:<24} {rows[name]:>12,.0f}", flush=True)
        print(f"\n| {server} | instructions/request | vs {REFERENCE} |\n| --- | ---: | ---: |")
        for name, value in rows.items():
            vs = f"{(value / rows[REFERENCE] - 1) * 100:+.1f}%" if REFERENCE in rows and name != REFERENCE else ""
            print(f"| {name} | {value:,.0f} | {vs} |")


def cpu_in_process_table(args: argparse.Namespace, servers: list[str], variants: list[str], endpoint: str) -> None:
    """CPU microseconds per request in process, medians over interleaved rounds (each run a fresh
    process: 200 warm-up requests, then ``--requests`` counted)."""
    print(f"CPU time per request, in process ({args.requests} requests after 200 of warm-up, every thread, "
          f"until exported; medians of {args.rounds} interleaved rounds):", flush=True)
    results: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
        for name in order:
            for server in servers:
                env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_", "SHOP_", "BENCH_"))}
                env.update(PYTHONHASHSEED="0", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
                out = subprocess.run([args.python, __file__, "--in-process", server, name, str(args.requests),
                                      "--in-process-warmup", "200"], env=env, capture_output=True, text=True)
                match = re.search(r"^CPU ([0-9.]+)$", out.stdout, re.M)
                if out.returncode != 0 or match is None:
                    raise SystemExit(f"{server} {name}: exit {out.returncode}\n{out.stderr[-3000:]}")
                us = float(match.group(1)) / args.requests * 1e6
                results.setdefault((server, name), []).append(us)
                print(f"  round {round_ + 1} {server:<6} {name:<24} {us:8.1f} us CPU/request", flush=True)
    for server in servers:
        rows = {name: statistics.median(results[(server, name)]) for name in variants}
        print(f"\n| {server} | CPU us/request | vs {REFERENCE} |\n| --- | ---: | ---: |")
        for name, value in rows.items():
            vs = f"{(value / rows[REFERENCE] - 1) * 100:+.1f}%" if REFERENCE in rows and name != REFERENCE else ""
            print(f"| {name} | {value:,.1f} | {vs} |")


# -- the server's processes --------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection((LOCALHOST, port), timeout=2) as s:
                s.sendall(f"GET /item/0 HTTP/1.1\r\nHost: {LOCALHOST}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(16).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready on port {port} after {timeout}s:\n{log.read_text()[-3000:]}")


def server_argv(python: str, server: str, port: int, workers: int) -> list[str]:
    if server == "django":
        return [python, "-m", "gunicorn", "-c", "gunicorn_conf.py", "--bind", f"{LOCALHOST}:{port}",
                "--workers", str(workers), "webshop.wsgi"]
    return [python, "-m", "uvicorn", "webshop_asgi:app", "--host", LOCALHOST, "--port", str(port),
            "--workers", str(workers), "--no-access-log", "--log-level", "warning"]


def run_once(args: argparse.Namespace, server: str, name: str, round_: int, work: Path,
             collector_binary: Path | None) -> Measurement:
    import otelbins

    variant = VARIANTS[name]
    run_dir = Path(tempfile.mkdtemp(prefix=f"{server}-{name.replace('%', '').replace('/', '-')}-", dir=work))
    collector = otelbins.start_collector(collector_binary, run_dir / "otelcol") if variant.otel and collector_binary else None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CALLSPAN_", "SHOP_", "BENCH_"))}
    env.update(PYTHONPATH=os.pathsep.join(map(str, (APP, SERVICE_SETUP, HERE / "workloads"))),
               PYTHONHASHSEED="0", SHOP_OTEL="1" if variant.otel else "0",
               SHOP_CALLSPAN="1" if variant.callspan else "0", BENCH_CPROFILE="1" if variant.cprofile else "0")
    env.update(variant.env)
    if collector is not None:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{collector.grpc_endpoint}", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    port = free_port()
    log = run_dir / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(server_argv(args.python, server, port, args.workers), cwd=APP, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(process, port, log)
        pids = process_tree(process.pid)
        loadgen = subprocess.Popen([sys.executable, __file__, "--loadgen", str(port), str(int(server == "asgi")),
                                    str(variant.every), str(args.concurrency), str(args.warmup), str(args.seconds)],
                                   stdout=subprocess.PIPE, text=True)
        assert loadgen.stdout is not None
        cpu_start = cpu_end = 0.0
        result: dict[str, Any] = {}
        for line in loadgen.stdout:
            if line.startswith("START"):
                pids = process_tree(process.pid)
                cpu_start = cpu_seconds(pids)
            elif line.startswith("END"):
                cpu_end = cpu_seconds(pids)
            elif line.startswith("{"):
                result = json.loads(line)
        if loadgen.wait() != 0 or not result:
            raise SystemExit(f"load generator failed ({loadgen.returncode})")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if collector is not None:
            collector.stop()
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return Measurement(server, name, round_, result["requests"], result["errors"], result["seconds"],
                       result["p50_ms"], result["p99_ms"], cpu_end - cpu_start)


# -- the report ----------------------------------------------------------------------------------

def table(measurements: list[Measurement], server: str, variants: list[str]) -> list[str]:
    rows: dict[str, dict[str, float]] = {}
    for name in variants:
        mine = [m for m in measurements if m.server == server and m.variant == name]
        if mine:
            rows[name] = {"rps": statistics.median(m.rps for m in mine),
                          "p50": statistics.median(m.p50_ms for m in mine),
                          "p99": statistics.median(m.p99_ms for m in mine),
                          "cpu": statistics.median(m.cpu_us_per_request for m in mine),
                          "errors": sum(m.errors for m in mine)}

    def ratio(name: str, key: str, reference: str) -> str:
        if name == reference or reference not in rows:
            return ""
        return f"{(rows[name][key] / rows[reference][key] - 1) * 100:+.1f}%"

    def paired(name: str) -> str:
        """Median over rounds of req/s against the reference's in the same round: this VM's speed
        drifts by 10-20% between runs, less between neighbouring ones."""
        if name == REFERENCE:
            return ""
        by_round = {m.round: m.rps for m in measurements if m.server == server and m.variant == REFERENCE}
        ratios = [m.rps / by_round[m.round] - 1 for m in measurements
                  if m.server == server and m.variant == name and by_round.get(m.round)]
        return f"{statistics.median(ratios) * 100:+.1f}%" if ratios else ""

    lines = [f"| {server} | req/s | vs {REFERENCE} | same round, median | p50 ms | p99 ms | CPU us/request | "
             f"vs {REFERENCE} | vs otel-100% |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows.items():
        vs_full = ratio(name, "cpu", "otel-100%") if name.endswith("100%") else ""
        errors = f" ({row['errors']:.0f} errors)" if row["errors"] else ""
        lines.append(f"| {name}{errors} | {row['rps']:,.0f} | {ratio(name, 'rps', REFERENCE)} | {paired(name)} | "
                     f"{row['p50']:.2f} | {row['p99']:.2f} | {row['cpu']:,.0f} | {ratio(name, 'cpu', REFERENCE)} | "
                     f"{vs_full} |")
    return lines


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs, {model}, {platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loadgen", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--in-process", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request in process (valgrind) instead of the load test")
    parser.add_argument("--requests", type=int, default=400,
                        help="--instructions: N (N and 2N requests run); --cpu-in-process: requests per run")
    parser.add_argument("--cpu-in-process", action="store_true",
                        help="CPU time per request in process (no server, no load generator) instead")
    parser.add_argument("--in-process-warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--servers", default="django,asgi")
    parser.add_argument("--variants", default=",".join(name for name in VARIANTS
                                                       if name not in ("otel-0%", "callspan-1%-spans-1/s",
                                                                       "callspan-hooked-0%-idle",
                                                                       "callspan-1%-one-span")))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--python", default=sys.executable, help="the servers' interpreter")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (logs, Collector output)")
    args = parser.parse_args()
    if args.loadgen:
        port, keepalive, every, concurrency, warmup, seconds = args.loadgen
        asyncio.run(_load(int(port), keepalive == "1", int(every), int(concurrency), float(warmup), float(seconds)))
        return
    if args.in_process:
        server, name, count = args.in_process
        cpu = requests_in_process(server, name, int(count), args.in_process_warmup)
        print(f"CPU {cpu:.6f}")
        return
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    import otelbins

    collector_binary = otelbins.find_binary(otelbins.OTELCOL_BIN_ENV)
    if collector_binary is None:
        raise SystemExit(f"{otelbins.OTELCOL_BIN_ENV} is not set: {otelbins.BUILD_HINT}")
    servers = args.servers.split(",")
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    print(f"{machine()}; servers on CPython {version}; callspan {revision}; {time.strftime('%Y-%m-%d %H:%M')}; "
          f"load {os.getloadavg()[0]:.2f}; {args.workers} worker(s), {args.concurrency} connections, "
          f"{args.warmup:g}+{args.seconds:g} s per run, {args.rounds} rounds", flush=True)
    if args.cpu_in_process or args.instructions:  # in process: one Collector for every run
        in_process = cpu_in_process_table if args.cpu_in_process else instruction_table
        with tempfile.TemporaryDirectory(prefix="bench-production-") as tmp:
            collector = otelbins.start_collector(collector_binary, Path(tmp) / "otelcol")
            try:
                in_process(args, servers, variants, f"http://{collector.grpc_endpoint}")
            finally:
                collector.stop()
        return
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="bench-production-") as tmp:
        for round_ in range(args.rounds):
            order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
            for name in order:
                for server in servers if round_ % 2 == 0 else servers[::-1]:
                    m = run_once(args, server, name, round_, Path(tmp), collector_binary)
                    measurements.append(m)
                    print(f"  round {round_ + 1} {server:<6} {name:<24} {m.rps:8,.0f} req/s  p99 {m.p99_ms:6.2f} ms  "
                          f"{m.cpu_us_per_request:6,.0f} us CPU/request  ({m.errors} errors)", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    for server in servers:
        print()
        print("\n".join(table(measurements, server, variants)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": version, "revision": revision, "machine": machine(), "args": vars(args),
                       "measurements": [asdict(m) for m in measurements]}, f, indent=1)


if __name__ == "__main__":
    main()
