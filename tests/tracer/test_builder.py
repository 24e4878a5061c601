"""Which calls become spans (schema v2): whole traces decided at the root, the first calls of a
kept trace to start, every ancestor of a kept span kept; every call in the aggregates either way."""

from __future__ import annotations

import asyncio
import sys

from tests.tracer.test_aggregate import calls_by_function


def tiny(i: int) -> int:
    return i % 3


def fast(i: int) -> int:
    return tiny(i)


def driver(n: int) -> int:
    return sum(fast(i) for i in range(n))


def middle(i: int) -> int:
    return tiny(i) + 1


def deep(n: int) -> int:
    return n if n == 0 else deep(n - 1) + 1


def short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def test_budget_keeps_the_first_calls_to_start_and_every_call_is_in_the_aggregates(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(max_spans_per_trace=10)
    run.run(driver, 40)
    closed = run.sink.closed
    # driver, <genexpr>, then fast/tiny pairs in start order: the first 10 to start.
    assert [short(n.name) for n in sorted(closed, key=lambda n: n.start_ns)] == \
        ["driver", "<genexpr>"] + ["fast", "tiny"] * 4
    by_name = {short(n.name): n for n in closed}
    for node in closed:  # every kept span's parent is kept
        if short(node.name) != "driver":
            assert node.parent is not None and node.parent in closed
    assert by_name["driver"].parent is None
    # 1 driver + 1 genexpr + 40 fast + 40 tiny: all folded, though only 10 are spans.
    assert calls_by_function(run.sink.windows) == {"driver": 1, "<genexpr>": 1, "fast": 40, "tiny": 40}


def test_a_deep_recursion_keeps_its_outermost_calls_within_the_budget(traced) -> None:  # type: ignore[no-untyped-def]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))
    try:
        run = traced(max_spans_per_trace=50)
        run.run(deep, 3000)
    finally:
        sys.setrecursionlimit(limit)
    closed = run.sink.closed
    assert len(closed) == 50
    depths = sorted(n.start_ns for n in closed)
    assert depths == sorted(n.start_ns for n in closed)[:50]
    chain = [n for n in closed if n.parent is None]
    assert len(chain) == 1  # one root, the others nested under it
    assert calls_by_function(run.sink.windows) == {"deep": 3001}


def test_span_rate_keeps_whole_traces_while_tokens_last(traced) -> None:  # type: ignore[no-untyped-def]
    # The tick clock advances 1 us per read: the bucket refills by ~0 during the test.
    run = traced(max_spans_per_second=3)
    run.run(list, map(middle, range(10)))  # called from C: every middle() is a root
    names = [short(n.name) for n in run.sink.closed]
    # 3 tokens: root 1 (middle + tiny) takes 2, root 2 takes the last (and overdraws by one
    # for its tiny); roots 3-10 keep no span.
    assert names.count("middle") == 2 and names.count("tiny") == 2
    assert calls_by_function(run.sink.windows) == {"middle": 10, "tiny": 10}


def test_trace_filter_drops_traces_the_application_does_not_sample(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    seen: list[object] = []

    def sample_even(context: object) -> bool:
        seen.append(context)
        return len(seen) % 2 == 0

    run.session.recorder.trace_filter = sample_even
    run.run(list, map(middle, range(6)))
    assert len(seen) == 6  # asked once per root
    assert [short(n.name) for n in run.sink.closed].count("middle") == 3
    assert calls_by_function(run.sink.windows) == {"middle": 6, "tiny": 6}


def test_span_attributes_of_a_kept_call(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    run.run(fast, 4)
    (node,) = run.sink.named(".fast")
    attrs = node.attributes
    assert "callspan.args.hashable" not in attrs and len(attrs["callspan.args.hash"]) == 16  # false only
    assert "callspan.return.hashable" not in attrs and len(attrs["callspan.return.hash"]) == 16
    assert attrs["callspan.cpu.total"] >= attrs["callspan.cpu.self"] > 0
    assert not any(name.startswith("callspan.summary") for name in attrs)


def ten_tiny(n: int) -> int:
    total = 0
    for i in range(10):
        total += tiny(i + n)
    return total


def top(n: int) -> int:
    return ten_tiny(n) + tiny(n)


def test_min_span_duration_elides_short_calls_and_keeps_their_ancestors(traced) -> None:  # type: ignore[no-untyped-def]
    # The tick clock advances 1 us per read: tiny lasts ~1-2 us, ten_tiny and top 20 us or more.
    run = traced(min_span_us=5)
    run.run(top, 1)
    names = sorted(short(n.name) for n in run.sink.closed)
    assert names == ["ten_tiny", "top"]
    (inner,) = run.sink.named(".ten_tiny")
    (outer,) = run.sink.named(".top")
    assert inner.parent is outer and outer.parent is None
    assert run.session.builder.spans_elided == 11
    assert calls_by_function(run.sink.windows) == {"top": 1, "ten_tiny": 1, "tiny": 11}
    # without a minimum every kept call is a span
    run = traced()
    run.run(top, 1)
    assert len(run.sink.closed) == 13 and run.session.builder.spans_elided == 0


async def _long_child() -> int:
    await asyncio.sleep(0)
    return ten_tiny(0)


async def _short_spawner() -> asyncio.Task[int]:
    return asyncio.ensure_future(_long_child())


async def _awaits_the_task() -> int:
    task = await _short_spawner()
    return await task + ten_tiny(1)


def test_min_span_duration_hangs_a_task_under_its_elided_creators_nearest_span(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(min_span_us=5)
    run.run(asyncio.run, _awaits_the_task())
    by_name = {short(n.name): n for n in run.sink.closed}
    assert "_short_spawner" not in by_name  # it returned at once: elided
    child = by_name["_long_child"]
    assert child.parent is by_name["_awaits_the_task"]
    assert child.open_attributes.get("callspan.parent.via") == "task"
    assert calls_by_function(run.sink.windows)["_short_spawner"] == 1
