"""Span budget per trace and summaries: what is kept, what is summarised, and that no cost is lost."""

from __future__ import annotations

from callspan.builder import _sampled


def tiny(i: int) -> int:
    return i % 3


def fast(i: int) -> int:
    return tiny(i)


def slow(i: int) -> int:
    total = 0
    for j in range(3):
        total += tiny(j)  # more clock reads inside: slower than fast() by the tick clock
    return total


def driver(n: int) -> int:
    return sum(fast(i) for i in range(n)) + slow(0)


def test_budget_keeps_root_then_first_half_then_slow_calls_and_summarises_the_rest(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(max_spans_per_trace=10)
    run.run(driver, 40)
    closed = run.sink.closed
    names = [n.name.rsplit(".", 1)[-1] for n in closed]
    # 1 driver + 1 genexpr + 40 fast + 40 tiny (fast) + 1 slow + 3 tiny (slow) = 86 calls.
    assert len(closed) <= 10 + 3  # budget, plus ancestors kept for kept descendants
    assert names.count("driver") == 1
    assert "slow" in names  # slow enough to pass the threshold after the first half
    summarised = run.session.builder.calls_summarised
    assert summarised + len(closed) == 86
    # No call disappears: summary counts on kept spans + kept spans = every call.
    counted: dict[str, int] = {}
    for node in closed:
        short = node.name.rsplit(".", 1)[-1]
        counted[short] = counted.get(short, 0) + 1
        attrs = node.attributes
        for name, count in zip(attrs.get("callspan.summary.function", []), attrs.get("callspan.summary.count", []), strict=True):
            counted[name.rsplit(".", 1)[-1]] = counted.get(name.rsplit(".", 1)[-1], 0) + count
    assert counted == {"driver": 1, "<genexpr>": 1, "fast": 40, "tiny": 43, "slow": 1}


def test_summaries_keep_wall_and_cpu_totals(traced) -> None:  # type: ignore[no-untyped-def]
    full = traced(max_spans_per_trace=100_000)
    full.run(driver, 30)
    capped = traced(max_spans_per_trace=6)
    capped.run(driver, 30)

    def totals(nodes):  # type: ignore[no-untyped-def]
        wall = cpu_self = 0
        for n in nodes:
            wall += n.end_ns - n.start_ns
            cpu_self += n.attributes["callspan.cpu.self"]
            wall += sum(n.attributes.get("callspan.summary.wall_ns", []))
            cpu_self += sum(n.attributes.get("callspan.summary.cpu_self", []))
        return wall, cpu_self

    assert totals(full.sink.closed) == totals(capped.sink.closed)


def test_summarised_calls_keep_their_keys_in_call_order(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(max_spans_per_trace=2)
    run.run(driver, 12)
    events = [e for n in run.sink.closed for e in n.events if e[2]["callspan.function"].endswith(".fast")]
    assert len(events) == 1
    _, _, attrs = events[0]
    assert len(attrs["callspan.args.hash"]) == 12 - sum(1 for n in run.sink.closed if n.name.endswith(".fast"))
    starts = attrs["callspan.start_ns"]
    assert starts == sorted(starts)
    # fast(i) for i in 0..11: twelve distinct keys, three distinct results (i % 3).
    assert len(set(attrs["callspan.args.hash"])) == len(attrs["callspan.args.hash"])
    assert len(set(attrs["callspan.return.hash"])) == 3
    assert attrs["callspan.sample_rate"] == 1.0


def test_shards_sampling_halves_the_rate_and_keeps_whole_keys(traced) -> None:  # type: ignore[no-untyped-def]
    # A fixed secret makes the sampled key set, and so this test, deterministic.
    run = traced(max_spans_per_trace=2, max_summary_calls=16, key_secret=bytes(range(32)))

    def repeat() -> None:
        for _ in range(4):
            for i in range(40):
                fast(i)

    run.run(repeat)
    (event,) = [e for n in run.sink.closed for e in n.events if e[2]["callspan.function"].endswith(".fast")]
    attrs = event[2]
    rate = attrs["callspan.sample_rate"]
    assert rate < 1.0 and len(attrs["callspan.args.hash"]) <= 16
    # Spatial sampling: a key is either always in or always out, so every kept key appears 4x
    # (minus the calls kept as spans).
    kept = [h for h in attrs["callspan.args.hash"]]
    assert all(_sampled(int(h, 16), rate) for h in kept)
    counts = {h: kept.count(h) for h in kept}
    assert sum(1 for c in counts.values() if c == 4) >= len(counts) - 2


def test_span_rate_limit_sends_whole_traces_to_the_unsampled_span(traced) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_core import middle

    run = traced(max_spans_per_second=3)
    builder = run.session.builder
    builder._monotonic = lambda: 0.0  # a frozen clock: the bucket never refills
    builder._refilled = 0.0

    run.run(list, map(middle, range(10)))  # called from C: every middle() is a root
    names = [n.name.rsplit(".", 1)[-1] for n in run.sink.closed]
    # Three tokens: root 1 (leaf + middle), root 2 (leaf, then middle forced as its ancestor);
    # the other eight traces become summaries on one callspan.unsampled_calls span.
    assert names.count("middle") == 2 and names.count("leaf") == 2
    (unsampled,) = [n for n in run.sink.closed if n.name == "callspan.unsampled_calls"]
    assert unsampled.parent is None
    counts = dict(zip([f.rsplit(".", 1)[-1] for f in unsampled.attributes["callspan.summary.function"]],
                      unsampled.attributes["callspan.summary.count"], strict=True))
    assert counts == {"middle": 8, "leaf": 8}
    assert builder.traces_unsampled == 8
    (event,) = [e for e in unsampled.events if e[2]["callspan.function"].endswith(".middle")]
    assert len(event[2]["callspan.args.hash"]) == 8


def test_unsampled_span_collects_one_window_of_passes(traced) -> None:  # type: ignore[no-untyped-def]
    import functools
    import operator

    from tests.unit.test_core import middle

    # Flushing while tracing: the test sink's own methods must not be traced.
    run = traced(max_spans_per_second=1, exclude=("tests.conftest",))
    session, builder = run.session, run.session.builder
    now = [0.0]
    builder._monotonic = functools.partial(operator.getitem, now, 0)  # C-level: not itself traced
    builder._refilled = 0.0
    assert builder.unsampled_window == 5.0
    closed = run.sink.closed
    session.start()
    try:
        for i in range(3):  # t=0: root 1 takes the token; roots 2 and 3 go to the open window
            middle(i)
            session.flush()
        now[0] = 0.5  # half a token: root 4 joins the same window in a later pass
        middle(3)
        session.flush()
        still_open = (len(closed), builder.traces_unsampled)
        now[0] = 5.0  # the window is over: it closes at the next pass (root 5 has a token again)
        middle(4)
        session.flush()
        after_window = len(closed)
        middle(5)  # t=5, no token left: a new window, closed by stop
    finally:
        session.stop()
    assert still_open == (2, 3)  # only root 1 has spans
    windows = [n for n in closed if n.name == "callspan.unsampled_calls"]
    assert len(windows) == 2 and after_window == 2 + 1 + 2  # + the first window + root 5's spans
    counts = dict(zip(windows[0].attributes["callspan.summary.function"],
                      windows[0].attributes["callspan.summary.count"], strict=True))
    assert {f.rsplit(".", 1)[-1]: c for f, c in counts.items()} == {"middle": 3, "leaf": 3}
    assert builder.traces_unsampled == 4
    assert [n.name.rsplit(".", 1)[-1] for n in closed].count("middle") == 2


def test_listed_calls_have_a_process_wide_rate_and_the_rest_are_counted(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(max_spans_per_trace=2, max_listed_calls_per_second=5)
    builder = run.session.builder
    builder._monotonic = lambda: 0.0  # frozen: the bucket holds its initial 5 tokens only
    builder._refilled = builder._listed_refilled = 0.0
    run.run(driver, 12)
    summaries = [n for n in run.sink.closed if "callspan.summary.function" in n.attributes]
    counted = sum(sum(n.attributes["callspan.summary.count"]) for n in summaries)
    listed = sum(len(e[2]["callspan.args.hash"]) for n in summaries for e in n.events)
    assert listed == 5 and builder.calls_unlisted == counted - 5
    assert counted == builder.calls_summarised
