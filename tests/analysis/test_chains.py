"""One-to-one call chains in the cache report (cache.link_chains): one row for the outermost
function, naming the functions it covers, in the text, JSON and HTML reports."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from callspan.analysis import cache
from callspan.analysis.cache import Advice, CacheOptions, CacheReport, Opportunity, Savings
from callspan.analysis.report import cache_text, covers_text, opportunity_json, report_order, tier_groups

STEPS = [(1, 60.0), (2, 30.0)]


def op(name: str, kind: str = "lru_cache", *, cpu: float = 1e6, **fields: Any) -> Opportunity:
    base = Opportunity(
        name=name, file="app.py", line=1, kind="function", method=False, calls=100, errors=0, distinct_keys=10,
        hits_unbounded=90, hit_ratio=0.9, hit_ratio_at_128=0.9, recommended_maxsize=2, hit_ratio_at_recommended=0.9,
        consistent=True, inconsistent_keys=0, overlapping=0, sample_rate=1.0, estimator="exact",
        unhashable_types=[], returns_unhashable=False, cpu_unit="ns", savings=Savings(cpu, cpu, 90), share=None,
        memory_bytes=None, mean_cost=1e4, curve=[], processes=[], advice=Advice(kind, f"{kind} text"),
        source="aggregates", hit_steps=list(STEPS))
    return replace(base, **fields)


def pair(a: str, b: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return (a, "app.py"), (b, "app.py")


def test_only_one_to_one_pairs_with_identical_figures_in_the_same_tier_are_grouped() -> None:
    ops = [op("outer", cpu=9e6), op("middle", cpu=8e6), op("inner", cpu=7e6),  # outer > middle > inner
           op("caveated_callee", "calls_impure", cpu=6e6),  # another tier than its caller
           op("other_steps", cpu=5e6, hit_steps=[(1, 50.0), (3, 40.0)]),  # same hits, other sizes
           op("fewer_keys", cpu=4e6, distinct_keys=9),
           op("spans_only", cpu=3e6, source="spans"),  # no call counts
           op("not_all_calls", cpu=2e6),  # its caller made 99 of its 100 calls
           op("a", cpu=1.5e6), op("b", cpu=1e6)]  # each calls the other: no outermost function
    counts = {pair("outer", "middle"): 100, pair("middle", "inner"): 100, pair("outer", "caveated_callee"): 100,
              pair("outer", "other_steps"): 100, pair("outer", "fewer_keys"): 100, pair("outer", "spans_only"): 100,
              pair("outer", "not_all_calls"): 99, pair("a", "b"): 100, pair("b", "a"): 100}
    cache.link_chains(ops, counts)
    by = {o.name: o for o in ops}
    assert [o.name for o in by["outer"].covers] == ["middle", "inner"]  # in ranking order
    assert {o.name: o.covered_by for o in ops if o.covered_by} == {"middle": "outer", "inner": "outer"}
    assert all(not by[n].covers for n in by if n != "outer")
    # The recommended table: outer's row, then the rest; the covered ones are listed at its rank.
    groups = dict(tier_groups(ops))
    assert [(rank, o.name) for rank, o in groups["recommended"]] == [
        (1, "outer"), (2, "other_steps"), (3, "fewer_keys"), (4, "spans_only"), (5, "not_all_calls"), (6, "a"),
        (7, "b")]
    assert [(rank, o.name) for rank, o in report_order(ops)][:4] == [
        (1, "outer"), (1, "middle"), (1, "inner"), (2, "other_steps")]


def test_recursive_functions_are_grouped_only_with_as_many_calls_left_out() -> None:
    # Calls are counted whole (calls + shadowed_calls); figures are on the memoized sequence.
    ops = [op("rec_outer", shadowed_calls=50, calls=100), op("rec_inner", cpu=5e5, shadowed_calls=50, calls=100),
           op("rec_other", cpu=4e5, shadowed_calls=40, calls=100)]
    cache.link_chains(ops, {pair("rec_outer", "rec_inner"): 150, pair("rec_outer", "rec_other"): 150})
    assert [o.name for o in ops[0].covers] == ["rec_inner"] and ops[2].covered_by is None


def test_the_reports_show_one_row_naming_the_covered_functions() -> None:
    ops = [op("app.api", cpu=9e6), op("app.dispatch", cpu=8e6), op("app.alone", cpu=1e6)]
    cache.link_chains(ops, {pair("app.api", "app.dispatch"): 100})
    report = CacheReport(ops, {"ns": 10**8}, 3, 0, 0, CacheOptions())
    text = "\n".join(cache_text(report, top=10))
    rows = [line.split()[1] for line in text.splitlines() if re.match(r"\s+\d+ app\.", line)]
    assert rows == ["app.api", "app.alone"]  # dispatch has no row of its own, but is named under api's
    assert "\n    = also app.dispatch\n  2 app.alone" in text and "the conversion named): 2\n" in text
    assert covers_text(ops[0]) == (
        "covers app.dispatch (lru_cache; alone it would save 8.0 ms CPU): its 100 calls were made by this "
        "function, one per call, with the same distinct keys and hits at every cache size, so a cache here skips "
        "them too (a row of their own would repeat these figures)")
    assert covers_text(ops[2]) is None
    api, dispatch = opportunity_json(1, ops[0], 1), opportunity_json(2, ops[1], 1)
    assert (api["covers"], api["covered_by"]) == (["app.dispatch"], None)
    assert (dispatch["covers"], dispatch["covered_by"], dispatch["tier_rank"]) == ([], "app.api", 1)
