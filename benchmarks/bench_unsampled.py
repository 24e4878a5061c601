"""What an unsampled request costs in production mode, and the options compared by numbers.

Counts instructions with ``valgrind --tool=callgrind`` (independent of the machine's load; the
2-core VM is shared): each mode runs N and 2N requests of workloads/request_mix.py's handler in
its own process, and the difference divided by N is one request's cost, start-up excluded.

    python benchmarks/bench_unsampled.py                    # all modes, N=1000
    python benchmarks/bench_unsampled.py --modes plain,gate-0 --requests 500

Modes:
  plain         no callspan
  gate-R        production mode, the chosen mechanism: events stay on; a selected call's start
                reads the request gate (a context variable) first in C and returns when it is
                closed; R% of requests sampled (every 100/R-th)
  events-R      the alternative: sys.monitoring events enabled only while a sampled request
                runs (set_events(tool, mask) at its start, set_events(tool, 0) after), plus the
                gate (needed anyway when requests run concurrently)
Option three, DISABLE-ing selected code while no sampled request runs and restart_events() when
one starts, re-instruments every code object like ``events`` does and additionally calls back
once per location after each restart, so it costs at least what ``events`` costs per sampled
request (stated, not run).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workloads" / "request_mix.py"
DEFAULT_MODES = ("plain", "gate-0", "gate-1", "gate-10", "events-1", "events-10", "gate-100")


def child(mode: str, requests: int) -> None:
    sys.path.insert(0, str(WORKLOAD.parent))
    import request_mix  # defines the handler, runs nothing when imported

    handle = request_mix.handle_request
    # a fixed set of bodies, cycled: the set-up is the same for N and 2N requests
    made = request_mix.make_bodies(200)
    bodies = [made[index % len(made)] for index in range(requests)]
    if mode == "plain":
        for body in bodies:
            handle(body)
        return
    kind, _, rate = mode.partition("-")
    every = 0 if float(rate) == 0 else round(100 / float(rate))
    import callspan.production as production

    production.arm(roots=(str(HERE),), span_processor=False, flush_interval=1000, profile_interval=1000)
    session = production.session()
    assert session is not None
    toggle = kind == "events"
    if toggle:
        monitoring = sys.monitoring  # type: ignore[attr-defined]
        tool = session.core.tool_id  # type: ignore[attr-defined]
        mask = monitoring.get_events(tool)
        monitoring.set_events(tool, 0)
    for index, body in enumerate(bodies):
        if every and index % every == 0:
            if toggle:
                monitoring.set_events(tool, mask)
            token = production.open_request(sampled=True)
            handle(body)
            production.close_request(token)
            if toggle:
                monitoring.set_events(tool, 0)
        else:
            handle(body)


def instructions(python: str, mode: str, requests: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLSPAN_", "OTEL_"))}
        env.update(PYTHONHASHSEED="0", OTEL_TRACES_EXPORTER="none")
        result = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python,
                                 __file__, "--child", mode, str(requests)],
                                env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{mode}: exit {result.returncode}\n{result.stderr[-2000:]}")
        match = re.search(r"Collected : (\d+)", result.stderr)
        if match is None:
            raise SystemExit(f"{mode}: no instruction count in valgrind's output")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    n = args.requests
    plain = None
    print(f"{'mode':<12} {'instructions/request':>21} {'vs plain':>10}")
    for mode in args.modes.split(","):
        per_request = (instructions(args.python, mode, 2 * n) - instructions(args.python, mode, n)) / n
        plain = per_request if mode == "plain" else plain
        extra = f"{(per_request / plain - 1) * 100:+.1f}%" if plain else ""
        print(f"{mode:<12} {per_request:>21,.0f} {extra:>10}", flush=True)


if __name__ == "__main__":
    main()
