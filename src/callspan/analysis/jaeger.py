"""Jaeger: its ``/api/traces`` JSON converted to OTLP JSON, and fetching from its HTTP API.

Jaeger's query JSON (``{"data": [trace, ...]}``) loses some of what callspan wrote: array
attributes become one string tag holding JSON text, span events become logs (the event name in
field ``event``), the instrumentation scope becomes tags ``otel.scope.name``/``otel.scope.version``
(scope attributes are lost), and microseconds replace nanoseconds. The conversion undoes what it
can; processes are told apart by the ``service.instance.id`` / ``process.pid`` process tags, else
each distinct Jaeger process entry (service name + tags) counts as one process.

Jaeger v2's ``/api/v3/traces`` answers in OTLP JSON already (``{"result": {"resourceSpans": ...}}``).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

from callspan.analysis.otlp import PROCESS_KEY_ATTRIBUTE
from callspan.errors import CallspanError
from callspan.otlp_json import any_value
from callspan.untrusted import redact_url

MAX_RESPONSE_BYTES = 1 << 30

_ARRAY_KEYS = frozenset({
    "callspan.args.hash", "callspan.return.hash", "callspan.start_ns", "callspan.end_ns", "callspan.cpu",
})
_DROPPED_TAGS = frozenset({"otel.scope.name", "otel.scope.version", "otel.library.name",
                           "otel.library.version", "otel.status_code", "otel.status_description",
                           "span.kind", "internal.span.format"})


def _tag_value(key: str, tag: dict[str, Any]) -> dict[str, Any]:
    kind = str(tag.get("type") or "string").lower()
    value = tag.get("value")
    if kind == "bool":
        return {"boolValue": value in (True, "true")}
    if kind == "int64":
        return {"intValue": str(int(value or 0))}
    if kind == "float64":
        return {"doubleValue": float(value or 0)}
    if kind == "binary":
        return {"bytesValue": value}
    if isinstance(value, str) and value.startswith("[") and (
            key.startswith(("callspan.summary.", "callspan.profile.")) or key in _ARRAY_KEYS):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return any_value(parsed)
    return {"stringValue": "" if value is None else str(value)}


def _key_values(tags: Any, skip: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    out = []
    for tag in tags or ():
        key = tag.get("key")
        if key and key not in skip:
            out.append({"key": key, "value": _tag_value(key, tag)})
    return out


def _tags_dict(tags: Any) -> dict[str, Any]:
    return {str(tag.get("key")): tag.get("value") for tag in tags or () if isinstance(tag, dict)}


def trace_to_otlp(trace: dict[str, Any]) -> dict[str, Any]:
    """One trace of Jaeger's ``/api/traces`` JSON as an OTLP ExportTraceServiceRequest."""
    if not isinstance(trace, dict):
        raise ValueError("a Jaeger trace is not a JSON object")
    processes = trace.get("processes") or {}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for span in trace.get("spans") or ():
        tags = span.get("tags") or ()
        tag_map = _tags_dict(tags)
        scope_name = str(tag_map.get("otel.scope.name") or tag_map.get("otel.library.name") or "")
        scope_version = str(tag_map.get("otel.scope.version") or tag_map.get("otel.library.version") or "")
        parent = ""
        for ref in span.get("references") or ():
            if ref.get("refType", "CHILD_OF") == "CHILD_OF":
                parent = ref.get("spanID") or ""
                break
        else:
            refs = span.get("references") or ()
            if refs:
                parent = refs[0].get("spanID") or ""
        if not parent:
            parent = span.get("parentSpanID") or ""
        start_us = int(span.get("startTime") or 0)
        duration_us = int(span.get("duration") or 0)
        out: dict[str, Any] = {
            "traceId": span.get("traceID") or trace.get("traceID") or "",
            "spanId": span.get("spanID") or "",
            "parentSpanId": parent,
            "name": span.get("operationName") or "",
            "startTimeUnixNano": str(start_us * 1000),
            "endTimeUnixNano": str((start_us + duration_us) * 1000),
            "attributes": _key_values(tags, _DROPPED_TAGS),
        }
        if tag_map.get("otel.status_code") == "ERROR" or tag_map.get("error") in (True, "true"):
            out["status"] = {"code": 2}
        events = []
        for log in span.get("logs") or ():
            fields = log.get("fields") or ()
            name = ""
            for item in fields:
                if item.get("key") == "event":
                    name = str(item.get("value") or "")
                    break
            events.append({"timeUnixNano": str(int(log.get("timestamp") or 0) * 1000), "name": name,
                           "attributes": _key_values(fields, frozenset({"event"}))})
        if events:
            out["events"] = events
        groups.setdefault((str(span.get("processID") or ""), scope_name, scope_version), []).append(out)
    resources: dict[str, dict[str, Any]] = {}
    for (process_id, scope_name, scope_version), spans in groups.items():
        resource = resources.get(process_id)
        if resource is None:
            process = processes.get(process_id) or {}
            service = str(process.get("serviceName") or "")
            ptags = process.get("tags") or ()
            fingerprint = hashlib.blake2b(json.dumps([service, sorted(
                (str(t.get("key")), str(t.get("value"))) for t in ptags)]).encode(), digest_size=8).hexdigest()
            attrs = _key_values(ptags)
            attrs.append({"key": "service.name", "value": {"stringValue": service}})
            attrs.append({"key": PROCESS_KEY_ATTRIBUTE,
                          "value": {"stringValue": f"jaeger:{service}:{fingerprint}"}})
            resource = resources[process_id] = {"resource": {"attributes": attrs}, "scopeSpans": []}
        scope: dict[str, Any] = {"name": scope_name}
        if scope_version:
            scope["version"] = scope_version
        resource["scopeSpans"].append({"scope": scope, "spans": spans})
    return {"resourceSpans": list(resources.values())}


# -- fetching ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> float:
    """``30m``, ``1h``, ``2d`` ... as seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise CallspanError(f"--since {text!r}: expected a duration like 30m, 1h, 2d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise CallspanError(f"--since {text!r}: must be positive")
    return seconds


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _OffOrigin(Exception):
    """A redirect to another scheme, host or port than the URL given (not followed)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


_DEFAULT_PORTS = {"http": 80, "https": 443}


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects within the origin of the request only: a Jaeger behind a proxy may
    redirect to its own path, but a redirect elsewhere could load traces (or send the
    credentials) from somewhere the user did not name."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            raise _OffOrigin(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _get(url: str, timeout: float, authorization: str | None, shown: str) -> bytes:
    headers = {"Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    opener = urllib.request.build_opener(_SameOriginRedirects())
    with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        body: bytes = response.read(MAX_RESPONSE_BYTES + 1)
    if len(body) > MAX_RESPONSE_BYTES:
        raise CallspanError(f"{shown}: response larger than {MAX_RESPONSE_BYTES >> 20} MiB; "
                            "use a smaller --since or --limit")
    return body


def _split_credentials(base: str) -> tuple[str, str | None]:
    """``base`` without ``user:password@`` (urllib does not send them) and the Authorization
    header made of them (HTTP Basic), if any."""
    parts = urllib.parse.urlsplit(base)
    if "@" not in parts.netloc:
        return base, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    return (urllib.parse.urlunsplit((parts.scheme, hostport, parts.path, parts.query, "")),
            "Basic " + base64.b64encode(token).decode("ascii"))


def query_urls(base: str, service: str, since: float, limit: int, now: float | None = None) -> dict[str, str]:
    """The v3 and v1 search URLs for ``service`` over the last ``since`` seconds: the API path
    after ``base``'s path, the search after ``base``'s own query (a token, say), kept in place."""
    end = time.time() if now is None else now
    start = end - since
    parts = urllib.parse.urlsplit(base)
    root = parts.path.rstrip("/")

    def url(path: str, search: dict[str, str]) -> str:
        query = "&".join(q for q in (parts.query, urllib.parse.urlencode(search)) if q)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, root + path, query, ""))

    v3 = url("/api/v3/traces", {
        "query.service_name": service, "query.start_time_min": _rfc3339(start),
        "query.start_time_max": _rfc3339(end), "query.num_traces": str(limit),
    })
    v1 = url("/api/traces", {
        "service": service, "start": str(int(start * 1_000_000)), "end": str(int(end * 1_000_000)),
        "limit": str(limit),
    })
    return {"v3": v3, "v1": v1}


def fetch(base: str, service: str, since: float, limit: int, api: str = "auto",
          timeout: float = 60.0) -> tuple[str, bytes]:
    """(the URL, credentials redacted, and the response body) of a trace search: v3 first when
    ``api`` is auto, v1 on 404. Redirects are followed within ``base``'s origin only; no error
    message shows a credential of ``base`` (``user:password@``, query values) or the response body."""
    shown = redact_url(base)
    if not base.startswith(("http://", "https://")):
        raise CallspanError(f"--jaeger {shown!r}: expected an http:// or https:// URL of Jaeger's query service")
    now = time.time()
    try:
        urllib.parse.urlsplit(base).port  # noqa: B018 (raises ValueError on a bad port)
        plain, authorization = _split_credentials(base)
        urls = query_urls(plain, service, since, limit, now)
        # What is shown: the same URLs with the credentials and base's query values as ***.
        shown_urls = query_urls(shown, service, since, limit, now)
    except ValueError as exc:
        raise CallspanError(f"--jaeger {shown!r}: not a valid URL ({type(exc).__name__})") from None
    order = ["v3", "v1"] if api == "auto" else [api]
    if any(version not in urls for version in order):
        raise CallspanError(f"--jaeger-api {api!r}: expected auto, v3 or v1")
    last_404: CallspanError | None = None
    for version in order:
        url, url_shown = urls[version], shown_urls[version]
        try:
            return url_shown, _get(url, timeout, authorization, url_shown)
        except _OffOrigin as exc:
            raise CallspanError(f"{url_shown}: redirected to another origin ({redact_url(exc.url)}): not "
                                "followed; give --jaeger the URL it redirects to if you trust it") from None
        except urllib.error.HTTPError as exc:
            error = CallspanError(f"{url_shown}: HTTP {exc.code} {str(exc.reason)[:60]}")  # the body is not shown
            if exc.code == 404 and version != order[-1]:
                last_404 = error
                continue
            if exc.code == 404 and last_404 is not None:
                # Jaeger answers 404 when a search finds nothing, and when the API is absent.
                return url_shown, b'{"data": []}'
            raise error from None
        except urllib.error.URLError as exc:
            raise CallspanError(f"cannot reach Jaeger at {shown}: {exc.reason}") from None
        except (TimeoutError, OSError) as exc:
            raise CallspanError(f"cannot read from Jaeger at {shown}: {exc.strerror or type(exc).__name__}") from None
        except http.client.HTTPException as exc:  # its text may quote the response: not shown
            raise CallspanError(f"cannot read from Jaeger at {shown}: {type(exc).__name__}") from None
        except ValueError as exc:
            raise CallspanError(f"--jaeger {shown!r}: not a valid URL ({type(exc).__name__})") from None
    raise CallspanError(f"--jaeger-api {api!r}: expected auto, v3 or v1")
