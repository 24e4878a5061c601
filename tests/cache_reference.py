"""A slow, obviously correct reference for callspan's cache figures (issue 11 item 6).

Pure Python, ``sys.setprofile``, nothing shared with callspan's tracer or analyzer: every call of
a selected plain function or coroutine function (not a generator) is recorded with

* its key, built from the bound arguments as callspan documents it (parameters in declaration
  order, then ``*args``, then a keyword mark and keyword-only and ``**kwargs`` items; a lone int
  or str argument is its own key, as in ``functools.lru_cache``); an argument key that Python
  cannot hash is converted one level (list -> tuple, set -> frozenset, dict -> frozenset of
  items) and its argument names are recorded;
* whether it returned (the last executed instruction is a return) or raised, and its return value;
* its parent call, to drop the calls a memoized function would not make;
* for a coroutine: when it started and ended, in the order of the profile events (a coroutine is
  "called" again at each resume and "returns" at each suspension: the first call starts it, a
  return at a return instruction or a raise ends it), to count the calls that started while an
  earlier call with the same key had not ended (what in-flight coalescing would have shared).

Then, per function, as if only that function were wrapped in ``functools.lru_cache(maxsize=size)``:

* the lookups it would make (a call nested inside a hit of the same function is never made);
* hits at every size, counted by a real ``functools.lru_cache`` fed that sequence;
* consistency by value: a key whose later returns are not ``==`` its first is inconsistent,
  unless they differ only by being new objects with identity equality ("fresh"). The first
  return is kept as the object itself, so one that a caller mutates after it was returned
  differs too: exactly what would go wrong if a cache handed that object to later callers.

Run a program under it: ``python -m tests.cache_reference [--include PREFIX]... prog.py args``;
it writes JSON (``--out``, default stdout) keyed by ``module.qualname``.
"""

from __future__ import annotations

import argparse
import dis
import functools
import inspect
import json
import os
import runpy
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_RETURNS = {dis.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST") if name in dis.opmap}
# A coroutine's "return" event at a suspension: after YIELD_VALUE (3.11, 3.12), at the RESUME
# that follows it (3.13).
_SUSPENDS = {dis.opmap[name] for name in ("YIELD_VALUE", "RESUME")}
_NOT_PLAIN = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
_MARK = ("kwd_mark",)
_NO_VALUE = object()


@dataclass
class Call:
    function: str
    key: Any
    unhashable_args: tuple[str, ...]
    parent: Call | None
    returned: bool = False
    value: Any = _NO_VALUE
    start: int = 0  # coroutines: event numbers of the first call and of the end
    end: int = 0
    same_children: list[Call] = field(default_factory=list)  # the nearest calls of the same function below it


@dataclass
class FunctionTruth:
    name: str
    calls: int = 0  # the lookups a memoized version makes
    shadowed_calls: int = 0  # calls nested in a hit of the same function: never made when memoized
    errors: int = 0
    keys: list[Any] = field(default_factory=list)  # the key of each lookup (returned calls only)
    unhashable_calls: int = 0
    unkeyable_calls: int = 0  # not hashable even after converting one level: no key
    unhashable_args: list[str] = field(default_factory=list)  # argument names, first seen first
    inconsistent_keys: int = 0
    fresh_keys: int = 0
    overlapping: int = 0  # coroutines: keyed calls started before an earlier call with their key ended
    coroutine: bool = False
    callees: set[str] = field(default_factory=set)
    roots: list[Call] = field(default_factory=list)  # its calls not nested in a call of itself

    @property
    def distinct_keys(self) -> int:
        return len(set(self.keys))

    def hits_at(self, size: int | None) -> int:
        """The hits of the program with only this function wrapped in a real
        ``functools.lru_cache(maxsize=size)``: its recorded calls are replayed in program order
        through the wrapper, whose body (run on a miss only) replays the calls of the function
        nested in that call, and raises where the call raised. For a recursive function the calls
        made then depend on the size (a hit skips its nested calls; an entry is added when its
        call returns), as in the memoized program."""
        current: list[Call] = []

        class Raised(Exception):
            pass

        @functools.lru_cache(maxsize=size)
        def lookup(key: Any) -> None:
            call = current[-1]
            for child in call.same_children:
                visit(child)
            if not call.returned:
                raise Raised

        def visit(call: Call) -> None:
            if not _hashable(call.key):  # never a lookup; its nested calls still run
                for child in call.same_children:
                    visit(child)
                return
            current.append(call)
            try:
                lookup(call.key)
            except Raised:
                pass
            finally:
                current.pop()

        for root in self.roots:
            visit(root)
        return lookup.cache_info().hits

    @property
    def verdict(self) -> str:
        if self.inconsistent_keys:
            return "inconsistent"
        if self.fresh_keys:
            return "fresh"
        if self.unhashable_calls:
            return "unhashable"
        return "consistent"

    def as_json(self, sizes: Iterable[int] = ()) -> dict[str, Any]:
        return {"calls": self.calls, "shadowed_calls": self.shadowed_calls, "errors": self.errors,
                "distinct_keys": self.distinct_keys, "hits": self.hits_at(None),
                "hits_at": {str(s): self.hits_at(s) for s in sizes}, "unhashable_calls": self.unhashable_calls,
                "unkeyable_calls": self.unkeyable_calls,
                "unhashable_args": self.unhashable_args, "inconsistent_keys": self.inconsistent_keys,
                "fresh_keys": self.fresh_keys, "overlapping": self.overlapping, "verdict": self.verdict,
                "callees": sorted(self.callees)}


def _convert(value: Any) -> Any:
    """What a user converts an unhashable argument to before caching (unchanged if that fails,
    e.g. a dict with list values: the key stays unhashable and the call has no key)."""
    try:
        if isinstance(value, list):
            return tuple(value)
        if isinstance(value, set):
            return frozenset(value)
        if isinstance(value, dict):
            return frozenset(value.items())
        if isinstance(value, bytearray):
            return bytes(value)
    except Exception:  # the profile hook must never raise into the program
        pass
    return value


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except Exception:
        return False
    return True


def bound_key(frame: Any) -> tuple[Any, tuple[str, ...]]:
    """(key, names of the arguments that had to be converted) of the call ``frame`` starts."""
    code = frame.f_code
    names = code.co_varnames
    positional = code.co_argcount
    kwonly = code.co_kwonlyargcount
    local = frame.f_locals
    labelled: list[tuple[str, Any]] = [(names[i], local[names[i]]) for i in range(positional)]
    index = positional + kwonly
    if code.co_flags & inspect.CO_VARARGS:
        labelled += [("*" + names[index], v) for v in local[names[index]]]
        index += 1
    keyword: list[tuple[str, Any]] = [(names[positional + i], local[names[positional + i]]) for i in range(kwonly)]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        keyword += list(local[names[index]].items())
    parts: list[Any] = []
    converted: list[str] = []
    for label, value in labelled + keyword:
        if not _hashable(value):
            converted.append(label)
            value = _convert(value)
    for _, value in labelled:
        parts.append(_convert(value))
    if keyword:
        parts.append(_MARK)
        for name, value in keyword:
            parts += [name, _convert(value)]
    key: Any = tuple(parts)
    if len(parts) == 1 and type(parts[0]) in (int, str):
        key = parts[0]
    return key, tuple(dict.fromkeys(converted))


class Reference:
    """Records the selected calls while active (a context manager)."""

    def __init__(self, include: Sequence[str] = ("__main__",)) -> None:
        self.include = tuple(include)
        self.calls: list[Call] = []
        self._stacks: dict[int, list[Call | None]] = {}
        self._decided: dict[Any, str | None] = {}
        self._coroutines: dict[int, Call] = {}  # id(frame) -> the started call, until it ends
        self._events = 0
        self._coroutine_names: set[str] = set()

    def _name(self, frame: Any) -> str | None:
        code = frame.f_code
        if code in self._decided:
            return self._decided[code]
        module = frame.f_globals.get("__name__", "")
        chosen = (not code.co_flags & _NOT_PLAIN and not code.co_name.startswith("<") and code.co_filename != __file__
                  and any(module == p or module.startswith(p + ".") for p in self.include))
        name = f"{module}.{code.co_qualname}" if chosen else None
        self._decided[code] = name
        if name is not None and code.co_flags & inspect.CO_COROUTINE:
            self._coroutine_names.add(name)
        return name

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if event not in ("call", "return"):
            return
        self._events += 1
        stack = self._stacks.setdefault(threading.get_ident(), [])
        if event == "call":
            name = self._name(frame)
            if name is None:
                stack.append(None)
                return
            running = self._coroutines.get(id(frame)) if frame.f_code.co_flags & inspect.CO_COROUTINE else None
            if running is not None:  # a resumed coroutine
                stack.append(running)
                return
            parent = next((c for c in reversed(stack) if c is not None), None)
            key, unhashable = bound_key(frame)
            call = Call(name, key, unhashable, parent, start=self._events)
            self.calls.append(call)
            stack.append(call)
            if frame.f_code.co_flags & inspect.CO_COROUTINE:
                self._coroutines[id(frame)] = call
            return
        if not stack:
            return
        call = stack.pop()
        if call is None:
            return
        last = frame.f_code.co_code[frame.f_lasti]
        if frame.f_code.co_flags & inspect.CO_COROUTINE:
            if last in _SUSPENDS:
                return  # suspended at an await
            del self._coroutines[id(frame)]  # ended: a later coroutine may get this frame's address
        call.returned = last in _RETURNS
        call.value = arg
        call.end = self._events

    def __enter__(self) -> Reference:
        threading.setprofile(self._hook)
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]

    def truths(self) -> dict[str, FunctionTruth]:
        out: dict[str, FunctionTruth] = {}
        first_return: dict[tuple[str, Any], Any] = {}
        state: dict[tuple[str, Any], str] = {}
        seen: dict[str, set[Any]] = {}
        hit_calls: set[int] = set()  # id() of calls that hit an unbounded cache of their function
        last_end: dict[tuple[str, Any], int] = {}  # coroutines: the latest end of a key's earlier calls
        for call in self.calls:
            truth = out.setdefault(call.function, FunctionTruth(call.function))
            truth.coroutine = call.function in self._coroutine_names
            if call.parent is not None and call.parent.function != call.function:
                out.setdefault(call.parent.function, FunctionTruth(call.parent.function)).callees.add(call.function)
            same = call.parent
            while same is not None and same.function != call.function:
                same = same.parent
            (same.same_children if same is not None else truth.roots).append(call)
            if self._inside_hit(call, hit_calls):
                truth.shadowed_calls += 1
                continue
            if not call.returned:
                truth.errors += 1
                continue
            truth.calls += 1
            if not _hashable(call.key):
                truth.unkeyable_calls += 1
                continue
            if call.unhashable_args:
                truth.unhashable_calls += 1
                for name in call.unhashable_args:
                    if name not in truth.unhashable_args:
                        truth.unhashable_args.append(name)
            truth.keys.append(call.key)
            keys_seen = seen.setdefault(call.function, set())
            slot = (call.function, call.key)
            if truth.coroutine:
                if call.start < last_end.get(slot, 0):
                    truth.overlapping += 1
                last_end[slot] = max(last_end.get(slot, 0), call.end)
            if call.key in keys_seen:
                hit_calls.add(id(call))
                self._judge(truth, slot, first_return[slot], call.value, state)
            else:
                keys_seen.add(call.key)
                first_return[slot] = call.value
        return out

    @staticmethod
    def _inside_hit(call: Call, hit_calls: set[int]) -> bool:
        parent = call.parent
        while parent is not None:
            if parent.function == call.function and id(parent) in hit_calls:
                return True
            parent = parent.parent
        return False

    @staticmethod
    def _judge(truth: FunctionTruth, slot: tuple[str, Any], first: Any, value: Any, state: dict[tuple[str, Any], str]) -> None:
        if state.get(slot) == "inconsistent":
            return
        try:
            same = bool(value == first)
        except Exception:
            same = False
        if same:
            return
        identity_eq = type(value).__eq__ is object.__eq__ and type(first).__eq__ is object.__eq__
        if identity_eq and type(value) is type(first):
            if state.get(slot) != "fresh":
                state[slot] = "fresh"
                truth.fresh_keys += 1
            return
        if state.get(slot) == "fresh":
            truth.fresh_keys -= 1
        state[slot] = "inconsistent"
        truth.inconsistent_keys += 1


def impure_reach(truths: dict[str, FunctionTruth]) -> dict[str, set[str]]:
    """For each function: the inconsistent functions it calls, directly or not."""
    # A nested function's (closure's) calls are merged over all its function objects, whose
    # captured variables are not in the key: differing returns are no evidence of side effects.
    impure = {name for name, t in truths.items() if t.inconsistent_keys and ".<locals>." not in name}
    out: dict[str, set[str]] = {}
    for name in truths:
        reached: set[str] = set()
        frontier = [name]
        while frontier:
            step = frontier.pop()
            for callee in truths[step].callees if step in truths else ():
                if callee not in reached:
                    reached.add(callee)
                    frontier.append(callee)
        found = (reached & impure) - {name}
        if found:
            out[name] = found
    return out


def run_program(path: str, argv: Sequence[str], include: Sequence[str]) -> dict[str, FunctionTruth]:
    """Run ``path`` as ``__main__`` under the reference (as ``python path argv`` would)."""
    sys.argv = [path, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    reference = Reference(include)
    with reference:
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit:
            pass
    return reference.truths()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cache_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--include", action="append", default=[], help="module prefix (default: __main__)")
    parser.add_argument("--sizes", default="", help="comma-separated cache sizes to report hits at")
    parser.add_argument("--out", default="-")
    parser.add_argument("program")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    truths = run_program(options.program, options.args, options.include or ["__main__"])
    sizes = [int(s) for s in options.sizes.split(",") if s]
    reach = impure_reach(truths)
    doc = {name: {**t.as_json(sizes), "impure_callees": sorted(reach.get(name, ()))} for name, t in sorted(truths.items())}
    text = json.dumps(doc, indent=1, default=str)
    if options.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(options.out, "w") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
