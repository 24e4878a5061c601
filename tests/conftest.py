"""Shared fixtures: every core available on this interpreter, injected clocks and counters."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from callspan.config import Settings
from callspan.tracer.builder import SpanNode
from callspan.tracer.cores.select import available_cores
from callspan.tracer.session import Session

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


class TickClock:
    """A clock that advances by ``step`` on every read: durations become exact read counts."""

    def __init__(self, step: int = 1000) -> None:
        self._counter = itertools.count(step, step)

    def __call__(self) -> int:
        return next(self._counter)


class TickCounter:
    """A CPU counter advancing by one per read, per thread."""

    name = "test:ticks"
    unit = "ticks"

    def thread_reader(self) -> Any:
        return itertools.count(1).__next__


class RecordingSink:
    def __init__(self) -> None:
        self.opened: list[SpanNode] = []
        self.closed: list[SpanNode] = []
        self.windows: list[dict[str, list[Any]]] = []
        self.finals: list[bool] = []

    def open(self, node: SpanNode) -> None:
        node.handle = len(self.opened)
        self.opened.append(node)

    def close(self, node: SpanNode) -> None:
        self.closed.append(node)

    def profile(self, columns: dict[str, list[Any]], start_ns: int, end_ns: int, final: bool) -> None:
        self.windows.append(columns)
        self.finals.append(final)

    def named(self, suffix: str) -> list[SpanNode]:
        return [n for n in self.closed if n.name.endswith(suffix)]


@pytest.fixture(params=available_cores())
def core(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Traced:
    """Runs code under a session with a RecordingSink, a TickClock and a TickCounter."""

    def __init__(self, core: str, clock: Any = None, **settings: Any) -> None:
        self.sink = RecordingSink()
        defaults: dict[str, Any] = {"core": core, "keys": "on"}
        defaults.update(settings)
        self.session = Session(Settings(**defaults), self.sink, default_roots=(TESTS_DIR,),
                               clock=clock or TickClock(), counter=TickCounter(), background=False)

    def run(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.session.start()
        try:
            return func(*args, **kwargs)
        finally:
            self.session.stop()


@pytest.fixture
def traced(core: str) -> Iterator[Any]:
    def make(clock: Any = None, **settings: Any) -> Traced:
        return Traced(core, clock, **settings)

    yield make
    # No hook may be left installed after a test.
    assert sys.getprofile() is None
    if hasattr(sys, "monitoring"):
        assert all(sys.monitoring.get_tool(i) != "callspan" for i in range(6))
