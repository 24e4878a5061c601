"""Tracer cores: the hooks that feed the Recorder. One interface, one chooser (select.py)."""

from callspan.tracer.cores.base import Core

__all__ = ["Core"]
