"""What a run costs besides its work: start-up, and the export of example spans at exit.

Runs an empty script and ``workloads/call_heavy.py`` at a small scale (one kept trace of 2,000
spans, the per-trace budget) under plain python, cProfile and ``callspan run`` (default, one span
per trace, ``--keys off``), interleaved, and prints medians of the whole process, the work
section (the workload's ``ELAPSED`` line) and their difference. Time it alone on a quiet machine:
``flock /tmp/callspan-timing.lock python benchmarks/bench_fixed_cost.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOAD = Path(__file__).parent / "workloads" / "call_heavy.py"


def cases(python: str, scale: str, out: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    empty = os.path.join(out, "empty.py")
    Path(empty).write_text("")
    script = str(WORKLOAD)
    callspan = [python, "-m", "callspan", "run", "--include", script, "-o", os.path.join(out, "spans.jsonl")]
    return {
        "plain, empty script": ([python, empty], {}),
        "cProfile, empty script": ([python, "-m", "cProfile", "-o", os.path.join(out, "prof.out"), empty], {}),
        "callspan, empty script": ([python, "-m", "callspan", "run", "-o", os.path.join(out, "e.jsonl"), empty], {}),
        "plain, call_heavy": ([python, script, scale], {}),
        "cProfile, call_heavy": ([python, "-m", "cProfile", "-o", os.path.join(out, "prof.out"), script, scale], {}),
        "callspan, call_heavy": ([*callspan, script, scale], {}),
        "callspan, call_heavy, 1 span a trace": ([*callspan, script, scale], {"CALLSPAN_MAX_SPANS_PER_TRACE": "1"}),
        "callspan --keys off, call_heavy": ([*callspan, "--keys", "off", script, scale], {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--scale", default="0.01", help="call_heavy's scale (default 0.01: 20 jobs)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="callspan-fixed-") as out:
        runs = cases(args.python, args.scale, out)
        whole: dict[str, list[float]] = {name: [] for name in runs}
        work: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (argv, env) in runs.items():
                started = time.perf_counter()
                done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
                whole[name].append(time.perf_counter() - started)
                if done.returncode != 0:
                    print(f"{name}: exit {done.returncode}: {done.stderr.strip()[-300:]}", file=sys.stderr)
                    return 1
                work[name] += [float(line.split()[1]) for line in done.stdout.splitlines()
                               if line.startswith("ELAPSED ")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds")
    print(f"{'run':40s} {'whole ms':>9s} {'work ms':>9s} {'fixed ms':>9s}")
    for name in runs:
        total = statistics.median(whole[name])
        section = statistics.median(work[name]) if work[name] else 0.0
        print(f"{name:40s} {total * 1000:9.1f} {section * 1000:9.1f} {(total - section) * 1000:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
