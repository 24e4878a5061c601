"""The HTML report's graphs: the flame graph's tree (exact widths, folded tail) and the latency
distribution charts. (Drawn in a real browser by tests/integration/test_report_browser.py.)"""

from __future__ import annotations

import json
import re

from callspan.analysis import cpu, latency
from callspan.analysis.cpu import CpuReport, Stacks, StackStat
from callspan.analysis.graphs import TAIL_LABEL, distribution_svg, flame_html, flame_json, flame_tree
from callspan.analysis.latency import LatencyRow
from tests.analysis.otlp_fixtures import model_of, request, span

MS = 1_000_000


def known_report() -> CpuReport:
    spans = [
        span("app.fetch", 3, 1, 2, parent=2, kind="coroutine", cpu=MS),
        span("app.fetch", 4, 1, 2, parent=2, kind="coroutine", cpu=MS),
        span("app.fetch_all", 2, 0, 5, parent=1, kind="coroutine", cpu=3 * MS, cpu_self=MS),
        span("app.escape", 7, 6, 7, parent=6, cpu=MS),
        span("app.render", 6, 5, 9, parent=1, cpu=3 * MS, cpu_self=2 * MS),
        span("app.handler", 1, 0, 10, cpu=7 * MS, cpu_self=MS),
    ]
    return cpu.resolve(model_of(request(spans)))


def labelled(tree: object) -> dict[tuple[str, ...], int]:
    """Box path (names from the root) -> box."""
    out = {}
    for box in range(len(tree)):  # type: ignore[arg-type]
        path = []
        b = box
        while b >= 0:
            path.append(tree.names[tree.name[b]])  # type: ignore[attr-defined]
            b = tree.parent[b]  # type: ignore[attr-defined]
        out[tuple(reversed(path))] = box
    return out


def test_flame_tree_widths_are_self_costs_summed_up_the_tree() -> None:
    tree = flame_tree(known_report())
    boxes = labelled(tree)
    assert set(boxes) == {("all",), ("all", "app.handler"), ("all", "app.handler", "app.fetch_all"),
                          ("all", "app.handler", "app.fetch_all", "app.fetch"), ("all", "app.handler", "app.render"),
                          ("all", "app.handler", "app.render", "app.escape")}
    width = {path[-1]: tree.width[box] for path, box in boxes.items()}
    assert width == {"all": 7 * MS, "app.handler": 7 * MS, "app.fetch_all": 3 * MS, "app.fetch": 2 * MS,
                     "app.render": 3 * MS, "app.escape": MS}
    calls = {path[-1]: tree.calls[box] for path, box in boxes.items()}
    assert calls["app.fetch"] == 2 and calls["app.handler"] == 1
    totals = {path[-1]: tree.total[box] for path, box in boxes.items()}
    assert totals["app.fetch_all"] == 3 * MS and totals["app.render"] == 3 * MS
    # Parents come before their children; children widest first.
    assert all(tree.parent[b] < b for b in range(1, len(tree)))
    kids = [tree.names[tree.name[b]] for b in range(len(tree)) if tree.parent[b] == boxes[("all", "app.handler")]]
    assert kids == ["app.fetch_all", "app.render"]  # equal widths: by name
    assert sum(tree.folded) == 0 and tree.stacks == 5


def big_report(services: int, leaves: int) -> CpuReport:
    table = Stacks()
    stats = []
    for s in range(services):
        service = table.child(0, table.name_id(f"svc_{s}"))
        stats.append(StackStat(service, 10, 10, 1))
        for leaf in range(leaves):
            stack = table.child(service, table.name_id(f"leaf_{leaf}"))
            stats.append(StackStat(stack, 1000 * (leaves - leaf) + s, 0, 2))
    return CpuReport("cpu", "instructions", sum(st.self_cost for st in stats), stats, table, {}, 0, 0, {})


def test_the_tail_is_folded_per_parent_and_widths_stay_exact() -> None:
    report = big_report(services=3, leaves=10)
    tree = flame_tree(report, max_nodes=12)
    real = [b for b in range(1, len(tree)) if not tree.folded[b]]
    tails = [b for b in range(1, len(tree)) if tree.folded[b]]
    assert len(real) == 12
    # The 12 widest stacks: the 3 services and the 3 widest leaves of each.
    assert sorted(tree.names[tree.name[b]] for b in real) == sorted(
        [f"svc_{s}" for s in range(3)] + [f"leaf_{i}" for i in range(3)] * 3)
    assert len(tails) == 3
    for b in tails:
        assert tree.names[tree.name[b]] == TAIL_LABEL.format(count="7") and tree.folded[b] == 7
        service = int(tree.names[tree.name[tree.parent[b]]].split("_")[1])
        assert tree.width[b] == sum(1000 * (10 - leaf) + service for leaf in range(3, 10))
        assert tree.calls[b] == 14
    # Every parent is exactly as wide as its self cost plus its children.
    for b in range(len(tree)):
        children = [c for c in range(len(tree)) if tree.parent[c] == b]
        if children:
            assert tree.width[b] == tree.self_cost[b] + sum(tree.width[c] for c in children)
    assert tree.width[0] == report.total_self


def test_100k_stacks_make_a_bounded_page() -> None:
    report = big_report(services=100, leaves=1000)
    assert len(report.stacks) == 100_100
    tree = flame_tree(report)
    assert tree.stacks == 100_100
    assert len(tree) <= 1 + 4000 + 100
    assert tree.width[0] == report.total_self
    page = flame_html(report)
    assert len(page) < 600_000
    assert "100,100 stacks; the 96,100 narrowest are folded" in page


def test_flame_json_cannot_close_its_script_element() -> None:
    table = Stacks()
    stack = table.child(0, table.name_id("</script><b>x"))
    report = CpuReport("wall", "ns", 5, [StackStat(stack, 5, 5, 1)], table, {}, 0, 0, {})
    text = flame_json(flame_tree(report))
    assert "<" not in text
    assert json.loads(text)["names"] == ["all", "</script><b>x"]
    assert "data-basis='running time'" in flame_html(report)


def row(distribution: dict[int, int], p50: int, p95: int, p99: int) -> LatencyRow:
    return LatencyRow("m.f", "", 0, "function", sum(distribution.values()), 0, sum(distribution.values()),
                      p50, p95, p99, p99, 0, 0.0, None, None, 1, {0: sum(distribution.values())},
                      distribution=distribution)


def test_distribution_chart_has_a_bar_per_bin_and_three_marks() -> None:
    walls = [120, 130, 5_000, 5_100, 5_200, 2_000_000]
    distribution: dict[int, int] = {}
    for wall in walls:
        distribution[latency.bin_of(wall)] = distribution.get(latency.bin_of(wall), 0) + 1
    assert distribution == {8: 2, 14: 3, 25: 1}  # 10**(8/4) <= 120 < 10**(9/4), ...
    svg = distribution_svg(row(distribution, 5_000, 2_000_000, 2_000_000))
    heights = [float(h) for h in re.findall(r'<rect class=bar [^>]*height="([0-9.]+)"', svg)]
    assert len(heights) == 3
    assert heights[1] > heights[0] > heights[2]  # 3 calls, 2, 1
    assert svg.count("class=mark") == 3
    assert distribution_svg(row({}, 0, 0, 0)) == ""


def test_bins_are_quarter_decades() -> None:
    assert [latency.bin_of(v) for v in (0, 1, 2, 9, 10, 17, 18, 99, 100, 10**9)] == [0, 0, 1, 3, 4, 4, 5, 7, 8, 36]
    assert latency.bin_floor(8) == 100.0
