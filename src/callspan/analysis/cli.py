"""``callspan analyze``: arguments and the run, wired into the ``callspan`` CLI by its caller."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import TYPE_CHECKING, TextIO

from callspan.errors import CallspanError
from callspan.outfiles import write_output
from callspan.untrusted import printable

if TYPE_CHECKING:
    from callspan.analysis.report import Results

# The analyzer's modules are imported when an analysis runs, not with the parser: `callspan run`
# builds the same parser and should not pay for them at start-up.
DEFAULT_MAX_LINE_MB = 256  # readers.MAX_LINE_BYTES >> 20 (tested)

REPORTS = ("cache", "cpu", "latency")
DEFAULT_MEMORY_MB = 64
MAX_WARNINGS = 20


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``callspan analyze``'s arguments to ``parser``."""
    parser.add_argument("inputs", nargs="*", metavar="PATH",
                        help="trace files (OTLP JSON lines, Jaeger JSON; .gz ok) or directories of them")
    parser.add_argument("--report", default="cache", metavar="KIND",
                        help="cache, cpu, latency, a comma-separated list, or all (default: cache)")
    parser.add_argument("--format", default="text", choices=("text", "json", "html"),
                        help="output format (default: text)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the report to FILE (default: stdout); an existing file or symbolic link "
                             "there is replaced, never written through (also for --folded, --speedscope)")
    parser.add_argument("--top", type=int, default=20, metavar="N", help="rows per table (default: 20)")
    cache_group = parser.add_argument_group("cache report")
    cache_group.add_argument("--target", type=float, default=0.95, metavar="FRACTION",
                             help="recommend the smallest maxsize reaching this fraction of the unbounded "
                                  "hits (default: 0.95)")
    cache_group.add_argument("--min-calls", type=int, default=2, metavar="N",
                             help="ignore functions with fewer calls (default: 2)")
    cache_group.add_argument("--min-saved-ms", type=float, default=1.0, metavar="MS",
                             help="below this CPU (or wall) time saved at the recommended maxsize, advise "
                                  "'not worth it' (default: 1)")
    cache_group.add_argument("--lookup-ns", type=float, default=None, metavar="NS",
                             help="cost of a cache hit to judge calls against (default: functools.lru_cache's, "
                                  "measured at start; fix it for reports comparable across runs and machines)")
    cache_group.add_argument("--min-share", type=float, default=None, metavar="FRACTION",
                             help="optional extra filter: below this share of all CPU saved, advise "
                                  "'not worth it' (default: off)")
    cpu_group = parser.add_argument_group("cpu report exports")
    cpu_group.add_argument("--folded", metavar="FILE", help="write folded stacks (flamegraph.pl input)")
    cpu_group.add_argument("--speedscope", metavar="FILE", help="write a speedscope profile (JSON)")
    jaeger = parser.add_argument_group("reading from Jaeger")
    jaeger.add_argument("--jaeger", metavar="URL", help="Jaeger query service, e.g. http://localhost:16686")
    jaeger.add_argument("--service", metavar="NAME", help="service name to fetch traces of")
    jaeger.add_argument("--since", default="1h", metavar="DURATION", help="how far back (default: 1h)")
    jaeger.add_argument("--limit", type=int, default=1000, metavar="N", help="most traces to fetch (default: 1000)")
    jaeger.add_argument("--jaeger-api", default="auto", choices=("auto", "v3", "v1"),
                        help="/api/v3/traces, /api/traces, or v3 then v1 (default: auto)")
    parser.add_argument("--jobs", type=int, default=0, metavar="N",
                        help="worker processes for big inputs (default: one per CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, metavar="MB",
                        help="per-call and per-span data kept in memory; beyond, it goes to temporary files "
                             f"(default: {DEFAULT_MEMORY_MB}; 0: keep everything in memory)")
    parser.add_argument("--spill-dir", metavar="DIR",
                        help="where those temporary files go (default: the system's temporary directory)")
    parser.add_argument("--max-line-mb", type=int, default=DEFAULT_MAX_LINE_MB, metavar="MB",
                        help=f"longest JSON line accepted (default: {DEFAULT_MAX_LINE_MB})")


def _reports(text: str) -> list[str]:
    names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
    if names == ["all"]:
        return list(REPORTS)
    for name in names:
        if name not in REPORTS:
            raise CallspanError(f"--report {text!r}: expected cache, cpu, latency (comma-separated) or all")
    if not names:
        raise CallspanError("--report: expected cache, cpu, latency or all")
    return list(dict.fromkeys(names))


def _validate(args: argparse.Namespace) -> list[str]:
    reports = _reports(args.report)
    if not args.inputs and not args.jaeger:
        raise CallspanError("no input: name trace files or directories, or use --jaeger URL --service NAME")
    if args.jaeger and not args.service:
        raise CallspanError("--jaeger needs --service NAME")
    if not 0 < args.target <= 1:
        raise CallspanError(f"--target {args.target}: expected a fraction in (0, 1]")
    if args.min_calls < 1:
        raise CallspanError(f"--min-calls {args.min_calls}: expected at least 1")
    if args.min_saved_ms < 0:
        raise CallspanError(f"--min-saved-ms {args.min_saved_ms}: expected 0 or more")
    if args.lookup_ns is not None and not args.lookup_ns > 0:
        raise CallspanError(f"--lookup-ns {args.lookup_ns}: expected more than 0")
    if args.min_share is not None and not 0 <= args.min_share < 1:
        raise CallspanError(f"--min-share {args.min_share}: expected a fraction in [0, 1)")
    if args.top < 1:
        raise CallspanError(f"--top {args.top}: expected at least 1")
    if args.limit < 1:
        raise CallspanError(f"--limit {args.limit}: expected at least 1")
    if args.max_line_mb < 1:
        raise CallspanError(f"--max-line-mb {args.max_line_mb}: expected at least 1")
    if args.memory_mb < 0:
        raise CallspanError(f"--memory-mb {args.memory_mb}: expected 0 (no limit) or more")
    if args.jobs < 0:
        raise CallspanError(f"--jobs {args.jobs}: expected 0 (automatic) or more")
    return reports


def _write(path: str, text: str, stderr: TextIO | None = None) -> None:
    """Write an output file whole, never through a symbolic link (``callspan.outfiles``)."""
    link = write_output(path, text)
    if link is not None:
        print(printable(f"callspan: {path} was a symbolic link to {link}: replaced by the output, "
                        "its target left untouched"), file=stderr if stderr is not None else sys.stderr)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # per-batch arrays stay below (heap: no page faults); the model's go above


def _return_freed_memory_promptly() -> None:
    """Keep glibc's malloc from holding on to freed big arrays (Linux, this process and its workers).

    glibc serves big allocations with mmap (released to the system on free) until the first such
    block is freed; then it raises its threshold and serves them from the heap, whose freed space
    stays in the process. The analyzer frees its arrays whenever it spills them, so with the
    dynamic threshold its peak RSS grew well past its budget (3M spans, cache report: 165-216 MB;
    with a fixed 1 MiB threshold 112-115 MB, 128 KiB 104 MB but ~10% slower: every batch's arrays
    were then fresh pages). malloc_trim after each spill gave back only part (144-152 MB).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def analyze(args: argparse.Namespace, stderr: TextIO | None = None) -> Results:
    from callspan.analysis import cache, cpu, latency
    from callspan.analysis.jaeger import fetch, parse_since
    from callspan.analysis.loader import LoadOptions, Workers, auto_jobs, load_bytes, load_files, new_model
    from callspan.analysis.progress import Progress
    from callspan.analysis.report import Results
    """Read the inputs named by ``args`` and run the reports asked for."""
    stderr = stderr if stderr is not None else sys.stderr
    reports = _validate(args)
    if args.memory_mb:
        _return_freed_memory_promptly()  # before the workers fork: they inherit it
    started = time.monotonic()
    want_stacks = "cpu" in reports or "latency" in reports or bool(args.folded or args.speedscope)
    options = LoadOptions(want_calls="cache" in reports or "latency" in reports, want_rows=want_stacks,
                          slow_keep=args.top if "latency" in reports else 0, jobs=args.jobs,
                          max_line=args.max_line_mb << 20, memory_budget=args.memory_mb << 20,
                          spill_dir=args.spill_dir)
    model = new_model(options)
    progress = Progress(0, stream=stderr, enabled=False if args.no_progress else None)
    workers = Workers(auto_jobs(args.inputs, args.jobs) if args.inputs else 1)
    # The analysis builds no reference cycles; the cyclic GC would only re-scan a big heap.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if args.inputs:
            load_files(args.inputs, options, model, progress, workers)
        if args.jaeger:
            name, body = fetch(args.jaeger, args.service, parse_since(args.since), args.limit, args.jaeger_api)
            load_bytes(model, body, name)
        model.spill_rest()
        model.input_warnings()
        progress.set_phase("analyzing", progress.total, model.spans)
        results = Results(model, reports, top=args.top)
        pending = None
        # With worker processes, the per-function wall-time sorts and the cache replays run there
        # (in that order) while this process resolves stacks.
        pending_latency = latency.start(model, workers.imap) if "latency" in reports else None
        if "cache" in reports:
            pending = cache.start(model, cache.CacheOptions(
                target=args.target, min_calls=args.min_calls, min_share=args.min_share,
                min_saved_ns=args.min_saved_ms * 1e6, lookup_ns=args.lookup_ns), workers.imap)
        if want_stacks:
            wanted = [(trace, span) for _, trace, span, _, _, _ in model.slow]
            stacks = cpu.resolve(model, wanted)
            if "cpu" in reports:
                results.cpu = stacks
            if args.folded:
                _write(args.folded, cpu.folded(stacks), stderr)
            if args.speedscope:
                _write(args.speedscope, cpu.speedscope_json(stacks), stderr)
            if pending_latency is not None:
                results.latency = pending_latency.finish(stacks)
        elif pending_latency is not None:
            results.latency = pending_latency.finish(None)
        if pending is not None:
            results.cache = pending.finish()
    finally:
        if gc_was_enabled:
            gc.enable()
        workers.close()
        model.close()
        progress.finish()
    results.elapsed = time.monotonic() - started
    return results


def render(results: Results, fmt: str) -> str:
    from callspan.analysis.report import render_html, render_json_object, render_text

    if fmt == "json":
        return json.dumps(render_json_object(results), indent=2) + "\n"
    if fmt == "html":
        return render_html(results)
    return render_text(results)


def run_analyze(args: argparse.Namespace) -> int:
    from callspan.analysis.spill import SpillError

    """Run ``callspan analyze``; user errors become one line on stderr and exit status 2."""
    try:
        results = analyze(args)
        warnings = results.model.warnings
        for warning in warnings[:MAX_WARNINGS]:
            print(f"callspan: warning: {printable(warning)}", file=sys.stderr)
        if len(warnings) > MAX_WARNINGS:
            print(f"callspan: warning: ... and {len(warnings) - MAX_WARNINGS} more", file=sys.stderr)
        if not results.model.spans and not results.model.profiles:
            print("callspan: warning: no spans found in the input", file=sys.stderr)
        text = render(results, args.format)
        if args.output:
            _write(args.output, text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        return 0
    except CallspanError as exc:
        print(f"callspan: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except SpillError as exc:
        print(f"callspan: error: {printable(str(exc))} (use --spill-dir DIR, or --memory-mb 0 to keep everything in memory)",
              file=sys.stderr)
        return CallspanError.exit_code
    except KeyboardInterrupt:
        print("callspan: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("callspan: error: out of memory (analyze fewer files, or fewer reports at once)", file=sys.stderr)
        return CallspanError.exit_code
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error; silence the flush at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
