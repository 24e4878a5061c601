"""A progress line on stderr for inputs that take more than a second, only on a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from callspan.untrusted import printable

WIDTH = 79


def _sizes(done: float, total: float) -> str:
    """``12.5/116.1 MB``: both in the unit of the total."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if total >= scale:
            return f"{done / scale:.1f}/{total / scale:.1f} {unit}"
    return f"{done:.0f}/{total:.0f} B"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


class Progress:
    """``update()`` as work completes; nothing is drawn before ``delay`` seconds or off a TTY."""

    def __init__(self, total_bytes: int, stream: TextIO | None = None, enabled: bool | None = None,
                 delay: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.total = max(0, total_bytes)
        self.delay = delay
        self.clock = clock
        self.started = clock()
        self.last_draw = 0.0
        self.drawn = False
        self.phase = "reading"

    def line(self, done: int, spans: int) -> str:
        elapsed = self.clock() - self.started
        fraction = min(1.0, done / self.total) if self.total else 0.0
        bar_width = 16
        filled = int(fraction * bar_width)
        text = (f"callspan: {self.phase:<9} [{'#' * filled}{'.' * (bar_width - filled)}] {fraction:4.0%} "
                f"{_sizes(done, self.total)}, {_count(spans)} spans, {elapsed:.0f}s")
        return printable(text)[:WIDTH]  # text of callspan's own; escaped like every output all the same

    def update(self, done: int, spans: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if now - self.started < self.delay or (not force and now - self.last_draw < 0.2):
            return
        self.last_draw = now
        self.drawn = True
        self.stream.write("\r" + self.line(done, spans).ljust(WIDTH))
        self.stream.flush()

    def set_phase(self, phase: str, done: int, spans: int) -> None:
        self.phase = phase
        self.update(done, spans, force=True)

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * WIDTH + "\r")
            self.stream.flush()
            self.drawn = False
