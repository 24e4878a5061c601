"""A slow, obviously correct count of calls per function and per call stack.

Pure Python, ``sys.setprofile`` and ``threading.setprofile``, nothing shared with callspan: every
Python function, generator or coroutine whose file lies under an ``--include`` path (module and
class bodies aside, as callspan does) is a selected code object, named ``module.qualname``. Per
thread, a stack of the selected frames now running (pushed at each "call" event, popped at each
"return": a generator is pushed again at each resume); a call is counted when its frame starts
(its "call" event runs a ``RESUME 0``), under the stack of selected frames at that moment,
outermost first. Nothing is kept alive: the program's objects die when they would without it.

Run a program under it: ``python -m tests.call_reference --include PATH... --out FILE prog.py``;
it writes JSON: ``calls`` (name -> calls), ``stacks`` ([names, calls] pairs), ``suspending``
(the names of generators and coroutines, whose stacks depend on where they are resumed).
"""

from __future__ import annotations

import argparse
import atexit
import dis
import json
import os
import runpy
import sys
import threading
from collections import Counter
from types import CodeType, FrameType
from typing import Any

_CO_OPTIMIZED = 0x01
_SUSPENDING = 0x20 | 0x80 | 0x200  # generator, coroutine, async generator
_UNSEEN = object()
_RESUME = dis.opmap["RESUME"]


class Reference:
    def __init__(self, includes: list[str]) -> None:
        self.includes = [os.path.realpath(p) + (os.sep if os.path.isdir(p) else "") for p in includes]
        self.names: dict[CodeType, str | None] = {}
        self.calls: Counter[str] = Counter()
        self.stacks: Counter[tuple[str, ...]] = Counter()
        self.suspending: set[str] = set()
        self.local = threading.local()

    def name_of(self, frame: FrameType) -> str | None:
        code = frame.f_code
        name = self.names.get(code, _UNSEEN)
        if name is _UNSEEN:
            path = os.path.realpath(code.co_filename)
            name = None
            if code.co_flags & _CO_OPTIMIZED and any(path == p or path.startswith(p) for p in self.includes):
                module = frame.f_globals.get("__name__")
                name = f"{module}.{code.co_qualname}" if module else code.co_qualname
                if code.co_flags & _SUSPENDING:
                    self.suspending.add(name)
            self.names[code] = name
        return name  # type: ignore[return-value]

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            name = self.name_of(frame)
            if name is None:
                return
            stack = self.local.__dict__.setdefault("stack", [])
            stack.append((frame, name))
            code = frame.f_code
            if code.co_flags & _SUSPENDING:
                # A "call" event runs the frame's RESUME instruction: its argument is 0 when the
                # frame starts, 1-3 (low bits) when it resumes after a yield or await.
                lasti = frame.f_lasti
                if not (code.co_code[lasti] == _RESUME and code.co_code[lasti + 1] & 3 == 0):
                    return  # resumed
            self.calls[name] += 1
            self.stacks[tuple(n for _, n in stack)] += 1
        elif event == "return" and self.name_of(frame) is not None:
            stack = self.local.__dict__.get("stack")
            if stack and stack[-1][0] is frame:
                stack.pop()

    def result(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "stacks": [[list(s), n] for s, n in self.stacks.items()],
                "suspending": sorted(self.suspending)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.call_reference")
    parser.add_argument("--include", action="append", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("program")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    reference = Reference(args.include)
    sys.argv = [args.program, *args.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.program)))

    def write() -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        with open(args.out, "w") as out:
            json.dump(reference.result(), out)

    # Registered first, so it runs last: the calls the program makes in its own exit handlers
    # (weakref finalizers, atexit) are counted, as a tracer that stops at exit counts them.
    atexit.register(write)
    threading.setprofile(reference.profile)
    sys.setprofile(reference.profile)
    runpy.run_path(args.program, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
