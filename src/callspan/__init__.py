"""callspan: where a Python service spends CPU, where it waits, and what to cache."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "start", "stop", "traced", "tracing"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `callspan.analysis` (which must not load the tracer) can live in this package.
    if name in ("start", "stop", "traced", "tracing"):
        from callspan import api

        return getattr(api, name)
    raise AttributeError(f"module 'callspan' has no attribute {name!r}")
