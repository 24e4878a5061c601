#!/usr/bin/env python3
"""Rediscovery: does callspan's cache report find what library maintainers memoized?

For each library (PyPI packages that memoize functions with ``functools.lru_cache``/``cache`` or
a decorator of their own), its workload in ``workloads/rediscover_<lib>.py`` turns that
memoization off before importing it and runs calls from its documentation. Then:

1. scan: the memoized functions, found in the installed package's source (AST: functions
   decorated with one of the library's memoizing decorators), not picked by hand;
2. callspan: ``callspan run --include <package>`` (the library traced whole, default settings),
   then ``callspan analyze --format json --report cache`` (defaults);
3. truth: ``python -m tests.cache_reference --include <package>`` on the same workload: exact
   calls, hits and consistency (by value) per function;
4. cost: the workload again, ``--cost-repeat`` times (3), in ``workloads/memo_off.py``'s cost
   mode: each memoized function wrapped where its cache was, timed by the thread's CPU clock
   (``time.thread_time_ns``), the wrappers of nested calls taken out: the CPU of the calls an
   unbounded cache of that function would answer (``lru_cache``'s keys; calls nested in such a
   hit left out: they would not run), the least of the runs, independent of callspan's own
   figures. (Not cProfile's hits x mean time per call: it instruments every call, inflating
   cheap functions 2-5x, its wall clock made the real-savings set change with the machine's
   load, and for a recursive function the outermost calls' mean is not what its hits cost);
5. score. A memoized function has *real savings* when the reference finds hits and calls it
   consistent (or consistent once unhashable arguments are converted), and what the cost runs
   measured clears the analyzer's own economics (the ``min_saved_ns`` floor, and a mean cost a
   hit of at least ``min_cost_ratio`` x ``lookup_ns``, read from the analysis; ``lookup_ns``: the
   least of the analysis's and one measurement per cost run, as the analyzer measures it). *Advised*: advice kind
   ``lru_cache``, ``lru_cache_convert_args``, ``calls_impure``, ``mostly_consistent`` or
   ``mutable_return``.
   The report ranks advice in tiers, each its own table with its own top N: *recommended*
   (``lru_cache``, ``lru_cache_convert_args``: applied as said) and *caveated* (``calls_impure``,
   ``mostly_consistent``, ``mutable_return``: a caveat to weigh first); "the top 40" is the top 40
   of each table (``tier_rank``). Recall = real-savings memoized functions advised in the top 40 /
   real-savings memoized functions. Precision = advised functions in the top 40 that the reference
   finds consistent / advised functions in the top 40 the reference saw. Targets: recall >= 50%,
   and no recommended (clean) function anywhere in the ranking that the reference finds
   inconsistent (caveated ones it finds inconsistent are listed apart).

    python benchmarks/bench_rediscovery.py                    # all libraries, ~6-7 min on 2 cores
    python benchmarks/bench_rediscovery.py --libs rich,textual --json /tmp/rediscovery.json

Needs the libraries (``pip install -e '.[bench]'``); a library the interpreter cannot import is
skipped with a note. Run from anywhere; the reference runs from the repository root.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOADS_DIR = HERE / "workloads"
# Advice with a cache size: clean (the user can apply it as said), or with a caveat the user must
# weigh (the text names what could make the cache wrong). Recall counts both; the target "no
# advised function the reference finds inconsistent" is for clean advice, and the caveated ones
# the reference finds inconsistent are listed beside it.
CLEAN = ("lru_cache", "lru_cache_convert_args")
CAVEATED = ("calls_impure", "mostly_consistent", "mutable_return", "callees_unknown", "returns_none")
ADVISED = CLEAN + CAVEATED
TOP = 40
RECALL_TARGET = 0.5
# Reference verdicts under which a cache returns what the function would: "unhashable" means
# consistent once the unhashable arguments are converted (advice lru_cache_convert_args).
CACHEABLE_VERDICTS = ("consistent", "unhashable")


@dataclass(frozen=True)
class Library:
    name: str  # the --libs name
    package: str  # import name: what is scanned and --include'd
    decorators: tuple[str, ...]  # names of the memoizing decorators (last component of the name)
    workload: str  # script in workloads/
    switch: str  # how the workload turns memoization off (for the report)


LIBRARIES = {
    lib.name: lib for lib in (
        Library("sympy", "sympy", ("lru_cache", "cache", "cacheit"), "rediscover_sympy.py",
                "SYMPY_USE_CACHE=no (its @cacheit), functools caches patched"),
        Library("rich", "rich", ("lru_cache", "cache"), "rediscover_rich.py", "functools caches patched"),
        Library("textual", "textual", ("lru_cache", "cache"), "rediscover_textual.py",
                "functools caches patched (Rich's stay on)"),
    )
}


# ---------------------------------------------------------------- scan

@dataclass(frozen=True)
class Memoized:
    function: str  # module.qualname, as callspan and the reference name it
    file: str
    line: int  # co_firstlineno: the first decorator's line
    decorator: str


def module_name(package_dir: Path, package: str, path: Path) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _decorator_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):  # @lru_cache(maxsize=...)
        node = node.func
    if isinstance(node, ast.Attribute):  # @functools.lru_cache
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def scan_source(source: str, module: str, file: str, decorators: Iterable[str]) -> list[Memoized]:
    """Functions in ``source`` decorated with one of ``decorators``, named by their qualname."""
    wanted = set(decorators)
    found: list[Memoized] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [_decorator_name(d) for d in node.decorator_list]
                memo = next((n for n in names if n in wanted), None)
                if memo is not None:
                    first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                    found.append(Memoized(f"{module}.{prefix}{node.name}", file, first, memo))
                visit(node.body, f"{prefix}{node.name}.<locals>.")
            elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
                # definitions under `if TYPE_CHECKING:`, `try: ... except ImportError:` etc.
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, block, ()):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child], prefix)

    visit(ast.parse(source).body, "")
    return found


def scan_package(package_dir: Path, package: str, decorators: Iterable[str]) -> list[Memoized]:
    """Every memoized function in the package's .py files, each name once, sorted."""
    by_name: dict[str, Memoized] = {}
    for path in sorted(package_dir.rglob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            found = scan_source(source, module_name(package_dir, package, path), str(path), decorators)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # e.g. a test fixture that is not Python 3
        for memo in found:
            by_name.setdefault(memo.function, memo)
    return sorted(by_name.values(), key=lambda m: m.function)


# ---------------------------------------------------------------- cost (timed where the cache was)

# Cost: each workload run again in memo_off's cost mode (its environment variable names the
# output file): the CPU time of the calls an unbounded cache of each memoized function would
# answer, measured by a wrapper exactly where the cache was, nothing else instrumented, the
# wrappers' own cost taken out. Not cProfile: it instruments every call (builtins too), which
# inflated cheap functions' inclusive time 2-5x, and its wall clock counts the time other
# processes hold the CPU (on a shared machine the real-savings set changed with the load).
COST_ENV = "REDISCOVERY_COST_OUT"  # memo_off.COST_ENV
COST_REPEAT = 3

@dataclass(frozen=True)
class Saving:
    """What an unbounded cache on one function saves in a cost-mode run."""

    saved_ns: float  # CPU of the calls it would answer (not those nested in one: they would not happen)
    hits: int  # those calls

    @property
    def per_hit_ns(self) -> float:
        return self.saved_ns / self.hits if self.hits else 0.0


def savings_of(cost_file: Mapping[str, Any], memoized: Iterable[Memoized]) -> dict[str, Saving]:
    """Each memoized function's ``Saving`` from a cost-mode output (rows keyed by the code's file,
    first line and name, as the scan names them)."""
    rows = {(row["file"], row["line"], row["name"]): row for row in cost_file["functions"]}
    out: dict[str, Saving] = {}
    for memo in memoized:
        row = rows.get((memo.file, memo.line, memo.function.rsplit(".", 1)[-1]))
        if row is not None and row["calls"] > 0:
            out[memo.function] = Saving(float(row["saved_ns"]), int(row["hits"]))
    return out


def least_savings(runs: Iterable[Mapping[str, Saving]]) -> dict[str, Saving]:
    """Each function's least saving over the runs it appears in: the run least disturbed (cache
    misses, frequency changes and other processes still add CPU time; nothing takes it away)."""
    out: dict[str, Saving] = {}
    for savings in runs:
        for function, saving in savings.items():
            if function not in out or saving.saved_ns < out[function].saved_ns:
                out[function] = saving
    return out


# ---------------------------------------------------------------- score

@dataclass
class FunctionRow:
    function: str
    decorator: str
    ref_calls: int | None = None
    ref_hits: int | None = None
    ref_verdict: str | None = None
    hit_cost_ns: float | None = None  # cost mode: mean CPU ns of the calls a cache would answer
    saved_ns: float | None = None  # cost mode: their CPU
    real: bool = False
    why_not_real: str | None = None
    rank: int | None = None
    advice: str | None = None
    callspan_calls: int | None = None
    callspan_hits: int | None = None
    found: bool = False
    why_missed: str | None = None


@dataclass
class Score:
    memoized: int
    ran: int  # memoized functions the reference saw called
    real: int
    found: int
    recall: float | None
    advised_top: int
    advised_top_in_reference: int
    advised_top_consistent: int
    precision: float | None
    advised_inconsistent: list[str]  # clean advice anywhere in the ranking, reference: inconsistent
    advised_top_not_consistent: list[str]
    functions: list[FunctionRow] = field(default_factory=list)
    caveated_inconsistent: list[str] = field(default_factory=list)  # caveated advice, reference: inconsistent

    @property
    def meets_targets(self) -> bool:
        return self.recall is not None and self.recall >= RECALL_TARGET and not self.advised_inconsistent


def _why_not_real(truth: Mapping[str, Any] | None, saving: Saving | None, lookup_ns: float,
                  min_cost_ratio: float, min_saved_ns: float) -> str | None:
    if truth is None or not truth.get("calls"):
        return "not called"
    if truth["verdict"] not in CACHEABLE_VERDICTS:
        return f"reference: {truth['verdict']}"
    if not truth["hits"]:
        return "reference: no repeats"
    if saving is None or not saving.hits:
        return "no hits in the cost runs" if saving else "not called in the cost runs"
    if saving.per_hit_ns < min_cost_ratio * lookup_ns:
        return f"cheap: {saving.per_hit_ns:.0f} ns a hit < {min_cost_ratio:g} x {lookup_ns:.0f} ns lookup"
    if saving.saved_ns < min_saved_ns:
        return f"small: {saving.hits} hits save {saving.saved_ns / 1e6:.3g} ms < {min_saved_ns / 1e6:g} ms"
    return None


def _tier_rank(opportunity: Mapping[str, Any]) -> int:
    """Its rank in its tier's table (analyses before tiers had one ranking: its rank)."""
    return int(opportunity.get("tier_rank", opportunity["rank"]))


def _why_missed(opportunity: Mapping[str, Any] | None, top: int) -> str:
    if opportunity is None:
        return "not in the cache report (no keyed calls or no repeated key)"
    kind = opportunity["advice"]["kind"]
    if kind not in ADVISED:
        return f"advice {kind}: {opportunity['advice'].get('text', '')}"
    return f"ranked {_tier_rank(opportunity)} > {top} in its tier ({opportunity.get('tier', 'one ranking')})"


def score(memoized: Sequence[Memoized], cache_report: Mapping[str, Any], truths: Mapping[str, Mapping[str, Any]],
          savings: Mapping[str, Saving], top: int = TOP, lookup_ns: float | None = None) -> Score:
    """Recall and precision of ``cache_report`` (the analyzer's JSON ``cache`` object) against the
    reference ``truths`` (``python -m tests.cache_reference`` output) and the cost runs' ``savings``;
    a hit must cost ``min_cost_ratio`` x ``lookup_ns`` (default: the analysis's measurement)."""
    options = cache_report["options"]
    lookup_ns = float(cache_report["lookup_ns"]) if lookup_ns is None else lookup_ns
    opportunities = cache_report["opportunities"]
    by_function = {o["function"]: o for o in opportunities}
    # The report's tables: one per tier (recommended, caveated, ...), each with its own top N.
    top_functions = [o for o in opportunities if _tier_rank(o) <= top]
    advised_top = [o for o in top_functions if o["advice"]["kind"] in ADVISED]
    advised_top_names = {o["function"] for o in advised_top}

    rows: list[FunctionRow] = []
    for memo in memoized:
        truth = truths.get(memo.function)
        saving = savings.get(memo.function)
        row = FunctionRow(memo.function, memo.decorator)
        if saving is not None and saving.hits:
            row.hit_cost_ns, row.saved_ns = saving.per_hit_ns, saving.saved_ns
        if truth is not None:
            row.ref_calls, row.ref_hits, row.ref_verdict = truth["calls"], truth["hits"], truth["verdict"]
        row.why_not_real = _why_not_real(truth, saving, lookup_ns, float(options["min_cost_ratio"]),
                                         float(options["min_saved_ns"]))
        row.real = row.why_not_real is None
        opportunity = by_function.get(memo.function)
        if opportunity is not None:
            row.rank, row.advice = opportunity["rank"], opportunity["advice"]["kind"]
            row.callspan_calls, row.callspan_hits = opportunity["calls"], opportunity["hits"]
        row.found = memo.function in advised_top_names
        if row.real and not row.found:
            row.why_missed = _why_missed(opportunity, top)
        rows.append(row)

    real = [r for r in rows if r.real]
    found = [r for r in real if r.found]
    seen = [o for o in advised_top if o["function"] in truths]
    consistent = [o for o in seen if _consistent_for(o, truths[o["function"]])]
    def inconsistent_with(kinds: tuple[str, ...]) -> list[str]:
        return sorted(o["function"] for o in opportunities if o["advice"]["kind"] in kinds
                      and truths.get(o["function"], {}).get("verdict") == "inconsistent")

    advised_inconsistent = inconsistent_with(CLEAN)
    return Score(
        memoized=len(memoized), ran=sum(1 for r in rows if r.ref_calls), real=len(real), found=len(found),
        recall=len(found) / len(real) if real else None,
        advised_top=len(advised_top), advised_top_in_reference=len(seen), advised_top_consistent=len(consistent),
        precision=len(consistent) / len(seen) if seen else None,
        advised_inconsistent=advised_inconsistent, caveated_inconsistent=inconsistent_with(CAVEATED),
        advised_top_not_consistent=sorted(f"{o['function']} ({truths[o['function']]['verdict']}, advice "
                                          f"{o['advice']['kind']})" for o in seen if o not in consistent),
        functions=rows)


def _consistent_for(opportunity: Mapping[str, Any], truth: Mapping[str, Any]) -> bool:
    """The advice would return what the function does: consistent by value, or consistent after
    the conversion the advice asks for (a bare lru_cache on unhashable arguments would raise)."""
    if truth["verdict"] == "consistent":
        return True
    return truth["verdict"] == "unhashable" and opportunity["advice"]["kind"] != "lru_cache"


# ---------------------------------------------------------------- run

def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLSPAN_", "OTEL_"))}
    env["PYTHONHASHSEED"] = "0"
    return env


def _run(command: Sequence[str], cwd: Path, log: Path, env: Mapping[str, str] | None = None) -> float:
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=cwd, env={**_clean_env(), **(env or {})}, stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}; see {log}")
    return time.perf_counter() - start


def run_library(lib: Library, python: str, workdir: Path, scale: float | None = None,
                cost_repeat: int = COST_REPEAT) -> dict[str, Any]:
    """Run every step for one library; returns its result (score and timings) as JSON-able data."""
    package_dir = _package_dir(python, lib.package)
    memoized = scan_package(package_dir, lib.package, lib.decorators)
    workload = str(WORKLOADS_DIR / lib.workload)
    args = [workload] + ([str(scale)] if scale is not None else [])
    workdir.mkdir(parents=True, exist_ok=True)
    spans, analysis, truth = (workdir / n for n in ("spans.jsonl", "analysis.json", "reference.json"))
    cost_files = [workdir / f"costs{i}.json" for i in range(1, cost_repeat + 1)]
    seconds = {
        "callspan_run": _run([python, "-m", "callspan", "run", "--include", lib.package, "-o", str(spans), *args],
                             workdir, workdir / "run.log"),
        "analyze": _run([python, "-m", "callspan", "analyze", "--format", "json", "--report", "cache",
                         "--no-progress", "-o", str(analysis), str(spans)], workdir, workdir / "analyze.log"),
        "reference": _run([python, "-m", "tests.cache_reference", "--include", lib.package, "--out", str(truth),
                           *args], REPO, workdir / "reference.log"),
        "costs": sum(_run([python, *args], workdir, workdir / "costs.log", {COST_ENV: str(path)})
                     for path in cost_files),
    }
    cache_report = json.loads(analysis.read_text())["cache"]
    truths = json.loads(truth.read_text())
    cost_runs = [json.loads(path.read_text()) for path in cost_files]
    # What a cache hit costs, for the truth: the analysis measured it once (a few ms of wall
    # time: 117-194 ns on this VM, depending on the load); the least of it and one measurement
    # per cost run is the least disturbed.
    lookups = [float(cache_report["lookup_ns"])] + [_lookup_ns(python) for _ in cost_runs]
    result = score(memoized, cache_report, truths, least_savings(savings_of(run, memoized) for run in cost_runs),
                   lookup_ns=min(lookups))
    return {"library": lib.name, "package": lib.package, "version": _version(lib.package),
            "decorators": list(lib.decorators), "switch": lib.switch, "cost_repeat": cost_repeat,
            "wrapper_ns": [run["wrapper_ns"] for run in cost_runs], "self_ns": [run["self_ns"] for run in cost_runs],
            "lookup_ns": cache_report["lookup_ns"], "truth_lookup_ns": min(lookups),
            "functions_analyzed": cache_report["functions_analyzed"], "seconds": seconds,
            "meets_targets": result.meets_targets, **asdict(result)}


def _lookup_ns(python: str) -> float:
    """What a ``functools.lru_cache`` hit costs under ``python``, measured as the analyzer does."""
    probe = "from callspan.analysis.cache import measure_lookup_cost; print(measure_lookup_cost().ns)"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=_clean_env(), check=True)
    return float(done.stdout)


def _package_dir(python: str, package: str) -> Path:
    """Where ``python`` would import ``package`` from (without importing it)."""
    probe = (f"import importlib.util; s = importlib.util.find_spec({package!r}); "
             "print(s.origin if s and s.origin else '')")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=_clean_env())
    origin = done.stdout.strip()
    if done.returncode != 0 or not origin:
        raise LookupError(f"{python} cannot import {package} (pip install -e '.[bench]')")
    return Path(origin).parent


def _version(package: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def table(results: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| library | memoized (ran) | real savings | found in top 40 | recall | advised in top 40 "
             "| consistent | precision | clean advice & inconsistent | caveated & inconsistent |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['library']} {r['version']} | {r['memoized']} ({r['ran']}) | {r['real']} | {r['found']} "
                     f"| {_percent(r['recall'])} | {r['advised_top']} | {r['advised_top_consistent']}"
                     f"/{r['advised_top_in_reference']} | {_percent(r['precision'])} "
                     f"| {len(r['advised_inconsistent'])} | {len(r.get('caveated_inconsistent', []))} |")
    return "\n".join(lines)


def details(result: Mapping[str, Any]) -> str:
    """The real-savings memoized functions, found or why not."""
    lines = [f"{result['library']}: real-savings memoized functions"]
    for row in result["functions"]:
        if row["real"]:
            state = "found" if row["found"] else f"MISSED: {row['why_missed']}"
            lines.append(f"  {row['function']}: ref {row['ref_calls']} calls {row['ref_hits']} hits, "
                         f"{row['hit_cost_ns']:.0f} ns CPU a hit; rank {row['rank']} {row['advice']}; {state}")
    for name in result["advised_top_not_consistent"]:
        lines.append(f"  advised but not consistent: {name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libs", default=",".join(LIBRARIES), help=f"comma-separated (default: {','.join(LIBRARIES)})")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run the workloads with")
    parser.add_argument("--scale", type=float, help="workload scale (default: each workload's own)")
    parser.add_argument("--json", default="rediscovery.json", help="where to write the results")
    parser.add_argument("--cost-repeat", type=int, default=COST_REPEAT,
                        help="cost-mode runs per library; each function's least saving counts "
                        f"(default {COST_REPEAT})")
    parser.add_argument("--workdir", help="keep the traces, analyses and references here (default: a temp dir)")
    options = parser.parse_args(argv)
    names = [n for n in options.libs.split(",") if n]
    unknown = [n for n in names if n not in LIBRARIES]
    if unknown:
        parser.error(f"unknown libraries: {', '.join(unknown)} (known: {', '.join(LIBRARIES)})")
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="callspan-rediscovery-") as tmp:
        root = Path(options.workdir) if options.workdir else Path(tmp)
        for name in names:
            print(f"{name}: running (callspan, analyze, reference, costs)...", file=sys.stderr, flush=True)
            try:
                results.append(run_library(LIBRARIES[name], options.python, root / name, options.scale,
                                           options.cost_repeat))
            except LookupError as missing:
                skipped[name] = str(missing)
                print(f"{name}: skipped: {missing}", file=sys.stderr)
                continue
            print(details(results[-1]), file=sys.stderr)
    load_at_end = os.getloadavg()
    doc = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
           f"{platform.processor() or platform.platform()}", "python": platform.python_version(),
           "load_average": {"start": load_at_start, "end": load_at_end},
           "top": TOP, "advised_kinds": list(ADVISED), "recall_target": RECALL_TARGET,
           "results": results, "skipped": skipped}
    Path(options.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(table(results))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    load = " -> ".join("/".join(f"{x:.2f}" for x in at) for at in (load_at_start, load_at_end))
    print(f"(Python {doc['python']}, {doc['date']}, load average {load}; JSON: {options.json})")
    return 0 if results and all(r["meets_targets"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
