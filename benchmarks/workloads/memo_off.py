"""Turn a library's own ``functools`` memoization off before it is imported (rediscovery benchmark).

``disable_functools_caches("rich")`` replaces ``functools.lru_cache`` and ``functools.cache`` with
versions that hand back the undecorated function for functions defined in the named packages
(every call then runs the function, as before the maintainers memoized it) and that still
memoize everyone else's (the standard library's caches stay on). Call it before the library is
imported: modules bind ``from functools import lru_cache`` at import time.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


def _no_cache_info() -> functools._CacheInfo:
    return functools._CacheInfo(0, 0, None, 0)


def disable_functools_caches(*packages: str) -> None:
    imported = [p for p in packages if p in sys.modules]
    if imported:
        raise RuntimeError(f"memo_off: {', '.join(imported)} already imported; its caches are on")
    real_lru_cache, real_cache = functools.lru_cache, functools.cache

    def in_packages(function: Any) -> bool:
        module = getattr(function, "__module__", None) or ""
        return any(module == p or module.startswith(p + ".") for p in packages)

    def uncached(function: Any) -> Any:
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
