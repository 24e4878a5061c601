"""Which code is traced: decided once per code object, then cached by the core."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatchcase
from types import CodeType
from typing import TYPE_CHECKING

from callspan import _env
from callspan.config import stdlib_paths

KIND_FUNCTION, KIND_COROUTINE, KIND_GENERATOR, KIND_ASYNC_GENERATOR = range(4)
KIND_NAMES = ("function", "coroutine", "generator", "async_generator")
_COMPREHENSION_NAMES = frozenset(("<genexpr>", "<listcomp>", "<setcomp>", "<dictcomp>"))

_CO_OPTIMIZED = 0x01  # functions; module and class bodies lack it
_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08
_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200

# multiprocessing's spawn and forkserver children run the program's main module under this name.
_MULTIPROCESSING_MAIN = "__mp_main__"

# Never traced unless named in an explicit include: the tracer itself and the SDK it feeds.
_ALWAYS_EXCLUDED_MODULES = ("callspan", "opentelemetry")


if TYPE_CHECKING or not _env.HAS_COMPILED_HASH:
    class _CodeInfoBase:
        __slots__ = ("code", "kind", "keys", "is_method", "arg_names", "varargs", "kwonly", "varkw",
                     "unkeyed", "unkeyed_args", "sized", "slow_hash", "hash_ns", "hash_runs")
else:
    # The same fields as C struct members, read directly by the compiled hot path.
    from callspan.tracer._hotpath import CodeInfoBase as _CodeInfoBase


class CodeInfo(_CodeInfoBase):
    """What the hot path needs to know about one traced code object, computed once."""

    __slots__ = ("name", "file", "line")
    code: CodeType
    kind: int
    keys: bool
    is_method: bool
    arg_names: tuple[str, ...]
    varargs: str | None
    kwonly: tuple[str, ...]
    varkw: str | None
    unkeyed: int  # consecutive calls whose arguments could not be keyed (see keys.UNKEYABLE_AFTER)
    unkeyed_args: tuple[None, str, bool] | None
    sized: int  # calls whose return size was considered (see keys.RET_SIZE_EVERY)
    slow_hash: bool  # its user hashing passed the bound (keys.USER_HASH_BUDGET_NS): no more user hashes
    hash_ns: int  # ns spent in the timed user hashes of its keys
    hash_runs: int  # timed user hashes of its keys

    def __init__(self, code: CodeType, module: str, keys: bool) -> None:
        self.code = code
        self.name = f"{module}.{code.co_qualname}" if module else code.co_qualname
        self.file = code.co_filename
        self.line = code.co_firstlineno
        flags = code.co_flags
        if flags & _CO_COROUTINE:
            self.kind = KIND_COROUTINE
        elif flags & _CO_ASYNC_GENERATOR:
            self.kind = KIND_ASYNC_GENERATOR
        elif flags & _CO_GENERATOR:
            self.kind = KIND_GENERATOR
        else:
            self.kind = KIND_FUNCTION
        names = code.co_varnames
        argc = code.co_argcount
        kwc = code.co_kwonlyargcount
        self.arg_names = names[:argc]
        self.kwonly = names[argc : argc + kwc]
        index = argc + kwc
        self.varargs = names[index] if flags & _CO_VARARGS else None
        index += 1 if flags & _CO_VARARGS else 0
        self.varkw = names[index] if flags & _CO_VARKEYWORDS else None
        self.is_method = bool(self.arg_names) and self.arg_names[0] in ("self", "cls")
        # Comprehension bodies (a generator expression's only argument is its iterator, a new
        # object each call) can never be given a cache: their keys are not computed.
        self.keys = keys and code.co_name not in _COMPREHENSION_NAMES
        self.unkeyed = 0
        self.unkeyed_args = None
        self.sized = 0
        self.slow_hash = False
        self.hash_ns = 0
        self.hash_runs = 0


def _split(patterns: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    modules: list[str] = []
    paths: list[str] = []
    for pattern in patterns:
        if os.sep in pattern or pattern.startswith(".") or os.path.isdir(pattern):
            real = os.path.realpath(pattern)
            paths.append(real if os.path.isfile(real) else real.rstrip(os.sep) + os.sep)
        else:
            modules.append(pattern)
    return tuple(modules), tuple(paths)


def _module_matches(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


class Selector:
    """Decides, for a code object seen for the first time, whether it is traced.

    Order: explicit exclude > explicit include > never-traced defaults (callspan, opentelemetry,
    stdlib, site-packages) > default roots (the user's own code).
    """

    def __init__(
        self,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        default_roots: Iterable[str] = (),
        keys: str = "on",
        keys_exclude: Iterable[str] = (),
    ) -> None:
        self.include_modules, self.include_paths = _split(include)
        self.exclude_modules, self.exclude_paths = _split(exclude)
        _, self.root_paths = _split(os.path.abspath(r) for r in default_roots)
        self.root_modules = tuple(r for r in default_roots if os.sep not in r and not os.path.exists(r))
        self.never_paths = stdlib_paths()
        self._keys_all = keys == "on"
        self._keys_names = frozenset() if keys in ("on", "off") else frozenset(
            part.strip() for part in keys.split(",") if part.strip()
        )
        # CALLSPAN_KEYS_EXCLUDE: glob patterns of function names never keyed (decided per code object).
        self._keys_exclude = tuple(keys_exclude)
        self._realpaths: dict[str, str] = {}

    def _real(self, filename: str) -> str:
        real = self._realpaths.get(filename)
        if real is None:
            real = os.path.realpath(filename) if not filename.startswith("<") else filename
            self._realpaths[filename] = real
        return real

    def selects(self, code: CodeType, module: str) -> bool:
        path = self._real(code.co_filename)
        if _module_matches(module, self.exclude_modules) or path.startswith(self.exclude_paths or ("\0",)):
            return False
        if self.include_modules or self.include_paths:
            if _module_matches(module, self.include_modules) or path.startswith(self.include_paths or ("\0",)):
                return True
        if _module_matches(module, _ALWAYS_EXCLUDED_MODULES) or path.startswith("<"):
            return False
        if self.include_modules or self.include_paths:
            return False
        if _module_matches(module, self.root_modules):
            return True
        # The most specific prefix decides: a project's own .venv inside the script's directory
        # stays untraced, while a script that itself lives in site-packages (an installed demo,
        # `-m` of an installed package) is traced.
        root = max((len(r) for r in self.root_paths if path.startswith(r)), default=-1)
        never = max((len(n) for n in self.never_paths if path.startswith(n)), default=-1)
        return root > never

    def decide(self, code: CodeType, module: str) -> CodeInfo | None:
        if module == _MULTIPROCESSING_MAIN:
            module = "__main__"  # the program's main module, run again in a spawned child
        # Module and class bodies run once at import: not calls anyone would cache or profile.
        if not code.co_flags & _CO_OPTIMIZED or not self.selects(code, module):
            return None
        info = CodeInfo(code, module, keys=False)
        info.keys = (self._keys_all or info.name in self._keys_names or code.co_qualname in self._keys_names) \
            and not any(fnmatchcase(info.name, pattern) or fnmatchcase(code.co_qualname, pattern)
                        for pattern in self._keys_exclude)
        return info
