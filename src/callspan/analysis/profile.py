"""Schema version 2 aggregates: the ``callspan.profile`` spans of one process, summed over windows.

A v2 tracer folds every call into per-process aggregates (docs/span-schema.md, "Schema version
2") and exports what they gained since the last export as ``callspan.profile`` spans: columnar
arrays of a function table, call-tree nodes, latency sketches and cache state. Windows are
deltas, so a reader adds them per (process, id); chunks of one window hold disjoint nodes.

``ProfileData`` is that sum for one process. It is built per chunk of input in a ``Batch``
(worker processes), pickled as plain containers, and merged into the ``Model``; it is never
spilled (it grows with functions, nodes and keys' distances, not with calls). A process with
profile data takes its totals from it; its function spans are then only examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

PROFILE_SPAN = "callspan.profile"
_P = "callspan.profile."
OTHER_LABEL = "(other)"


def _add_fields(target: Any, other: Any, names: tuple[str, ...]) -> None:
    """``target.<name> += other.<name>`` for each of ``names`` (the counters the classes sum)."""
    for name in names:
        setattr(target, name, getattr(target, name) + getattr(other, name))


@dataclass(slots=True)
class ProfileFunction:
    """One function of the process's function table, with its call totals."""

    name: str
    file: str = ""
    line: int = 0
    kind: str = "function"
    calls: int = 0
    errors: int = 0
    wall_ns: int = 0
    run_ns: int = 0
    cpu_self: int = 0

    def add(self, other: ProfileFunction) -> None:
        if not self.name:
            self.name = other.name
        if not self.file and other.file:
            self.file, self.line = other.file, other.line
        if other.kind and self.kind == "function":
            self.kind = other.kind
        _add_fields(self, other, ("calls", "errors", "wall_ns", "run_ns", "cpu_self"))


@dataclass(slots=True)
class ProfileNode:
    """One call-tree node: a thread root (function 0, label = thread name), an ``(other)`` fold
    (function 0, label ``(other)``) or a function under its parent node. Wall, running,
    suspended, awaits and total CPU count the calls whose parent is in another node (recursion
    folded into one node is not counted twice); self CPU counts every call."""

    parent: int
    function: int
    label: str = ""
    calls: int = 0
    errors: int = 0
    wall_ns: int = 0
    run_ns: int = 0
    suspended_ns: int = 0
    awaits: int = 0
    cpu_total: int = 0
    cpu_self: int = 0

    def add(self, other: ProfileNode) -> None:
        if not self.parent and other.parent:
            self.parent = other.parent
        if not self.function and other.function:
            self.function = other.function
        if not self.label and other.label:
            self.label = other.label
        _add_fields(self, other, ("calls", "errors", "wall_ns", "run_ns", "suspended_ns", "awaits", "cpu_total",
                                  "cpu_self"))

    @property
    def is_thread_root(self) -> bool:
        return not self.function and self.label != OTHER_LABEL and not self.parent

    @property
    def is_other(self) -> bool:
        return not self.function and self.label == OTHER_LABEL


@dataclass(slots=True)
class ProfileCache:
    """The cache state of one keyed function, summed over windows. Key-derived figures are
    already scaled by 1/rate by the tracer (SHARDS beyond its per-function key cap)."""

    calls: int = 0  # keyed calls
    unhashable_calls: int = 0
    unhashable_types: dict[str, None] = field(default_factory=dict)  # type names, first seen first
    identity_calls: int = 0
    keys: float = 0.0
    inconsistent_keys: float = 0.0
    inconsistent_calls: float = 0.0
    fresh_keys: float = 0.0
    overlaps: float = 0.0
    sampled_calls: int = 0
    rate: float = 1.0  # smallest SHARDS rate seen (rates only go down)
    cheap_ns: int = 0  # mean ns per call when the tracer stopped keying it as too cheap (0: keyed)
    shadowed_calls: int = 0  # calls nested in a hit of the same function: left out of the replay
    unhashable_returns: int = 0  # returned values hash() refused (mutable: callers would share them)
    none_returns: int = 0  # calls that returned None (absent from older tracers: 0)

    def add(self, other: ProfileCache) -> None:
        _add_fields(self, other, ("calls", "unhashable_calls", "identity_calls", "keys", "inconsistent_keys",
                                  "inconsistent_calls", "fresh_keys", "overlaps", "sampled_calls", "shadowed_calls",
                                  "unhashable_returns", "none_returns"))
        self.unhashable_types.update(other.unhashable_types)
        self.rate = min(self.rate, other.rate)
        self.cheap_ns = max(self.cheap_ns, other.cheap_ns)


MISSING_WINDOWS_LISTED = 10  # window numbers a warning or the JSON lists of a process's gaps


@dataclass(frozen=True, slots=True)
class WindowCoverage:
    """The windows of one process the input holds (``input.processes[].windows`` in the JSON)."""

    received: int  # distinct windows read
    last: int  # the highest window number read (-1: none; null in the JSON)
    final: bool  # a window flagged final was read: the tracer stopped and exported its last one
    missing: int  # window numbers below ``last`` that are not in the input
    missing_windows: list[int]  # the first of them
    missing_calls: int | None  # calls_total of the last window minus the calls read (None: not said)
    end_ns: int  # the end of the last window read: what the process folded after it is not in the input

    def as_json(self) -> dict[str, Any]:
        return {"received": self.received, "last": self.last if self.received else None, "final": self.final,
                "missing": self.missing,
                "missing_windows": self.missing_windows, "missing_calls": self.missing_calls,
                "end_ns": self.end_ns or None}


# A reuse row: [hits, cpu, wall_ns] of the calls at one LRU stack distance (scaled by 1/rate).
ReuseRow = list[float]
Sketch = dict[int, int]  # bucket index -> calls


@dataclass(slots=True)
class ProfileData:
    """Every ``callspan.profile`` span of one process, summed (see the module docstring)."""

    gamma: float = 0.0  # of the latency sketches (0: none seen)
    functions: dict[int, ProfileFunction] = field(default_factory=dict)
    nodes: dict[int, ProfileNode] = field(default_factory=dict)
    wall_sketch: dict[int, Sketch] = field(default_factory=dict)  # function id -> bucket -> calls
    run_sketch: dict[int, Sketch] = field(default_factory=dict)
    cache: dict[int, ProfileCache] = field(default_factory=dict)
    reuse: dict[int, dict[int, ReuseRow]] = field(default_factory=dict)  # function -> distance -> row
    chunks: dict[int, tuple[int, set[int]]] = field(default_factory=dict)  # window -> (chunk count, seen)
    duplicates: int = 0  # (window, chunk) pairs read more than once: their deltas were added twice
    # Window accounting (which windows arrived, the tracer's running call count, the last one):
    window_calls: dict[int, int] = field(default_factory=dict)  # window -> function calls read in it
    calls_totals: dict[int, int] = field(default_factory=dict)  # window -> its calls_total (cumulative)
    window_ends: dict[int, int] = field(default_factory=dict)  # window -> its end, Unix ns
    final_windows: set[int] = field(default_factory=set)  # windows flagged final (exported at stop)
    lost_calls: int = 0
    other_calls: int = 0  # calls folded into (other) nodes by the tracer's node or depth cap
    # (caller, callee) function ids -> calls, of the calls folded into (other) nodes: with the
    # tree's edges, every caller-callee pair (tracers that keep them: ``keeps_edges``).
    call_edges: dict[tuple[int, int], int] = field(default_factory=dict)
    keeps_edges: bool = False  # some span said lost_edges: the tracer keeps call edges beyond the caps
    lost_edges: int = 0  # calls whose (new) pair the tracer's full edge table could not keep
    spans: int = 0
    impossible: int = 0  # negative or non-finite counts, times, CPU read: set to 0

    # -- reading --------------------------------------------------------------------------------

    def add_span(self, at: dict[str, Any], end_ns: int = 0) -> None:
        """Fold one ``callspan.profile`` span's decoded attributes in (``end_ns``: the span's end)."""
        self.spans += 1
        window = _int(at.get(_P + "window"))
        if window < 0:  # numbered from 0: read, but not counted as one of the process's windows
            self.impossible += 1
        chunk = _int(at.get(_P + "chunk"))
        count = max(1, _int(at.get(_P + "chunks"), 1))
        known, seen = self.chunks.get(window, (count, set()))
        if chunk in seen:
            self.duplicates += 1
        seen.add(chunk)
        self.chunks[window] = (max(known, count), seen)
        if at.get(_P + "final") is True:
            self.final_windows.add(window)
        if end_ns > self.window_ends.get(window, 0):
            self.window_ends[window] = end_ns
        total = at.get(_P + "calls_total")
        if total is not None:
            self.calls_totals[window] = max(self.calls_totals.get(window, 0), self._possible(_int(total)))
        self.lost_calls += self._possible(_int(at.get(_P + "lost_calls")))
        self.other_calls += self._possible(_int(at.get(_P + "other_nodes")))
        if _P + "lost_edges" in at:
            self.keeps_edges = True
            self.lost_edges += self._possible(_int(at.get(_P + "lost_edges")))
        gamma = at.get(_P + "sketch.gamma")
        if gamma is not None and not self.gamma:
            self.gamma = float(gamma)
            if not 1 < self.gamma < math.inf:  # sketch buckets are powers of gamma > 1
                self.gamma = 0.0
                self.impossible += 1

        ids = _columns(at, "function.", ["id"], int)[0]
        names, files, kinds = _columns(at, "function.", ["name", "file", "kind"], str, len(ids))
        (lines,) = _columns(at, "function.", ["line"], int, len(ids))
        calls, errors, walls, runs, cpus = self._possible_columns(_columns(
            at, "function.", ["calls", "errors", "wall_ns", "run_ns", "cpu_self"], int, len(ids)))
        for i, fid in enumerate(ids):
            self._function(fid).add(ProfileFunction(names[i], files[i], lines[i], kinds[i] or "function",
                                                    calls[i], errors[i], walls[i], runs[i], cpus[i]))
        self.window_calls[window] = self.window_calls.get(window, 0) + sum(calls)

        ids = _columns(at, "node.", ["id"], int)[0]
        parents, functions = _columns(at, "node.", ["parent", "function"], int, len(ids))
        (labels,) = _columns(at, "node.", ["label"], str, len(ids))
        counters = self._possible_columns(_columns(at, "node.", ["calls", "errors", "wall_ns", "run_ns",
                                                                 "suspended_ns", "awaits", "cpu_total", "cpu_self"],
                                                   int, len(ids)))
        for i, nid in enumerate(ids):
            delta = ProfileNode(parents[i], functions[i], labels[i], *(column[i] for column in counters))
            node = self.nodes.get(nid)
            if node is None:
                self.nodes[nid] = delta
            else:
                node.add(delta)

        for which, sketches in (("wall.", self.wall_sketch), ("run.", self.run_sketch)):
            fids = _columns(at, which, ["function"], int)[0]
            buckets, counts = _columns(at, which, ["bucket", "count"], int, len(fids))
            self._possible_columns([counts])
            for fid, bucket, n in zip(fids, buckets, counts, strict=True):
                sketch = sketches.setdefault(fid, {})
                sketch[bucket] = sketch.get(bucket, 0) + n

        fids = _columns(at, "cache.", ["function"], int)[0]
        n = len(fids)
        ints = self._possible_columns(_columns(
            at, "cache.", ["calls", "unhashable_calls", "identity_calls", "sampled_calls"], int, n))
        floats = self._possible_columns(_columns(
            at, "cache.", ["keys", "inconsistent_keys", "inconsistent_calls", "fresh_keys", "overlaps"], float, n))
        (types,) = _columns(at, "cache.", ["unhashable_types"], str, n)
        rates = _columns(at, "cache.", ["rate"], float, n, 1.0)[0]
        cheap = _columns(at, "cache.", ["cheap_ns"], int, n)[0]
        shadowed = _columns(at, "cache.", ["shadowed_calls"], int, n)[0]
        unhashable_returns = _columns(at, "cache.", ["unhashable_returns"], int, n)[0]
        none_returns = _columns(at, "cache.", ["none_returns"], int, n)[0]
        for i, fid in enumerate(fids):
            cache_delta = ProfileCache(
                calls=ints[0][i], unhashable_calls=ints[1][i], identity_calls=ints[2][i], sampled_calls=ints[3][i],
                unhashable_types=dict.fromkeys(t.strip() for t in types[i].split(",") if t.strip()),
                keys=floats[0][i], inconsistent_keys=floats[1][i], inconsistent_calls=floats[2][i],
                fresh_keys=floats[3][i], overlaps=floats[4][i], rate=rates[i] if 0 < rates[i] <= 1 else 1.0,
                cheap_ns=max(0, cheap[i]), shadowed_calls=max(0, shadowed[i]),
                unhashable_returns=max(0, unhashable_returns[i]), none_returns=max(0, none_returns[i]))
            state = self.cache.get(fid)
            if state is None:
                self.cache[fid] = cache_delta
            else:
                state.add(cache_delta)

        callers = _columns(at, "edge.", ["caller"], int)[0]
        (callees,) = _columns(at, "edge.", ["callee"], int, len(callers))
        (edge_calls,) = self._possible_columns(_columns(at, "edge.", ["calls"], int, len(callers)))
        for pair in zip(callers, callees, edge_calls, strict=True):
            self.call_edges[pair[:2]] = self.call_edges.get(pair[:2], 0) + pair[2]

        fids = _columns(at, "reuse.", ["function"], int)[0]
        (distances,) = _columns(at, "reuse.", ["distance"], int, len(fids))
        hits, cpu, wall = self._possible_columns(_columns(at, "reuse.", ["hits", "cpu", "wall_ns"], float,
                                                          len(fids)))
        for i, fid in enumerate(fids):
            if distances[i] < 0:  # an LRU stack distance: a count of other keys
                self.impossible += 1
                continue
            rows = self.reuse.setdefault(fid, {})
            row = rows.get(distances[i])
            if row is None:
                rows[distances[i]] = [hits[i], cpu[i], wall[i]]
            else:
                row[0] += hits[i]
                row[1] += cpu[i]
                row[2] += wall[i]

    def _possible(self, value: int) -> int:
        if value < 0:
            self.impossible += 1
            return 0
        return value

    def _possible_columns(self, columns: list[list[Any]]) -> list[list[Any]]:
        """``columns`` of counts, times or CPU with every negative or non-finite value set to 0
        (counted in ``impossible``): a corrupt input must not make a total negative."""
        for column in columns:
            if column and not all(0 <= v < math.inf for v in column):
                for i, v in enumerate(column):
                    if not 0 <= v < math.inf:
                        column[i] = v.__class__(0)
                        self.impossible += 1
        return columns

    def _function(self, fid: int) -> ProfileFunction:
        info = self.functions.get(fid)
        if info is None:
            info = self.functions[fid] = ProfileFunction("")
        return info

    # -- merging --------------------------------------------------------------------------------

    def merge(self, other: ProfileData) -> None:
        """Add ``other`` (the same process, other windows or chunks) to this."""
        if not self.gamma:
            self.gamma = other.gamma
        for fid, info in other.functions.items():
            mine = self.functions.get(fid)
            if mine is None:
                self.functions[fid] = info
            else:
                mine.add(info)
        for nid, node in other.nodes.items():
            theirs = self.nodes.get(nid)
            if theirs is None:
                self.nodes[nid] = node
            else:
                theirs.add(node)
        for mine_sketches, their_sketches in ((self.wall_sketch, other.wall_sketch),
                                              (self.run_sketch, other.run_sketch)):
            for fid, sketch in their_sketches.items():
                target = mine_sketches.setdefault(fid, {})
                for bucket, n in sketch.items():
                    target[bucket] = target.get(bucket, 0) + n
        for fid, state in other.cache.items():
            current = self.cache.get(fid)
            if current is None:
                self.cache[fid] = state
            else:
                current.add(state)
        for fid, rows in other.reuse.items():
            target_rows = self.reuse.setdefault(fid, {})
            for distance, row in rows.items():
                current_row = target_rows.get(distance)
                if current_row is None:
                    target_rows[distance] = list(row)
                else:
                    for k in range(3):
                        current_row[k] += row[k]
        for window, (count, seen) in other.chunks.items():
            known, mine_seen = self.chunks.get(window, (count, set()))
            self.duplicates += len(mine_seen & seen)
            self.chunks[window] = (max(known, count), mine_seen | seen)
        for window, calls in other.window_calls.items():
            self.window_calls[window] = self.window_calls.get(window, 0) + calls
        for mine_map, theirs_map in ((self.calls_totals, other.calls_totals), (self.window_ends, other.window_ends)):
            for window, value in theirs_map.items():
                mine_map[window] = max(mine_map.get(window, 0), value)
        self.final_windows |= other.final_windows
        for pair, calls in other.call_edges.items():
            self.call_edges[pair] = self.call_edges.get(pair, 0) + calls
        self.keeps_edges = self.keeps_edges or other.keeps_edges
        _add_fields(self, other, ("duplicates", "lost_calls", "other_calls", "lost_edges", "spans", "impossible"))

    def warnings(self, label: str) -> list[str]:
        """What the reader should know about this process's aggregates being incomplete or odd."""
        out = []
        missing = sum(count - len(seen) for count, seen in self.chunks.values() if len(seen) < count)
        if missing:
            out.append(f"{label}: {missing} callspan.profile chunk(s) missing from the input: "
                       "aggregate totals are incomplete")
        if self.duplicates:
            out.append(f"{label}: {self.duplicates} callspan.profile chunk(s) read more than once "
                       "(the same file twice?): their totals are counted twice")
        coverage = self.coverage()
        if coverage.missing:
            shown = ", ".join(map(str, coverage.missing_windows))
            more = ", ..." if coverage.missing > len(coverage.missing_windows) else ""
            out.append(f"{label}: {coverage.missing} callspan.profile window(s) missing from the input "
                       f"(window {shown}{more} of 0-{coverage.last}): aggregate totals are incomplete")
        if coverage.missing_calls:
            out.append(f"{label}: {coverage.missing_calls:,} call(s) the tracer folded are in none of the "
                       "callspan.profile spans read (missing windows or chunks)")
        if self.lost_calls:
            out.append(f"{label}: the tracer could not fold {self.lost_calls:,} calls into its aggregates")
        return out

    def coverage(self) -> WindowCoverage:
        """Which of the process's windows the input holds (windows are numbered 0, 1, 2 ... per
        process; the last one is flagged final when the tracer stopped)."""
        received = sorted(window for window in self.chunks if window >= 0)
        if not received:
            return WindowCoverage(0, -1, bool(self.final_windows), 0, [], None, 0)
        last = received[-1]
        missing_windows: list[int] = []
        expected = 0
        for window in received:  # the gaps, the first few listed (a window number may be huge)
            if window > expected and len(missing_windows) < MISSING_WINDOWS_LISTED:
                missing_windows.extend(range(expected, min(window, expected + MISSING_WINDOWS_LISTED)))
            expected = window + 1
        total = self.calls_totals.get(last)
        missing_calls = None if total is None else max(0, total - sum(self.window_calls.values()))
        return WindowCoverage(len(received), last, bool(self.final_windows), last + 1 - len(received),
                              missing_windows[:MISSING_WINDOWS_LISTED], missing_calls,
                              self.window_ends.get(last, 0))

    # -- reading the sums -----------------------------------------------------------------------

    @property
    def has_cpu(self) -> bool:
        return any(node.cpu_self or node.cpu_total for node in self.nodes.values())

    def ids_by_name(self) -> dict[str, list[int]]:
        """Function name -> its ids (one name may have several: same qualname in two files)."""
        out: dict[str, list[int]] = {}
        for fid, info in self.functions.items():
            out.setdefault(info.name, []).append(fid)
        return out

    def node_totals(self, fid: int) -> tuple[int, int, int]:
        """(suspended ns, awaits, total CPU) of the function's calls, from its nodes."""
        suspended = awaits = cpu = 0
        for node in self.nodes.values():
            if node.function == fid:
                suspended += node.suspended_ns
                awaits += node.awaits
                cpu += node.cpu_total
        return suspended, awaits, cpu

    def frame_name(self, node: ProfileNode) -> str:
        if node.function:
            info = self.functions.get(node.function)
            return info.name if info is not None and info.name else f"?function {node.function}"
        return node.label or OTHER_LABEL

    @property
    def callees_known(self) -> bool:
        """Whether what every function called is known beyond the call tree's caps: the tracer
        kept the caller-callee pairs of the calls it folded into (other) nodes, all of them."""
        return self.keeps_edges and not self.lost_edges

    def edges(self) -> set[tuple[int, int]]:
        """(caller, callee) function id pairs: parent and child function nodes of the call tree,
        and the pairs the tracer kept for calls folded into (other) nodes."""
        out = {pair for pair in self.call_edges if pair[0] != pair[1]}
        for node in self.nodes.values():
            if node.function and node.parent:
                parent = self.nodes.get(node.parent)
                if parent is not None and parent.function and parent.function != node.function:
                    out.add((parent.function, node.function))
        return out


def _int(value: Any, default: int = 0) -> int:
    if value is None or isinstance(value, (list, dict)):
        return default
    return int(value)


def _columns(at: dict[str, Any], group: str, names: list[str], convert: Callable[..., Any],
             n: int | None = None, default: Any = None) -> list[list[Any]]:
    """The columns ``callspan.profile.<group><name>`` as lists of ``convert``ed values. With ``n``,
    each must have ``n`` entries; an absent one is all ``default`` (0, 0.0 or ""). Without ``n``,
    the first sets the length (absent: no rows)."""
    out = []
    for name in names:
        key = _P + group + name
        value = at.get(key)
        if value is None:
            fill = convert() if default is None else default
            out.append([fill] * (n or 0))
            continue
        if not isinstance(value, list):
            raise ValueError(f"{key} is not an array")
        if n is not None and len(value) != n:
            raise ValueError(f"{key} has {len(value)} values, expected {n}")
        if convert is int:
            out.append([int(v) if v is not None else 0 for v in value])
        elif convert is float:
            out.append([float(v) if v is not None else 0.0 for v in value])
        else:
            out.append(["" if v is None else str(v) for v in value])
        if n is None:
            n = len(value)
    return out


# -- latency sketches ---------------------------------------------------------------------------

def bucket_value(bucket: int, gamma: float) -> float:
    """The value a sketch bucket stands for: within 1% of every value it holds (0 for bucket 0)."""
    if bucket <= 0:
        return 0.0
    return 2.0 * gamma ** bucket / (gamma + 1.0)


def sketch_percentiles(sketches: Iterable[tuple[Sketch, float]], ps: Iterable[float]) -> tuple[int, list[int]]:
    """(calls, [value at each percentile]) of the union of ``sketches`` ((sketch, its gamma)):
    nearest rank as ``latency.percentile`` (rank ceil(p/100 * n)), each bucket at its value."""
    values: dict[float, int] = {}
    for sketch, gamma in sketches:
        for bucket, count in sketch.items():
            if count > 0:
                value = bucket_value(bucket, gamma)
                values[value] = values.get(value, 0) + count
    n = sum(values.values())
    if not n:
        return 0, [0 for _ in ps]
    ordered = sorted(values.items())
    out = []
    for p in ps:
        rank = min(n, max(1, math.ceil(p / 100.0 * n - 1e-9)))
        below = 0
        for value, count in ordered:
            below += count
            if below >= rank:
                out.append(round(value))
                break
    return n, out


def sketch_max(sketches: Iterable[tuple[Sketch, float]]) -> int:
    """The value of the highest non-empty bucket: within 1% of the longest call."""
    best = 0.0
    for sketch, gamma in sketches:
        for bucket, count in sketch.items():
            if count > 0:
                best = max(best, bucket_value(bucket, gamma))
    return round(best)
