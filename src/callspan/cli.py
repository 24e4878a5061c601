"""The command line: `callspan run`, `callspan analyze`, `callspan demo`.

Errors are mapped to exit codes here and only here: a CallspanError becomes one line on stderr
and its exit code; the traced program's own exit code and exceptions pass through unchanged.
"""

from __future__ import annotations

import argparse
import atexit
import builtins
import importlib.machinery
import importlib.util
import os
import runpy
import sys
import types
from pathlib import Path
from types import CodeType
from typing import Any

from callspan import __version__, _env
from callspan.errors import CallspanError
from callspan.untrusted import printable


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write spans as OTLP JSON lines to FILE (default: callspan-traces.jsonl, "
                             "unless --otlp or OTEL_TRACES_EXPORTER=otlp; with --otlp, both); an existing "
                             "file or symbolic link there is replaced, never written through")
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
    parser.add_argument("--keys-exclude", action="append", metavar="FUNCTION_GLOB",
                        help="never key these functions (module.QualName glob; repeatable)")
    parser.add_argument("--core", choices=["csysmon", "sysmon", "csetprofile", "setprofile"])
    parser.add_argument("--max-spans-per-trace", type=int, metavar="N")
    parser.add_argument("--min-span-us", type=int, metavar="US",
                        help="kept calls shorter than this are not made spans; they stay in the profile "
                             "(default: CALLSPAN_MIN_SPAN_US, else 0: every kept call is a span)")
    parser.add_argument("--follow-children", action=argparse.BooleanOptionalAction, default=None,
                        help="also trace the children the program starts with multiprocessing (fork, spawn, "
                             "forkserver; ProcessPoolExecutor), each a process of its own in the same output "
                             "file; they export before multiprocessing's os._exit, and on SIGTERM (Pool."
                             "terminate) before dying by it (default: CALLSPAN_FOLLOW_CHILDREN, else off)")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="script.py [args...] (or, with -m, args)")


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callspan", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"callspan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a Python program and trace it")
    _add_run_arguments(run)
    demo = commands.add_parser("demo", help="trace the bundled demo service and analyze it (no server needed)")
    demo.add_argument("-o", "--output", default="callspan-demo.jsonl", metavar="FILE")
    analyze = commands.add_parser("analyze", help="report cache opportunities, CPU by stack, latency")
    # The analyzer's options only when they can be parsed: `callspan run` loads none of the
    # analyzer (its own modules cost ~1 ms once the tracer's are loaded; the layering test).
    command = next((arg for arg in (sys.argv[1:] if argv is None else argv) if not arg.startswith("-")), None)
    if command == "analyze":
        from callspan.analysis.cli import add_analyze_arguments

        add_analyze_arguments(analyze)
    return parser


def _settings_from(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "include": args.include, "exclude": args.exclude, "cpu": args.cpu, "keys": args.keys,
        "keys_exclude": args.keys_exclude, "core": args.core, "max_spans_per_trace": args.max_spans_per_trace,
        "min_span_us": args.min_span_us, "follow_children": args.follow_children,
    }


def _target(args: argparse.Namespace) -> tuple[str, list[str], tuple[str, ...], str]:
    """(what to run, its argv, default roots, service name)."""
    rest = list(args.target)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.module:
        # Found as `python -m` finds it: from the working directory first (the console
        # script's directory is sys.path[0] until the program begins).
        launcher_path0 = sys.path[0] if sys.path else None
        sys.path[:1] = [os.getcwd()]
        try:
            spec = importlib.util.find_spec(args.module)
        except (ImportError, ValueError) as exc:
            raise CallspanError(f"module {args.module}: {exc}") from None
        finally:
            sys.path[:1] = [launcher_path0] if launcher_path0 is not None else []
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


class Program:
    """The program `callspan run` traces, set up the way `python` sets up its main program.

    Python's own start-up is reproduced: a fresh ``__main__`` module left in ``sys.modules``
    with the attributes Python gives it, an absolute ``__file__``, the script's directory (or,
    with -m, the working directory) as ``sys.path[0]``, the program's warnings filters
    untouched. What callspan prints comes last: it finishes from an atexit handler registered
    before the program runs, so the program's own handlers (and its threads) finish first.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from callspan.config import load_settings
        from callspan.run_tracing import RunTracing, TracingPlan

        target, argv, roots, service = _target(args)
        self.module_name: str | None = args.module
        self.argv = argv
        self.tracing = RunTracing(TracingPlan(
            settings=load_settings(_settings_from(args)), default_roots=roots, service=args.service or service,
            output=args.output,
            otlp=args.otlp is not None, otlp_endpoint=args.otlp or None,
            otlp_protocol="http/protobuf" if args.otlp_protocol == "http" else args.otlp_protocol,
            export_timeout=args.export_timeout))
        self.main = _fresh_main_module()
        if self.module_name is None:
            path = self.path = os.path.abspath(target)
            self.path0 = os.path.dirname(os.path.realpath(target))
            self.main.__file__ = path
            self.main.__cached__ = None  # type: ignore[attr-defined]
            self.main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
        else:
            self.path0 = os.getcwd()
        self._pid = os.getpid()

    def begin(self, finish_at_exit: bool = True) -> None:
        """Become the main program and start tracing; the next thing to run is its code."""
        sys.argv = self.argv
        if sys.path:
            sys.path[0] = self.path0  # the launcher's directory is not on the program's path
        else:
            sys.path.append(self.path0)
        sys.modules["__main__"] = self.main
        if finish_at_exit:
            # atexit runs handlers last-registered first: this one after all of the program's.
            atexit.register(self.finish)
        if self.tracing.plan.settings.follow_children:
            from callspan.children import follow_children

            follow_children(self.tracing)
        self.tracing.start()

    def compile(self) -> CodeType:
        """The script's code (a SyntaxError is the program's, reported as Python reports it)."""
        with open(self.path, "rb") as source:
            # dont_inherit: this module's __future__ imports are not the program's.
            return compile(source.read(), self.path, "exec", dont_inherit=True)

    def run_module(self) -> None:
        """-m: what `python -m` runs (runpy's frames included, as Python shows them)."""
        runpy._run_module_as_main(self.module_name, alter_argv=True)  # type: ignore[attr-defined]

    def ended(self, exc: BaseException | None) -> int:
        """The program's module finished (``exc`` None) or raised: report and exit as Python
        does (pythonrun.c, _PyRun_SimpleFileObject). Called outside any except block: the
        program's excepthook runs with no exception being handled, as under Python."""
        if isinstance(exc, SystemExit):
            raise exc  # Python's own handling prints a non-integer code and exits with it
        _flush_std_files()
        if exc is not None:
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
                tb = tb.tb_next  # callspan's frames that ran (or compiled) the program
            exc.__traceback__ = tb
            _display_uncaught(exc)
        if self.module_name is None:
            # Python takes them away once the script is done (not after sys.exit).
            self.main.__dict__.pop("__file__", None)
            self.main.__dict__.pop("__cached__", None)
        if exc is None:
            return 0
        if type(exc) is KeyboardInterrupt:
            # Python dies by SIGINT after an unhandled KeyboardInterrupt (after its shutdown):
            # only an exception leaving the main module gets that, so it is raised again, with
            # the report already made.
            _raise_reported(exc)
        return 1

    def finish(self) -> None:
        """Stop tracing, export, and (in the process that started) say where the spans went.
        A child the program forked finishes silently."""
        try:
            done = self.tracing.finish()
            if done is not None and os.getpid() == self._pid:
                sys.stdout.flush()
                _report(self.tracing, done)
        except Exception as exc:  # never a traceback of callspan's at the program's exit
            print(f"callspan: internal fault at exit: {exc!r}", file=sys.stderr)


def _fresh_main_module() -> types.ModuleType:
    # The attributes (and their order) of the __main__ module Python makes at start-up.
    main = types.ModuleType("__main__")
    main.__annotations__ = {}
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    return main


def _flush_std_files() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _display_uncaught(exc: BaseException) -> None:
    """What Python does with an exception leaving the main program (pythonrun.c, PyErr_Print)."""
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
    if hasattr(sys, "last_exc"):
        sys.last_exc = exc
    hook = getattr(sys, "excepthook", None)
    if hook is None:
        print("sys.excepthook is missing", file=sys.stderr)
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
        return
    try:
        hook(type(exc), exc, exc.__traceback__)
    except BaseException as failure:
        print("Error in sys.excepthook:", file=sys.stderr)
        if failure.__traceback__ is not None:  # not this frame: Python calls the hook from C
            failure.__traceback__ = failure.__traceback__.tb_next
        sys.__excepthook__(type(failure), failure, failure.__traceback__)
        print("\nOriginal exception was:", file=sys.stderr)
        sys.__excepthook__(type(exc), exc, exc.__traceback__)


def _raise_reported(exc: BaseException) -> None:
    """Raise ``exc`` out of the main module with the report already made: the hook Python
    calls for it once more prints nothing and puts the program's hook back."""
    program_hook = sys.excepthook

    def already_reported(*_: Any) -> None:
        sys.excepthook = program_hook

    sys.excepthook = already_reported
    raise exc


def run_program(args: argparse.Namespace) -> int:
    """Run and trace a program in this frame's callee, finishing at once (the demo's way)."""
    program = Program(args)
    program.begin(finish_at_exit=False)
    try:
        if program.module_name is None:
            exec(program.compile(), program.main.__dict__)
        else:
            program.run_module()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        code = 1
        _display_uncaught(exc)
    program.finish()
    return code


def _report(tracing: Any, finished: bool) -> None:
    """One line on stderr: where the spans went, or how many did not get there and why."""
    session, pipeline = tracing.session, tracing.pipeline
    ended = tracing.sink.spans_ended
    parts = []
    for destination in pipeline.destinations:
        lost = ended - destination.exporter.exported
        if lost:
            why = "" if finished else f" (exporter still busy after {pipeline.export_timeout:g}s)"
            parts.append(f"{lost} of {ended} spans not exported to {destination.name}{why}{destination.note}")
        else:
            parts.append(f"{ended} spans written to {destination.name}{destination.note}")
    elided = session.builder.spans_elided
    if elided:
        parts.append(f"{elided} kept calls shorter than {session.settings.min_span_us} us not made spans "
                     "(CALLSPAN_MIN_SPAN_US; their calls are in the profile)")
    if session.dropped:
        parts.append(f"{session.dropped} spans not built (backlog full; their calls are in the profile)")
    other = session.recorder.aggregates.other_calls
    if other:
        parts.append(f"{other} calls folded into (other) nodes (CALLSPAN_MAX_NODES/CALLSPAN_MAX_DEPTH reached)")
    faults = tracing.faults
    if faults:
        parts.append(f"{faults} internal faults")
    print("callspan: " + printable("; ".join(parts)), file=sys.stderr)


def run_demo(args: argparse.Namespace) -> int:
    demo = Path(__file__).with_name("demo") / "shop.py"
    ns = argparse.Namespace(
        output=args.output, otlp=None, otlp_protocol=None, export_timeout=10.0, service="callspan-demo",
        include=None, exclude=None, cpu=None, keys=None, keys_exclude=None, core=None, max_spans_per_trace=None,
        min_span_us=None, follow_children=None, module=None, target=[str(demo)],
    )
    code = run_program(ns)
    if code:
        return code
    from callspan.analysis.cli import run_analyze

    analyze_args = _parser(["analyze"]).parse_args(["analyze", args.output])
    return run_analyze(analyze_args)


def main(argv: list[str] | None = None) -> int:
    args = _parser(argv).parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args)
        if args.command != "run":
            from callspan.analysis.cli import run_analyze

            return run_analyze(args)
        program = Program(args)
    except CallspanError as exc:
        print(f"callspan: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    # The program's module runs right here: the fewest frames of callspan's under it (this
    # one, and the console script's), which the recursion limit does not count.
    program.begin()
    _forgive_own_frames(program.module_name is not None)
    failure: BaseException | None = None
    try:
        if program.module_name is None:
            exec(program.compile(), program.main.__dict__)
        else:  # what `python -m` runs (runpy's frames included, as Python shows them)
            runpy._run_module_as_main(program.module_name, alter_argv=True)  # type: ignore[attr-defined]
    except BaseException as exc:
        failure = exc
    return program.ended(failure)


def _forgive_own_frames(module: bool) -> None:
    """Let the program reach the recursion limit at python's depth: the depth callspan's frames
    below it take (main()'s and the console script's, or ``python -m callspan``'s) is not
    counted. Measured at a script's first line: python 1, callspan run 3 before (3.12+); 2 and 5
    on 3.11, which counts a frame entered from C once more: `python -m` enters runpy from C,
    callspan from Python, one count less than this depth."""
    try:
        from callspan.tracer._hotpath import forgive_recursion, recursion_depth
    except ImportError:  # without the compiled module the limit is reached that much earlier
        return
    own = recursion_depth() - 1  # the caller's depth: this frame is gone when the program runs
    if module and _env.PYVERSION < (3, 12):
        own -= 1
    forgive_recursion(max(0, own))


if __name__ == "__main__":
    sys.exit(main())
