"""callspan: where a Python service spends CPU, where it waits, and what to cache."""

from __future__ import annotations

__version__ = "0.1.0"

from callspan.api import start, stop, traced, tracing  # noqa: E402

__all__ = ["__version__", "start", "stop", "traced", "tracing"]
