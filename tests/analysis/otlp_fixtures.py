"""Small OTLP JSON / Jaeger JSON fixtures built in code, encoded like the Collector's file exporter."""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import strategies as st

from callspan.analysis import model, spill
from callspan.analysis.loader import LoadOptions
from callspan.analysis.model import Model
from callspan.analysis.otlp import add_request
from callspan.otlp_json import any_value

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


av = any_value  # the project's one encoder (callspan.otlp_json)


def kvs(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": av(v)} for k, v in attributes.items()]


def hexkey(key: int) -> str:
    """A 16-hex-digit hash for a small test key (0 and negative keys are not used)."""
    return f"{key:016x}"


def span(name: str, span_id: int, start: int, end: int, *, parent: int | None = None, trace: int = 1,
         args: int | None = None, ret: int | None = None, cpu: int | None = None, cpu_self: int | None = None,
         kind: str = "function", file: str | None = None, line: int = 10, thread: int = 7,
         error: bool = False, run: int | None = None, extra: dict[str, Any] | None = None,
         events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "code.function.name": name, "code.file.path": file or f"/app/{name.split('.')[0]}.py",
        "code.line.number": line, "thread.id": thread, "thread.name": "MainThread", "callspan.kind": kind,
        "callspan.run_ns": end - start if run is None else run,
    }
    if cpu is not None:
        attrs["callspan.cpu.total"] = cpu
        attrs["callspan.cpu.self"] = cpu if cpu_self is None else cpu_self
    if args is not None:
        attrs["callspan.args.hash"] = hexkey(args)
        attrs["callspan.args.hashable"] = True  # as traces before 2026-12-06 wrote it (now: false only)
    if ret is not None and not error:
        attrs["callspan.return.hash"] = hexkey(ret)
        attrs["callspan.return.hashable"] = True
        attrs["callspan.return.size"] = 32
    if error:
        attrs["error.type"] = "builtins.ValueError"
    attrs.update(extra or {})
    out: dict[str, Any] = {
        "traceId": f"{trace:032x}", "spanId": f"{span_id:016x}", "name": name, "kind": 1,
        "startTimeUnixNano": str(start), "endTimeUnixNano": str(end), "attributes": kvs(attrs),
        "status": {"code": 2, "message": "ValueError"} if error else {},
    }
    if parent is not None:
        out["parentSpanId"] = f"{parent:016x}"
    if events:
        out["events"] = events
    return out


def request(spans: list[dict[str, Any]], *, pid: int = 100, instance: str | None = "inst-1",
            unit: str = "ns", service: str = "svc") -> dict[str, Any]:
    resource: dict[str, Any] = {"service.name": service}
    if instance:
        resource["service.instance.id"] = instance
    scope = {"callspan.schema": 1, "process.pid": pid, "callspan.core": "sysmon",
             "callspan.cpu.counter": "thread_time" if unit == "ns" else "perf:instructions",
             "callspan.cpu.unit": unit}
    return {"resourceSpans": [{"resource": {"attributes": kvs(resource)}, "scopeSpans": [
        {"scope": {"name": "callspan", "version": "0.1.0", "attributes": kvs(scope)}, "spans": spans}]}]}


def lines(requests: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in requests)


def write(path: str, requests: list[dict[str, Any]], gz: bool = False) -> str:
    data = lines(requests)
    if gz:
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


def key_sequence_spans(name: str, keys: list[int], *, first_id: int = 1, step: int = 1000,
                       cpu: int = 100, kind: str = "function", returns: dict[int, int] | None = None,
                       **kw: Any) -> list[dict[str, Any]]:
    """One span per key, sequential and non-overlapping, each returning ``returns[key]`` (key+1000)."""
    out = []
    for i, key in enumerate(keys):
        ret = (returns or {}).get(key, key + 1000)
        out.append(span(name, first_id + i, i * step, i * step + step // 2, args=key, ret=ret, cpu=cpu,
                        kind=kind, **kw))
    return out


def summary(names: list[str], counts: list[int], *, cpu_total: list[int] | None = None,
            cpu_self: list[int] | None = None, walls: list[int] | None = None,
            kinds: list[str] | None = None) -> dict[str, Any]:
    n = len(names)
    out: dict[str, Any] = {
        "callspan.summary.function": names, "callspan.summary.file": [f"/app/{x}.py" for x in names],
        "callspan.summary.line": [5] * n, "callspan.summary.kind": kinds or ["function"] * n,
        "callspan.summary.count": counts, "callspan.summary.errors": [0] * n,
        "callspan.summary.wall_ns": walls or [10 * c for c in counts],
        "callspan.summary.run_ns": walls or [10 * c for c in counts],
    }
    if cpu_total is not None:
        out["callspan.summary.cpu_total"] = cpu_total
        out["callspan.summary.cpu_self"] = cpu_self if cpu_self is not None else cpu_total
    return out


def calls_event(name: str, keys: list[int], starts: list[int], *, rate: float = 1.0, cpu: int = 10,
                duration: int = 5, returns: list[int] | None = None) -> dict[str, Any]:
    rets = returns if returns is not None else [k + 1000 for k in keys]
    attrs = {
        "callspan.function": name, "callspan.args.hash": [hexkey(k) for k in keys],
        "callspan.return.hash": [hexkey(r) if r else "" for r in rets],
        "callspan.start_ns": starts, "callspan.end_ns": [s + duration for s in starts],
        "callspan.cpu": [cpu] * len(keys), "callspan.sample_rate": rate,
    }
    return {"timeUnixNano": str(starts[0] if starts else 0), "name": "callspan.calls", "attributes": kvs(attrs)}


def jaeger_tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, list):
        return {"key": key, "type": "string", "value": json.dumps(value)}
    return {"key": key, "type": "string", "value": value}


# The memory budget of the models tests build (``new_model``, ``model_of``): 0 keeps everything in
# memory; 1 (byte) spills every batch to disk as it is merged. Test modules switch it per test.
MEMORY_BUDGET = 0


def new_model(**options: Any) -> Model:
    return Model(memory_budget=MEMORY_BUDGET, **options)


def model_of(*requests: dict[str, Any]) -> Model:
    """The model the analyzer builds from these OTLP requests: one batch, merged; when spilling,
    one batch per request (each spilled as it is merged)."""
    model = new_model()
    if MEMORY_BUDGET:
        for r in requests:
            batch = model.new_batch()
            add_request(batch, r)
            model.merge(batch)
        return model
    batch = model.new_batch()
    for r in requests:
        add_request(batch, r)
    model.merge(batch)
    return model


def compiled_or_python(request: Any, monkeypatch: Any, module: Any, name: str, what: str) -> str:
    """For an autouse fixture with params ["compiled", "python"]: ``module.name`` (a compiled
    implementation, or None when not built) set to None for "python"; "compiled" is skipped
    when it is not built."""
    if request.param == "python":
        monkeypatch.setattr(module, name, None)
    elif getattr(module, name) is None:
        pytest.skip(f"the compiled {what} is not built")
    return str(request.param)


SPILL_MODES = ["in-memory", "spilled", "spilled-python-sort"]


def spill_modes(request: Any, monkeypatch: Any) -> str:
    """For an autouse fixture with params ``SPILL_MODES``: set ``MEMORY_BUDGET``, and when
    spilling, read runs back 3 calls at a time, replay 5 at a time and split row partitions
    beyond 2 rows; with the Python column sort instead of the compiled one, if asked."""
    if request.param.startswith("spilled"):
        monkeypatch.setattr(sys.modules[__name__], "MEMORY_BUDGET", 1)
        monkeypatch.setattr(spill, "PIECE", 3)
        monkeypatch.setattr(model, "REPLAY_BLOCK", 5)
        monkeypatch.setattr(model, "MIN_PARTITION_ROWS", 2)
    if request.param.endswith("python-sort"):
        monkeypatch.setattr(spill, "SORT_COLUMNS", None)
    return str(request.param)


def load_options(**options: Any) -> LoadOptions:
    """``LoadOptions`` with the tests' ``MEMORY_BUDGET`` (small chunks when spilling)."""
    if MEMORY_BUDGET:
        options.setdefault("chunk_bytes", 1)
    return LoadOptions(memory_budget=MEMORY_BUDGET, **options)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**70), st.floats(allow_nan=False),
                     st.text(max_size=20), st.sampled_from(["", "0", "12", "ff", "zz", "STATUS_CODE_ERROR"]))
arbitrary_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["key", "value", "stringValue", "intValue", "arrayValue", "values",
                                     "spans", "attributes", "scope", "resource", "scopeSpans", "events",
                                     "spanId", "traceId", "parentSpanId", "startTimeUnixNano", "name",
                                     "endTimeUnixNano", "status", "code", "boolValue", "data", "result",
                                     "callspan.summary.function", "processes", "tags", "logs"]),
                    inner, max_size=5)), max_leaves=30)


def mutated_request(data: st.DataObject) -> dict[str, Any]:
    """A valid request with one node somewhere replaced by arbitrary JSON."""
    base = request([span("m.root", 1, 0, 100, cpu=10, extra=summary(["m.g"], [2], cpu_total=[4]),
                         events=[calls_event("m.g", [1, 2], [5, 6])]),
                    span("m.g", 2, 1, 2, args=1, ret=2, parent=1)])
    # Replace one node somewhere in the request with arbitrary JSON.
    nodes: list[tuple[Any, Any]] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k in obj:
                nodes.append((obj, k))
                walk(obj[k])
        elif isinstance(obj, list):
            for i in range(len(obj)):
                nodes.append((obj, i))
                walk(obj[i])

    walk(base)
    parent, key = nodes[data.draw(st.integers(0, len(nodes) - 1))]
    parent[key] = data.draw(arbitrary_json)
    return base


# -- schema v2: callspan.profile spans ----------------------------------------------------------

SKETCH_GAMMA = 1.01 / 0.99


def profile_span(window: int, chunk: int = 0, chunks: int = 1, *, functions: Sequence[dict[str, Any]] = (),
                 nodes: Sequence[dict[str, Any]] = (), wall: Sequence[tuple[int, int, int]] = (),
                 run: Sequence[tuple[int, int, int]] = (), cache: Sequence[dict[str, Any]] = (),
                 reuse: Sequence[tuple[int, int, float, float, float]] = (), start: int = 0, end: int = 10_000_000_000, gamma: float = SKETCH_GAMMA,
                 final: bool = False, calls_total: int | None = None, edges: Sequence[tuple[int, int, int]] = (),
                 lost_edges: int | None = None) -> dict[str, Any]:
    """A ``callspan.profile`` span (docs/span-schema.md, schema version 2) from rows: each group's
    rows become that group's parallel array attributes. ``functions``: dicts with id, name, file,
    line, kind, calls, errors, wall_ns, run_ns, cpu_self; ``nodes``: id, parent, function, label,
    calls, errors, wall_ns, run_ns, suspended_ns, awaits, cpu_total, cpu_self; ``wall``/``run``:
    (function, bucket, count); ``cache``: function plus the cache columns; ``reuse``: (function,
    distance, hits, cpu, wall_ns); ``calls_total``: the tracer's running call count (None: not
    written, as by tracers before it existed); ``edges``: (caller, callee, calls) of calls folded
    into (other) nodes, ``lost_edges`` (None: not written, a tracer that keeps no edges)."""
    p = "callspan.profile."
    attrs: dict[str, Any] = {
        p + "window": window, p + "chunk": chunk, p + "chunks": chunks, p + "final": final,
        p + "lost_calls": 0, p + "other_nodes": 0, p + "sketch.gamma": gamma,
    }
    if calls_total is not None:
        attrs[p + "calls_total"] = calls_total
    if lost_edges is not None:
        attrs[p + "lost_edges"] = lost_edges

    def columns(group: str, rows: list[dict[str, Any]], names: dict[str, Any]) -> None:
        if rows:
            for name, default in names.items():
                attrs[p + group + name] = [row.get(name, default) for row in rows]

    columns("function.", list(functions), {"id": 0, "name": "", "file": "", "line": 0, "kind": "function",
                                           "calls": 0, "errors": 0, "wall_ns": 0, "run_ns": 0, "cpu_self": 0})
    columns("node.", list(nodes), {"id": 0, "parent": 0, "function": 0, "label": "", "calls": 0, "errors": 0,
                                   "wall_ns": 0, "run_ns": 0, "suspended_ns": 0, "awaits": 0, "cpu_total": 0,
                                   "cpu_self": 0})
    for group, rows in (("wall.", wall), ("run.", run)):
        columns(group, [{"function": f, "bucket": b, "count": n} for f, b, n in rows],
                {"function": 0, "bucket": 0, "count": 0})
    columns("cache.", list(cache), {"function": 0, "calls": 0, "unhashable_calls": 0, "unhashable_types": "",
                                    "identity_calls": 0, "keys": 0.0, "inconsistent_keys": 0.0,
                                    "inconsistent_calls": 0.0, "fresh_keys": 0.0, "overlaps": 0.0,
                                    "sampled_calls": 0, "rate": 1.0, "none_returns": 0})
    columns("reuse.", [{"function": f, "distance": d, "hits": h, "cpu": c, "wall_ns": w} for f, d, h, c, w in reuse],
            {"function": 0, "distance": 0, "hits": 0.0, "cpu": 0.0, "wall_ns": 0.0})
    columns("edge.", [{"caller": a, "callee": b, "calls": n} for a, b, n in edges], {"caller": 0, "callee": 0, "calls": 0})
    for key, value in list(attrs.items()):
        # Double columns stay doubles even when a value is whole (as the tracer writes them).
        if isinstance(value, list) and key.rsplit(".", 1)[-1] in (
                "keys", "inconsistent_keys", "inconsistent_calls", "fresh_keys", "overlaps", "rate", "hits", "cpu") \
                or key.endswith("reuse.wall_ns"):
            attrs[key] = [float(v) for v in value]
    return {"traceId": f"{window + 1:032x}", "spanId": f"{(window << 8) + chunk + 1:016x}", "name": "callspan.profile",
            "kind": 1, "startTimeUnixNano": str(start), "endTimeUnixNano": str(end), "attributes": kvs(attrs)}


def request_v2(spans: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """``request`` with the scope's ``callspan.schema`` = 2."""
    out = request(spans, **kw)
    scope = out["resourceSpans"][0]["scopeSpans"][0]["scope"]
    scope["attributes"] = [kv if kv["key"] != "callspan.schema" else {"key": "callspan.schema", "value": av(2)}
                           for kv in scope["attributes"]]
    return out
