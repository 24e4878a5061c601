"""The command line: `callspan run`, `callspan analyze`, `callspan demo`.

Errors are mapped to exit codes here and only here: a CallspanError becomes one line on stderr
and its exit code; the traced program's own exit code and exceptions pass through unchanged.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

from callspan import __version__
from callspan.errors import CallspanError


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write spans as OTLP JSON lines to FILE (default: callspan-traces.jsonl, "
                             "unless --otlp or OTEL_TRACES_EXPORTER=otlp; with --otlp, both)")
    parser.add_argument("--otlp", nargs="?", const="", default=None, metavar="ENDPOINT",
                        help="export over OTLP instead (endpoint default from OTEL_EXPORTER_OTLP_ENDPOINT)")
    parser.add_argument("--otlp-protocol", choices=["grpc", "http/protobuf", "http"],
                        help="OTLP protocol (default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc)")
    parser.add_argument("--export-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="longest wait for the exporter, per batch and at exit (default 10)")
    parser.add_argument("--service", help="service.name (default: OTEL_SERVICE_NAME, else the script name)")
    parser.add_argument("--include", action="append", metavar="MODULE_OR_PATH",
                        help="trace these modules/packages/paths (repeatable; default: your own code)")
    parser.add_argument("--exclude", action="append", metavar="MODULE_OR_PATH", help="never trace these")
    parser.add_argument("--cpu", choices=["auto", "instructions", "task-clock", "thread", "off"])
    parser.add_argument("--keys", metavar="on|off|NAMES", help="cache-key hashing: on, off, or function names")
    parser.add_argument("--core", choices=["csysmon", "sysmon", "csetprofile", "setprofile"])
    parser.add_argument("--max-spans-per-trace", type=int, metavar="N")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="script.py [args...] (or, with -m, args)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callspan", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"callspan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a Python program and trace it")
    _add_run_arguments(run)
    demo = commands.add_parser("demo", help="trace the bundled demo service and analyze it (no server needed)")
    demo.add_argument("-o", "--output", default="callspan-demo.jsonl", metavar="FILE")
    analyze = commands.add_parser("analyze", help="report cache opportunities, CPU by stack, latency")
    from callspan.analysis.cli import add_analyze_arguments

    add_analyze_arguments(analyze)
    return parser


def _settings_from(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "include": args.include, "exclude": args.exclude, "cpu": args.cpu, "keys": args.keys,
        "core": args.core, "max_spans_per_trace": args.max_spans_per_trace,
    }


def _target(args: argparse.Namespace) -> tuple[str, list[str], tuple[str, ...], str]:
    """(what to run, its argv, default roots, service name)."""
    rest = list(args.target)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.module:
        try:
            spec = importlib.util.find_spec(args.module)
        except (ImportError, ValueError) as exc:
            raise CallspanError(f"module {args.module}: {exc}") from None
        if spec is None:
            raise CallspanError(f"module {args.module}: not found")
        top = args.module.split(".")[0]
        roots: list[str] = [top]
        origin = spec.origin
        if origin and os.path.exists(origin):
            top_spec = importlib.util.find_spec(top)
            locations = list(top_spec.submodule_search_locations or []) if top_spec else []
            roots += locations or [os.path.dirname(os.path.realpath(origin))]
        return args.module, [origin or args.module, *rest], tuple(roots), args.module
    if not rest:
        raise CallspanError("run: give a script (callspan run script.py [args]) or -m module")
    script = rest[0]
    if not os.path.isfile(script):
        raise CallspanError(f"{script}: no such file")
    return script, rest, (os.path.dirname(os.path.realpath(script)),), Path(script).stem


def _user_traceback(exc: BaseException) -> None:
    tb = exc.__traceback__
    # Drop callspan's and runpy's own frames so the traceback reads like `python script.py`.
    while tb is not None and (tb.tb_frame.f_globals.get("__name__", "") in ("callspan.cli", "runpy")
                              or tb.tb_frame.f_code.co_filename.endswith("runpy.py")):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def run_program(args: argparse.Namespace) -> int:
    from callspan.config import load_settings
    from callspan.otel.bridge import OtelSink, current_context_getter, sampled_context, scope_attributes
    from callspan.otel.setup import build_pipeline
    from callspan.tracer.session import Session

    target, argv, roots, service = _target(args)
    settings = load_settings(_settings_from(args))
    if args.otlp_protocol == "http":
        args.otlp_protocol = "http/protobuf"
    # The session is created first so that its facts (core, counter) go into the resource.
    placeholder = OtelSink()
    session = Session(settings, placeholder, default_roots=roots, context_getter=current_context_getter(),
                      trace_filter=sampled_context)
    pipeline = build_pipeline(
        service_name=args.service or service, output=args.output, otlp=args.otlp is not None,
        otlp_endpoint=args.otlp or None, otlp_protocol=args.otlp_protocol,
        export_timeout=args.export_timeout, resource_attributes=scope_attributes(session.facts),
    )
    sink = OtelSink(pipeline.provider)
    sink.bind(session.facts)
    session.builder.sink = sink

    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    sys.argv = argv
    if not args.module:
        sys.path.insert(0, os.path.dirname(os.path.realpath(target)))
    exit_code = 0
    error: BaseException | None = None
    session.start()
    try:
        if args.module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
    except BaseException as exc:  # the program's own exception: report it as Python would
        error = exc
        exit_code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        session.stop()
        sys.argv = saved_argv
        if not args.module and saved_path0 is not None and sys.path and sys.path[0] != saved_path0:
            sys.path.pop(0)
    if error is not None:
        _user_traceback(error)
    finished = pipeline.shutdown()
    _report(session, sink, pipeline, finished)
    return exit_code


def _report(session: Any, sink: Any, pipeline: Any, finished: bool) -> None:
    """One line on stderr: where the spans went, or how many did not get there and why."""
    ended = sink.spans_ended
    parts = []
    for destination in pipeline.destinations:
        lost = ended - destination.exporter.exported
        if lost:
            why = "" if finished else f" (exporter still busy after {pipeline.export_timeout:g}s)"
            parts.append(f"{lost} of {ended} spans not exported to {destination.name}{why}")
        else:
            parts.append(f"{ended} spans written to {destination.name}")
    if session.dropped:
        parts.append(f"{session.dropped} spans not built (backlog full; their calls are in the profile)")
    other = session.recorder.aggregates.other_calls
    if other:
        parts.append(f"{other} calls folded into (other) nodes (CALLSPAN_MAX_NODES/CALLSPAN_MAX_DEPTH reached)")
    faults = session.build_faults + session.profile_faults + sink.faults + session.recorder.faults
    if faults:
        parts.append(f"{faults} internal faults")
    print("callspan: " + "; ".join(parts), file=sys.stderr)


def run_demo(args: argparse.Namespace) -> int:
    demo = Path(__file__).with_name("demo") / "shop.py"
    ns = argparse.Namespace(
        output=args.output, otlp=None, otlp_protocol=None, export_timeout=10.0, service="callspan-demo",
        include=None, exclude=None, cpu=None, keys=None, core=None, max_spans_per_trace=None,
        module=None, target=[str(demo)],
    )
    code = run_program(ns)
    if code:
        return code
    from callspan.analysis.cli import run_analyze

    analyze_args = _parser().parse_args(["analyze", args.output])
    return run_analyze(analyze_args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_program(args)
        if args.command == "demo":
            return run_demo(args)
        from callspan.analysis.cli import run_analyze

        return run_analyze(args)
    except CallspanError as exc:
        print(f"callspan: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
