"""Settings and their precedence: explicit argument > CALLSPAN_* variable > [tool.callspan] > default.

Every environment variable is a documented constant here. The standard OTEL_* variables are not
read here: the OpenTelemetry SDK reads them with their usual meaning.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from callspan.errors import CallspanError

#: Force a core: ``csysmon``, ``sysmon``, ``csetprofile`` or ``setprofile`` (default: the best available).
CALLSPAN_CORE = "CALLSPAN_CORE"
#: Comma-separated module/package names or path prefixes to trace (default: the user's own code).
CALLSPAN_INCLUDE = "CALLSPAN_INCLUDE"
#: Comma-separated module/package names or path prefixes never to trace.
CALLSPAN_EXCLUDE = "CALLSPAN_EXCLUDE"
#: CPU counter: ``auto`` (hardware instructions if the CPU exposes them, else thread CPU time),
#: ``instructions``, ``task-clock``, ``thread``, or ``off``.
CALLSPAN_CPU = "CALLSPAN_CPU"
#: Thread CPU time: read the kernel's clock at most once per this many microseconds of wall
#: time per thread (each read is a system call, ~0.5-1 us); shorter intervals in between count
#: their wall time as CPU time. 0 reads the clock at every call boundary.
CALLSPAN_CPU_INTERVAL_US = "CALLSPAN_CPU_INTERVAL_US"
#: Cache-key hashing: ``on`` (every traced function), ``off``, or a comma-separated list of
#: function names (``module.QualName`` or bare ``QualName``) to hash keys for.
CALLSPAN_KEYS = "CALLSPAN_KEYS"
#: ``on``: keys may call a class's own ``__hash__``, as functools.lru_cache would (``callspan run``
#: and ``tracing()``); ``off`` (production mode's default): only built-in hashes run in the hook.
CALLSPAN_USER_HASH = "CALLSPAN_USER_HASH"
#: Comma-separated glob patterns of qualified type names (``module.QualName``) whose ``__hash__``
#: keys never call, even with ``CALLSPAN_USER_HASH=on``: their values are not keyed (counted as
#: ``Name:user-hash``), as with ``off``. For a ``__hash__`` that takes a lock, does I/O or is slow.
CALLSPAN_USER_HASH_SKIP = "CALLSPAN_USER_HASH_SKIP"
#: Comma-separated glob patterns of function names (``module.QualName`` or bare ``QualName``)
#: whose calls are never keyed (counted, not hashed), whatever ``CALLSPAN_KEYS`` says.
CALLSPAN_KEYS_EXCLUDE = "CALLSPAN_KEYS_EXCLUDE"
#: Hex secret for the keyed hashes (default: random per process). Set it to compare keys across processes.
CALLSPAN_KEY_SECRET = "CALLSPAN_KEY_SECRET"
#: Most spans kept per trace: the first calls of a kept trace to start (their ancestors are kept too).
CALLSPAN_MAX_SPANS_PER_TRACE = "CALLSPAN_MAX_SPANS_PER_TRACE"
#: Most spans per second, process-wide (a token bucket decided at each trace's root); other traces
#: are not made spans. Every call is in the aggregates either way.
CALLSPAN_MAX_SPANS_PER_SECOND = "CALLSPAN_MAX_SPANS_PER_SECOND"
#: Kept calls shorter than this many microseconds of wall time are not made spans (they stay in
#: the aggregates); 0 (default; production mode: 100) makes every kept call a span.
CALLSPAN_MIN_SPAN_US = "CALLSPAN_MIN_SPAN_US"
#: Most finished kept calls waiting for the span builder; beyond, their spans are not built
#: (counted; the calls stay in the aggregates).
CALLSPAN_MAX_PENDING = "CALLSPAN_MAX_PENDING"
#: Seconds between span-building passes.
CALLSPAN_FLUSH_INTERVAL = "CALLSPAN_FLUSH_INTERVAL"
#: Seconds between exports of the aggregates (``callspan.profile`` spans); also at stop.
CALLSPAN_PROFILE_INTERVAL = "CALLSPAN_PROFILE_INTERVAL"
#: Call-tree nodes per process; beyond, new paths fold into an ``(other)`` node of their deepest ancestor.
CALLSPAN_MAX_NODES = "CALLSPAN_MAX_NODES"
#: Call-tree depth; deeper calls fold into an ``(other)`` node.
CALLSPAN_MAX_DEPTH = "CALLSPAN_MAX_DEPTH"
#: Distinct keys per function kept exactly; beyond, keys are sampled (SHARDS) and estimates scaled.
CALLSPAN_MAX_KEYS = "CALLSPAN_MAX_KEYS"
#: Distinct keys kept per process, all functions together.
CALLSPAN_MAX_KEYS_TOTAL = "CALLSPAN_MAX_KEYS_TOTAL"
#: A function whose first 1024 keyed calls took less than this many ns each on average stops
#: being keyed (a cache lookup would cost about as much as the call). 0: always key.
CALLSPAN_KEY_MIN_NS = "CALLSPAN_KEY_MIN_NS"

#: Production mode (callspan.production): the share of requests traced when no OpenTelemetry
#: span decides (a service without a sampler), 0 to 1. A request whose server span exists is
#: traced exactly when the application's sampler sampled it.
CALLSPAN_SAMPLE_RATE = "CALLSPAN_SAMPLE_RATE"
#: ``1``/``true``: arm production mode from ``opentelemetry-instrument`` (its post-instrument
#: entry point): each process traces the requests its sampler samples.
CALLSPAN_ENABLED = "CALLSPAN_ENABLED"
#: ``callspan.return.size`` on spans: ``on`` (default) or ``off``. The shallow size of a return
#: value only feeds the analyzer's cache memory estimate, but it reveals the length of a returned
#: string (a 56-byte ``str`` holds 15 ASCII characters): ``off`` never exports it.
CALLSPAN_RETURN_SIZE = "CALLSPAN_RETURN_SIZE"

#: ``callspan run``: ``on`` traces the children the program starts with ``multiprocessing`` (the
#: fork, spawn and forkserver start methods; ``concurrent.futures.ProcessPoolExecutor``), each a
#: process of its own written to the same destinations. ``off`` (default): a forked child exports
#: only what it traced before leaving through ``os._exit`` (multiprocessing's way), and children
#: started by spawn or forkserver are not traced.
CALLSPAN_FOLLOW_CHILDREN = "CALLSPAN_FOLLOW_CHILDREN"

ENV_VARS = (
    CALLSPAN_CORE, CALLSPAN_INCLUDE, CALLSPAN_EXCLUDE, CALLSPAN_CPU, CALLSPAN_CPU_INTERVAL_US, CALLSPAN_KEYS, CALLSPAN_USER_HASH,
    CALLSPAN_USER_HASH_SKIP, CALLSPAN_KEYS_EXCLUDE,
    CALLSPAN_KEY_SECRET, CALLSPAN_MAX_SPANS_PER_TRACE, CALLSPAN_MAX_SPANS_PER_SECOND, CALLSPAN_MIN_SPAN_US,
    CALLSPAN_MAX_PENDING, CALLSPAN_FLUSH_INTERVAL, CALLSPAN_PROFILE_INTERVAL, CALLSPAN_MAX_NODES,
    CALLSPAN_MAX_DEPTH, CALLSPAN_MAX_KEYS, CALLSPAN_MAX_KEYS_TOTAL, CALLSPAN_KEY_MIN_NS,
    CALLSPAN_SAMPLE_RATE, CALLSPAN_ENABLED, CALLSPAN_RETURN_SIZE, CALLSPAN_FOLLOW_CHILDREN,
)

CORES = ("csysmon", "sysmon", "csetprofile", "setprofile")
CPU_MODES = ("auto", "instructions", "task-clock", "thread", "off")


@dataclass(frozen=True)
class Settings:
    core: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    cpu: str = "auto"
    cpu_interval_us: int = 20
    keys: str = "on"
    # "on": keys may call a user __hash__, as functools.lru_cache would (guarded); "off": only
    # built-in hashes run in the hook (user types are not keyed). Production mode defaults to off.
    user_hash: str = "on"
    user_hash_skip: tuple[str, ...] = ()
    keys_exclude: tuple[str, ...] = ()
    key_secret: bytes | None = None
    max_spans_per_trace: int = 2000
    max_spans_per_second: int = 200
    min_span_us: int = 0
    max_pending: int = 200_000
    flush_interval: float = 0.5
    profile_interval: float = 10.0
    max_nodes: int = 100_000
    max_depth: int = 256
    max_keys: int = 4096
    max_keys_total: int = 1 << 20
    key_min_ns: int = 400
    sample_rate: float = 0.01
    return_size: bool = True
    follow_children: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


_ENV_FOR_FIELD = {
    "core": CALLSPAN_CORE, "include": CALLSPAN_INCLUDE, "exclude": CALLSPAN_EXCLUDE,
    "cpu": CALLSPAN_CPU, "cpu_interval_us": CALLSPAN_CPU_INTERVAL_US, "keys": CALLSPAN_KEYS, "user_hash": CALLSPAN_USER_HASH,
    "user_hash_skip": CALLSPAN_USER_HASH_SKIP, "keys_exclude": CALLSPAN_KEYS_EXCLUDE, "key_secret": CALLSPAN_KEY_SECRET,
    "max_spans_per_trace": CALLSPAN_MAX_SPANS_PER_TRACE,
    "max_spans_per_second": CALLSPAN_MAX_SPANS_PER_SECOND, "min_span_us": CALLSPAN_MIN_SPAN_US,
    "max_pending": CALLSPAN_MAX_PENDING,
    "flush_interval": CALLSPAN_FLUSH_INTERVAL, "profile_interval": CALLSPAN_PROFILE_INTERVAL,
    "max_nodes": CALLSPAN_MAX_NODES, "max_depth": CALLSPAN_MAX_DEPTH, "max_keys": CALLSPAN_MAX_KEYS,
    "max_keys_total": CALLSPAN_MAX_KEYS_TOTAL, "key_min_ns": CALLSPAN_KEY_MIN_NS,
    "sample_rate": CALLSPAN_SAMPLE_RATE,
    "return_size": CALLSPAN_RETURN_SIZE,
    "follow_children": CALLSPAN_FOLLOW_CHILDREN,
}
_SWITCH = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _convert(name: str, raw: Any, source: str) -> Any:
    try:
        if name in ("include", "exclude", "user_hash_skip", "keys_exclude"):
            if isinstance(raw, str):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            return tuple(str(part) for part in raw)
        if name in ("max_spans_per_trace", "max_spans_per_second", "max_pending", "max_nodes", "max_depth",
                    "max_keys", "max_keys_total"):
            value = int(raw)
            if value < 1:
                raise ValueError("must be at least 1")
            return value
        if name in ("cpu_interval_us", "key_min_ns", "min_span_us"):
            value = int(raw)
            if value < 0:
                raise ValueError("must be 0 or more")
            return value
        if name in ("flush_interval", "profile_interval"):
            value_f = float(raw)
            if value_f <= 0:
                raise ValueError("must be positive")
            return value_f
        if name == "sample_rate":
            value_f = float(raw)
            if not 0.0 <= value_f <= 1.0:
                raise ValueError("must be between 0 and 1")
            return value_f
        if name in ("return_size", "follow_children"):
            if isinstance(raw, bool):
                return raw
            if str(raw).strip().lower() not in _SWITCH:
                raise ValueError("must be on or off")
            return _SWITCH[str(raw).strip().lower()]
        if name == "key_secret":
            return bytes.fromhex(str(raw)) if raw else None
        value_s = str(raw).strip()
        if name == "core" and value_s not in CORES:
            raise ValueError(f"must be one of {', '.join(CORES)}")
        if name == "cpu" and value_s not in CPU_MODES:
            raise ValueError(f"must be one of {', '.join(CPU_MODES)}")
        if name == "user_hash" and value_s not in ("on", "off"):
            raise ValueError("must be on or off")
        return value_s
    except (TypeError, ValueError) as exc:
        raise CallspanError(f"{source}: bad value {raw!r} for {name}: {exc}") from None


def _pyproject_table(start: Path) -> tuple[dict[str, Any], str]:
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            import tomllib

            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise CallspanError(f"{candidate}: cannot read [tool.callspan]: {exc}") from None
            table = data.get("tool", {}).get("callspan", {})
            if not isinstance(table, dict):
                raise CallspanError(f"{candidate}: [tool.callspan] must be a table")
            return table, str(candidate)
    return {}, ""


def load_settings(
    explicit: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    project_dir: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve every setting once, in the documented order of precedence; ``defaults`` replace
    the built-in defaults (production mode's differ), below every other source."""
    environ = os.environ if environ is None else environ
    table, table_source = _pyproject_table(project_dir or Path.cwd())
    known = {f.name for f in fields(Settings)} - {"extra"}
    unknown = set(table) - {n.replace("_", "-") for n in known} - known
    if unknown:
        raise CallspanError(f"{table_source}: unknown [tool.callspan] keys: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name in known:
        if explicit and explicit.get(name) is not None:
            values[name] = _convert(name, explicit[name], "argument")
        elif environ.get(_ENV_FOR_FIELD[name]):
            values[name] = _convert(name, environ[_ENV_FOR_FIELD[name]], _ENV_FOR_FIELD[name])
        elif name in table or name.replace("_", "-") in table:
            raw = table.get(name, table.get(name.replace("_", "-")))
            values[name] = _convert(name, raw, f"{table_source} [tool.callspan]")
    base = replace(Settings(), **{k: _convert(k, v, "default") for k, v in (defaults or {}).items()})
    return replace(base, **values)


def stdlib_paths() -> tuple[str, ...]:
    """Directories holding the standard library and installed packages (never traced by default)."""
    import sysconfig

    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(p for p in sys.path if "site-packages" in p or "dist-packages" in p)
    return tuple(sorted(os.path.realpath(p) + os.sep for p in paths if p))
