"""The production gate (recorder.request_gate): a gated session starts calls only while the
gate is open in the current thread or asyncio task, on every core."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

from callspan.config import Settings
from callspan.tracer.recorder import request_gate
from callspan.tracer.session import Session
from tests.conftest import TESTS_DIR, RecordingSink, TickClock, TickCounter


def leaf(x: int) -> int:
    return x + 1


def handler(x: int) -> int:
    return leaf(x) + leaf(x + 1)


async def async_handler(x: int) -> int:
    await asyncio.sleep(0)
    return handler(x)


def gated_session(core: str) -> tuple[Session, RecordingSink]:
    sink = RecordingSink()
    session = Session(Settings(core=core, keys="on"), sink, default_roots=(TESTS_DIR,), clock=TickClock(),
                      counter=TickCounter(), background=False, gated=True)
    return session, sink


def calls(sink: RecordingSink, suffix: str) -> int:
    total = 0
    for window in sink.windows:
        for name, count in zip(window.get("function.name", []), window.get("function.calls", []), strict=True):
            if name.endswith(suffix):
                total += count
    return total


def in_request(func: Any, *args: Any) -> Any:
    token = request_gate.set(True)
    try:
        return func(*args)
    finally:
        request_gate.reset(token)


def test_only_calls_inside_an_open_gate_are_traced(core: str) -> None:
    session, sink = gated_session(core)
    session.start()
    try:
        for i in range(10):
            assert handler(i) == 2 * i + 3  # unsampled: not traced
        for i in range(3):
            assert in_request(handler, i) == 2 * i + 3
        assert handler(5) == 13
    finally:
        session.stop()
    assert calls(sink, ".handler") == 3 and calls(sink, ".leaf") == 6
    assert len(sink.named(".handler")) == 3 and len(sink.named(".leaf")) == 6
    for node in sink.named(".leaf"):
        assert node.parent is not None and node.parent.name.endswith(".handler")


def test_tasks_of_a_sampled_request_inherit_the_gate_and_others_do_not(core: str) -> None:
    async def serve() -> list[int]:
        async def sampled(x: int) -> int:
            request_gate.set(True)  # this task's context only
            return await async_handler(x)

        return list(await asyncio.gather(sampled(1), async_handler(2), sampled(3), async_handler(4)))

    session, sink = gated_session(core)
    session.start()
    try:
        assert asyncio.run(serve()) == [5, 7, 9, 11]
    finally:
        session.stop()
    assert calls(sink, ".async_handler") == 2 and calls(sink, ".handler") == 2 and calls(sink, ".leaf") == 4


def test_a_thread_traces_a_request_only_when_handed_its_context(core: str) -> None:
    session, sink = gated_session(core)
    session.start()
    results: list[int] = []
    try:
        def request() -> None:
            request_gate.set(True)
            plain = threading.Thread(target=lambda: results.append(handler(1)))  # a fresh context
            plain.start()
            plain.join()
            context = contextvars.copy_context()
            copied = threading.Thread(target=lambda: results.append(context.run(handler, 2)))
            copied.start()
            copied.join()

        contextvars.copy_context().run(request)
    finally:
        session.stop()
    assert results == [5, 7]
    assert calls(sink, ".handler") == 1 and calls(sink, ".leaf") == 2
