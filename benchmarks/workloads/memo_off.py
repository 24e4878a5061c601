"""Turn a library's own ``functools`` memoization off before it is imported (rediscovery benchmark).

``disable_functools_caches("rich")`` replaces ``functools.lru_cache`` and ``functools.cache`` with
versions that hand back the undecorated function for functions defined in the named packages
(every call then runs the function, as before the maintainers memoized it) and that still
memoize everyone else's (the standard library's caches stay on). Call it before the library is
imported: modules bind ``from functools import lru_cache`` at import time.

Cost mode (``REDISCOVERY_COST_OUT=<file>`` in the environment, set by ``bench_rediscovery.py``):
instead of the bare function, each memoized function gets a wrapper that measures the CPU time
(``time.thread_time_ns``, main thread) of its calls, exactly where the maintainers' cache sat,
and nothing else is instrumented: the outermost calls' mean, and the CPU of the calls an
unbounded cache would have answered (its key seen before, not inside such a call of the same
function): what the cache saves. Written at exit per function (file, first line, name: as the
benchmark's scan names it), with the wrapper's own costs measured in the same process and taken
out: that of the wrappers of the calls nested in a call, and that of the call's own clock reads. CPU time, not wall time: on a shared machine
wall time counts the time other processes hold the CPU. ``replace_after_import`` does the same
for a library's own memoizing decorator (sympy's ``cacheit``).
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

COST_ENV = "REDISCOVERY_COST_OUT"
CALIBRATION_CALLS = 20_000
CALIBRATION_REPEATS = 7


class CallCosts:
    """Per wrapped function: its outermost calls with their CPU ns and the wrapped calls nested in
    them, and the calls an unbounded cache would have answered (hits) with the same figures."""

    def __init__(self) -> None:
        # (file, line, name) -> [calls, ns, nested, hits, hit ns, hit nested]
        self.rows: dict[tuple[str, int, str], list[int]] = {}
        self.started = 0  # wrapped calls started (any function): nested = difference at exit

    def timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` measured: every call takes the same path (so each costs the same, which
        ``overheads`` measures). Outermost calls (not recursion) are recorded, and hits: calls
        whose key (``functools.lru_cache``'s, untyped) an unbounded cache would hold, not nested
        in a hit of the same function (a cached function would not make those calls, nor add
        their keys)."""
        code = function.__code__
        row = self.rows.setdefault((code.co_filename, code.co_firstlineno, code.co_name), [0, 0, 0, 0, 0, 0])
        depth = [0]
        in_hit = [0]
        cached: set[Any] = set()
        main = threading.main_thread().ident
        clock, ident, make_key = time.thread_time_ns, threading.get_ident, functools._make_key

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if ident() != main:  # its clock is another thread's
                return function(*args, **kwargs)
            hit = False
            if not in_hit[0]:
                try:
                    key = make_key(args, kwargs, False)
                    hit = key in cached
                    if not hit:
                        cached.add(key)
                except Exception:  # unhashable: lru_cache would raise; no key
                    pass
            self.started += 1
            started = self.started
            depth[0] += 1
            in_hit[0] += hit
            begin = clock()
            try:
                return function(*args, **kwargs)
            finally:
                end = clock()
                depth[0] -= 1
                in_hit[0] -= hit
                if hit:
                    row[3] += 1
                    row[4] += end - begin
                    row[5] += self.started - started
                if not depth[0]:
                    row[0] += 1
                    row[1] += end - begin
                    row[2] += self.started - started
        return wrapper

    def overheads(self, calls: int = CALIBRATION_CALLS, repeats: int = CALIBRATION_REPEATS) -> tuple[float, float]:
        """(CPU ns one wrapped call adds to the call it is nested in, CPU ns a wrapped call's own
        measurement adds to it: the ends of the clock reads around it), each the least over
        ``repeats`` timings of ``calls`` calls of an empty function, wrapped against bare."""
        def empty() -> None:
            return None
        probe = CallCosts()
        wrapped = probe.timed(empty)  # one key: a hit each call after the first
        (row,) = probe.rows.values()
        clock = time.thread_time_ns
        nested = measured = float("inf")
        for _ in range(repeats):
            row[:] = [0] * len(row)
            begin = clock()
            for _ in range(calls):
                wrapped()
            middle = clock()
            for _ in range(calls):
                empty()
            bare = (clock() - middle) / calls
            nested = min(nested, (middle - begin) / calls - bare)
            measured = min(measured, row[1] / row[0] - bare)
        return max(nested, 0.0), max(measured, 0.0)

    def write(self, path: str) -> None:
        nested_ns, self_ns = self.overheads()

        def net(ns: int, nested: int, calls: int) -> float:
            return max(ns - nested * nested_ns - calls * self_ns, 0.0)
        rows = [{"file": file, "line": line, "name": name, "calls": calls, "ns": ns, "nested": nested,
                 "mean_ns": net(ns, nested, calls) / calls, "hits": hits, "hit_ns": hit_ns,
                 "hit_nested": hit_nested, "saved_ns": net(hit_ns, hit_nested, hits)}
                for (file, line, name), (calls, ns, nested, hits, hit_ns, hit_nested) in sorted(self.rows.items())
                if calls]
        with open(path, "w") as out:
            json.dump({"wrapper_ns": nested_ns, "self_ns": self_ns, "functions": rows}, out, indent=0)


_costs: CallCosts | None = None


def _cost_mode() -> CallCosts | None:
    """The process's ``CallCosts`` in cost mode (written at exit), else None."""
    global _costs
    path = os.environ.get(COST_ENV)
    if path and _costs is None:
        _costs = CallCosts()
        atexit.register(_costs.write, path)
    return _costs


def replace_after_import(module: str, attribute: str) -> None:
    """Cost mode: once ``module`` is imported (not before: importing it imports its package),
    its decorator ``attribute`` times the functions it decorates instead (``CallCosts.timed``).
    Outside cost mode nothing changes (the library's own switch turns the decorator off)."""
    costs = _cost_mode()
    if costs is None:
        return
    timed = costs.timed

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Sequence[str] | None,
                      target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
            if name != module:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            loader = spec.loader
            run = loader.exec_module

            def exec_module(new: ModuleType) -> None:
                run(new)
                setattr(new, attribute, timed)
            loader.exec_module = exec_module  # type: ignore[method-assign, assignment]
            return spec

    sys.meta_path.insert(0, Finder())


def _no_cache_info() -> functools._CacheInfo:
    return functools._CacheInfo(0, 0, None, 0)


def disable_functools_caches(*packages: str) -> None:
    imported = [p for p in packages if p in sys.modules]
    if imported:
        raise RuntimeError(f"memo_off: {', '.join(imported)} already imported; its caches are on")
    real_lru_cache, real_cache = functools.lru_cache, functools.cache
    costs = _cost_mode()

    def in_packages(function: Any) -> bool:
        module = getattr(function, "__module__", None) or ""
        return any(module == p or module.startswith(p + ".") for p in packages)

    def uncached(function: Any) -> Any:
        if costs is not None:
            function = costs.timed(function)
        # Code that clears or inspects the caches keeps working.
        function.cache_clear = lambda: None
        function.cache_info = _no_cache_info
        return function

    def lru_cache(maxsize: Any = 128, typed: bool = False) -> Any:
        if callable(maxsize) and not isinstance(maxsize, int):  # bare @lru_cache
            return uncached(maxsize) if in_packages(maxsize) else real_lru_cache(maxsize, typed)

        def decorate(function: Callable[..., Any]) -> Any:
            return uncached(function) if in_packages(function) else real_lru_cache(maxsize, typed)(function)
        return decorate

    def cache(function: Any) -> Any:
        return uncached(function) if in_packages(function) else real_cache(function)

    functools.lru_cache = lru_cache  # type: ignore[assignment]
    functools.cache = cache  # type: ignore[assignment]
