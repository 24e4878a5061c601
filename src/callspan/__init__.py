"""callspan: where a Python service spends CPU, where it waits, and what to cache."""

from __future__ import annotations

__version__ = "0.1.0"
