"""The interface every core implements."""

from __future__ import annotations

from typing import Protocol

from callspan.recorder import Recorder


class Core(Protocol):
    """A hook that turns interpreter events into Recorder transitions.

    ``start`` installs the hook (for every thread it can reach); ``stop`` removes it. Neither
    raises into the application once started; the hook swallows and counts its own faults in
    ``recorder.faults``.
    """

    name: str
    recorder: Recorder

    def start(self) -> None: ...

    def stop(self) -> None: ...
