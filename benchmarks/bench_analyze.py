"""Scale benchmark for ``callspan analyze``: spans read + analyzed per second, and peak memory.

    python benchmarks/bench_analyze.py                      # 1M synthetic spans, all reports
    python benchmarks/bench_analyze.py --spans 200000 --report cache
    python benchmarks/bench_analyze.py --input traces.jsonl # real tracer output instead
    python benchmarks/bench_analyze.py --spans 250000,1000000,3000000  # memory vs input size
    python benchmarks/bench_analyze.py --source tracer     # spans written by the tracer itself

The synthetic input follows docs/span-schema.md the way ``callspan run -o`` writes it: OTLP JSON
lines, one export request of ``--batch`` spans per line, spans in end order (children before
parents, traces split across lines), ~1.2 KB per span with the tracer's attribute set, some
coroutines and methods, and on some spans ``callspan.summary.*`` arrays plus ``callspan.calls``
events. The file is generated once and reused (kept next to the system temp dir by default).

``--source tracer`` instead runs ``benchmarks/workloads/request_mix.py`` under ``callspan run -o``
(every call a span: no per-second span budget), scaled to about ``--spans`` spans (~12 per
request, 2000 per line, ~1 KB each): the tracer's real output, real keyed hashes and CPU times.

The analyzer runs in a subprocess (as users run it); peak memory is ``ru_maxrss`` of that process
and, separately, of its largest worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

_WRAPPER = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from callspan.analysis.__main__ import main
t = time.perf_counter()
code = main(sys.argv[2:])
elapsed = time.perf_counter() - t
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "elapsed": elapsed, "self_maxrss_kb": me.ru_maxrss,
                  "workers_maxrss_kb": kids.ru_maxrss, "cpu_self": me.ru_utime + me.ru_stime,
                  "cpu_workers": kids.ru_utime + kids.ru_stime}), file=sys.stderr)
sys.exit(code)
"""

MODULES = ["shop.views", "shop.pricing", "shop.cart", "shop.catalog", "shop.auth", "shop.render", "shop.db"]


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, list):
        items = [_attr("", v)["value"] for v in value]
        return {"key": key, "value": {"arrayValue": {"values": items}}}
    return {"key": key, "value": {"stringValue": value}}


class Function:
    def __init__(self, rng: random.Random, index: int) -> None:
        module = MODULES[index % len(MODULES)]
        self.name = f"{module}.{'Handler.' if index % 9 == 4 else ''}fn_{index:02d}"
        self.file = f"/srv/shop/{module.replace('.', '/')}.py"
        self.line = 10 + 17 * index
        self.kind = "coroutine" if index % 7 == 3 else "function"
        self.method = index % 9 == 4
        self.keys = [rng.getrandbits(64) for _ in range(rng.choice((3, 20, 200, 5000)))]
        self.returns = {k: rng.getrandbits(64) for k in self.keys}
        self.cost = rng.choice((800, 5_000, 40_000, 300_000))
        self.callees: list[Function] = []

    def key(self, rng: random.Random) -> int:
        # Zipf-like popularity: low indices are hot.
        n = len(self.keys)
        return self.keys[min(n - 1, int(n * rng.random() ** 3))]


def generate(path: str, spans: int, batch: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    functions = [Function(rng, i) for i in range(40)]
    for i, fn in enumerate(functions):  # a static call graph (a DAG): handlers 0-4 call deeper ones
        later = functions[i + 1:]
        fn.callees = rng.sample(later, min(len(later), rng.choice((0, 1, 2, 3, 4) if i >= 5 else (4, 5, 6))))
    resource = {"attributes": [
        _attr("service.name", "shop"), _attr("service.instance.id", "0b6f0c1e-3d52-4c1d-9a57-55c9d2ac2f11"),
        _attr("telemetry.sdk.language", "python"), _attr("telemetry.sdk.name", "opentelemetry"),
        _attr("telemetry.sdk.version", "1.30.0"), _attr("process.pid", 4242)]}
    scope = {"name": "callspan", "version": "0.1.0", "attributes": [
        _attr("callspan.schema", 1), _attr("process.pid", 4242), _attr("callspan.core", "sysmon"),
        _attr("callspan.core.reason", "Python 3.12+"), _attr("callspan.cpu.counter", "thread_time"),
        _attr("callspan.cpu.unit", "ns")]}
    clock = 1_780_000_000_000_000_000
    written = 0
    pending: list[dict[str, Any]] = []
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        def flush() -> None:
            nonlocal pending
            request = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": scope, "spans": pending}]}]}
            out.write(json.dumps(request, separators=(",", ":")) + "\n")
            pending = []

        while written < spans:
            trace_id = f"{rng.getrandbits(128):032x}"
            clock += rng.randrange(50_000, 2_000_000)
            size = min(spans - written, rng.choice((5, 20, 60, 200, 1000)))
            finished = _trace(rng, functions, trace_id, clock, size)
            for span in finished:
                pending.append(span)
                if len(pending) >= batch:
                    flush()
            written += len(finished)
            clock = max(clock, max(int(s["endTimeUnixNano"]) for s in finished))
        if pending:
            flush()
    os.replace(path + ".tmp", path)


def _trace(rng: random.Random, functions: list[Function], trace_id: str, start: int,
           size: int) -> list[dict[str, Any]]:
    """Up to ``size`` spans of one request, in end order, following the static call graph."""
    nodes: list[list[Any]] = []  # [function, parent index, begin, end]

    def call(fn: Function, parent: int, t: int, depth: int) -> int:
        i = len(nodes)
        nodes.append([fn, parent, t, 0])
        t += rng.randrange(200, 2_000)
        for callee in fn.callees:
            for _ in range(rng.randint(1, 3)):
                if len(nodes) >= size or depth > 12:
                    break
                t = call(callee, i, t, depth + 1) + rng.randrange(100, 1_000)
        t += fn.cost // 10 + rng.randrange(100, 2_000)
        nodes[i][3] = t
        return t

    call(functions[rng.randrange(5)], -1, start, 0)
    n = len(nodes)
    ids = [rng.getrandbits(64) or 1 for _ in range(n)]
    cpu_total = [0] * n
    child_cpu = [0] * n
    for i in reversed(range(n)):
        cpu_total[i] = nodes[i][0].cost + rng.randrange(0, 200) + child_cpu[i]
        if nodes[i][1] >= 0:
            child_cpu[nodes[i][1]] += cpu_total[i]
    out = []
    for i in sorted(range(n), key=lambda k: nodes[k][3]):
        fn, parent, begin, finish = nodes[i]
        key = fn.key(rng)
        wall = finish - begin
        attrs = [
            _attr("code.function.name", fn.name), _attr("code.file.path", fn.file),
            _attr("code.line.number", fn.line), _attr("thread.id", 140_234_567_890_123),
            _attr("thread.name", "MainThread"), _attr("callspan.kind", fn.kind),
            _attr("callspan.run_ns", wall if fn.kind == "function" else wall // 2),
            _attr("callspan.cpu.total", cpu_total[i]), _attr("callspan.cpu.self", cpu_total[i] - child_cpu[i]),
            _attr("callspan.args.hash", f"{key:016x}"), _attr("callspan.args.hashable", True),
            _attr("callspan.return.hash", f"{fn.returns[key]:016x}"), _attr("callspan.return.hashable", True),
            _attr("callspan.return.size", 56),
        ]
        if fn.kind == "coroutine":
            attrs += [_attr("callspan.await.count", 2), _attr("callspan.await.suspended_ns", wall - wall // 2)]
        if fn.method:
            attrs.append(_attr("callspan.method", True))
        span: dict[str, Any] = {
            "traceId": trace_id, "spanId": f"{ids[i]:016x}", "name": fn.name, "kind": 1,
            "startTimeUnixNano": str(begin), "endTimeUnixNano": str(finish), "attributes": attrs, "status": {},
        }
        if parent >= 0:
            span["parentSpanId"] = f"{ids[parent]:016x}"
        if i == 0 and rng.random() < 0.05:
            _summarise(rng, functions, span, begin)
        out.append(span)
    return out


def _summarise(rng: random.Random, functions: list[Function], span: dict[str, Any], start: int) -> None:
    fn = functions[5]
    n = 40
    keys = [fn.key(rng) for _ in range(n)]
    starts = [start + 1000 * k for k in range(n)]
    span["attributes"] += [
        _attr("callspan.summary.function", [fn.name]), _attr("callspan.summary.file", [fn.file]),
        _attr("callspan.summary.line", [fn.line]), _attr("callspan.summary.kind", [fn.kind]),
        _attr("callspan.summary.count", [n]), _attr("callspan.summary.errors", [0]),
        _attr("callspan.summary.wall_ns", [n * 900]), _attr("callspan.summary.run_ns", [n * 900]),
        _attr("callspan.summary.cpu_total", [n * fn.cost]), _attr("callspan.summary.cpu_self", [n * fn.cost]),
    ]
    span["events"] = [{"timeUnixNano": str(start), "name": "callspan.calls", "attributes": [
        _attr("callspan.function", fn.name), _attr("callspan.args.hash", [f"{k:016x}" for k in keys]),
        _attr("callspan.return.hash", [f"{fn.returns[k]:016x}" for k in keys]),
        _attr("callspan.start_ns", starts), _attr("callspan.end_ns", [s + 900 for s in starts]),
        _attr("callspan.cpu", [fn.cost] * n), _attr("callspan.sample_rate", 1.0)]}]


SPANS_PER_REQUEST = 12.4  # request_mix.py under the tracer, every call a span (measured)


def generate_with_tracer(python: str, path: str, spans: int) -> None:
    """``callspan run -o path request_mix.py SCALE`` for about ``spans`` spans."""
    scale = spans / SPANS_PER_REQUEST / 40000  # request_mix.py runs 40000 * SCALE requests
    # No span budget, and a backlog big enough that the span builder never has to drop calls.
    env = dict(os.environ, PYTHONPATH=SRC, CALLSPAN_MAX_SPANS_PER_SECOND=str(10**9), CALLSPAN_MAX_PENDING=str(10**8))
    workload = os.path.join(ROOT, "benchmarks", "workloads", "request_mix.py")
    partial = path + ".partial"
    subprocess.run([python, "-m", "callspan", "run", "-o", partial, workload, f"{scale:.6f}"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    os.replace(partial, path)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        one, five, fifteen = os.getloadavg()
        load = f" load avg {one:.1f}/{five:.1f}/{fifteen:.1f}"
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs,{load}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", default="1000000", help="spans to generate; a comma-separated list runs each size")
    parser.add_argument("--memory-mb", type=int, help="the analyzer's --memory-mb (default: its own default)")
    parser.add_argument("--batch", type=int, default=500, help="spans per line (export request)")
    parser.add_argument("--source", choices=("synthetic", "tracer"), default="synthetic",
                        help="generate the input synthetically (default) or with the tracer")
    parser.add_argument("--input", help="analyze this file instead of synthetic spans")
    parser.add_argument("--data-dir", default=tempfile.gettempdir(), help="where the synthetic file is kept")
    parser.add_argument("--report", default="all")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--python", default=sys.executable, help="interpreter to run the analyzer with")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    sizes = [int(n) for n in str(args.spans).split(",") if n.strip()]
    print(f"machine: {machine()}")
    version = subprocess.run([args.python, "-c", "import sys, platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    print(f"python:  {version} ({args.python})")
    for count in sizes if args.input is None else [0]:
        code = run_size(args, count)
        if code:
            return code
    return 0


def run_size(args: argparse.Namespace, count: int) -> int:
    path = args.input
    if path is None and args.source == "tracer":
        path = os.path.join(args.data_dir, f"callspan-bench-tracer-{count}.jsonl")
        if not os.path.exists(path):
            print(f"tracing request_mix.py for about {count:,} spans into {path} ...", file=sys.stderr)
            t = time.perf_counter()
            generate_with_tracer(args.python, path, count)
            print(f"  {time.perf_counter() - t:.1f} s", file=sys.stderr)
    elif path is None:
        path = os.path.join(args.data_dir, f"callspan-bench-{count}-{args.batch}.jsonl")
        if not os.path.exists(path):
            print(f"generating {count:,} spans into {path} ...", file=sys.stderr)
            t = time.perf_counter()
            generate(path, count, args.batch)
            print(f"  {time.perf_counter() - t:.1f} s", file=sys.stderr)
    size = os.path.getsize(path)
    print(f"input:   {path} ({size / 1e6:,.0f} MB)")
    walls: list[float] = []
    spans = 0
    memory = [] if args.memory_mb is None else ["--memory-mb", str(args.memory_mb)]
    for _ in range(args.repeat):
        command = [args.python, "-c", _WRAPPER, SRC, path, "--report", args.report, "--format", "json",
                   "-o", os.devnull, "--no-progress", "--jobs", str(args.jobs), *memory]
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        t = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        stats = json.loads(proc.stderr.strip().splitlines()[-1]) if proc.stderr.strip() else {}
        if proc.returncode != 0 or not stats:
            print(proc.stderr, file=sys.stderr)
            return 1
        spans = _count_spans(path) if args.input or args.source == "tracer" else count
        print(f"result:  {spans:,} spans in {wall:.2f} s wall ({spans / wall:,.0f} spans/s, "
              f"{size / wall / 1e6:.0f} MB/s); peak RSS analyzer {stats['self_maxrss_kb'] / 1024:.0f} MB, "
              f"largest worker {stats['workers_maxrss_kb'] / 1024:.0f} MB; CPU {stats['cpu_self']:.1f} s "
              f"main + {stats['cpu_workers']:.1f} s workers; load avg before {load_before:.1f}")
        walls.append(wall)
    if len(walls) > 1:
        median, best = statistics.median(walls), min(walls)
        print(f"summary: {len(walls)} runs, median {median:.2f} s ({spans / median:,.0f} spans/s), "
              f"min {best:.2f} s ({spans / best:,.0f} spans/s); other load on the machine slows a run "
              "(see the load averages)")
    return 0


def _count_spans(path: str) -> int:
    sys.path.insert(0, SRC)
    from callspan.analysis.loader import LoadOptions, load_files

    return load_files([path], LoadOptions(want_calls=False, want_rows=False)).spans


if __name__ == "__main__":
    sys.exit(main())
