"""CPU by logical call stack (folded, speedscope) and latency percentiles."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from callspan.analysis import cpu, latency
from callspan.analysis.latency import percentile
from callspan.analysis.loader import load_files
from callspan.analysis.model import Model
from tests.analysis import otlp_fixtures
from tests.analysis.otlp_fixtures import calls_event, request, span, summary, write


@pytest.fixture(autouse=True, params=otlp_fixtures.SPILL_MODES)
def memory_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the model in memory and with every batch spilled to disk
    (sorted by the compiled column sort and by the Python one)."""
    return otlp_fixtures.spill_modes(request, monkeypatch)



def stacks_model(tmp_path: Path) -> Model:
    t1 = [  # end order: children first
        span("m.b", 3, 30, 40, parent=2, cpu=400, cpu_self=400),
        span("m.a", 2, 20, 50, parent=1, cpu=600, cpu_self=200),
        span("m.b", 4, 60, 90, parent=1, cpu=300, cpu_self=250,
             extra=summary(["m.c"], [2], cpu_total=[50], cpu_self=[50])),
        span("m.main", 1, 0, 100, cpu=1000, cpu_self=100),
    ]
    # trace 2 arrives parent first, its child in a later line; plus an orphan whose parent is absent
    t2_parent = span("m.main", 10, 0, 100, trace=2, cpu=30, cpu_self=10)
    t2_child = span("m.a", 11, 10, 20, trace=2, parent=10, cpu=20, cpu_self=20)
    orphan = span("m.x", 20, 0, 5, trace=3, parent=99, cpu=5)
    path = write(str(tmp_path / "t.jsonl"), [request(t1[:2]), request(t1[2:] + [t2_parent]),
                                             request([t2_child, orphan])])
    return load_files([path], otlp_fixtures.load_options())


def test_cost_by_complete_stack(tmp_path: Path) -> None:
    report = cpu.resolve(stacks_model(tmp_path))
    got = {" > ".join(report.table.path(s.stack)): (s.self_cost, s.total_cost, s.calls) for s in report.stacks}
    assert got == {
        "m.main": (110, 1030, 2),
        "m.main > m.a": (220, 620, 2),
        "m.main > m.a > m.b": (400, 400, 1),
        "m.main > m.b": (250, 300, 1),
        "m.main > m.b > m.c": (50, 50, 2),
        "m.x": (5, 5, 1),
    }
    assert report.total_self == 1035
    assert report.orphans == 1
    assert (report.basis, report.unit) == ("cpu", "ns")
    assert [report.table.path(s.stack)[-1] for s in report.stacks[:2]] == ["m.b", "m.b"]  # by self cost


def test_folded_stacks(tmp_path: Path) -> None:
    assert cpu.folded(cpu.resolve(stacks_model(tmp_path))) == (
        "m.main 110\n"
        "m.main;m.a 220\n"
        "m.main;m.a;m.b 400\n"
        "m.main;m.b 250\n"
        "m.main;m.b;m.c 50\n"
        "m.x 5\n"
    )


def test_speedscope_file_follows_the_format(tmp_path: Path) -> None:
    doc = json.loads(cpu.speedscope_json(cpu.resolve(stacks_model(tmp_path))))
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert set(doc) >= {"$schema", "shared", "profiles"}
    frames = doc["shared"]["frames"]
    assert all(isinstance(f["name"], str) for f in frames)
    assert {f["name"] for f in frames} == {"m.main", "m.a", "m.b", "m.c", "m.x"}
    assert {f["name"]: f.get("file") for f in frames}["m.a"] == "/app/m.py"
    (profile,) = doc["profiles"]
    assert profile["type"] == "sampled" and profile["unit"] == "nanoseconds"
    assert len(profile["samples"]) == len(profile["weights"]) == 6
    assert profile["startValue"] == 0 and profile["endValue"] == sum(profile["weights"]) == 1035
    decoded = {";".join(frames[i]["name"] for i in sample): w
               for sample, w in zip(profile["samples"], profile["weights"], strict=True)}
    assert decoded["m.main;m.b;m.c"] == 50 and decoded["m.x"] == 5
    assert doc["activeProfileIndex"] == 0


def test_wall_fallback_without_cpu(tmp_path: Path) -> None:
    spans = [span("m.b", 2, 10, 40, parent=1, run=30), span("m.a", 1, 0, 100, run=100)]
    report = cpu.resolve(load_files([write(str(tmp_path / "t.jsonl"), [request(spans, unit="none")])],
                                    otlp_fixtures.load_options()))
    got = {" > ".join(report.table.path(s.stack)): (s.self_cost, s.total_cost) for s in report.stacks}
    assert report.basis == "wall" and report.unit == "ns"
    assert got == {"m.a": (70, 100), "m.a > m.b": (30, 30)}


def test_parent_cycles_in_bad_input_do_not_hang(tmp_path: Path) -> None:
    spans = [span("m.a", 1, 0, 10, parent=2, cpu=1), span("m.b", 2, 0, 10, parent=1, cpu=2)]
    report = cpu.resolve(load_files([write(str(tmp_path / "t.jsonl"), [request(spans)])], otlp_fixtures.load_options()))
    assert report.total_self == 3


@pytest.mark.parametrize("p,expected", [(50, 100), (95, 190), (99, 200), (100, 200), (1, 10)])
def test_nearest_rank_percentiles(p: float, expected: int) -> None:
    assert percentile([10 * i for i in range(1, 21)], p) == expected


def test_percentile_edge_cases() -> None:
    assert percentile([], 50) == 0
    assert percentile([7], 99) == 7
    assert percentile([1, 2], 50) == 1


def test_latency_per_function(tmp_path: Path) -> None:
    walls = [10 * i for i in range(1, 21)]
    spans = [span("m.f", i + 1, 1000 * i, 1000 * i + w) for i, w in enumerate(walls)]
    coro = [span("m.co", 100, 0, 100, kind="coroutine", run=40,
                 extra={"callspan.await.suspended_ns": 60, "callspan.await.count": 2}),
            span("m.co", 101, 200, 300, kind="coroutine", run=60,
                 extra={"callspan.await.suspended_ns": 40, "callspan.await.count": 4})]
    root = span("m.root", 200, 0, 5000, extra=summary(["m.f"], [2], walls=[6]),
                events=[calls_event("m.f", [1, 1], [30_000, 40_000], duration=3)])
    model = load_files([write(str(tmp_path / "t.jsonl"), [request(spans + coro + [root])])],
                       otlp_fixtures.load_options(slow_keep=3))
    stacks = cpu.resolve(model, [(t, s) for _, t, s, _, _, _ in model.slow])
    report = latency.analyze(model, stacks)
    rows = {r.name: r for r in report.functions}
    f = rows["m.f"]
    # 20 span walls + 2 listed summarised calls of 3 ns each
    assert (f.calls, f.timed_calls) == (22, 22)
    assert (f.p50, f.p95, f.p99, f.max) == (90, 190, 200, 200)  # ranks 11, 21, 22 of 22
    assert f.mean_suspended is None and f.awaits_per_call is None
    co = rows["m.co"]
    assert (co.mean_running, co.mean_suspended, co.awaits_per_call) == (50, 50, 3)
    assert [c.wall for c in report.slowest] == [5000, 200, 190]
    assert report.slowest[0].stack == ["m.root"]
    assert report.slowest[0].trace_id == f"{1:032x}" and report.slowest[0].span_id == f"{200:016x}"


def test_slowest_calls_have_their_stacks(tmp_path: Path) -> None:
    spans = [span("m.leaf", 3, 10, 900, parent=2), span("m.mid", 2, 5, 950, parent=1),
             span("m.top", 1, 0, 1000)]
    model = load_files([write(str(tmp_path / "t.jsonl"), [request(spans)])], otlp_fixtures.load_options(slow_keep=1))
    stacks = cpu.resolve(model, [(t, s) for _, t, s, _, _, _ in model.slow])
    model.slow = [x for x in model.slow]
    report = latency.analyze(model, stacks)
    assert [c.stack for c in report.slowest] == [["m.top"]]
    model2 = load_files([write(str(tmp_path / "u.jsonl"), [request(spans[:1] + spans[2:] + spans[1:2])])],
                        otlp_fixtures.load_options(slow_keep=3))
    report2 = latency.analyze(model2, cpu.resolve(model2, [(t, s) for _, t, s, _, _, _ in model2.slow]))
    assert [c.stack for c in report2.slowest] == [["m.top"], ["m.top", "m.mid"], ["m.top", "m.mid", "m.leaf"]]


def test_latency_sorts_in_jobs_give_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """latency.start hands the wall-time sorts to a pool's imap in jobs; the report is unchanged."""
    import pickle

    spans = [span(f"m.f{i % 3}", i + 1, 1000 * i, 1000 * i + (i * 37) % 500 + 1) for i in range(60)]
    spans += [span("m.root", 100, 0, 70_000, extra=summary(["m.f1"], [2], walls=[6]),
                   events=[calls_event("m.f1", [1, 1], [80_000, 90_000], duration=3)])]
    model = load_files([write(str(tmp_path / "t.jsonl"), [request(spans)])], otlp_fixtures.load_options(slow_keep=4))
    stacks = cpu.resolve(model, [(t, s) for _, t, s, _, _, _ in model.slow])
    expected = latency.analyze(model, stacks)
    jobs: list[Any] = []

    def pool_like_imap(func: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        # As a process pool does: arguments and results cross a pickle boundary.
        shipped = [pickle.loads(pickle.dumps(item)) for item in items]
        jobs.extend(shipped)
        return (pickle.loads(pickle.dumps(func(item))) for item in shipped)

    monkeypatch.setattr(latency, "JOB_CALLS", 25)  # several jobs
    report = latency.start(model, pool_like_imap).finish(stacks)
    assert len(jobs) > 1
    assert report == expected
    f1 = next(r for r in report.functions if r.name == "m.f1")
    walls = sorted([(i * 37) % 500 + 1 for i in range(1, 60, 3)] + [3, 3])
    assert (f1.timed_calls, f1.p50, f1.p95, f1.p99) == (22, walls[10], walls[20], walls[21])


def test_slowest_call_stack_is_found_in_its_own_trace(tmp_path: Path) -> None:
    # Span id 5 in two traces: the slow one (trace 2) sits under m.b, the other under m.a.
    spans = [span("m.leaf", 5, 10, 20, parent=1, trace=1), span("m.a", 1, 0, 30, trace=1),
             span("m.leaf", 5, 10, 900, parent=2, trace=2), span("m.b", 2, 0, 950, trace=2)]
    model = load_files([write(str(tmp_path / "t.jsonl"), [request(spans)])], otlp_fixtures.load_options(slow_keep=2))
    stacks = cpu.resolve(model, [(t, s) for _, t, s, _, _, _ in model.slow])
    report = latency.analyze(model, stacks)
    assert [(c.wall, c.stack) for c in report.slowest] == [(950, ["m.b"]), (890, ["m.b", "m.leaf"])]
