#!/usr/bin/env python3
"""Overhead of callspan vs no tracer and peer profilers, on the workloads in benchmarks/workloads/.

Every (workload, configuration) run is a fresh subprocess of the selected interpreter; runs are
interleaved (repetition-major, configuration order rotated each time) and summarised by medians:

- work:    the seconds the workload prints itself (``ELAPSED <s>``, its last stdout line): the
           work section only, without interpreter start-up or the tracer's start/shutdown;
- process: the whole process, measured here from spawn to exit (includes start-up and, for the
           tracers, writing their output at exit: callspan's span building and export);
- peak RSS: the child's own peak, from GNU ``/usr/bin/time -f %M`` when available (else
           ``os.wait4``'s ru_maxrss, which is floored by this script's RSS at spawn).

Ratios are profiled / unprofiled medians. A long-run check runs request_mix 3x longer with callspan
to show whether its memory stays bounded.

    python benchmarks/bench_overhead.py                      # full run, --repeat 5
    python benchmarks/bench_overhead.py --quick              # smoke run (tiny workloads, 1 repeat)
    python benchmarks/bench_overhead.py --python .venv-3.11/bin/python --repeat 3 --json out.json

Peers (yappi, pyinstrument, viztracer) are skipped with a note when the selected interpreter
cannot import them (``pip install -e '.[bench]'``); so are the real-library workloads (lib_*:
docutils, jinja2, sqlparse, networkx), which callspan traces whole (``--include`` the library).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS_DIR = HERE / "workloads"
CORE_WORKLOADS = ("call_heavy", "request_mix", "async_gather")
# Real libraries from PyPI (the bench extra), each driven as its documentation shows. callspan
# traces only the user's own code by default, so for these its configurations also --include the
# library's packages (below): the library is traced whole, as cProfile & co. see it anyway.
LIB_WORKLOADS = ("lib_docutils", "lib_jinja2", "lib_sqlparse", "lib_networkx")
WORKLOADS = CORE_WORKLOADS + LIB_WORKLOADS
WORKLOAD_GROUPS = {"core": CORE_WORKLOADS, "lib": LIB_WORKLOADS, "all": WORKLOADS}
# Each workload runs ~1-2 s plain at scale 1. call_heavy is run at 1/5 of that by default: its
# ~50 ns calls are every tracer's worst case, and callspan at ~30x would take a minute per run at
# full size. --workload-scale call_heavy=1 for it.
DEFAULT_SCALES = {"call_heavy": 0.2, "request_mix": 1.0, "async_gather": 1.0,
                  "lib_docutils": 1.0, "lib_jinja2": 1.0, "lib_sqlparse": 1.0, "lib_networkx": 1.0}
# workload -> (modules the selected interpreter must import, else the workload is skipped;
#              what the callspan configurations --include besides the workload script itself).
# Paths are relative to workloads/. lib_jinja2's templates are loaded from files so that their
# compiled code has a real co_filename under lib_jinja2_templates/ (from_string ones are
# "<template>" and cannot be selected). "callspan unselected" keeps its own --include only.
LIB_INCLUDES = {
    "lib_docutils": (("docutils",), ("docutils",)),
    "lib_jinja2": (("jinja2", "markupsafe"), ("jinja2", "markupsafe", "lib_jinja2_templates")),
    "lib_sqlparse": (("sqlparse",), ("sqlparse",)),
    "lib_networkx": (("networkx",), ("networkx",)),
}
LONG_RUN_REPEATS = 3  # the 3x-length memory check runs in at most this many repetitions
LONG_RUN_WORKLOAD = "request_mix"
LONG_RUN_FACTOR = 3.0
NOTHING_SELECTED = "callspan_bench_no_such_module"

_YAPPI_RUNNER = """\
import os, runpy, sys
import yappi
out, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(os.path.abspath(script))
yappi.set_clock_type("wall")
yappi.start()
try:
    runpy.run_path(script, run_name="__main__")
finally:
    yappi.stop()
    yappi.get_func_stats().save(out, type="pstat")
"""

Argv = Callable[[str, str, list, str], list]  # (python, script, script args, out dir) -> argv


@dataclass(frozen=True)
class Config:
    name: str
    argv: Argv
    module: str | None = None  # must be importable by the selected interpreter
    callspan: bool = False


def callspan_includes(script: str) -> list:
    """``--include`` options for a library workload: the script itself and the library, whole.

    An explicit --include replaces callspan's default selection (the user's own code), so the
    script is named too: its driver functions stay traced, as in the other workloads.
    """
    workload = Path(script).stem
    if workload not in LIB_INCLUDES:
        return []
    argv = ["--include", script]
    for item in LIB_INCLUDES[workload][1]:
        path = WORKLOADS_DIR / item
        argv += ["--include", str(path) if path.exists() else item]
    return argv


def _callspan(*extra: str, select_library: bool = True) -> Argv:
    def argv(py: str, script: str, args: list, out: str) -> list:
        includes = callspan_includes(script) if select_library else []
        return [py, "-m", "callspan", "run", *includes, *extra,
                "-o", os.path.join(out, "spans.jsonl"), script, *args]
    return argv


CONFIGS = (
    Config("plain", lambda py, s, a, o: [py, s, *a]),
    Config("cProfile", lambda py, s, a, o: [py, "-m", "cProfile", "-o", os.path.join(o, "prof.out"), s, *a]),
    Config("yappi (wall)", lambda py, s, a, o: [py, "-c", _YAPPI_RUNNER, os.path.join(o, "yappi.pstat"), s, *a],
           module="yappi"),
    Config("pyinstrument", lambda py, s, a, o: [py, "-m", "pyinstrument", "-r", "json",
                                                "-o", os.path.join(o, "pyinstrument.json"), s, *a],
           module="pyinstrument"),
    Config("viztracer", lambda py, s, a, o: [py, "-m", "viztracer", "--quiet",
                                             "-o", os.path.join(o, "viztracer.json"), s, *a],
           module="viztracer"),
    Config("callspan", _callspan(), callspan=True),
    Config("callspan unselected", _callspan("--include", NOTHING_SELECTED, select_library=False), callspan=True),
    Config("callspan --cpu off", _callspan("--cpu", "off"), callspan=True),
    Config("callspan --keys off", _callspan("--keys", "off"), callspan=True),
)
LONG_RUN_CONFIGS = ("plain", "callspan")


@dataclass
class Run:
    workload: str
    scale: float
    config: str
    rep: int
    rc: int | None = None
    work_s: float | None = None
    process_s: float | None = None
    maxrss_kb: int | None = None
    output_bytes: int = 0
    spans: int | None = None
    notes: list = field(default_factory=list)
    error: str | None = None


# -- running one child ------------------------------------------------------------------------

_ELAPSED = re.compile(r"^ELAPSED\s+([0-9.eE+-]+)\s*$")
_SPANS_WRITTEN = re.compile(r"callspan: (\d+) spans written")
_CALLSPAN_LINE = re.compile(r"^callspan: .*$", re.M)


_SNAPSHOT_PATH: list = []  # set when callspan's sources are snapshotted (see snapshot_callspan)


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALLSPAN_", "OTEL_", "PYTHONPROFILE", "VIZTRACER"))}
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if _SNAPSHOT_PATH:
        env["PYTHONPATH"] = os.pathsep.join(_SNAPSHOT_PATH + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def snapshot_callspan(directory: str, into: str) -> str:
    """Copy callspan's package to ``into`` and put it first on the children's PYTHONPATH.

    Other people edit the checkout while a long benchmark runs; a snapshot keeps every run on
    the same code (an editable install would pick up each edit).
    """
    shutil.copytree(directory, os.path.join(into, "callspan"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _SNAPSHOT_PATH[:] = [into]
    return os.path.join(into, "callspan")


def _gnu_time() -> str | None:
    """/usr/bin/time if it is GNU time (``-f``/``-o``): a tiny parent, so its %M is the child's own peak."""
    path = shutil.which("time", path="/usr/bin:/bin")
    if not path:
        return None
    try:
        probe = subprocess.run([path, "-f", "%M", "-o", os.devnull, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if probe.returncode == 0 else None


GNU_TIME = _gnu_time()
RSS_METHOD = ("GNU /usr/bin/time %M" if GNU_TIME else
              "os.wait4 ru_maxrss (floor: this script's own RSS, inherited at spawn)")


def run_child(argv: list, cwd: str, timeout: float) -> tuple[int, float, int, str, str, bool]:
    """(exit code, process seconds, peak RSS KB, stdout, stderr, timed out) of one fresh child."""
    rss_file = os.path.join(cwd, ".maxrss")
    if GNU_TIME:
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file, "--", *argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                env=_child_env(), start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        rss = usage.ru_maxrss
        if GNU_TIME:
            try:
                with open(rss_file) as fh:
                    rss = int(fh.read().split()[-1])
                os.unlink(rss_file)
            except (OSError, ValueError, IndexError):
                pass
        out.seek(0)
        err.seek(0)
        return (proc.returncode, seconds, rss, out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"), timed_out.is_set())


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


_callspan_facts: dict = {}


def _read_callspan_facts(path: str) -> None:
    if _callspan_facts or not os.path.exists(path):
        return
    with open(path, "rb") as fh:
        head = fh.read(200_000).decode("utf-8", "replace")
    for key in ("callspan.core", "callspan.cpu.counter"):
        m = re.search(r'"key":"' + re.escape(key) + r'","value":\{"stringValue":"([^"]*)"', head)
        if m:
            _callspan_facts[key] = m.group(1)


def measure(python: str, config: Config, workload: str, scale: float, rep: int, timeout: float) -> Run:
    run = Run(workload=workload, scale=scale, config=config.name, rep=rep)
    script = str(WORKLOADS_DIR / f"{workload}.py")
    outdir = tempfile.mkdtemp(prefix="callspan-bench-")
    try:
        argv = config.argv(python, script, [repr(scale)], outdir)
        rc, seconds, rss, stdout, stderr, timed_out = run_child(argv, outdir, timeout)
        run.rc, run.process_s, run.maxrss_kb = rc, seconds, rss
        run.output_bytes = _dir_bytes(outdir)
        for line in reversed(stdout.splitlines()):
            m = _ELAPSED.match(line.strip())
            if m:
                run.work_s = float(m.group(1))
                break
        if config.callspan:
            m = _SPANS_WRITTEN.search(stderr)
            if m:
                run.spans = int(m.group(1))
            for line in _CALLSPAN_LINE.findall(stderr):
                if not _SPANS_WRITTEN.search(line):
                    run.notes.append(line.strip())
            _read_callspan_facts(os.path.join(outdir, "spans.jsonl"))
        for line in (stdout + "\n" + stderr).splitlines():
            low = line.lower()
            if ("circular buffer" in low or "lost" in low or "warning" in low) and "callspan:" not in line:
                run.notes.append(line.strip()[:160])
        if timed_out:
            run.error = f"timed out after {timeout:g}s"
        elif rc != 0 or run.work_s is None:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            run.error = f"exit {rc}" + ("" if run.work_s is not None else ", no ELAPSED line") + f": {tail[:300]}"
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    return run


# -- environment facts ------------------------------------------------------------------------

def machine_info() -> dict:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or model
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GB RAM"
    except OSError:
        pass
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {"cpu": model, "logical_cpus": cores, "usable_cpus": usable, "memory": mem,
            "kernel": f"{platform.system()} {platform.release()}", "loadavg": _loadavg()}


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


_PROBE = """\
import importlib.metadata as md, importlib.util as iu, json, os, platform, sys
libs = {}
for mod in sys.argv[1:]:  # the library workloads' packages: version, "?" or None (absent)
    try:
        found = iu.find_spec(mod) is not None
    except (ImportError, ValueError):
        found = False
    try:
        libs[mod] = md.version(mod) if found else None
    except md.PackageNotFoundError:
        libs[mod] = "?"
mods = {}
for mod, dist in (("yappi", "yappi"), ("pyinstrument", "pyinstrument"), ("viztracer", "viztracer"),
                  ("callspan", "callspan")):
    if iu.find_spec(mod) is None:
        mods[mod] = None
        continue
    try:
        mods[mod] = md.version(dist)
    except md.PackageNotFoundError:
        mods[mod] = "?"
loc = None
spec = iu.find_spec("callspan")
if spec is not None and spec.submodule_search_locations:
    loc = list(spec.submodule_search_locations)[0]
print(json.dumps({"version": sys.version.split()[0], "implementation": platform.python_implementation(),
                  "executable": sys.executable, "modules": mods, "libs": libs, "callspan_dir": loc}))
"""


def python_info(python: str) -> dict:
    libs = sorted({m for needed, _ in LIB_INCLUDES.values() for m in needed})
    out = subprocess.run([python, "-c", _PROBE, *libs], capture_output=True, text=True, check=True,
                         env=_child_env())
    return json.loads(out.stdout)


def source_fingerprint(directory: str | None) -> str:
    """Hash of callspan's sources: other people may be editing them while the benchmark runs."""
    if not directory:
        return "?"
    digest = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*.py")):
        digest.update(str(path.relative_to(directory)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            pass
    return digest.hexdigest()[:12]


def git_describe(directory: str | None) -> str:
    if not directory:
        return "?"
    try:
        rev = subprocess.run(["git", "-C", directory, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", directory, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (rev or "?") + (" + uncommitted changes" if dirty else "")


# -- summary ----------------------------------------------------------------------------------

def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list) -> dict:
    groups: dict = {}
    for run in runs:
        groups.setdefault((run.workload, run.scale, run.config), []).append(run)
    summary = {}
    for (workload, scale, config), items in groups.items():
        good = [r for r in items if r.error is None]
        summary[(workload, scale, config)] = {
            "n": len(good), "failed": len(items) - len(good),
            "work_s": _median([r.work_s for r in good]),
            "work_min_s": min((r.work_s for r in good), default=None),
            "process_s": _median([r.process_s for r in good]),
            "maxrss_mb": (_median([r.maxrss_kb for r in good]) or 0) / 1024 if good else None,
            "output_mb": (_median([r.output_bytes for r in good]) or 0) / 1e6 if good else None,
            "spans": _median([r.spans for r in good]),
            "notes": sorted({n for r in items for n in r.notes}),
            "errors": sorted({r.error for r in items if r.error}),
        }
    return summary


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def print_tables(summary: dict, jobs: list, configs: list, skipped: dict, long_run: tuple | None) -> list:
    lines: list = []
    emit = lines.append
    for workload, scale in jobs:
        if long_run and (workload, scale) == long_run:
            continue
        base = summary.get((workload, scale, "plain"))
        emit("")
        emit(f"== {workload} (scale {scale:g}) ==")
        emit(f"{'configuration':<22} {'work s':>8} {'ratio':>8} {'process s':>10} {'ratio':>8} "
             f"{'peak MB':>8} {'out MB':>8}  notes")
        for config in configs:
            s = summary.get((workload, scale, config.name))
            if s is None:
                continue
            notes = []
            if s["spans"] is not None:
                notes.append(f"{s['spans']:,.0f} spans")
            notes += s["notes"][:3]
            if s["failed"]:
                notes.append(f"{s['failed']} failed: " + "; ".join(s["errors"])[:200])
            emit(f"{config.name:<22} {_fmt(s['work_s'], '.3f'):>8} "
                 f"{_fmt(_ratio(s['work_s'], base and base['work_s']), '.2f', 'x'):>8} "
                 f"{_fmt(s['process_s'], '.3f'):>10} "
                 f"{_fmt(_ratio(s['process_s'], base and base['process_s']), '.2f', 'x'):>8} "
                 f"{_fmt(s['maxrss_mb'], '.1f'):>8} {_fmt(s['output_mb'], '.1f'):>8}  {', '.join(notes)}")
    for name, why in skipped.items():
        emit(f"(skipped {name}: {why})")

    # Compact matrix: work-section overhead ratio per configuration and workload.
    normal = [(w, s) for w, s in jobs if not (long_run and (w, s) == long_run)]
    emit("")
    emit("== overhead ratio, work section (median profiled / median plain) ==")
    emit(f"{'configuration':<22} " + " ".join(f"{w:>14}" for w, _ in normal))
    for config in configs:
        if config.name == "plain":
            continue
        cells = []
        for w, s in normal:
            a, b = summary.get((w, s, config.name)), summary.get((w, s, "plain"))
            cells.append(_fmt(_ratio(a and a["work_s"], b and b["work_s"]), ".2f", "x"))
        emit(f"{config.name:<22} " + " ".join(f"{c:>14}" for c in cells))

    if long_run:
        w, long_scale = long_run
        normal_scale = next((s for ww, s in normal if ww == w), None)
        emit("")
        emit(f"== long run: {w} at {long_scale / (normal_scale or long_scale):g}x length: "
             f"peak RSS (MB) and work ratio ==")
        emit(f"{'configuration':<22} {'scale ' + format(normal_scale or 0, 'g'):>12} "
             f"{'scale ' + format(long_scale, 'g'):>12} {'growth':>8} {'work ratio':>11}")
        rows = {}
        for name in LONG_RUN_CONFIGS:
            a = summary.get((w, normal_scale, name))
            b = summary.get((w, long_scale, name))
            rows[name] = (a, b)
            pb = summary.get((w, long_scale, "plain"))
            emit(f"{name:<22} {_fmt(a and a['maxrss_mb'], '.1f'):>12} {_fmt(b and b['maxrss_mb'], '.1f'):>12} "
                 f"{_fmt(_ratio(b and b['maxrss_mb'], a and a['maxrss_mb']), '.2f', 'x'):>8} "
                 f"{_fmt(_ratio(b and b['work_s'], pb and pb['work_s']), '.2f', 'x'):>11}")
        (pa, pb), (ca, cb) = rows.get("plain", (None, None)), rows.get("callspan", (None, None))
        if all(x and x["maxrss_mb"] for x in (pa, pb, ca, cb)):
            extra_normal = ca["maxrss_mb"] - pa["maxrss_mb"]
            extra_long = cb["maxrss_mb"] - pb["maxrss_mb"]
            bounded = extra_long <= extra_normal * 1.25 + 8
            emit(f"callspan's own memory (its peak minus plain's): {extra_normal:.1f} MB at 1x, "
                 f"{extra_long:.1f} MB at {LONG_RUN_FACTOR:g}x -> "
                 + ("BOUNDED (grows < 25% + 8 MB)" if bounded else "NOT bounded (grows with run length)"))
    return lines


# -- main -------------------------------------------------------------------------------------

def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="interpreter to benchmark (default: this one)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per configuration (default 5, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny workloads, 1 repeat")
    parser.add_argument("--json", metavar="PATH", help="save every run and the summary as JSON")
    parser.add_argument("--workloads", default="all",
                        help="comma-separated names or groups: core (" + ",".join(CORE_WORKLOADS) + "), lib ("
                             + ",".join(LIB_WORKLOADS) + "), all (default; lib_* are skipped with a note "
                             "when their library is not installed)")
    parser.add_argument("--configs", default=None, help="comma-separated subset of configuration names")
    parser.add_argument("--scale", type=float, default=None,
                        help="multiply every workload's default scale (default 1, --quick 0.05); defaults: "
                             + ", ".join(f"{w} {s:g}" for w, s in DEFAULT_SCALES.items()))
    parser.add_argument("--workload-scale", action="append", default=[], metavar="NAME=SCALE",
                        help="absolute scale of one workload, e.g. call_heavy=1 (overrides --scale)")
    parser.add_argument("--no-long-run", action="store_true", help="skip the 3x-length memory check")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run is killed")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="run callspan from its installed location, not from a copy taken at start")
    args = parser.parse_args(argv)

    repeat = args.repeat or (1 if args.quick else 5)
    factor = args.scale if args.scale is not None else (0.05 if args.quick else 1.0)
    scales = {w: DEFAULT_SCALES[w] * factor for w in WORKLOADS}
    for item in args.workload_scale:
        name, _, value = item.partition("=")
        if name not in scales:
            parser.error(f"unknown workload {name!r}")
        scales[name] = float(value)
    workloads: list = []
    for w in (w.strip() for w in args.workloads.split(",")):
        if not w:
            continue
        if w not in WORKLOADS and w not in WORKLOAD_GROUPS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)} "
                         f"or a group ({', '.join(WORKLOAD_GROUPS)})")
        for name in WORKLOAD_GROUPS.get(w, (w,)):
            if name not in workloads:
                workloads.append(name)

    # Absolute (children run in a temp dir), but not resolved: a venv's python is a symlink.
    python = os.path.abspath(args.python) if os.sep in args.python else (shutil.which(args.python) or args.python)
    info = python_info(python)
    machine = machine_info()
    configs, skipped = [], {}
    lib_versions = {}  # the selected library workloads' modules -> version (None: not importable)
    for w in list(workloads):
        needed = LIB_INCLUDES.get(w, ((), ()))[0]
        for m in needed:
            lib_versions[m] = info["libs"].get(m)
        missing = [m for m in needed if not lib_versions[m]]
        if missing:
            skipped[w] = f"{', '.join(missing)} not installed for {python} (pip install -e '.[bench]')"
            workloads.remove(w)
            print(f"note: skipping workload {w}: {skipped[w]}", file=sys.stderr)
    wanted = None if args.configs is None else {c.strip() for c in args.configs.split(",")}
    for config in CONFIGS:
        if wanted is not None and config.name not in wanted and config.name != "plain":
            continue
        module = config.module or ("callspan" if config.callspan else None)
        if module and not info["modules"].get(module):
            skipped[config.name] = f"{module} not installed for {python}"
            continue
        configs.append(config)

    jobs = [(w, scales[w]) for w in workloads]
    long_run = None
    if not args.no_long_run and LONG_RUN_WORKLOAD in workloads and any(c.name == "callspan" for c in configs):
        long_run = (LONG_RUN_WORKLOAD, scales[LONG_RUN_WORKLOAD] * LONG_RUN_FACTOR)
        jobs.append(long_run)

    source_dir = info.get("callspan_dir")
    fingerprint = source_fingerprint(source_dir)
    described = git_describe(source_dir)
    snapshot_root = None
    if source_dir and not args.no_snapshot:
        snapshot_root = tempfile.mkdtemp(prefix="callspan-bench-src-")
        snapshot_callspan(source_dir, snapshot_root)
        seen = python_info(python).get("callspan_dir")
        if not seen or not os.path.realpath(seen).startswith(os.path.realpath(snapshot_root)):
            print(f"note: the snapshot of callspan is not the one imported ({seen}); using the installed one",
                  file=sys.stderr)
            _SNAPSHOT_PATH.clear()
            shutil.rmtree(snapshot_root, ignore_errors=True)
            snapshot_root = None
        else:
            fingerprint = source_fingerprint(os.path.join(snapshot_root, "callspan"))
    header = [
        f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs ({machine['usable_cpus']} usable), "
        f"{machine['memory']}, {machine['kernel']}, load avg at start {machine['loadavg']}",
        f"python:  {info['implementation']} {info['version']} ({info['executable']})",
        "peers:   " + ", ".join(f"{m} {v or 'not installed'}" for m, v in info["modules"].items()),
        *(["libraries: " + ", ".join(f"{m} {v or 'not installed'}" for m, v in lib_versions.items())]
          if lib_versions else []),
        f"callspan source: {source_dir} at {described}, sources sha256 {fingerprint}"
        + (" (snapshot taken at start)" if snapshot_root else " (live: edits during the run are picked up)"),
        f"peak RSS: {RSS_METHOD}",
        f"runs:    {repeat} per configuration (long run: {min(repeat, LONG_RUN_REPEATS)}), interleaved; "
        "workloads at scale " + ", ".join(f"{w} x{s:g}" for w, s in jobs) + "; medians reported",
    ]
    print("\n".join(header), flush=True)

    # Warm-up (file cache, .pyc of the tools), not recorded.
    for w, s in jobs[:len(workloads)]:
        measure(python, configs[0], w, s, -1, args.timeout)

    runs: list = []
    long_repeats = min(repeat, LONG_RUN_REPEATS)
    total = sum(len(configs) for w, s in jobs if (w, s) != long_run) * repeat
    total += len(LONG_RUN_CONFIGS) * long_repeats if long_run else 0
    done = 0
    started = time.perf_counter()
    for rep in range(repeat):
        for index, (w, s) in enumerate(jobs):
            if (w, s) == long_run and rep >= long_repeats:
                continue
            todo = [c for c in configs if (w, s) != long_run or c.name in LONG_RUN_CONFIGS]
            shift = (rep + index) % len(todo)
            for config in todo[shift:] + todo[:shift]:  # rotate the order each repetition
                run = measure(python, config, w, s, rep, args.timeout)
                runs.append(run)
                done += 1
                status = run.error or f"work {_fmt(run.work_s, '.3f')}s process {run.process_s:.2f}s " \
                                      f"rss {run.maxrss_kb / 1024:.0f}MB"
                print(f"  [{done}/{total} {time.perf_counter() - started:6.0f}s] rep {rep + 1} "
                      f"{w} x{s:g} {config.name}: {status}", file=sys.stderr, flush=True)

    summary = summarise(runs)
    if snapshot_root:
        fingerprint_after = source_fingerprint(os.path.join(snapshot_root, "callspan"))
        shutil.rmtree(snapshot_root, ignore_errors=True)
    else:
        fingerprint_after = source_fingerprint(source_dir)
    lines = print_tables(summary, jobs, configs, skipped, long_run)
    if _callspan_facts:
        lines.append("")
        lines.append(f"callspan core: {_callspan_facts.get('callspan.core', '?')}, "
                     f"CPU counter: {_callspan_facts.get('callspan.cpu.counter', '?')}")
    lines.append(f"load avg at end: {_loadavg()}; total bench time {time.perf_counter() - started:.0f}s")
    if fingerprint_after != fingerprint:
        lines.append(f"WARNING: callspan's sources changed during the run ({fingerprint} -> {fingerprint_after}); "
                     "callspan rows mix code versions")
    print("\n".join(lines), flush=True)

    if args.json:
        payload = {
            "header": header, "machine": machine, "python": info, "repeat": repeat,
            "callspan_fingerprint": [fingerprint, fingerprint_after], "callspan_facts": _callspan_facts,
            "skipped": skipped, "long_run": list(long_run) if long_run else None,
            "summary": [{"workload": w, "scale": s, "config": c, **v} for (w, s, c), v in summary.items()],
            "runs": [asdict(r) for r in runs], "report": header + lines,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
