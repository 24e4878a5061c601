"""Input files: discovery, format detection, and reading into ``Batch``es.

Formats are detected from content, never from the file name:

- OTLP JSON lines (what the Collector's file exporter and ``callspan run -o`` write): one
  ``{"resourceSpans": [...]}`` object per line;
- Jaeger v3 (``/api/v3/traces``) answers ``{"result": {"resourceSpans": [...]}}``, one or more
  per file (one per line, or concatenated);
- Jaeger ``/api/traces`` JSON ``{"data": [trace, ...]}``, usually one document, maybe
  pretty-printed over many lines;
- any of them gzip-compressed (detected by the gzip magic bytes).

Plain JSON-lines files are cut into byte ranges at line boundaries so that several worker
processes can parse one big file; everything else is read whole by one worker, line by line
when the content is line-oriented. A last line without its newline that does not parse (a
writer that crashed mid-line) is skipped with a warning; any other bad line is an error that
names the file and line.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from callspan.analysis.jaeger import trace_to_otlp
from callspan.analysis.model import Batch
from callspan.analysis.otlp import add_request, add_scanned
from callspan.analysis.otlp import loads_json as _loads
from callspan.errors import CallspanError

MAX_LINE_BYTES = 256 << 20  # one OTLP export request; the SDK writes a few MiB at most
MAX_DOCUMENT_BYTES = 1 << 30  # a whole Jaeger JSON document is loaded at once
CHUNK_BYTES = 8 << 20  # smaller chunks: less idle time at the end of a parallel read

_GZIP = b"\x1f\x8b"
_OTHER_COMPRESSION = {
    b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip",
}
_TRACE_FILE = re.compile(r"\.(?:json|jsonl|ndjson)(?:[.-]\d+)?(?:\.gz)?$", re.IGNORECASE)
_SPAN_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError)

# A unit of work for one worker: ("range", path, start, end) of a plain JSON-lines file, or
# ("file", path, 0, size) for a file read whole.
Task = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True)
class Source:
    path: str
    size: int


try:  # the compiled request reader (optional; the Python path below is its reference)
    from callspan.analysis._otlpscan import scan_request as _scan_request

    SCAN_REQUEST: Callable[[bytes], Any] | None = _scan_request
except ImportError:
    SCAN_REQUEST = None


def _span_error(where: str, exc: BaseException) -> CallspanError:
    return CallspanError(f"{where}: invalid span data: {type(exc).__name__}: {exc}")


# In every line holding a ``callspan.profile`` span (its name, or its attribute keys: a span
# whose keys are all escaped is left to Python by the scanner anyway).
_PROFILE_MARK = b"callspan.profile"


def _scanned(batch: Batch, line: bytes, where: Callable[[], str]) -> bool:
    """Fold an OTLP request line through the compiled reader; False if it left the line to Python.

    The compiled reader decodes only what a function span carries, so it would drop a
    ``callspan.profile`` span's columns: lines holding one (rare: one per process and export
    interval) go to the Python reader whole."""
    if SCAN_REQUEST is None or _PROFILE_MARK in line:
        return False
    resources = SCAN_REQUEST(line)
    if resources is None:
        return False
    try:
        add_scanned(batch, resources)
    except _SPAN_ERRORS as exc:
        raise _span_error(where(), exc) from None
    return True


def is_trace_file(name: str) -> bool:
    """Names a directory scan picks up: *.json, *.jsonl, *.ndjson, rotated (.1, -3), .gz."""
    return not name.startswith(".") and bool(_TRACE_FILE.search(name))


def expand_inputs(paths: list[str]) -> list[Source]:
    """Files named, plus the trace files directly inside directories named (sorted by name)."""
    sources: list[Source] = []
    for path in paths:
        try:
            if os.path.isdir(path):
                names = sorted(n for n in os.listdir(path) if is_trace_file(n))
                found = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
                if not found:
                    raise CallspanError(f"{path}: directory holds no trace files (*.json, *.jsonl, *.ndjson, maybe .gz)")
                sources.extend(Source(f, os.path.getsize(f)) for f in found)
            elif os.path.exists(path):
                if not os.path.isfile(path):
                    raise CallspanError(f"{path}: not a regular file")
                sources.append(Source(path, os.path.getsize(path)))
            else:
                raise CallspanError(f"{path}: no such file or directory")
        except PermissionError:
            raise CallspanError(f"{path}: permission denied") from None
        except OSError as exc:
            raise CallspanError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return sources


def _open(path: str) -> IO[bytes]:
    try:
        raw = open(path, "rb")  # noqa: SIM115 (returned)
    except OSError as exc:
        raise CallspanError(f"{path}: cannot open: {exc.strerror or exc}") from None
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(_GZIP):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]  # an IO[bytes] in practice
    for magic, name in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            raw.close()
            raise CallspanError(f"{path}: {name}-compressed; decompress it first (only gzip is read directly)")
    return raw


def is_compressed(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == _GZIP
    except OSError as exc:
        raise CallspanError(f"{path}: cannot open: {exc.strerror or exc}") from None


def _read_errors(path: str) -> Callable[[BaseException], CallspanError]:
    def convert(exc: BaseException) -> CallspanError:
        if isinstance(exc, EOFError):
            return CallspanError(f"{path}: truncated gzip file (compressed data ends early)")
        if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
            return CallspanError(f"{path}: corrupt gzip data ({exc})")
        if isinstance(exc, MemoryError):
            return CallspanError(f"{path}: out of memory while reading")
        return CallspanError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")
    return convert


_READ_EXCEPTIONS = (OSError, EOFError, zlib.error, MemoryError)


def _first_line(stream: IO[bytes], path: str, max_line: int) -> tuple[bytes, int]:
    """The first non-blank line (bounded) and how many lines it took to get there."""
    number = 0
    while True:
        line = stream.readline(max_line + 1)
        number += 1
        if not line:
            return b"", number
        if len(line) > max_line and not line.endswith(b"\n"):
            raise CallspanError(f"{path}:{number}: line longer than {max_line >> 20} MiB: not OTLP JSON lines")
        if line.strip():
            return line, number


def _sniff(line: bytes, path: str, number: int) -> bool:
    """Whether the content is line-oriented (the first line parses as a JSON object by itself)."""
    stripped = line.lstrip()
    if not stripped.startswith(b"{"):
        shown = stripped[:16]
        raise CallspanError(f"{path}:{number}: not OTLP JSON lines or Jaeger JSON (starts with {shown!r})")
    try:
        return isinstance(_loads(line), dict)
    except (ValueError, RecursionError):
        return False


def plan(sources: list[Source], chunk_bytes: int = CHUNK_BYTES, max_line: int = MAX_LINE_BYTES) -> list[Task]:
    """Cut the inputs into tasks: byte ranges of big plain JSON-lines files, else whole files."""
    tasks: list[Task] = []
    for source in sources:
        path = source.path
        if source.size <= chunk_bytes or is_compressed(path):
            tasks.append(("file", path, 0, source.size))
            continue
        try:
            with open(path, "rb") as f:
                first, number = _first_line(f, path, max_line)
                if not first or not _sniff(first, path, number):
                    tasks.append(("file", path, 0, source.size))
                    continue
                start = 0
                while start < source.size:
                    end = start + chunk_bytes
                    if end >= source.size:
                        end = source.size
                    else:
                        f.seek(end)
                        rest = f.readline(max_line + 1)
                        if len(rest) > max_line and not rest.endswith(b"\n"):
                            raise CallspanError(f"{path}: a line near byte {end} is longer than {max_line >> 20} MiB")
                        end += len(rest)
                    tasks.append(("range", path, start, end))
                    start = end
        except OSError as exc:
            raise CallspanError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return tasks


def _line_number(path: str, offset: int) -> int:
    """1-based number of the line starting at byte ``offset`` of a plain file."""
    count = 0
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count + 1


def add_document(batch: Batch, document: Any, where: str) -> None:
    """Fold one decoded JSON document (OTLP request, Jaeger v3 answer, Jaeger JSON) into ``batch``."""
    if not isinstance(document, dict):
        raise CallspanError(f"{where}: expected a JSON object, found a JSON {type(document).__name__}")
    try:
        if "resourceSpans" in document:
            add_request(batch, document)
        elif "result" in document:
            result = document["result"]
            for item in result if isinstance(result, list) else [result]:
                add_request(batch, item or {})
        elif "data" in document:
            data = document["data"]
            if not data and document.get("errors"):
                raise CallspanError(f"{where}: Jaeger reported errors{_error_codes(document['errors'])}")
            for trace in data or ():
                add_request(batch, trace_to_otlp(trace))
        elif "error" in document:
            raise CallspanError(f"{where}: Jaeger reported an error{_error_codes([document['error']])}")
        elif document:
            keys = ", ".join(key[:40] for key in sorted(document)[:5])
            raise CallspanError(f"{where}: not OTLP JSON (no resourceSpans) nor Jaeger JSON (no data/result); "
                                f"keys: {keys}")
    except _SPAN_ERRORS as exc:
        raise _span_error(where, exc) from None
    except RecursionError:
        raise CallspanError(f"{where}: invalid span data: nested too deeply") from None


def _error_codes(errors: Any) -> str:
    """The codes of Jaeger's reported errors (their text, the server's, is not shown)."""
    items = errors if isinstance(errors, list) else [errors]
    codes = sorted({e["code"] for e in items if isinstance(e, dict) and isinstance(e.get("code"), int)})
    return f" (code {', '.join(map(str, codes))})" if codes else ""


def _parse(line: bytes, where: Callable[[], str]) -> Any:
    try:
        return _loads(line)
    except json.JSONDecodeError as exc:
        raise CallspanError(f"{where()}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise CallspanError(f"{where()}: invalid JSON: {exc}") from None


def _incomplete(path: str, number: int | str, size: int) -> str:
    return f"{path}:{number}: skipped an incomplete last line ({size} bytes, no newline; writer crashed?)"


def read_range(batch: Batch, path: str, start: int, end: int, size: int, max_line: int = MAX_LINE_BYTES) -> None:
    """Fold the JSON lines in bytes [start, end) of a plain file into ``batch``."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    except OSError as exc:
        raise CallspanError(f"{path}: cannot read: {exc.strerror or exc}") from None
    offset = start
    lines = data.split(b"\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        line_offset = offset
        offset += len(line) + 1
        if not line.strip():
            continue
        if len(line) > max_line:
            raise CallspanError(f"{path}:{_line_number(path, line_offset)}: line longer than {max_line >> 20} MiB")

        def where(at: int = line_offset) -> str:
            return f"{path}:{_line_number(path, at)}"

        if _scanned(batch, line, where):
            continue
        if i == last and end >= size:
            try:
                document = _loads(line)
            except (ValueError, RecursionError):
                batch.warnings.append(_incomplete(path, _line_number(path, line_offset), len(line)))
                continue
        else:
            document = _parse(line, where)
        if isinstance(document, dict):
            _add_line(batch, document, where)
        else:
            add_document(batch, document, where())
        # Free this line's objects before parsing the next one: two big parse trees alive at once
        # make the allocator map fresh memory for every line (~1.5x slower).
        document = None


def _add_line(batch: Batch, document: dict[str, Any], where: Callable[[], str]) -> None:
    # Fast path for the common case; the location string is only built on error.
    try:
        if "resourceSpans" in document:
            add_request(batch, document)
            return
    except _SPAN_ERRORS as exc:
        raise _span_error(where(), exc) from None
    add_document(batch, document, where())


def read_file(batch: Batch, path: str, max_line: int = MAX_LINE_BYTES,
              max_document: int = MAX_DOCUMENT_BYTES) -> None:
    """Fold a whole file (plain or gzip; lines or one document) into ``batch``."""
    convert = _read_errors(path)
    stream = _open(path)
    try:
        with stream:
            first, number = _first_line(stream, path, max_line)
            if not first:
                batch.warnings.append(f"{path}: empty file")
                return
            if _sniff(first, path, number):
                _read_lines(batch, stream, path, first, number, max_line)
            else:
                data = first + stream.read(max_document + 1 - len(first))
                if len(data) > max_document:
                    raise CallspanError(f"{path}: one JSON document larger than {max_document >> 20} MiB; "
                                        "split it (or export OTLP JSON lines)")
                for document, where in iter_documents(data, path, first_line=number):
                    add_document(batch, document, where)
    except CallspanError:
        raise
    except _READ_EXCEPTIONS as exc:
        raise convert(exc) from None


def _read_lines(batch: Batch, stream: IO[bytes], path: str, first: bytes, number: int, max_line: int) -> None:
    line = first
    while line:
        if line.strip():
            if len(line) > max_line and not line.endswith(b"\n"):
                raise CallspanError(f"{path}:{number}: line longer than {max_line >> 20} MiB")
            following = stream.readline(max_line + 1)
            if _scanned(batch, line, _location(path, number)):
                line = following
                number += 1
                continue
            if not line.endswith(b"\n") and not following:
                try:
                    document = _loads(line)
                except (ValueError, RecursionError):
                    batch.warnings.append(_incomplete(path, number, len(line)))
                    return
            else:
                document = _parse(line, _location(path, number))
            if isinstance(document, dict):
                _add_line(batch, document, _location(path, number))
            else:
                add_document(batch, document, f"{path}:{number}")
            document = None  # see read_range
            line = following
        else:
            line = stream.readline(max_line + 1)
        number += 1


def _location(path: str, number: int) -> Callable[[], str]:
    return lambda: f"{path}:{number}"


def iter_documents(data: bytes, name: str, first_line: int = 1) -> Iterator[tuple[Any, str]]:
    """The JSON documents in ``data``: one, or several concatenated / one per line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CallspanError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    decoder = json.JSONDecoder()
    position = 0
    length = len(text)
    count = 0
    while True:
        while position < length and text[position] in " \t\r\n":
            position += 1
        if position >= length:
            break
        try:
            document, position_after = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise CallspanError(f"{name}:{exc.lineno + first_line - 1}: invalid JSON: {exc.msg} "
                                f"(column {exc.colno})") from None
        except RecursionError:
            raise CallspanError(f"{name}: invalid JSON: nested too deeply") from None
        line = text.count("\n", 0, position) + first_line
        position = position_after
        count += 1
        yield document, f"{name}:{line}"
    if not count:
        raise CallspanError(f"{name}: no JSON document")


def read_bytes(batch: Batch, data: bytes, name: str) -> None:
    """Fold a fetched response body (one or more JSON documents) into ``batch``."""
    if data.startswith(_GZIP):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise CallspanError(f"{name}: corrupt gzip data ({exc})") from None
    for document, where in iter_documents(data, name):
        add_document(batch, document, where)


def run_task(task: Task, batch: Batch, max_line: int = MAX_LINE_BYTES) -> Batch:
    kind, path, start, end = task
    if kind == "range":
        read_range(batch, path, start, end, os.path.getsize(path), max_line)
    else:
        read_file(batch, path, max_line)
    return batch
