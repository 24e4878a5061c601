"""Reports: terminal tables (at most 100 columns), JSON (docs/analysis-json.md), one-file HTML."""

from __future__ import annotations

import html
import math
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from callspan import __version__
from callspan.analysis.cache import DEFAULT_MAXSIZE, TIERS, CacheReport, LookupCost, Opportunity, tier
from callspan.analysis.cpu import CpuReport
from callspan.analysis.graphs import FLAME_CSS, distribution_svg, flame_html
from callspan.analysis.latency import LatencyReport
from callspan.analysis.model import Model
from callspan.untrusted import printable

WIDTH = 100
MAX_WARNINGS = 20  # input warnings listed in a text or HTML report (JSON has all)
ESTIMATES = {
    "shards": "estimated: summarised calls were key-sampled at rate {rate:g}; replayed the sampled keys "
              "(SHARDS), counts and sizes scaled by {scale:g}",
    "listed": "estimated: summarised calls were key-sampled at rate {rate:g}, too few keys for SHARDS; "
              "replayed the calls listed one by one, counts scaled up to all calls",
    "tracer_shards": "estimated: the tracer sampled this function's keys (SHARDS at rate {rate:g}, beyond its "
                     "per-function key cap); keys, hits, sizes and savings are scaled by {scale:g}",
    "mixed": "estimated: summarised calls were key-sampled (smallest rate {rate:g}); processes estimated "
             "differently",
}
SAVINGS_OVERLAP = ("savings overlap: a function's savings include those of the functions it calls (nested "
                   "calls), so they are not additive and no total is given")
JSON_SCHEMA = "callspan.analysis/1"
# Each tier of the cache report is its own table (TIERS order), ranked by savings within it.
TIER_TITLES = {
    "recommended": "Recommended, to apply as said (a paste line, or the conversion named)",
    "caveated": "With a caveat to weigh first (often callers of the above, savings overlapping)",
    "not_worth_it": "Not worth it: too cheap a call, or too little saved",
    "not_recommended": "Never recommended as is",
}
ADVICE_LABELS = {
    "lru_cache": "lru_cache", "lru_cache_convert_args": "convert args", "method": "method (self)",
    "async_cache": "async cache", "inflight_coalescing": "coalesce", "inconsistent": "inconsistent",
    "calls_impure": "calls impure", "not_cacheable": "not cacheable", "not_worth_it": "not worth it",
    "mostly_consistent": "mostly consistent", "fresh_object": "new object", "mutable_return": "mutable return",
    "closure": "nested def", "callees_unknown": "callees unknown", "returns_none": "returns None",
    "slow_hash": "slow __hash__",
}


@dataclass(slots=True)
class Results:
    model: Model
    reports: list[str]  # in the order asked
    cache: CacheReport | None = None
    cpu: CpuReport | None = None
    latency: LatencyReport | None = None
    top: int = 20
    elapsed: float = 0.0


# -- formatting -------------------------------------------------------------------------------

def fmt_count(n: float) -> str:
    n = round(n)
    if abs(n) >= 10_000_000:
        return f"{n / 1e6:.1f}M"
    if abs(n) >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 100_000:
        return f"{n / 1e3:.0f}k"
    return f"{n:,}"


def fmt_ns(ns: float) -> str:
    ns = float(ns)
    if ns >= 100e9:
        return f"{ns / 1e9:.0f} s"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms" if ns < 100e6 else f"{ns / 1e6:.0f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} us" if ns < 100e3 else f"{ns / 1e3:.0f} us"
    return f"{ns:.0f} ns"


def fmt_cost(value: float, unit: str) -> str:
    if unit == "ns":
        return fmt_ns(value)
    if unit == "instructions":
        for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if value >= scale:
                return f"{value / scale:.1f}{suffix} ins"
        return f"{value:.0f} ins"
    if unit == "none":
        return "-"
    return f"{value:,.0f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_pct(ratio: float | None, digits: int = 1) -> str:
    return "-" if ratio is None else f"{100 * ratio:.{digits}f}"


def elide(text: str, width: int) -> str:
    """Keep the end (the most specific part of a qualified name)."""
    return text if len(text) <= width else "..." + text[-(width - 3):]


def elide_stack(frames: list[str], width: int, sep: str = " > ") -> str:
    text = sep.join(frames)
    if len(text) <= width:
        return text
    shown = list(frames)
    while len(shown) > 2:
        del shown[1]
        text = sep.join([shown[0], "...", *shown[1:]])
        if len(text) <= width:
            return text
    return elide(sep.join(shown), width)


def _time_range(model: Model) -> str:
    if not model.first_ns or model.last_ns <= model.first_ns:
        return ""
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(model.first_ns / 1e9))
    return f", {fmt_ns(model.last_ns - model.first_ns)} of traces from {start} UTC"


def _units(model: Model) -> str:
    counters = sorted({f"{p.cpu_counter or '?'} ({p.cpu_unit})" for p in model.processes if p.cpu_unit})
    return ", ".join(counters) if counters else "none recorded"


def header(results: Results) -> list[str]:
    m = results.model
    files = len(m.sources)
    lines = _wrap(f"{m.spans:,} spans from {files} source{'s' if files != 1 else ''}, "
                  f"{len(m.processes)} process{'es' if len(m.processes) != 1 else ''}{_time_range(m)}", "")
    if m.profiles:
        count = len(m.profiles)
        lines.extend(_wrap(f"Aggregates (schema 2, every call) for {count} process{'es' if count != 1 else ''}: "
                           "totals from them, spans only as examples", ""))
    lines.extend(_wrap(f"CPU counter: {_units(m)}", ""))
    # In the report too (not only on stderr): a report kept in a file must say that it was made
    # of damaged input, e.g. impossible figures clamped (``input.impossible``).
    if m.warnings:
        lines.append(f"Input warnings ({len(m.warnings):,}; also on stderr):")
    for warning in m.warnings[:MAX_WARNINGS]:
        lines.extend(textwrap.wrap(warning, WIDTH, initial_indent="  ", subsequent_indent="    ",
                                   break_on_hyphens=False, break_long_words=False))
    if len(m.warnings) > MAX_WARNINGS:
        lines.append(f"  ... and {len(m.warnings) - MAX_WARNINGS:,} more (all in --format json: input.warnings)")
    return lines


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False) or [indent]


# -- terminal ---------------------------------------------------------------------------------

def cache_text(report: CacheReport, top: int) -> list[str]:
    o = report.options
    lines = _wrap(f"Cache opportunities in tiers, each by CPU saved at the recommended maxsize (the smallest "
                  f"giving {o.target:.0%} of all hits)", "")
    ops = report.opportunities
    if not ops:
        lines.append("  none: no function with at least "
                     f"{o.min_calls} calls repeated an argument key")
    else:
        unit = _main_unit(report)
        shown: list[tuple[int, Opportunity]] = []
        for name, ranked in tier_groups(ops):
            lines.append("")
            lines.extend(_wrap(f"{TIER_TITLES[name]}: {len(ranked):,}", ""))
            lines.append(f"{'#':>3} {'function':<30} {'calls':>7} {'keys':>6} {'hit%':>5} {'@128':>5} "
                         f"{'maxsize':>7} {'saved':>9} {'share':>6}  advice")
            for rank, op in ranked[:top]:
                saved = fmt_cost(op.savings.cpu, op.cpu_unit) if op.cpu_unit != "none" else fmt_ns(op.savings.wall)
                share = "-" if op.share is None else f"{100 * op.share:.1f}%"
                size = "-" if op.recommended_maxsize is None else fmt_count(op.recommended_maxsize)
                est = "~" if op.estimated else " "
                lines.append(f"{rank:>3} {elide(op.name, 30):<30} {fmt_count(op.calls):>7} "
                             f"{est}{fmt_count(op.distinct_keys):>5} {fmt_pct(op.hit_ratio):>5} "
                             f"{fmt_pct(op.hit_ratio_at_128):>5} {size:>7} {saved:>9} {share:>6}  "
                             f"{ADVICE_LABELS.get(op.advice.kind, op.advice.kind)}")
                if op.covers:
                    lines.append(f"    {elide('= also ' + ', '.join(o.name for o in op.covers), WIDTH - 4)}")
            if len(ranked) > top:
                lines.append(f"    ... {len(ranked) - top} more (--top N)")
            shown.extend(ranked[:top])
        lines.extend(_wrap(f"saved: {'CPU' if unit != 'none' else 'wall time'} of the calls that would hit; "
                           "share: of all self CPU; ~: estimated (details below); #: rank in the table; "
                           + SAVINGS_OVERLAP, "    "))
        for rank, op in shown:
            lines.append("")
            lines.extend(opportunity_text(rank, op))
    lines.append("")
    lines.extend(_wrap(worth_it_text(report), ""))
    if report.clamps.total:
        lines.extend(_wrap(f"warning: {report.clamps.total:,} figure(s) broke an invariant and were clamped "
                           f"({', '.join(f'{k} x{n}' for k, n in sorted(report.clamps.counts.items()))}):", ""))
        for message in report.clamps.messages:
            lines.extend(_wrap(message, "  "))
    notes = [f"{report.functions_analyzed} functions with >= {o.min_calls} keyed calls analyzed"]
    if report.functions_without_reuse:
        notes.append(f"{report.functions_without_reuse} never repeated an argument key")
    slow = report.functions_without_keys_slow_hash
    if report.functions_without_keys - slow:
        notes.append(f"{report.functions_without_keys - slow} had no key hashes "
                     "(CALLSPAN_KEYS off or CALLSPAN_KEYS_EXCLUDE for them?)")
    if slow:
        notes.append(f"{slow} had none because their user __hash__ was too slow to key")
    lines.extend(_wrap("; ".join(notes) + ".", ""))
    return lines


def tier_groups(ops: list[Opportunity]) -> list[tuple[str, list[tuple[int, Opportunity]]]]:
    """The non-empty tiers of ``ops`` (ranked: tier by tier) in ``TIERS`` order, each with its
    rows and their 1-based rank within the tier. A function covered by another's row (a
    one-to-one call chain: ``Opportunity.covers``) has no row of its own."""
    groups: dict[str, list[tuple[int, Opportunity]]] = {}
    for op in ops:
        if op.covered_by is not None:
            continue
        ranked = groups.setdefault(tier(op.advice.kind), [])
        ranked.append((len(ranked) + 1, op))
    return [(name, groups[name]) for name in TIERS if name in groups]


def report_order(ops: list[Opportunity]) -> Iterator[tuple[int, Opportunity]]:
    """Every opportunity with its tier rank, in the report's order: tier by tier, each row
    followed by the functions it covers (at its rank)."""
    for _, ranked in tier_groups(ops):
        for rank, op in ranked:
            yield rank, op
            for inner in op.covers:
                yield rank, inner


def covers_text(op: Opportunity) -> str | None:
    """What a row of a one-to-one call chain covers, with each covered function's own figures."""
    if not op.covers:
        return None
    parts = []
    for inner in op.covers:
        alone = (fmt_cost(inner.savings.cpu, inner.cpu_unit) + " CPU" if inner.cpu_unit != "none"
                 else fmt_ns(inner.savings.wall) + " wall")
        parts.append(f"{inner.name} ({ADVICE_LABELS.get(inner.advice.kind, inner.advice.kind)}; alone it would "
                     f"save {alone})")
    return (f"covers {'; '.join(parts)}: {'each' if len(op.covers) > 1 else 'its'} {op.calls:,} calls were made "
            f"by this function, one per call, with the same distinct keys and hits at every cache size, so a cache "
            "here skips them too (a row of their own would repeat these figures)")


def lookup_text(lookup: LookupCost) -> str:
    if lookup.source == "measured":
        return (f"a functools.lru_cache hit costs ~{fmt_ns(lookup.one_arg_ns)} with one int argument, "
                f"~{fmt_ns(lookup.three_args_ns)} with three (measured here: fastest of {lookup.repeats} "
                f"timings of {lookup.iterations:,} calls)")
    return f"a cache hit is taken to cost {fmt_ns(lookup.ns)} ({lookup.source})"


def worth_it_text(report: CacheReport) -> str:
    o = report.options
    text = (f"Worth it: {lookup_text(report.lookup)}; a call must cost at least {o.min_cost_ratio:g}x "
            f"{fmt_ns(report.lookup.ns)} (CPU, or wall without a CPU counter in ns) and save at least "
            f"{fmt_ns(o.min_saved_ns)} at the recommended maxsize")
    if o.min_share is not None:
        text += f" and {o.min_share:.2%} of all CPU (--min-share)"
    return text + "."


def estimate_text(op: Opportunity) -> str | None:
    """How an estimated figure was estimated (rate, scale, error), or None when exact."""
    if not op.estimated:
        return None
    parts = []
    if op.estimator != "exact":
        text = ESTIMATES.get(op.estimator, ESTIMATES["mixed"]).format(rate=op.sample_rate, scale=1 / op.sample_rate)
        if op.estimate_error is not None:
            text += f"; relative standard error of the distinct keys ~{100 * op.estimate_error:.1f}%"
        else:
            text += "; error not estimated"
        parts.append(text)
    if op.curve_exact_from is not None:
        parts.append(f"recursive: exact at maxsize >= {op.curve_exact_from:,} (its distinct keys); below, hit ratios "
                     "are estimated from the calls an unbounded cache leaves (a smaller cache repeats nested calls "
                     "the trace cannot replay), error not estimated")
    return "; ".join(parts)


def _main_unit(report: CacheReport) -> str:
    units = [op.cpu_unit for op in report.opportunities if op.cpu_unit != "none"]
    return units[0] if units else "none"


def opportunity_text(rank: int, op: Opportunity) -> list[str]:
    where = f"{op.file}:{op.line}" if op.file else "(file unknown)"
    title = f"{rank:>3}. {elide(op.name, WIDTH - 5)}"
    if len(title) + 2 + len(where) <= WIDTH:
        lines = [f"{title}  {where}"]
    else:
        lines = [title, "     " + elide(where, WIDTH - 5)]
    facts = (f"{op.calls:,} calls ({op.errors:,} raised), " if op.errors else f"{op.calls:,} calls, ")
    facts += (f"{'~' if op.estimated else ''}{op.distinct_keys:,.0f} distinct keys; hit ratio "
              f"{fmt_pct(op.hit_ratio)}% unbounded, {fmt_pct(op.hit_ratio_at_128)}% at maxsize={DEFAULT_MAXSIZE}")
    if op.kind not in ("function", "span"):
        facts += f"; {op.kind}"
    if op.method:
        facts += "; method"
    if op.identity:
        facts += "; self hashed by identity"
        if op.identity_collisions:
            facts += f" ({op.identity_collisions:,} keys returned different values: address reuse)"
    if op.overlapping:
        facts += f"; {op.overlapping:,} calls overlapped an identical in-flight call"
    if op.shadowed_calls:
        facts += (f"; recursive: sized on the calls a memoized version makes ({op.shadowed_calls:,} calls nested "
                  "in hits of the same key left out; exact for an unbounded cache)")
    if op.fresh_keys:
        facts += (f"; {op.fresh_keys:,.0f} keys returned a new object each call (not counted as inconsistent; "
                  "a cache would hand out one shared object)")
    lines.extend(_wrap(facts, "     "))
    if op.recommended_maxsize is not None:
        saving = (f"maxsize={op.recommended_maxsize:,} gives {fmt_pct(op.hit_ratio_at_recommended)}%: saves "
                  f"{fmt_cost(op.savings.cpu, op.cpu_unit)} CPU" if op.cpu_unit != "none" else
                  f"maxsize={op.recommended_maxsize:,} gives {fmt_pct(op.hit_ratio_at_recommended)}%: saves")
        if op.share is not None:
            saving += f" ({100 * op.share:.2f}% of all)"
        saving += f", {fmt_ns(op.savings.wall)} wall"
        if op.memory_bytes is not None:
            saving += (f"; memory ~{fmt_bytes(op.memory_bytes)} ({op.recommended_maxsize:,} return values, "
                       "shallow size)")
        lines.extend(_wrap(saving, "     "))
    estimate = estimate_text(op)
    if estimate:
        lines.extend(_wrap(estimate, "     "))
    covers = covers_text(op)
    if covers:
        lines.extend(_wrap(covers, "     "))
    if len(op.processes) > 1:
        parts = [f"{p['label']}: {fmt_pct(p['hit_ratio'])}% of {fmt_count(p['calls'])}"  # type: ignore[arg-type]
                 for p in op.processes[:4]]
        more = f" (+{len(op.processes) - 4} more)" if len(op.processes) > 4 else ""
        lines.extend(_wrap(f"{len(op.processes)} processes (caches are per process): " + "; ".join(parts) + more,
                           "     "))
    lines.extend(_wrap("-> " + op.advice.text, "     "))
    if op.advice.paste:
        lines.append("       " + op.advice.paste)
    return lines


def cpu_text(report: CpuReport, top: int) -> list[str]:
    what = "self CPU" if report.basis == "cpu" else "self running time (no CPU counter in the input)"
    lines = _wrap(f"CPU by call stack: {what}, unit {report.unit}; top {min(top, len(report.stacks))} of "
                  f"{len(report.stacks):,} stacks; total {fmt_cost(report.total_self, report.unit)}", "")
    if not report.stacks:
        lines.append("  no spans")
        return lines
    lines.append(f"{'self':>9} {'%':>5} {'total':>9} {'calls':>7}  stack (root > leaf)")
    total = report.total_self or 1
    for st in report.stacks[:top]:
        path = report.table.path(st.stack)
        lines.append(f"{fmt_cost(st.self_cost, report.unit):>9} {100 * st.self_cost / total:5.1f} "
                     f"{fmt_cost(st.total_cost, report.unit):>9} {fmt_count(st.calls):>7}  "
                     f"{elide_stack(path, WIDTH - 35)}")
    if report.orphans:
        lines.extend(_wrap(f"{report.orphans:,} spans had a parent outside the input: their stacks start "
                           "at them", "    "))
    return lines


def latency_text(report: LatencyReport, top: int) -> list[str]:
    lines = ["Latency by function: wall time per call (nearest-rank percentiles), by total wall time",
             f"{'function':<30} {'calls':>7} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'running':>8} "
             f"{'suspend':>8} {'awaits':>6}"]
    for row in report.functions[:top]:
        suspended = "-" if row.mean_suspended is None else fmt_ns(row.mean_suspended)
        awaits = "-" if row.awaits_per_call is None else f"{row.awaits_per_call:.1f}"
        lines.append(f"{elide(row.name, 30):<30} {fmt_count(row.calls):>7} {fmt_ns(row.p50):>8} "
                     f"{fmt_ns(row.p95):>8} {fmt_ns(row.p99):>8} {fmt_ns(row.max):>8} "
                     f"{fmt_ns(row.mean_running):>8} {suspended:>8} {awaits:>6}")
    lines.append("    running, suspend, awaits: mean per call; suspend = time suspended at awaits (coroutines)")
    if any(row.source == "aggregates" for row in report.functions[:top]):
        lines.append("    functions with aggregates (schema 2): every call, percentiles from sketches (within 1%)")
    if report.slowest:
        lines.append("")
        lines.append("Slowest calls")
        for call in report.slowest[:top]:
            lines.append(f"{fmt_ns(call.wall):>9}  {elide_stack(call.stack, WIDTH - 11)}")
            lines.append(f"{'':>11}trace {call.trace_id or '-'} span {call.span_id or '-'}")
    return lines


def render_text(results: Results) -> str:
    lines = header(results)
    sections = {"cache": lambda: cache_text(results.cache, results.top) if results.cache else [],
                "cpu": lambda: cpu_text(results.cpu, results.top) if results.cpu else [],
                "latency": lambda: latency_text(results.latency, results.top) if results.latency else []}
    for name in results.reports:
        lines.append("")
        lines.extend(sections[name]())
    # Names, paths and ids come from the input: their control characters are escaped here, at the
    # boundary, line by line (a newline inside one cannot start a forged line).
    return "\n".join(map(printable, lines)) + "\n"


# -- JSON -------------------------------------------------------------------------------------

def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def opportunity_json(rank: int, op: Opportunity, tier_rank: int) -> dict[str, Any]:
    return {
        "rank": rank, "tier": tier(op.advice.kind), "tier_rank": tier_rank,
        "function": op.name, "file": op.file or None, "line": op.line or None,
        "kind": op.kind, "method": op.method, "calls": op.calls, "errors": op.errors,
        "distinct_keys": round(op.distinct_keys), "hits": round(op.hits_unbounded),
        "hit_ratio": _round(op.hit_ratio), "hit_ratio_at_128": _round(op.hit_ratio_at_128),
        "recommended_maxsize": op.recommended_maxsize,
        "hit_ratio_at_recommended": _round(op.hit_ratio_at_recommended),
        "consistent": op.consistent, "inconsistent_keys": op.inconsistent_keys,
        "identity_keys": op.identity, "identity_key_collisions": op.identity_collisions,
        "impure_callees": op.impure_callees, "overlapping_calls": op.overlapping,
        "impure_callee_keys": [{"inconsistent_keys": round(bad), "keys": round(keys)} for bad, keys in op.impure_keys],
        "inconsistent_share": _round(op.inconsistent_share),
        "unhashable_arg_types": op.unhashable_types, "returns_unhashable": op.returns_unhashable,
        "unhashable_args": [{"argument": None if arg == "?" else arg, "type": kind} for arg, kind in op.unhashable_args],
        "sample_rate": op.sample_rate, "estimated": op.estimated, "estimator": op.estimator,
        "estimate": None if not op.estimated else {
            "text": estimate_text(op), "relative_error": _round(op.estimate_error)},
        "mean_cost": _round(op.mean_cost, 1), "mean_wall_ns": _round(op.mean_wall, 1),
        "own_cost": {"cpu": round(op.own_cpu) if op.cpu_unit != "none" else None, "wall_ns": round(op.own_wall)},
        "source": op.source, "fresh_keys": round(op.fresh_keys), "cheap_ns": op.cheap_ns,
        "shadowed_calls": op.shadowed_calls, "curve_exact_from": op.curve_exact_from,
        "covers": [inner.name for inner in op.covers], "covered_by": op.covered_by,
        "advice": {"kind": op.advice.kind, "text": op.advice.text, "paste": op.advice.paste},
        "savings": {"cpu": round(op.savings.cpu) if op.cpu_unit != "none" else None,
                    "cpu_unit": op.cpu_unit, "wall_ns": round(op.savings.wall), "hits": round(op.savings.hits),
                    "share": _round(op.share)},
        "memory_bytes": op.memory_bytes,
        "curve": [[s, _round(r)] for s, r in op.curve],
        "processes": op.processes,
    }


def render_json_object(results: Results) -> dict[str, Any]:
    m = results.model
    out: dict[str, Any] = {
        "schema": JSON_SCHEMA,
        "generator": f"callspan {__version__}",
        "input": {
            "sources": m.sources, "spans": m.spans, "requests": m.requests, "traces": m.trace_count or None,
            "time_range_ns": [m.first_ns, m.last_ns] if m.first_ns else None,
            "processes": [{**p.as_json(), "aggregates": i in m.profiles,
                           "windows": m.profiles[i].coverage().as_json() if i in m.profiles else None}
                          for i, p in enumerate(m.processes)],
            "warnings": m.warnings,
            "impossible": dict(sorted(m.impossible.items())),
            "schema_versions": sorted({p.schema for p in m.processes if p.schema}),
            "profile_spans": sum(data.spans for data in m.profiles.values()),
        },
        "reports": results.reports,
    }
    if results.cache is not None:
        c = results.cache
        out["cache"] = {
            "options": {"target": c.options.target, "min_calls": c.options.min_calls,
                        "min_share": c.options.min_share, "min_saved_ns": c.options.min_saved_ns,
                        "min_cost_ratio": c.options.min_cost_ratio},
            "lookup_ns": _round(c.lookup.ns, 1),
            "lookup": {"one_arg_ns": _round(c.lookup.one_arg_ns, 1), "three_args_ns": _round(c.lookup.three_args_ns, 1),
                       "iterations": c.lookup.iterations, "repeats": c.lookup.repeats, "source": c.lookup.source},
            "savings_additive": False,
            "savings_note": SAVINGS_OVERLAP,
            "invariant_clamps": dict(sorted(c.clamps.counts.items())),
            "warnings": list(c.clamps.messages),
            "total_cpu": c.total_cpu,
            "functions_analyzed": c.functions_analyzed,
            "functions_without_reuse": c.functions_without_reuse,
            "functions_without_keys": c.functions_without_keys,
            "functions_without_keys_slow_hash": c.functions_without_keys_slow_hash,
            "tiers": {name: len(ranked) for name, ranked in tier_groups(c.opportunities)},
            "opportunities": [opportunity_json(i, op, tier_rank) for i, (tier_rank, op)
                              in enumerate(report_order(c.opportunities), 1)],
        }
    if results.cpu is not None:
        r = results.cpu
        out["cpu"] = {
            "basis": r.basis, "unit": r.unit, "total_self": r.total_self, "stack_count": len(r.stacks),
            "orphan_spans": r.orphans, "aggregate_processes": r.aggregate_processes,
            "stacks": [{"stack": r.table.path(st.stack), "self": st.self_cost, "total": st.total_cost,
                        "calls": st.calls} for st in r.stacks[:results.top]],
        }
    if results.latency is not None:
        lat = results.latency
        out["latency"] = {
            "functions": [{"function": row.name, "file": row.file or None, "line": row.line or None,
                           "kind": row.kind, "calls": row.calls, "errors": row.errors,
                           "timed_calls": row.timed_calls, "p50_ns": row.p50, "p95_ns": row.p95,
                           "p99_ns": row.p99, "max_ns": row.max, "total_wall_ns": row.total_wall,
                           "mean_running_ns": round(row.mean_running),
                           "mean_suspended_ns": None if row.mean_suspended is None else round(row.mean_suspended),
                           "awaits_per_call": _round(row.awaits_per_call, 3), "processes": row.processes,
                           "calls_by_process": [{"process": m.processes[index].key, "calls": calls}
                                                for index, calls in sorted(row.calls_by_process.items())],
                           "source": row.source}
                          for row in lat.functions[:results.top]],
            "slowest": [{"function": c.name, "file": c.file or None, "line": c.line or None, "wall_ns": c.wall,
                         "start_ns": c.start_ns, "trace_id": c.trace_id, "span_id": c.span_id,
                         "stack": c.stack} for c in lat.slowest[:results.top]],
        }
    return out


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:72em;color:#222;
padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .6em;border-bottom:1px solid #eee;
text-align:right;vertical-align:top}th{background:#f6f6f6}td.l,th.l{text-align:left}
code{font:12.5px ui-monospace,Menlo,Consolas,monospace;background:#f4f4f4;padding:.1em .3em}
.fn{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start;margin:1em 0;padding:1em;
border:1px solid #e4e4e4;border-radius:6px}.fn div{flex:1 1 28em}.muted{color:#777}
.k-lru_cache{color:#1a7f37}.k-not_worth_it,.k-method{color:#9a6700}.k-inconsistent,.k-fresh_object,.k-not_cacheable,.k-closure{color:#cf222e}.k-calls_impure,.k-mostly_consistent,.k-mutable_return,.k-callees_unknown,.k-returns_none{color:#bc4c00}
svg text{font:11px system-ui,sans-serif;fill:#444}
.dists{display:flex;flex-wrap:wrap;gap:.5em 1.5em}.dists figure{margin:0}.dists figcaption{font-size:12px;
max-width:300px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
""" + FLAME_CSS


def curve_svg(op: Opportunity, width: int = 380, height: int = 220) -> str:
    """Hit ratio vs cache size (log x axis) as an inline SVG step plot."""
    left, right, top, bottom = 44, 12, 14, 34
    pw, ph = width - left - right, height - top - bottom
    points = op.curve
    max_size = max([DEFAULT_MAXSIZE, op.recommended_maxsize or 1] + [s for s, _ in points]) * 2
    log_max = math.log10(max_size)

    def x(size: float) -> float:
        return left + pw * (math.log10(max(size, 1)) / log_max)

    def y(ratio: float) -> float:
        return top + ph * (1 - ratio)

    path = [f"M{x(1):.1f},{y(0):.1f}"]
    current = 0.0
    for size, ratio in points:
        path.append(f"H{x(size):.1f}")
        path.append(f"V{y(ratio):.1f}")
        current = ratio
    path.append(f"H{x(max_size):.1f}")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f"<title>{_esc(op.name)}: hit ratio by cache size</title>",
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for ratio in (0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(ratio):.1f}" y2="{y(ratio):.1f}" '
                     f'stroke="#e6e6e6"/>')
    for ratio in (0, 0.5, 1.0):
        parts.append(f'<text x="{left - 6}" y="{y(ratio) + 4:.1f}" text-anchor="end">{ratio:.0%}</text>')
    decade = 1
    while decade <= max_size:
        parts.append(f'<line x1="{x(decade):.1f}" x2="{x(decade):.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
                     f'stroke="#888"/><text x="{x(decade):.1f}" y="{top + ph + 16}" '
                     f'text-anchor="middle">{fmt_count(decade)}</text>')
        decade *= 10
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 3}" text-anchor="middle">cache size '
                 f'(maxsize, log scale)</text>')
    parts.append(f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" '
                 f'text-anchor="middle">hit ratio</text>')
    markers = [(DEFAULT_MAXSIZE, "#888", "128")]
    if op.recommended_maxsize:
        markers.append((op.recommended_maxsize, "#1a7f37", f"rec. {fmt_count(op.recommended_maxsize)}"))
    for i, (size, color, label) in enumerate(markers):
        parts.append(f'<line x1="{x(size):.1f}" x2="{x(size):.1f}" y1="{top}" y2="{top + ph}" stroke="{color}" '
                     f'stroke-dasharray="4 3"/><text x="{x(size) + 3:.1f}" y="{top + 12 + 13 * i}" '
                     f'fill="{color}">{html.escape(label)}</text>')
    parts.append(f'<path d="{"".join(path)}" fill="none" stroke="#0969da" stroke-width="2"/>')
    parts.append(f"<desc>final hit ratio {current:.3f}</desc></svg>")
    return "".join(parts)


def _esc(value: object) -> str:
    return html.escape(printable(str(value)))


def render_html(results: Results) -> str:
    m = results.model
    files = len(m.sources)
    body: list[str] = [f"<h1>callspan analyze</h1><p>{m.spans:,} spans from {files} source"
                       f"{'s' if files != 1 else ''}, {len(m.processes)} process"
                       f"{'es' if len(m.processes) != 1 else ''}{_esc(_time_range(m))}<br>"
                       f"CPU counter: {_esc(_units(m))}</p>"]
    if m.warnings:
        body.append("<p class=muted>" + "<br>".join(_esc(w) for w in m.warnings[:MAX_WARNINGS]) + "</p>")
    if results.cache is not None:
        c = results.cache
        body.append(f"<h2>Cache opportunities</h2><p class=muted>In tiers, each ranked by CPU saved at the "
                    f"recommended maxsize (smallest size reaching {c.options.target:.0%} of the unbounded hits). "
                    f"Hit ratios replay every call in start order through an LRU cache of each size. "
                    f"{_esc(SAVINGS_OVERLAP[0].upper() + SAVINGS_OVERLAP[1:])}. {_esc(worth_it_text(c))}</p>")
        if c.clamps.total:
            body.append("<p class=muted>" + "<br>".join(_esc(m) for m in c.clamps.messages) + "</p>")
        details: list[str] = []
        for name, ranked in tier_groups(c.opportunities):
            rows = [f"<h3>{_esc(TIER_TITLES[name])}: {len(ranked):,}</h3>"
                    "<table><tr><th>#</th><th class=l>function</th><th>calls</th><th>distinct keys</th>"
                    "<th>hit ratio</th><th>at 128</th><th>maxsize</th><th>CPU saved</th><th>wall saved</th>"
                    "<th>share</th><th class=l>advice</th></tr>"]
            for rank, op in ranked:
                anchor = f"op-{name}-{rank}"
                rows.append(
                    f"<tr><td>{rank}</td><td class=l><a href='#{anchor}'>{_esc(op.name)}</a>"
                    + "".join(f"<br><span class=muted>= also {_esc(inner.name)}</span>" for inner in op.covers)
                    + "</td>"
                    f"<td>{op.calls:,}</td><td>{'~' if op.estimated else ''}{op.distinct_keys:,.0f}</td>"
                    f"<td>{fmt_pct(op.hit_ratio)}%</td><td>{fmt_pct(op.hit_ratio_at_128)}%</td>"
                    f"<td>{'-' if op.recommended_maxsize is None else f'{op.recommended_maxsize:,}'}</td>"
                    f"<td>{_esc(fmt_cost(op.savings.cpu, op.cpu_unit))}</td><td>{_esc(fmt_ns(op.savings.wall))}</td>"
                    f"<td>{'-' if op.share is None else f'{100 * op.share:.2f}%'}</td>"
                    f"<td class='l k-{op.advice.kind}'>{_esc(op.advice.kind.replace('_', ' '))}</td></tr>")
            rows.append("</table>")
            body.append("".join(rows))
            for rank, op in ranked[:results.top]:
                text = "<br>".join(_esc(line.strip()) for line in opportunity_text(rank, op)[1:])
                details.append(f"<div class=fn id='op-{name}-{rank}'><div><b>{rank}. {_esc(op.name)}</b><br>"
                               f"<span class=muted>{_esc(op.file)}:{op.line}</span><p>{text}</p></div>"
                               f"{curve_svg(op)}</div>")
        body.extend(details)
    if results.cpu is not None:
        r = results.cpu
        total = r.total_self or 1
        rows = [f"<h2>CPU by call stack</h2><p class=muted>self {'CPU' if r.basis == 'cpu' else 'running time'}"
                f", unit {_esc(r.unit)}, total {_esc(fmt_cost(r.total_self, r.unit))}</p>", flame_html(r),
                "<h3>Top stacks by self cost</h3><table><tr><th>self</th>"
                "<th>%</th><th>total</th><th>calls</th><th class=l>stack (root &gt; leaf)</th></tr>"]
        for st in r.stacks[:results.top]:
            rows.append(f"<tr><td>{_esc(fmt_cost(st.self_cost, r.unit))}</td><td>{100 * st.self_cost / total:.1f}</td>"
                        f"<td>{_esc(fmt_cost(st.total_cost, r.unit))}</td><td>{st.calls:,}</td><td class=l>"
                        f"{' &gt; '.join(_esc(f) for f in r.table.path(st.stack))}</td></tr>")
        rows.append("</table>")
        body.append("".join(rows))
    if results.latency is not None:
        lat = results.latency
        rows = ["<h2>Latency by function</h2><table id=latency><tr><th class=l>function</th><th>calls</th><th>p50</th>"
                "<th>p95</th><th>p99</th><th>max</th><th>running</th><th>suspended</th><th>awaits</th></tr>"]
        for row in lat.functions[:results.top]:
            rows.append(f"<tr><td class=l>{_esc(row.name)}</td><td>{row.calls:,}</td><td>{fmt_ns(row.p50)}</td>"
                        f"<td>{fmt_ns(row.p95)}</td><td>{fmt_ns(row.p99)}</td><td>{fmt_ns(row.max)}</td>"
                        f"<td>{fmt_ns(row.mean_running)}</td>"
                        f"<td>{'-' if row.mean_suspended is None else fmt_ns(row.mean_suspended)}</td>"
                        f"<td>{'-' if row.awaits_per_call is None else f'{row.awaits_per_call:.1f}'}</td></tr>")
        rows.append("</table><h3>Wall time per call</h3><p class=muted>Calls per bin (4 per decade, log scale) "
                    "with p50, p95, p99; from latency sketches (within 1%) where the input has aggregates.</p>"
                    "<div class=dists>")
        for row in lat.functions[:results.top]:
            chart = distribution_svg(row)
            if chart:
                rows.append(f"<figure><figcaption title='{_esc(row.name)}'>{_esc(row.name)}</figcaption>{chart}"
                            "</figure>")
        rows.append("</div><h3>Slowest calls</h3><table><tr><th>wall</th><th class=l>stack</th>"
                    "<th class=l>trace</th></tr>")
        for call in lat.slowest[:results.top]:
            rows.append(f"<tr><td>{fmt_ns(call.wall)}</td><td class=l>{' &gt; '.join(_esc(f) for f in call.stack)}"
                        f"</td><td class=l><code>{_esc(call.trace_id)}</code></td></tr>")
        rows.append("</table>")
        body.append("".join(rows))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>callspan analyze</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}<p class=muted>callspan {__version__}</p>"
            "</body></html>\n")
