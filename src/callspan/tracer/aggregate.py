"""Exact, bounded per-process aggregates of every traced call (span schema v2).

Every finished call is folded here at its exit, whether or not it becomes a span:

- a call tree keyed by the complete logical stack (``Node``), one root per thread name;
- per function (``FunctionAgg``): totals and two latency sketches (wall and running time);
- per keyed function (``CacheState``): state per distinct key (never per call), from which the
  LRU stack distance of every call, the time its hits would save, return consistency and
  in-flight overlap follow.

This is the pure-Python reference; the compiled hot path (callspan.tracer._hotpath) folds the same way
and is tested against it (identical windows for the same events). ``export_window`` returns what
changed since the last export as plain columns (docs/span-schema.md, "Schema version 2"); the OTel
boundary turns them into ``callspan.profile`` spans. No OpenTelemetry here.
"""

from __future__ import annotations

import math
import re
from typing import Any

from callspan.tracer.record import ACTIVE, HIT_ROOT, SHADOWED
from callspan.tracer.selection import KIND_FUNCTION, KIND_NAMES, CodeInfo

# Latency sketch: relative accuracy ALPHA (DDSketch-style logarithmic buckets).
ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(GAMMA)

DEFAULT_MAX_NODES = 100_000
DEFAULT_MAX_DEPTH = 256
DEFAULT_MAX_KEYS = 4096
DEFAULT_MAX_KEYS_TOTAL = 1 << 20
DEFAULT_KEY_MIN_NS = 400
# After this many keyed calls, a function whose mean wall time per call is below key_min_ns stops
# being keyed: a cache lookup would cost about as much as the call, and hashing its arguments
# and return value was the tracer's largest cost per call of such functions.
KEY_PROBE_CALLS = 1024

_M64 = (1 << 64) - 1
OTHER_LABEL = "(other)"
_DIGITS = re.compile(r"[0-9]+")


def sketch_bucket(value: int) -> int:
    """Bucket i > 0 holds (GAMMA**(i-1), GAMMA**i]; bucket 0 holds values <= 1 (ns)."""
    if value <= 1:
        return 0
    return math.ceil(math.log(value) / _LOG_GAMMA)


def mix64(raw: int) -> int:
    """A uniform 64-bit image of a raw hash (splitmix64's finaliser), for SHARDS sampling:
    Python's hash of small ints is the int itself, far from uniform."""
    z = (raw + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def sampled(mixed: int, level: int) -> bool:
    """SHARDS at rate 2**-level: keep a key iff its mixed hash is below 2**(64-level)."""
    return level == 0 or (mixed >> (64 - level)) == 0


class Node:
    """One call-tree node: a function (or a thread root, or an ``(other)`` fold) under a parent."""

    __slots__ = ("id", "parent", "info", "label", "depth", "children", "other", "is_other",
                 "calls", "errors", "wall", "run", "suspended", "awaits", "cpu_total", "cpu_self",
                 "exported", "sent")

    def __init__(self, node_id: int, parent: Node | None, info: CodeInfo | None, label: str,
                 is_other: bool = False) -> None:
        self.id = node_id
        self.parent = parent
        self.info = info
        self.label = label
        self.depth: int = parent.depth + 1 if parent is not None else 0
        self.children: dict[CodeInfo, Node] = {}
        self.other: Node | None = None
        self.is_other = is_other
        self.calls = self.errors = self.wall = self.run = self.suspended = self.awaits = 0
        self.cpu_total = self.cpu_self = 0
        self.exported = False  # defined in an earlier window
        self.sent = (0, 0, 0, 0, 0, 0, 0, 0)  # counters at the last export

    def counters(self) -> tuple[int, int, int, int, int, int, int, int]:
        return (self.calls, self.errors, self.wall, self.run, self.suspended, self.awaits,
                self.cpu_total, self.cpu_self)


class _Key:
    """State of one distinct key of one function."""

    __slots__ = ("pos", "ret", "inconsistent", "fresh", "identity_ret", "count", "last_end", "mixed")

    def __init__(self, pos: int, mixed: int) -> None:
        self.pos = pos
        self.ret: int | None = None
        self.inconsistent = False
        self.fresh = False
        self.identity_ret = False
        self.count = 0
        self.last_end = 0
        self.mixed = mixed


class CacheState:
    """LRU stack distances over a function's keys, with state per distinct key.

    Positions: each key sits at the position of its latest call in a Fenwick tree of marks;
    the distance of a call is the number of marked positions after its key's (the distinct
    keys used since). The positions are renumbered when they run out (amortised O(1)).
    """

    __slots__ = ("keys", "level", "tree", "pos_key", "next_pos", "reuse", "calls", "unhashable_calls",
                 "unhashable_types", "identity_calls", "new_keys", "inconsistent_keys", "inconsistent_calls",
                 "fresh_keys", "overlaps", "sampled_calls", "sent", "probe_calls", "probe_wall", "cheap_ns",
                 "shadowed_calls", "cost_calls", "cost_wall", "unhashable_returns", "none_returns")

    def __init__(self) -> None:
        self.keys: dict[int, _Key] = {}
        self.level = 0  # SHARDS rate 2**-level
        self.tree: list[int] = [0] * 65
        self.pos_key: list[int | None] = [None] * 65
        self.next_pos = 1
        self.reuse: dict[int, list[int]] = {}  # distance -> [hits, cpu, wall] (scaled), cumulative
        self.calls = self.unhashable_calls = self.identity_calls = 0
        self.unhashable_types: dict[str, None] = {}
        self.new_keys = self.inconsistent_keys = self.inconsistent_calls = 0
        self.fresh_keys = self.overlaps = self.sampled_calls = self.shadowed_calls = 0
        self.sent: dict[Any, Any] = {}
        self.probe_calls = self.probe_wall = 0
        self.cost_calls = self.cost_wall = 0  # keyed calls and their wall ns, ever (who sheds keys first)
        self.unhashable_returns = 0  # returned values that hash() refused (lists, dicts, objects with __eq__ only)
        self.none_returns = 0  # calls that returned None (called for what they do, not for a value)
        self.cheap_ns = 0  # mean wall ns per call when keying stopped for cheapness; 0 while keyed

    # -- Fenwick tree of marked positions ------------------------------------------------------

    def _add(self, pos: int, delta: int) -> None:
        tree = self.tree
        n = len(tree)
        while pos < n:
            tree[pos] += delta
            pos += pos & -pos

    def _prefix(self, pos: int) -> int:
        tree = self.tree
        total = 0
        while pos > 0:
            total += tree[pos]
            pos -= pos & -pos
        return total

    def _place(self, raw: int, key: _Key) -> None:
        if self.next_pos >= len(self.tree):
            self._renumber()
        pos = self.next_pos
        self.next_pos += 1
        key.pos = pos
        self.pos_key[pos] = raw
        self._add(pos, 1)

    def _unplace(self, key: _Key) -> None:
        self._add(key.pos, -1)
        self.pos_key[key.pos] = None

    def _renumber(self) -> None:
        live = [raw for raw in self.pos_key[1:self.next_pos] if raw is not None]
        size = max(64, 4 * len(live)) + 1
        self.tree = [0] * size
        self.pos_key = [None] * size
        tree = self.tree
        for pos, raw in enumerate(live, 1):
            self.keys[raw].pos = pos
            self.pos_key[pos] = raw
            tree[pos] = 1
        for pos in range(1, size):  # the linear Fenwick build: each node adds itself to its parent
            parent = pos + (pos & -pos)
            if parent < size:
                tree[parent] += tree[pos]
        self.next_pos = len(live) + 1

    # -- sampling ---------------------------------------------------------------------------

    def lower_rate(self) -> int:
        """Halve the SHARDS rate and forget the keys no longer sampled; returns how many."""
        self.level += 1
        level = self.level
        gone = [raw for raw, key in self.keys.items() if not sampled(key.mixed, level)]
        for raw in gone:
            self._unplace(self.keys.pop(raw))
        return len(gone)


def sheds_before(a: CacheState, b: CacheState) -> bool:
    """Whether ``a`` loses keys before ``b`` under the process key budget: a lower mean wall per
    keyed call (exact integer comparison, as the compiled aggregates make it), then more keys."""
    left, right = a.cost_wall * b.cost_calls, b.cost_wall * a.cost_calls
    return left < right or (left == right and len(a.keys) > len(b.keys))


class FunctionAgg:
    __slots__ = ("id", "info", "calls", "errors", "wall", "run", "cpu_self", "wall_sketch", "run_sketch",
                 "cache", "sent", "sent_wall", "sent_run", "exported", "shadow_owner")

    def __init__(self, function_id: int, info: CodeInfo) -> None:
        self.id = function_id
        self.info = info
        self.calls = self.errors = self.wall = self.run = self.cpu_self = 0
        self.wall_sketch: dict[int, int] = {}
        self.run_sketch: dict[int, int] = {}
        self.cache: CacheState | None = None
        self.sent = (0, 0, 0, 0, 0)
        self.sent_wall: dict[int, int] = {}
        self.sent_run: dict[int, int] = {}
        self.exported = False
        self.shadow_owner = 0  # thread ident of the call whose key was cached (a hit) while it runs


class Aggregates:
    """The per-process fold. ``fold`` is called by the recorder at every call's exit."""

    def __init__(self, *, max_nodes: int = DEFAULT_MAX_NODES, max_depth: int = DEFAULT_MAX_DEPTH,
                 max_keys: int = DEFAULT_MAX_KEYS, max_keys_total: int = DEFAULT_MAX_KEYS_TOTAL,
                 key_min_ns: int = DEFAULT_KEY_MIN_NS) -> None:
        self.max_nodes = max_nodes
        self.key_min_ns = key_min_ns
        self.max_depth = max_depth
        self.max_keys = max_keys
        self.max_keys_total = max_keys_total
        self.nodes: list[Node] = []
        self.thread_roots: dict[str, Node] = {}
        self.functions: dict[CodeInfo, FunctionAgg] = {}
        self.function_list: list[FunctionAgg] = []
        self.total_keys = 0
        self.active: dict[CodeInfo, int] = {}  # running keyed calls of synchronous functions
        self.recursive: set[CodeInfo] = set()  # functions seen running inside themselves
        self.other_calls = 0  # cumulative, calls folded into (other) nodes
        self.sent_other_calls = 0
        # Caller -> callee function pairs of the calls folded into (other) nodes (the tree keeps the
        # others' callers), with their calls: what each function calls stays known beyond the caps.
        # At most max_nodes pairs; calls of a new pair beyond that are counted as lost.
        self.edges: dict[tuple[CodeInfo, CodeInfo], int] = {}
        self.sent_edges: dict[tuple[CodeInfo, CodeInfo], int] = {}
        self.lost_edges = self.sent_lost_edges = 0
        self.window = 0

    # -- the call tree (called at each call's start) --------------------------------------------

    def thread_root(self, name: str) -> Node:
        """The root of a thread's calls, by its name with numbers folded ("Thread-N (worker)"), so
        that threads started one per task do not each make a tree."""
        name = _DIGITS.sub("N", name)
        node = self.thread_roots.get(name)
        if node is None:
            node = self.thread_roots[name] = self._new_node(None, None, name)
        return node

    def _new_node(self, parent: Node | None, info: CodeInfo | None, label: str, is_other: bool = False) -> Node:
        node = Node(len(self.nodes) + 1, parent, info, label, is_other)
        self.nodes.append(node)
        return node

    def child(self, parent: Node, info: CodeInfo) -> Node:
        """The node of a call of ``info`` whose logical caller is in ``parent``."""
        if parent.info is info or parent.is_other:
            return parent  # direct recursion, or below an (other) fold
        node = parent.children.get(info)
        if node is not None:
            return node
        if len(self.nodes) >= self.max_nodes or parent.depth >= self.max_depth:
            node = parent.other
            if node is None:
                node = parent.other = self._new_node(parent, None, OTHER_LABEL, True)
            return node
        node = parent.children[info] = self._new_node(parent, info, "")
        return node

    # -- the memoized sequence (called at each keyed call's start) -----------------------------

    def shadow(self, info: CodeInfo, raw: int, thread: int) -> int:
        """At a synchronous function's keyed call: ACTIVE (it is counted among the function's
        running calls), plus, once the function has been seen running inside itself (recursive),
        SHADOWED when this call runs inside a call of the same function whose key was already
        cached (a memoized version would not make it) or HIT_ROOT when its own key is cached (its
        nested calls are then shadowed). Non-recursive functions skip the key lookup."""
        active = self.active.get(info, 0)
        if active:
            self.recursive.add(info)
        self.active[info] = active + 1
        if info not in self.recursive:
            return ACTIVE
        agg = self.functions.get(info)
        if agg is None or agg.cache is None:
            return ACTIVE
        if agg.shadow_owner:
            return ACTIVE | SHADOWED if agg.shadow_owner == thread else ACTIVE
        if (raw & _M64) in agg.cache.keys:
            agg.shadow_owner = thread
            return ACTIVE | HIT_ROOT
        return ACTIVE

    def end_shadow(self, info: CodeInfo, shadow: int) -> None:
        """The call that ``shadow`` marked has finished (folded)."""
        self.active[info] -= 1
        if shadow & HIT_ROOT:
            agg = self.functions.get(info)
            if agg is not None:
                agg.shadow_owner = 0

    # -- the fold (called at each call's exit) ----------------------------------------------

    def function(self, info: CodeInfo) -> FunctionAgg:
        agg = self.functions.get(info)
        if agg is None:
            agg = self.functions[info] = FunctionAgg(len(self.function_list) + 1, info)
            self.function_list.append(agg)
        return agg

    def fold(self, info: CodeInfo, node: Node, nested: bool, error: bool, wall: int, run: int,
             suspended: int, suspends: int, cpu: int, child_cpu: int, caller: CodeInfo | None = None) -> None:
        """One finished call. ``nested``: its logical caller is in the same node (recursion);
        ``caller``: the logical caller's function (None at a thread's root)."""
        node.calls += 1
        if node.is_other:
            self.other_calls += 1
        if error:
            node.errors += 1
        cpu_self = cpu - child_cpu
        node.cpu_self += cpu_self
        if not nested:
            node.wall += wall
            node.run += run
            node.suspended += suspended
            node.awaits += suspends
            node.cpu_total += cpu
        agg = self.function(info)
        agg.calls += 1
        if error:
            agg.errors += 1
        agg.wall += wall
        agg.run += run
        agg.cpu_self += cpu_self
        bucket = sketch_bucket(wall)
        sketch = agg.wall_sketch
        sketch[bucket] = sketch.get(bucket, 0) + 1
        if info.kind != KIND_FUNCTION:  # a plain function's running time is its wall time
            bucket = sketch_bucket(run)
            sketch = agg.run_sketch
            sketch[bucket] = sketch.get(bucket, 0) + 1
        if node.is_other and caller is not None and caller is not info:
            pair = (caller, info)
            count = self.edges.get(pair)
            if count is None:
                if len(self.edges) >= self.max_nodes:
                    self.lost_edges += 1
                    return
                self.function(caller)  # ids in the order the compiled aggregates give them
                count = 0
            self.edges[pair] = count + 1

    def fold_key(self, info: CodeInfo, args: Any, ret: int | None, identity_ret: bool, start: int, end: int,
                 cpu: int, shadow: int = 0, returned: bool = True, ret_hashable: bool = True,
                 ret_none: bool = False) -> None:
        """The cache-analysis part of one finished call: ``args`` is the recorder's argument key
        (raw hash or fingerprint or None, unhashable type names, self hashed by identity);
        ``ret`` the raw hash of the return value (None on error or when it has none). A call
        that raised (``returned`` false) is, as with functools.lru_cache, a miss that does not
        enter the cache: counted, but it neither finds nor adds a key."""
        raw, names, identity = args
        if raw is None and not names and not identity:
            return
        agg = self.function(info)
        state = agg.cache
        if state is None:
            state = agg.cache = CacheState()
        if state.cheap_ns == 0 and self.key_min_ns > 0:
            state.probe_calls += 1
            state.probe_wall += end - start
            if state.probe_calls == KEY_PROBE_CALLS and state.probe_wall < self.key_min_ns * KEY_PROBE_CALLS:
                state.cheap_ns = max(1, state.probe_wall // KEY_PROBE_CALLS)
                info.keys = False  # the hot path stops computing keys for its later calls
        if names:
            state.unhashable_calls += 1
            for name in names.split(","):
                state.unhashable_types[name] = None
        if identity:
            state.identity_calls += 1
        if raw is None:
            return
        state.calls += 1
        state.cost_calls += 1
        state.cost_wall += end - start
        if shadow & SHADOWED:
            state.shadowed_calls += 1  # not in the sequence a memoized version would make
            return
        if not returned:
            return
        if not ret_hashable:
            state.unhashable_returns += 1
        if ret_none:
            state.none_returns += 1
        raw &= _M64
        mixed = mix64(raw)
        if not sampled(mixed, state.level):
            return
        weight = 1 << state.level
        key = state.keys.get(raw)
        if key is None:
            while len(state.keys) >= self.max_keys:
                self.total_keys -= state.lower_rate()
            if not sampled(mixed, state.level):
                return
            weight = 1 << state.level
            key = state.keys[raw] = _Key(0, mixed)
            state._place(raw, key)
            state.new_keys += weight
            self.total_keys += 1
            if self.total_keys > self.max_keys_total:
                self._shed_keys()
                if state.keys.get(raw) is not key:
                    return  # this very key was shed
                weight = 1 << state.level
        else:
            if key.pos == state.next_pos - 1:
                distance = 0  # the most recent key stays where it is
            else:
                distance = (len(state.keys) - state._prefix(key.pos)) << state.level
                state._unplace(key)
                state._place(raw, key)
            row = state.reuse.get(distance)
            if row is None:
                row = state.reuse[distance] = [0, 0, 0]
            row[0] += weight
            row[1] += cpu * weight
            row[2] += (end - start) * weight
        state.sampled_calls += 1
        key.count += 1
        if start < key.last_end:
            state.overlaps += weight
        if end > key.last_end:
            key.last_end = end
        if ret is not None:
            if key.ret is None:
                key.ret = ret
                key.identity_ret = identity_ret
            elif key.inconsistent:
                state.inconsistent_calls += weight
            elif key.fresh:
                pass
            elif identity_ret or key.identity_ret:
                # A repeated key returning an object that hashes by identity: a new object each
                # call (equal hashes would only be address reuse), not a different value.
                key.fresh = True
                state.fresh_keys += weight
            elif ret != key.ret:
                key.inconsistent = True
                state.inconsistent_keys += weight
                state.inconsistent_calls += key.count * weight

    def _shed_keys(self) -> None:
        """Over the process-wide key budget: halve the rate of the function whose keyed calls are
        cheapest on average (a hit of it saves the least), the one with more keys on a tie, so
        costly functions keep exact cache figures longest."""
        while self.total_keys > self.max_keys_total:
            chosen: CacheState | None = None
            for agg in self.function_list:
                state = agg.cache
                if state is None or not state.keys or state.level >= 64:
                    continue
                if chosen is None or sheds_before(state, chosen):
                    chosen = state
            if chosen is None:
                return
            self.total_keys -= chosen.lower_rate()

    # -- export -------------------------------------------------------------------------------

    def forget_parent(self) -> None:
        """In a forked child: everything folded so far is the parent's (it exports it), so the
        child's first window starts from here, with its nodes defined again (a new process)."""
        for node in self.nodes:
            node.sent = node.counters()
            node.exported = False
        for agg in self.function_list:
            agg.sent = (agg.calls, agg.errors, agg.wall, agg.run, agg.cpu_self)
            agg.sent_wall = dict(agg.wall_sketch)
            agg.sent_run = dict(agg.run_sketch)
            state = agg.cache
            if state is not None:
                sent: dict[Any, Any] = {name: getattr(state, name) for name in _CACHE_COUNTERS}
                sent["types"] = ",".join(state.unhashable_types)
                sent["level"] = state.level
                sent["cheap_ns"] = state.cheap_ns
                for distance, row in state.reuse.items():
                    sent[("reuse", distance)] = tuple(row)
                state.sent = sent
        self.sent_other_calls = self.other_calls
        self.sent_edges = dict(self.edges)
        self.sent_lost_edges = self.lost_edges
        self.window = 0

    def export_window(self) -> dict[str, list[Any]]:
        """What changed since the last call, as the columns of schema v2 (one window, unchunked).

        Reads every counter once and remembers what it sent, so a call folded meanwhile (by
        another thread) shows in the next window instead of being lost.
        """
        out: dict[str, list[Any]] = {name: [] for name in WINDOW_COLUMNS}
        functions_used: dict[int, FunctionAgg] = {}
        by_info = self.functions
        pending: list[Node] = []
        for node in list(self.nodes):
            now = node.counters()
            if now != node.sent or not node.exported:
                if now == node.sent and not node.exported and node.calls == 0:
                    continue  # defined when a descendant is sent
                pending.append(node)
        to_send: dict[int, Node] = {}
        for node in pending:
            current: Node | None = node
            while current is not None and current.id not in to_send:
                if current is not node and current.exported:
                    break
                to_send[current.id] = current
                current = current.parent
        for node_id in sorted(to_send):
            node = to_send[node_id]
            now = node.counters()
            delta = [a - b for a, b in zip(now, node.sent, strict=True)]
            node.sent = now
            node.exported = True
            function_id = 0
            if node.info is not None:
                agg = by_info.get(node.info) or self.function(node.info)
                function_id = agg.id
                functions_used[agg.id] = agg
            out["node.id"].append(node.id)
            out["node.parent"].append(node.parent.id if node.parent is not None else 0)
            out["node.function"].append(function_id)
            out["node.label"].append(node.label)
            for column, value in zip(_NODE_COUNTER_COLUMNS, delta, strict=True):
                out[column].append(value)
        for agg in list(self.function_list):
            now_totals = (agg.calls, agg.errors, agg.wall, agg.run, agg.cpu_self)
            changed = now_totals != agg.sent
            if changed:
                functions_used[agg.id] = agg
                for which, sketch, sent in (("wall", agg.wall_sketch, agg.sent_wall), ("run", agg.run_sketch, agg.sent_run)):
                    for bucket in sorted(sketch):
                        count = sketch[bucket]
                        delta_count = count - sent.get(bucket, 0)
                        if delta_count:
                            out[f"{which}.function"].append(agg.id)
                            out[f"{which}.bucket"].append(bucket)
                            out[f"{which}.count"].append(delta_count)
                            sent[bucket] = count
            state = agg.cache
            if state is not None:
                self._export_cache(agg, state, out, functions_used)
        sent_edges = self.sent_edges
        for pair, calls in list(self.edges.items()):
            added = calls - sent_edges.get(pair, 0)
            if added:
                sent_edges[pair] = calls
                caller, callee = by_info[pair[0]], by_info[pair[1]]
                functions_used[caller.id] = caller
                functions_used[callee.id] = callee
                out["edge.caller"].append(caller.id)
                out["edge.callee"].append(callee.id)
                out["edge.calls"].append(added)
        for function_id in sorted(functions_used):
            agg = functions_used[function_id]
            info = agg.info
            now_totals = (agg.calls, agg.errors, agg.wall, agg.run, agg.cpu_self)
            delta = [a - b for a, b in zip(now_totals, agg.sent, strict=True)]
            agg.sent = now_totals
            out["function.id"].append(agg.id)
            out["function.name"].append(info.name)
            out["function.file"].append(info.file)
            out["function.line"].append(info.line)
            out["function.kind"].append(KIND_NAMES[info.kind])
            for column, value in zip(("function.calls", "function.errors", "function.wall_ns", "function.run_ns",
                                      "function.cpu_self"), delta, strict=True):
                out[column].append(value)
        other = self.other_calls
        out["other_nodes"] = [other - self.sent_other_calls]
        self.sent_other_calls = other
        out["lost_edges"] = [self.lost_edges - self.sent_lost_edges]
        self.sent_lost_edges = self.lost_edges
        out["window"] = [self.window]
        self.window += 1
        out["lost_calls"] = [0]  # the reference cannot fail to fold; the compiled one counts
        return out

    def _export_cache(self, agg: FunctionAgg, state: CacheState, out: dict[str, list[Any]],
                      functions_used: dict[int, FunctionAgg]) -> None:
        now = {name: getattr(state, name) for name in _CACHE_COUNTERS}
        now["types"] = ",".join(state.unhashable_types)
        now["level"] = state.level
        now["cheap_ns"] = state.cheap_ns
        sent = state.sent
        reuse_rows = []
        for distance in sorted(state.reuse):
            row = tuple(state.reuse[distance])
            before = sent.get(("reuse", distance), (0, 0, 0))
            if row != before:
                reuse_rows.append((distance, [a - b for a, b in zip(row, before, strict=True)]))
                sent[("reuse", distance)] = row
        if all(now[name] == sent.get(name, 0) for name in _CACHE_COUNTERS) and not reuse_rows \
                and now["types"] == sent.get("types", "") and now["level"] == sent.get("level", 0) \
                and now["cheap_ns"] == sent.get("cheap_ns", 0):
            return
        functions_used[agg.id] = agg
        out["cache.function"].append(agg.id)
        for name, column in zip(_CACHE_COUNTERS, _CACHE_COLUMNS, strict=True):
            delta = now[name] - sent.get(name, 0)
            out[column].append(float(delta) if column in _CACHE_DOUBLE_COLUMNS else delta)
            sent[name] = now[name]
        out["cache.unhashable_types"].append(now["types"])
        out["cache.rate"].append(2.0 ** -state.level)
        out["cache.cheap_ns"].append(state.cheap_ns)
        sent["types"] = now["types"]
        sent["level"] = state.level
        sent["cheap_ns"] = state.cheap_ns
        for distance, (hits, cpu, wall) in reuse_rows:
            out["reuse.function"].append(agg.id)
            out["reuse.distance"].append(distance)
            out["reuse.hits"].append(float(hits))
            out["reuse.cpu"].append(float(cpu))
            out["reuse.wall_ns"].append(float(wall))


_NODE_COUNTER_COLUMNS = ("node.calls", "node.errors", "node.wall_ns", "node.run_ns", "node.suspended_ns",
                         "node.awaits", "node.cpu_total", "node.cpu_self")
_CACHE_COUNTERS = ("calls", "unhashable_calls", "identity_calls", "new_keys", "inconsistent_keys",
                   "inconsistent_calls", "fresh_keys", "overlaps", "sampled_calls", "shadowed_calls",
                   "unhashable_returns", "none_returns")
_CACHE_COLUMNS = ("cache.calls", "cache.unhashable_calls", "cache.identity_calls", "cache.keys",
                  "cache.inconsistent_keys", "cache.inconsistent_calls", "cache.fresh_keys", "cache.overlaps",
                  "cache.sampled_calls", "cache.shadowed_calls", "cache.unhashable_returns", "cache.none_returns")
_CACHE_DOUBLE_COLUMNS = frozenset(("cache.keys", "cache.inconsistent_keys", "cache.inconsistent_calls",
                                   "cache.fresh_keys", "cache.overlaps"))

# Every column of a window, named as the schema's attributes without the "callspan.profile." prefix.
WINDOW_COLUMNS = (
    "function.id", "function.name", "function.file", "function.line", "function.kind", "function.calls",
    "function.errors", "function.wall_ns", "function.run_ns", "function.cpu_self",
    "node.id", "node.parent", "node.function", "node.label", *_NODE_COUNTER_COLUMNS,
    "wall.function", "wall.bucket", "wall.count", "run.function", "run.bucket", "run.count",
    "cache.function", *_CACHE_COLUMNS, "cache.unhashable_types", "cache.rate", "cache.cheap_ns",
    "reuse.function", "reuse.distance", "reuse.hits", "reuse.cpu", "reuse.wall_ns",
    "edge.caller", "edge.callee", "edge.calls",
)
