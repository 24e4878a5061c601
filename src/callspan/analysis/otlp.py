"""OTLP JSON (``ExportTraceServiceRequest``) → ``Batch``: the reader's hot path.

Follows docs/span-schema.md and the OTLP/JSON encoding: ids are hex strings (may be empty),
times are uint64 nanoseconds as JSON strings, ``intValue`` is a JSON string, attributes are
``{"key", "value": AnyValue}`` lists. Nothing depends on key order or on empty fields being
present. Base64 ids (protobuf JSON of ``bytes``) are accepted too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

from callspan.analysis.model import (
    F_ERROR,
    F_IDENTITY,
    F_NO_ARGS,
    F_NO_RETURN,
    F_SUMMARY,
    F_UNHASHABLE,
    R_HAS_CPU,
    R_SUMMARY,
    S_ARGS_UNHASHABLE,
    S_AWAITS,
    S_CALLS,
    S_CPU_CALLS,
    S_CPU_SELF,
    S_CPU_TOTAL,
    S_ERRORS,
    S_IDENTITY,
    S_MAX_WALL,
    S_METHOD,
    S_NO_KEY,
    S_RET_SIZE,
    S_RET_SIZE_N,
    S_RET_UNHASHABLE,
    S_RUN,
    S_SUM_CALLS,
    S_SUM_ERRORS,
    S_SUM_LISTED,
    S_SUSPENDED,
    S_WALL,
    UNKNOWN_KIND,
    Batch,
    FunctionInfo,
    ProcessInfo,
)
from callspan.analysis.profile import PROFILE_SPAN

MASK64 = 0xFFFFFFFFFFFFFFFF
SCOPE_NAME = "callspan"
# Resource attribute the Jaeger converter sets: the fallback process key of a Jaeger process entry.
PROCESS_KEY_ATTRIBUTE = "callspan.analysis.process"
_ERROR_CODES = (2, "2", "STATUS_CODE_ERROR")
_key_value = itemgetter("key", "value")


try:  # orjson parses OTLP JSON about 1.7x faster than the standard library (see README)
    import orjson as _orjson

    FAST_LOADS: Callable[[bytes], Any] | None = _orjson.loads
except ImportError:  # optional at run time: the standard library gives the same results
    FAST_LOADS = None


def loads_json(line: bytes) -> Any:
    """json.loads, through orjson when it is installed. orjson refuses a few things json accepts
    (NaN and Infinity, very deep nesting, some invalid UTF-8): those lines go to json, so what
    is valid and every error message stay json's. One difference remains: integers beyond 64
    bits come back as floats (OTLP's integers are int64)."""
    if FAST_LOADS is not None:
        try:
            return FAST_LOADS(line)
        except ValueError:
            pass
    return json.loads(line)


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as a Python value (arrays as lists, kvlists as dicts, bytes as base64 text)."""
    if not value:
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "boolValue" in value:
        return value["boolValue"] in (True, "true")
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [any_value(item) for item in (value["arrayValue"] or {}).get("values") or ()]
    if "kvlistValue" in value:
        return attributes((value["kvlistValue"] or {}).get("values"))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def attributes(kvs: Iterable[Any] | None) -> dict[str, Any]:
    """An OTLP KeyValue list as a dict of Python values."""
    out: dict[str, Any] = {}
    if not kvs:
        return out
    for kv in kvs:
        value = kv.get("value")
        if not value:
            out[kv["key"]] = None
        elif "stringValue" in value:
            out[kv["key"]] = value["stringValue"]
        elif "intValue" in value:
            out[kv["key"]] = int(value["intValue"])
        else:
            out[kv["key"]] = any_value(value)
    return out


def parse_id(text: Any) -> int:
    """A span id (hex, or base64 as protobuf JSON writes bytes) as an int; 0 when absent."""
    if not text:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        try:
            return int.from_bytes(base64.b64decode(text, validate=True), "big")
        except ValueError:
            raise ValueError(f"invalid span id {str(text)[:40]!r}") from None


def parse_hash(text: Any) -> int:
    """A key/return hash (16 hex digits) as a nonzero 64-bit int; 0 when absent.

    The high 32 bits are always ``int(text[:8], 16)``, the tracer's key-sampling value (see
    ``cache.key_sampled``), also for a hex string shorter than the schema's 16 digits.
    """
    if not text:
        return 0
    try:
        if isinstance(text, str):
            value = int(text[:16], 16) if len(text) >= 16 else _short_hash(text)
        else:
            value = int(text) & MASK64
    except ValueError:
        value = int.from_bytes(hashlib.blake2b(str(text).encode(), digest_size=8).digest(), "big")
    return value or 1


def _short_hash(text: str) -> int:
    """A hex hash of fewer than 16 digits: ``int(text[:8], 16)`` high, the rest (if any) low."""
    return (int(text[:8], 16) << 32) | int(text[8:] or "0", 16)


def process_info(resource: dict[str, Any], scope: dict[str, Any], fallback: str = "") -> ProcessInfo:
    """Who emitted a scopeSpans block: by service.instance.id, else process.pid, else ``fallback``."""
    instance = scope.get("service.instance.id") or resource.get("service.instance.id") or ""
    pid = scope.get("process.pid")
    if pid is None:
        pid = resource.get("process.pid")
    service = str(resource.get("service.name") or "")
    host = str(resource.get("host.name") or "")
    if instance:
        key = f"instance:{instance}"
    elif pid is not None:
        key = f"pid:{host}:{service}:{pid}"
    elif resource.get(PROCESS_KEY_ATTRIBUTE) or fallback:
        key = str(resource.get(PROCESS_KEY_ATTRIBUTE) or fallback)
    else:
        key = f"service:{service}"
    unit = scope.get("callspan.cpu.unit") or resource.get("callspan.cpu.unit") or ""
    counter = scope.get("callspan.cpu.counter") or resource.get("callspan.cpu.counter") or ""
    try:
        pid_number = int(pid) if pid is not None else None
    except (TypeError, ValueError):
        pid_number = None
    schema = scope.get("callspan.schema") or resource.get("callspan.schema") or 0
    try:
        schema_number = int(schema)
    except (TypeError, ValueError):
        schema_number = 0
    return ProcessInfo(key=key, service=service, pid=pid_number, instance=str(instance), host=host,
                       cpu_unit=str(unit), cpu_counter=str(counter), schema=schema_number)


def add_request(batch: Batch, request: Any, fallback_process: str = "") -> None:
    """Fold one ExportTraceServiceRequest (decoded JSON) into ``batch``."""
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    resources = []
    for resource_spans in request.get("resourceSpans") or ():
        blocks = resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or ()
        resources.append((resource_spans.get("resource"),
                          [(block.get("scope") or block.get("instrumentationLibrary"), block.get("spans") or ())
                           for block in blocks]))
    add_resources(batch, resources, fallback_process)


def add_scanned(batch: Batch, resources: list[Any], fallback_process: str = "") -> None:
    """Fold what the compiled scanner made of one request line: resources and scopes are raw
    JSON bytes (small), spans decoded tuples, or raw bytes for the spans it left to Python."""
    add_resources(batch, [(loads_json(resource) if resource else None,
                           [(loads_json(scope) if scope else None, spans) for scope, spans in blocks])
                          for resource, blocks in resources], fallback_process)


def add_resources(batch: Batch, resources: Iterable[tuple[Any, Iterable[tuple[Any, Any]]]],
                  fallback_process: str = "") -> None:
    """Fold a request's (resource, [(scope, spans)]) into ``batch``. Each span is a span object
    (dict), raw JSON bytes of one, or a tuple from ``decode_span`` (or the compiled scanner)."""
    batch.requests += 1
    for resource_object, blocks in resources:
        resource = attributes((resource_object or {}).get("attributes"))
        scopes = []
        shared: dict[str, Any] = {}
        for scope, spans in blocks:
            scope = scope or {}
            scope_attrs = attributes(scope.get("attributes"))
            scopes.append((scope.get("name") or "", scope_attrs, spans))
            # Per-process facts live on the callspan scope; apply them to the resource's other
            # scopes (e.g. the application's HTTP spans) so they group with the same process.
            for key in ("service.instance.id", "process.pid", "callspan.cpu.unit", "callspan.cpu.counter",
                        "callspan.schema"):
                if key in scope_attrs and key not in shared:
                    shared[key] = scope_attrs[key]
        for scope_name, scope_attrs, spans in scopes:
            if shared:
                scope_attrs = {**shared, **scope_attrs}
            process = batch.process(process_info(resource, scope_attrs, fallback_process))
            profiles = _add_spans(batch, process, spans, scope_name == SCOPE_NAME)
            batch.spans += len(spans) - profiles  # a callspan.profile span is not a call


def _int(value: Any) -> int:
    """An integer AnyValue (``intValue`` as a JSON string or number; tolerates doubles)."""
    try:
        return int(value["intValue"])
    except KeyError:
        decoded = any_value(value)
        if decoded is None or isinstance(decoded, (list, dict)):
            raise ValueError(f"expected an integer, found {value!r:.60}") from None
        return int(decoded)


def _str(value: Any) -> str:
    text = value.get("stringValue")
    if text is None:
        decoded = any_value(value)
        return "" if decoded is None else str(decoded)
    return str(text)


def _hash(value: Any) -> int:
    text = value.get("stringValue")
    return parse_hash(text if text is not None else _str(value))


# A decoded span: what the reader uses of one span, in this order. ``decode_span`` is the
# reference; the compiled scanner (``_otlpscan.c``) builds the same tuples for the spans it
# decodes itself and leaves every unusual encoding to ``decode_span``.
DecodedSpan = tuple[Any, ...]


def decode_span(span: Any) -> DecodedSpan:
    """(name, kind, file, line, start, end, error, cpu_total, cpu_self, run, thread, args, ret,
    size, suspended, awaits, args_unhashable, unhashable_names, return_unhashable, method,
    identity, span_id, trace_id, parent_id, extra) of one OTLP span object. ``None`` means
    absent for cpu_total, cpu_self, run, size, suspended, awaits, unhashable_names; ``extra``
    is (decoded attributes if the span carries summaries else None, its events) when it
    carries summaries or events, else None."""
    kvs = span.get("attributes")
    at = {kv["key"]: kv["value"] for kv in kvs} if kvs else {}
    get = at.get
    v = get("code.function.name")
    name = (v.get("stringValue") or _str(v) if v else "") or span.get("name") or "?"
    if name.__class__ is not str:
        name = str(name)
    v = get("callspan.kind")
    kind = _str(v) if v else ""
    v = get("code.file.path")
    file = _str(v) if v else ""
    v = get("code.line.number")
    line = _int(v) if v else 0
    start = int(span.get("startTimeUnixNano") or 0)
    end = int(span.get("endTimeUnixNano") or 0)
    status = span.get("status")
    error = bool((bool(status) and status.get("code") in _ERROR_CODES) or "error.type" in at)
    try:
        v = get("callspan.cpu.total")
        cpu_total = int(v["intValue"]) if v else None
        v = get("callspan.cpu.self")
        cpu_self = int(v["intValue"]) if v else None
        v = get("callspan.run_ns")
        run = int(v["intValue"]) if v else None
        v = get("thread.id")
        thread = (int(v["intValue"]) & 0xFFFFFFFF) if v else 0
        v = get("callspan.args.hash")
        args = parse_hash(v["stringValue"]) if v else 0
        v = get("callspan.return.hash")
        ret = parse_hash(v["stringValue"]) if v else 0
        v = get("callspan.return.size")
        size = int(v["intValue"]) if v else None
    except (KeyError, ValueError, TypeError):
        # Unusual encodings (an int as doubleValue, a hash that is not hex): the slow path.
        cpu_total, cpu_self, run, thread, args, ret, size = _slow_values(at)
    suspended = awaits = None
    v = get("callspan.await.suspended_ns")
    if v:
        suspended = _int(v)
        v = get("callspan.await.count")
        if v:
            awaits = _int(v)
    v = get("callspan.args.hashable")
    unhashable = v is not None and v.get("boolValue") is False
    names = None
    if unhashable:
        v = get("callspan.args.unhashable")
        if v:
            names = _str(v)
    v = get("callspan.return.hashable")
    ret_unhashable = bool(v and v.get("boolValue") is False)
    v = get("callspan.method")
    method = bool(v and v.get("boolValue") is True)
    v = get("callspan.args.identity")
    identity = v is not None and v.get("boolValue") is True
    # parse_id, inlined for hex ids
    text = span.get("spanId")
    try:
        span_id = int(text, 16) if text else 0
    except ValueError:
        span_id = parse_id(text)
    trace_id = span.get("traceId") or ""
    if trace_id.__class__ is not str:
        trace_id = str(trace_id)
    text = span.get("parentSpanId")
    try:
        parent_id = int(text, 16) if text else 0
    except ValueError:
        parent_id = parse_id(text)
    summary = attributes(kvs) if "callspan.summary.function" in at else None
    events = span.get("events")
    extra = (summary, events) if summary is not None or events else None
    return (name, kind, file, line, start, end, error, cpu_total, cpu_self, run, thread, args, ret, size,
            suspended, awaits, unhashable, names, ret_unhashable, method, identity, span_id, trace_id,
            parent_id, extra)


def _add_spans(batch: Batch, process: int, spans: Iterable[Any], callspan_scope: bool) -> int:
    """Fold ``spans`` into ``batch``; returns how many were ``callspan.profile`` spans."""
    # The hot loop: one decoded span at a time (decoded by the compiled scanner when it could);
    # array appends are bound once. The compiled scanner never decodes a profile span: lines
    # holding one are read here (``readers._scanned``), so only span objects need the name check.
    names = batch.names_of(process)
    functions = batch.functions
    appenders = batch.appenders
    rows = batch.rows if batch.want_rows else None
    if rows is not None:
        r_trace, r_span, r_parent, r_func = (rows.trace.append, rows.span.append, rows.parent.append,
                                             rows.func.append)
        r_self, r_total, r_run, r_count, r_flags = (rows.self_cost.append, rows.total_cost.append,
                                                    rows.run.append, rows.count.append, rows.flags.append)
    links = batch.links
    if links is not None:
        l_span, l_func, l_parent, l_child = (links.span.append, links.func.append, links.parent.append,
                                             links.child.append)
        # (span id, function) of every span is in the rows already when the links share them.
        each_span = links.span is not rows.span if rows is not None else True
    trace_index = batch.trace_index
    slow = batch.slow
    slow_keep = batch.slow_keep
    first_ns = batch.first_ns
    last_ns = batch.last_ns
    impossible = batch.impossible
    profiles = 0
    for span in spans:
        if span.__class__ is not tuple:
            if span.__class__ is bytes:
                span = loads_json(span)
            if span.get("name") == PROFILE_SPAN:
                profiles += 1
                _add_profile(batch, process, span)
                continue
            span = decode_span(span)
        (name, kind, file, line, start, end, error, cpu_total, cpu_self, run, thread, args, ret, size,
         suspended, awaits, unhashable, unhashable_names, ret_unhashable, method, identity, span_id,
         trace_id, parent_id, extra) = span
        func = names.get(name)
        if func is None:
            func = batch.function(process, name)
        info: FunctionInfo = functions[func]
        if not info.line:
            info.absorb_facts(file, line, kind or ("function" if callspan_scope else UNKNOWN_KIND))
        if end < start or start < 0:
            start, end = _possible_times(impossible, start, end)
        wall = end - start
        st = info.stats
        st[S_CALLS] += 1
        if error:
            st[S_ERRORS] += 1
        if run is None:
            run = wall
        elif run < 0:
            run = _not_negative(impossible, run)
        if cpu_total is None:
            cpu_total = cpu_self = 0
            has_cpu = False
        else:
            if cpu_self is None:
                cpu_self = cpu_total
            if cpu_self > cpu_total or cpu_self < 0:
                cpu_total, cpu_self = _possible_cpu(impossible, cpu_total, cpu_self)
            st[S_CPU_TOTAL] += cpu_total
            st[S_CPU_SELF] += cpu_self
            st[S_CPU_CALLS] += 1
            has_cpu = True
        if size is not None:
            if size < 0:
                size = _not_negative(impossible, size)
            st[S_RET_SIZE] += size
            st[S_RET_SIZE_N] += 1
        st[S_WALL] += wall
        st[S_RUN] += run
        if wall > st[S_MAX_WALL]:
            st[S_MAX_WALL] = wall
        if suspended is not None:
            if suspended < 0:
                suspended = _not_negative(impossible, suspended)
            st[S_SUSPENDED] += suspended
            if awaits is not None:
                st[S_AWAITS] += awaits if awaits >= 0 else _not_negative(impossible, awaits)
        if not args:
            st[S_NO_KEY] += 1
        if unhashable:
            st[S_ARGS_UNHASHABLE] += 1
            if unhashable_names:
                info.unhashable.update(n.strip() for n in unhashable_names.split(",") if n.strip())
        if ret_unhashable:
            st[S_RET_UNHASHABLE] += 1
        if method:
            st[S_METHOD] += 1
        if identity:
            st[S_IDENTITY] += 1
        columns = appenders[func]
        if columns is not None:
            c_start, c_end, c_args, c_ret, c_cpu, c_thread, c_flags = columns
            c_start(start)
            c_end(end)
            c_args(args)
            c_ret(ret)
            c_cpu(cpu_total)
            c_thread(thread)
            c_flags((F_ERROR if error else 0) | (0 if args else F_NO_ARGS)
                    | (0 if ret else F_NO_RETURN) | (F_UNHASHABLE if unhashable else 0)
                    | (F_IDENTITY if identity else 0))
        if start and (start < first_ns or not first_ns):
            first_ns = start
        if end > last_ns:
            last_ns = end
        if links is not None:
            if span_id and each_span:
                l_span(span_id)
                l_func(func)
            if parent_id:
                l_parent(parent_id)
                l_child(func)
        if extra is not None and extra[0] is not None:
            # Before the span's own row: rows are read back to front, parents first.
            _add_summaries(batch, process, extra[0], span_id, trace_id, func)
        if rows is not None or slow_keep:
            trace = trace_index.get(trace_id)
            if trace is None:
                trace = batch.trace(trace_id)
            if rows is not None:
                r_trace(trace)
                r_span(span_id)
                r_parent(parent_id)
                r_func(func)
                r_self(cpu_self)
                r_total(cpu_total)
                r_run(run)
                r_count(1)
                r_flags(R_HAS_CPU if has_cpu else 0)
            if slow_keep and (len(slow) < slow_keep or wall > slow[0][0]):
                batch.offer_slow((wall, trace, span_id, func, start))
        if extra is not None and extra[1]:
            for event in extra[1]:
                if event.get("name") == "callspan.calls":
                    _add_listed_calls(batch, process, attributes(event.get("attributes")), thread, func)
    if profiles:
        first_ns = min(first_ns, batch.first_ns) if first_ns and batch.first_ns else first_ns or batch.first_ns
        last_ns = max(last_ns, batch.last_ns)
    batch.first_ns = first_ns
    batch.last_ns = last_ns
    return profiles


# Impossible figures (a hostile or corrupt input; the tracer never writes them) are clamped to
# the nearest possible value and counted per kind (``Batch.impossible``, see ``model.IMPOSSIBLE``),
# so that no negative time or CPU reaches a total. Called off the hot path, when a check fails.

def _possible_times(impossible: dict[str, int], start: int, end: int) -> tuple[int, int]:
    if start < 0 or end < 0:
        impossible["negative_time"] = impossible.get("negative_time", 0) + 1
        start, end = max(start, 0), max(end, 0)
    if end < start:
        impossible["end_before_start"] = impossible.get("end_before_start", 0) + 1
        end = start
    return start, end


def _possible_cpu(impossible: dict[str, int], cpu_total: int, cpu_self: int) -> tuple[int, int]:
    if cpu_total < 0 or cpu_self < 0:
        impossible["negative_cpu"] = impossible.get("negative_cpu", 0) + 1
        cpu_total, cpu_self = max(cpu_total, 0), max(cpu_self, 0)
    if cpu_self > cpu_total:
        impossible["cpu_self_above_total"] = impossible.get("cpu_self_above_total", 0) + 1
        cpu_self = cpu_total
    return cpu_total, cpu_self


def _not_negative(impossible: dict[str, int], value: int, kind: str = "negative_value") -> int:
    """0 for a negative count or duration (running, suspended, awaits, a size, a summary's figures)."""
    if value < 0:
        impossible[kind] = impossible.get(kind, 0) + 1
        return 0
    return value


def _add_profile(batch: Batch, process: int, span: dict[str, Any]) -> None:
    """A ``callspan.profile`` span: its columns into the process's ``ProfileData``; every function
    of its table gets an entry in the batch, so the reports list functions that have no span."""
    at = attributes(span.get("attributes"))
    data = batch.profile(process)
    before = set(data.functions)
    end = int(span.get("endTimeUnixNano") or 0)
    data.add_span(at, end)
    for fid, info in data.functions.items():
        if info.name and (fid not in before or not info.file):
            func = batch.function(process, info.name)
            batch.functions[func].absorb_facts(info.file, info.line, info.kind)
    batch.note_time(int(span.get("startTimeUnixNano") or 0), end)


def _slow_values(at: dict[str, Any]) -> tuple[int | None, int | None, int | None, int, int, int, int | None]:
    """The hot loop's decoded values, tolerating any AnyValue encoding."""
    get = at.get
    v = get("callspan.cpu.total")
    cpu_total = _int(v) if v else None
    v = get("callspan.cpu.self")
    cpu_self = _int(v) if v else None
    v = get("callspan.run_ns")
    run = _int(v) if v else None
    v = get("thread.id")
    thread = (_int(v) & 0xFFFFFFFF) if v else 0
    v = get("callspan.args.hash")
    args = _hash(v) if v else 0
    v = get("callspan.return.hash")
    ret = _hash(v) if v else 0
    v = get("callspan.return.size")
    return cpu_total, cpu_self, run, thread, args, ret, (_int(v) if v else None)


def _array(at: dict[str, Any], key: str, n: int, required: bool = True) -> list[Any] | None:
    value = at.get(key)
    if value is None:
        if required:
            raise ValueError(f"{key} missing")
        return None
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"{key} is not an array of {n} values")
    return value


def _add_summaries(batch: Batch, process: int, at: dict[str, Any], span_id: int, trace_id: str,
                   caller: int) -> None:
    names = at["callspan.summary.function"]
    if not isinstance(names, list):
        raise ValueError("callspan.summary.function is not an array")
    n = len(names)
    files = _array(at, "callspan.summary.file", n, False) or [""] * n
    lines = _array(at, "callspan.summary.line", n, False) or [0] * n
    kinds = _array(at, "callspan.summary.kind", n, False) or ["function"] * n
    counts = _array(at, "callspan.summary.count", n)
    errors = _array(at, "callspan.summary.errors", n, False) or [0] * n
    walls = _array(at, "callspan.summary.wall_ns", n, False) or [0] * n
    runs = _array(at, "callspan.summary.run_ns", n, False) or walls
    cpu_totals = _array(at, "callspan.summary.cpu_total", n, False)
    cpu_selfs = _array(at, "callspan.summary.cpu_self", n, False)
    rows = batch.rows if batch.want_rows else None
    trace = batch.trace(trace_id) if rows is not None else 0
    impossible = batch.impossible
    assert counts is not None
    edges = batch.links.edges if batch.links is not None else None
    for i, name in enumerate(names):
        func = batch.function(process, str(name))
        if edges is not None and func != caller:
            edges.add((caller, func))  # the span's function called it (maybe through other summarised calls)
        info = batch.functions[func]
        info.absorb_facts(str(files[i] or ""), int(lines[i] or 0), str(kinds[i] or "function"))
        st = info.stats
        count = _not_negative(impossible, int(counts[i]))
        wall = _not_negative(impossible, int(walls[i] or 0))
        run = _not_negative(impossible, int(runs[i] or 0))
        st[S_SUM_CALLS] += count
        st[S_SUM_ERRORS] += _not_negative(impossible, int(errors[i] or 0))
        st[S_WALL] += wall
        st[S_RUN] += run
        cpu_total = cpu_self = 0
        if cpu_totals is not None:
            cpu_total = int(cpu_totals[i] or 0)
            cpu_self = int(cpu_selfs[i] or 0) if cpu_selfs is not None else cpu_total
            if cpu_self > cpu_total or cpu_self < 0:
                cpu_total, cpu_self = _possible_cpu(impossible, cpu_total, cpu_self)
            st[S_CPU_TOTAL] += cpu_total
            st[S_CPU_SELF] += cpu_self
            st[S_CPU_CALLS] += count
        if rows is not None:
            rows.trace.append(trace)
            rows.span.append(0)
            rows.parent.append(span_id)
            rows.func.append(func)
            rows.self_cost.append(cpu_self)
            rows.total_cost.append(cpu_total)
            rows.run.append(run)
            rows.count.append(count)
            rows.flags.append(R_SUMMARY | (R_HAS_CPU if cpu_totals is not None else 0))


def _add_listed_calls(batch: Batch, process: int, at: dict[str, Any], thread: int, caller: int) -> None:
    name = at.get("callspan.function")
    if not name:
        raise ValueError("callspan.calls event without callspan.function")
    args = at.get("callspan.args.hash")
    if not isinstance(args, list):
        raise ValueError("callspan.calls: callspan.args.hash is not an array")
    n = len(args)
    rets = _array(at, "callspan.return.hash", n, False) or [""] * n
    starts = _array(at, "callspan.start_ns", n)
    ends = _array(at, "callspan.end_ns", n)
    cpus = _array(at, "callspan.cpu", n, False) or [0] * n
    assert starts is not None and ends is not None
    rate = at.get("callspan.sample_rate")
    func = batch.function(process, str(name))
    if batch.links is not None and func != caller:
        batch.links.edges.add((caller, func))
    info = batch.functions[func]
    if rate is not None and 0 < float(rate) < info.sample_rate:
        info.sample_rate = float(rate)
    st = info.stats
    st[S_SUM_LISTED] += n
    columns = batch.calls[func]
    if columns is None:
        return
    impossible = batch.impossible
    for i in range(n):
        start = int(starts[i])
        end = int(ends[i])
        if end < start or start < 0:
            start, end = _possible_times(impossible, start, end)
        if end - start > st[S_MAX_WALL]:
            st[S_MAX_WALL] = end - start
        a = parse_hash(args[i])
        r = parse_hash(rets[i])
        columns.start.append(start)
        columns.end.append(end)
        columns.args.append(a)
        columns.ret.append(r)
        columns.cpu.append(_not_negative(impossible, int(cpus[i] or 0), "negative_cpu"))
        columns.thread.append(thread)
        columns.flags.append(F_SUMMARY | (0 if a else F_NO_ARGS) | (0 if r else F_NO_RETURN))
