"""Spilling to disk: merged runs keep the exact order, partitions keep traces together, the
stream replay and the rank selection equal their in-memory definitions, and the CLI's
``--memory-mb`` gives the same report with bounded memory."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callspan.analysis import latency, spill
from callspan.analysis.cache import StackDistances
from callspan.analysis.loader import LoadOptions, load_files
from callspan.analysis.model import CallColumns, CallSource, Model, trace_key
from callspan.analysis.otlp import add_request
from callspan.analysis.spill import (
    AppendFile,
    Partitions,
    Runs,
    SpillDir,
    SpillError,
    merged_pieces,
    sort_columns,
)
from tests.analysis import otlp_fixtures
from tests.analysis.otlp_fixtures import SRC, key_sequence_spans, request, span, write
from tests.analysis.test_cache import _distances_by_definition
from tests.analysis.test_cli import run

COMPILED_SORT = spill.SORT_COLUMNS


@pytest.fixture(autouse=True, params=["compiled", "python"])
def column_sorting(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the compiled column sort and with the Python one."""
    return otlp_fixtures.compiled_or_python(request, monkeypatch, spill, "SORT_COLUMNS", "column sort")


_RANGES = {"b": (-128, 127), "B": (0, 255), "h": (-2**15, 2**15 - 1), "H": (0, 2**16 - 1), "i": (-2**31, 2**31 - 1),
           "I": (0, 2**32 - 1), "l": (-2**63, 2**63 - 1), "L": (0, 2**64 - 1), "q": (-2**63, 2**63 - 1),
           "Q": (0, 2**64 - 1)}


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from(sorted(_RANGES)), st.lists(st.sampled_from(sorted(_RANGES)), max_size=4),
       st.integers(0, 70), st.booleans())
def test_compiled_column_sort_equals_the_python_one(data: st.DataObject, key_code: str, codes: list[str], n: int,
                                                    as_bytes: bool) -> None:
    def values(code: str) -> list[int]:
        lo, hi = _RANGES[code]
        edge = st.sampled_from([lo, hi, 0 if lo < 0 else lo, -1 if lo < 0 else hi])
        return data.draw(st.lists(st.integers(lo, hi) | edge | st.integers(0, 3), min_size=n, max_size=n))

    key: Any = array(key_code, values(key_code))
    if as_bytes:
        key = bytes(values("B"))
    columns = [array(code, values(code)) for code in codes] + [array("q", range(n))]
    if COMPILED_SORT is None:
        pytest.skip("the compiled column sort is not built")
    assert COMPILED_SORT(columns, key) == spill.sort_columns_py(columns, key)


def test_column_sort_errors() -> None:
    sort = spill.sort_columns
    with pytest.raises(ValueError, match="as long as the key"):
        sort([array("q", [1, 2]), array("I", [1, 2, 3, 4])], array("q", [2, 1]))
    with pytest.raises(ValueError, match="as long as the key"):
        sort([array("q", [1])], array("q", [2, 1]))
    if COMPILED_SORT is not None:
        with pytest.raises(TypeError, match="not an integer"):
            COMPILED_SORT([array("d", [1.0])], array("d", [1.0]))  # type: ignore[arg-type]
    assert sort([], array("q")) == []
    assert sort([array("B", [3, 1, 2])], bytes([2, 0, 1])) == [array("B", [1, 2, 3])]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), max_size=12), max_size=5), st.lists(st.integers(0, 6), max_size=8),
       st.integers(1, 4))
def test_merged_runs_come_back_in_the_order_of_one_stable_sort(runs: list[list[int]], tail: list[int],
                                                               piece: int) -> None:
    # Entries: (key, arrival number); many equal keys across runs and pieces.
    spill_dir = SpillDir()
    try:
        file = AppendFile(spill_dir.new_file("runs"))
        arrival = 0
        written = []
        everything: list[tuple[int, int]] = []
        for keys in runs:
            numbers = list(range(arrival, arrival + len(keys)))
            arrival += len(keys)
            everything += zip(keys, numbers, strict=True)
            ordered = sort_columns([array("q", keys), array("Q", numbers)], array("q", keys))
            written.append((file.write(ordered), len(keys)))
        numbers = list(range(arrival, arrival + len(tail)))
        everything += zip(tail, numbers, strict=True)
        tail_columns = sort_columns([array("q", tail), array("Q", numbers)], array("q", tail))
        merged = []
        for block_keys, payload in merged_pieces(Runs(file.path, "qQ"), written, tail_columns, 0, piece):
            block = sorted(zip(block_keys, payload, strict=True), key=lambda entry: entry[0])  # the consumer's stable sort
            merged += block
        assert merged == sorted(everything, key=lambda entry: entry[0])
        file.close()
    finally:
        spill_dir.close()
    assert not os.path.exists(spill_dir.path)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 400), max_size=30), max_size=6), st.integers(1, 12))
def test_partitions_hold_every_key_in_one_part_in_arrival_order(batches: list[list[int]], max_entries: int) -> None:
    spill_dir = SpillDir()
    try:
        parts = Partitions(spill_dir, "rows", "IQ", 0)
        arrival = 0
        for keys in batches:
            parts.add([array("I", keys), array("Q", range(arrival, arrival + len(keys)))])
            arrival += len(keys)
        seen: dict[int, int] = {}
        entries: list[tuple[int, int]] = []
        for number, (part_keys, payload) in enumerate(parts.parts(max_entries)):
            for key in set(part_keys):
                assert key not in seen  # one part per key
                seen[key] = number
            assert list(payload) == sorted(payload)  # arrival order within a part
            if len(part_keys) > max_entries:
                assert len(set(part_keys)) == 1  # bigger than asked for: it cannot be split
            entries += zip(part_keys, payload, strict=True)
        everything = [(k, n) for n, k in enumerate(k for keys in batches for k in keys)]
        assert sorted(entries, key=lambda e: e[1]) == everything
    finally:
        spill_dir.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40) | st.integers(0, 2**64 - 1), max_size=300), st.lists(st.integers(1, 50), max_size=8),
       st.sampled_from([-1, 0, 3, 260, 2048]))
def test_stack_distances_fed_in_blocks_match_the_definition(keys: list[int], cuts: list[int], mtf_max_keys: int) -> None:
    # Blocks of any size; move-to-front codes growing from one byte to two, switching to the
    # Fenwick tree mid-stream (at mtf_max_keys distinct keys), and renumbering the tree.
    replay = StackDistances(mtf_max_keys=mtf_max_keys)
    out: list[int] = []
    rest = keys
    for cut in cuts:
        out += replay.feed(rest[:cut])
        rest = rest[cut:]
    out += replay.feed(rest)
    assert out == _distances_by_definition(keys)
    assert replay.distinct == len(set(keys))


def test_stack_distances_stay_proportional_to_the_distinct_keys() -> None:
    rng = random.Random(5)
    replay = StackDistances(mtf_max_keys=-1)
    keys = [rng.randrange(100) for _ in range(200_000)]
    for lo in range(0, len(keys), 1000):
        replay.feed(keys[lo:lo + 1000])
    assert replay.distinct == 100
    assert replay.size <= 4 * (100 + 1000)  # renumbered: not one slot per access


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(-50, 10**12) | st.integers(0, 9), min_size=1, max_size=40), min_size=1,
                max_size=5), st.data())
def test_rank_selection_matches_sorting(chunks: list[list[int]], data: st.DataObject) -> None:
    values = sorted(v for chunk in chunks for v in chunk)
    ranks = data.draw(st.lists(st.integers(1, len(values)), min_size=1, max_size=4))
    arrays = [array("q", chunk) for chunk in chunks]
    old = latency.SELECT_COLLECT, latency.SELECT_BUCKETS
    latency.SELECT_COLLECT, latency.SELECT_BUCKETS = data.draw(st.sampled_from([(0, 2), (2, 4), (1 << 18, 1 << 16)]))
    try:
        assert latency.select_ranks(lambda: iter(arrays), ranks) == [values[r - 1] for r in ranks]
    finally:
        latency.SELECT_COLLECT, latency.SELECT_BUCKETS = old


def test_a_spilled_function_gives_the_same_percentiles(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    tail = CallColumns()
    spill_dir = SpillDir()
    file = AppendFile(spill_dir.new_file("calls"))
    runs = []
    walls = []
    for n in (500, 1, 0, 77):
        columns = CallColumns()
        for _ in range(n):
            start = rng.randrange(10**9)
            wall = rng.choice([5, 5, 1000, rng.randrange(10**7)])
            walls.append(wall)
            for name, value in (("start", start), ("end", start + wall), ("args", 1), ("ret", 1), ("cpu", 0),
                                ("thread", 1), ("flags", 0)):
                getattr(columns, name).append(value)
        runs.append((file.write(sort_columns(columns.columns(), columns.start)), n))
    for wall in (3, 4):
        walls.append(wall)
        for name, value in (("start", 0), ("end", wall), ("args", 1), ("ret", 1), ("cpu", 0), ("thread", 1),
                            ("flags", 0)):
            getattr(tail, name).append(value)
    source = CallSource(file.path, runs, tail)
    monkeypatch.setattr(latency, "SELECT_COLLECT", 16)
    walls.sort()
    distribution = Counter(latency.bin_of(wall) for wall in walls)
    expected = (len(walls), latency.percentile(walls, 50), latency.percentile(walls, 95),
                latency.percentile(walls, 99), dict(distribution))
    assert sum(distribution.values()) == len(walls) and len(distribution) > 5
    assert latency._percentiles([source]) == expected
    assert latency._percentiles([CallSource("", [], source.gather())]) == expected  # in memory
    spill_dir.close()


def service_file(tmp_path: Path, spans: int) -> str:
    """About ``spans`` spans: per line, 499 calls of one of three functions over 40 keys (equal
    start times across lines) under a root span of one of two handlers, in several traces."""
    rng = random.Random(11)
    lines = []
    made = 0
    while made < spans:
        keys = [rng.randrange(40) for _ in range(499)]
        name = rng.choice(["m.price", "m.fetch", "m.render"])
        root = made + 1
        trace = 1 + made // 2000
        children = key_sequence_spans(name, keys, first_id=root + 1, cpu=1000 + made % 7, parent=root, trace=trace)
        handler = span(rng.choice(["m.handle", "m.batch"]), root, 0, 500_000, trace=trace, cpu=10**6)
        lines.append(request([*children, handler]))
        made += 500
    return write(str(tmp_path / "big.jsonl"), lines)


def test_the_cli_spills_and_gives_the_same_report(tmp_path: Path) -> None:
    path = service_file(tmp_path, 30_000)
    spill_parent = tmp_path / "spill"
    spill_parent.mkdir()
    env_before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(spill_parent)
    try:
        # The cache hit's cost is measured in each run (it varies a little): fixed here to compare.
        in_memory = run(path, "--report", "all", "--format", "json", "--memory-mb", "0", "--jobs", "1",
                        "--lookup-ns", "100")
        spilled = run(path, "--report", "all", "--format", "json", "--memory-mb", "1", "--jobs", "2",
                      "--lookup-ns", "100")
    finally:
        if env_before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = env_before
    assert in_memory.returncode == spilled.returncode == 0, spilled.stderr
    assert json.loads(in_memory.stdout) == json.loads(spilled.stdout)
    assert json.loads(spilled.stdout)["cache"]["opportunities"]
    assert list(spill_parent.iterdir()) == []  # removed when done


def test_the_model_spills_when_over_budget(tmp_path: Path) -> None:
    path = service_file(tmp_path, 30_000)
    model = load_files([path], LoadOptions(memory_budget=1 << 20, chunk_bytes=1 << 20, jobs=1))
    try:
        assert model.spills >= 2
        assert model.held <= 2 << 20  # at most one chunk over the budget
        assert sum(model.call_count(i) for i in range(len(model.functions))) == 30_000
    finally:
        model.close()
    never = load_files([path], LoadOptions(memory_budget=0, jobs=1))
    assert never.spills == 0


def test_a_spill_directory_that_cannot_be_made_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = service_file(tmp_path, 30_000)
    env = dict(os.environ, PYTHONPATH=SRC)
    done = subprocess.run([sys.executable, "-m", "callspan.analysis", path, "--memory-mb", "1", "--report", "all",
                           "--spill-dir", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "cannot spill to disk" in done.stderr and str(tmp_path / "missing") in done.stderr


def test_spill_errors_name_the_file() -> None:
    with pytest.raises(SpillError, match="nowhere/x.bin: cannot spill to disk"):
        AppendFile("/nonexistent-callspan/nowhere/x.bin")


def test_model_close_removes_the_spill_files() -> None:
    model = Model(memory_budget=1)
    batch = model.new_batch()
    add_request(batch, request(key_sequence_spans("m.f", [1, 2, 1])))
    model.merge(batch)
    assert model.spills == 1
    source = model.call_source(0)
    assert source is not None and source.spilled and os.path.exists(source.path)
    model.close()
    assert not os.path.exists(source.path)


def test_trace_keys_fold_hex_ids_and_digest_the_rest() -> None:
    assert trace_key("0" * 16 + "00000000000000ff") == 0xFF
    assert trace_key("00000000000000010000000000000002") == 1 ^ 2
    assert trace_key("abcdef") == trace_key("ABCDEF") == 0xABCDEF  # Jaeger's short ids too
    # not hex, or too long: a digest of the text, the same in every process (not hash())
    assert trace_key("trace-1") == int.from_bytes(hashlib.blake2b(b"trace-1", digest_size=8).digest(), "little")
    assert trace_key("f" * 33) != trace_key("f" * 32)
    assert trace_key("") == trace_key("")
    rng = random.Random(1)
    ids = {f"{rng.getrandbits(128):032x}" for _ in range(10_000)}
    assert len({trace_key(i) for i in ids}) == len(ids)
