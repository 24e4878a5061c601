"""The configs in collector-config/ against the real Collector and Jaeger binaries.

Needs CALLSPAN_OTELCOL_BIN and CALLSPAN_JAEGER_BIN (scripts/build-otel-binaries.sh);
each test skips without the binary it uses.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from pathlib import Path
from typing import Any

import pytest
from otelbins import (
    CONFIG_DIR,
    JAEGER_CONFIG,
    OTELCOL_CONFIG,
    Collector,
    Jaeger,
    has_subcommand,
    http_get,
    http_get_json,
    post_json,
    spans_in,
    start_jaeger,
    validate_config,
    wait_for_spans,
)

COMPOSE_FILE = CONFIG_DIR / "docker-compose.yaml"

# Every YAML file in collector-config/ and the test that checks it: a new
# config makes test_every_config_is_covered fail until a test covers it.
COVERED_CONFIGS = {
    "otelcol.yaml": "test_otelcol_config_validates",
    "jaeger.yaml": "test_jaeger_config_validates / test_jaeger_starts_and_answers / "
                   "test_jaeger_serves_the_ui_assets_it_is_given",
    "docker-compose.yaml": "test_compose_environment_validates",
}


# --------------------------------------------------------------------------- OTLP JSON


def _hex_id(nbytes: int) -> str:
    return os.urandom(nbytes).hex()


def make_trace(service: str = "callspan-it") -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """One trace of 3 spans (a root and two children) as an OTLP/HTTP JSON request.

    Returns (trace_id, the spans as sent, the ExportTraceServiceRequest JSON).
    """
    trace_id = _hex_id(16)
    root_id, child1_id, child2_id = _hex_id(8), _hex_id(8), _hex_id(8)
    t0 = time.time_ns()
    ms = 1_000_000

    def span(span_id: str, parent: str, name: str, start: int, end: int, fn: str) -> dict[str, Any]:
        return {
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": parent,
            "name": name,
            "kind": 1,  # SPAN_KIND_INTERNAL
            "startTimeUnixNano": str(t0 + start * ms),
            "endTimeUnixNano": str(t0 + end * ms),
            "attributes": [
                {"key": "code.function", "value": {"stringValue": fn}},
                {"key": "callspan.test.duration_ms", "value": {"intValue": str(end - start)}},
            ],
            "status": {},
        }

    spans = [
        span(root_id, "", "handle_request", 0, 30, "handle_request"),
        span(child1_id, root_id, "load_user", 2, 12, "load_user"),
        span(child2_id, root_id, "render", 14, 28, "render"),
    ]
    request = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": service}},
                    ]
                },
                "scopeSpans": [
                    {"scope": {"name": "callspan.integration-test", "version": "1"}, "spans": spans}
                ],
            }
        ]
    }
    return trace_id, spans, request


def send_trace(collector: Collector, request: dict[str, Any]) -> None:
    status, answer = post_json(collector.traces_url, request)
    assert status == 200, f"OTLP/HTTP POST answered {status}: {answer}"
    rejected = ((answer or {}).get("partialSuccess") or {}).get("rejectedSpans")
    assert not rejected, f"collector rejected spans: {answer}"


def _as_hex(value: str, nbytes: int) -> str:
    """An OTLP JSON id as hex: OTLP/JSON uses hex, protobuf-JSON mappings base64."""
    if len(value) == 2 * nbytes:
        try:
            bytes.fromhex(value)
            return value.lower()
        except ValueError:
            pass
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value


def _key(span: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        _as_hex(span["traceId"], 16),
        _as_hex(span["spanId"], 8),
        _as_hex(span.get("parentSpanId", ""), 8),
        span["name"],
    )


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}


# --------------------------------------------------------------------------- config validation


def test_every_config_is_covered() -> None:
    configs = {p.name for p in CONFIG_DIR.iterdir() if p.suffix in {".yaml", ".yml"}}
    assert configs == set(COVERED_CONFIGS), (
        f"collector-config/ holds {sorted(configs)}, tests cover {sorted(COVERED_CONFIGS)}"
    )


def test_otelcol_config_validates(otelcol_bin: Path) -> None:
    result = validate_config(otelcol_bin, OTELCOL_CONFIG)
    assert result.returncode == 0, result.stderr + result.stdout


def test_otelcol_validate_rejects_a_broken_config(otelcol_bin: Path, tmp_path: Path) -> None:
    # Proves that `validate` really checks the config: a misspelt key fails it.
    text = OTELCOL_CONFIG.read_text()
    assert "flush_interval:" in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("flush_interval:", "flush_intervall:"))
    result = validate_config(otelcol_bin, broken)
    assert result.returncode != 0
    assert "flush_intervall" in result.stderr + result.stdout


def test_jaeger_config_validates(jaeger_bin: Path) -> None:
    if not has_subcommand(jaeger_bin, "validate"):
        pytest.skip("this jaeger binary has no `validate` subcommand")
    result = validate_config(jaeger_bin, JAEGER_CONFIG)
    assert result.returncode == 0, result.stderr + result.stdout


def test_jaeger_starts_and_answers(jaeger: Jaeger) -> None:
    # The fixture already waited for /api/services; check both API generations.
    status, body = http_get_json(f"{jaeger.query_url}/api/services")
    assert status == 200 and isinstance(body, dict) and "data" in body, body
    status, body = http_get_json(f"{jaeger.query_url}/api/v3/services")
    assert status == 200 and isinstance(body, dict), body
    assert jaeger.process.running


def test_compose_environment_validates(otelcol_bin: Path, jaeger_bin: Path) -> None:
    """Both configs validate with the environment docker-compose.yaml gives them,
    and the collector's Jaeger endpoint there names the jaeger service and port."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yaml")
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services: dict[str, Any] = compose["services"]
    checked = 0
    env_of: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):  # KEY=VALUE form
            environment = dict(item.split("=", 1) for item in environment)
        env = {str(k): str(v) for k, v in environment.items()}
        env_of[name] = env
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            config = (COMPOSE_FILE.parent / source).resolve()
            if config.suffix != ".yaml":
                continue
            assert config.is_file(), f"{name}: mounts missing {source}"
            binary = {"otelcol.yaml": otelcol_bin, "jaeger.yaml": jaeger_bin}.get(config.name)
            assert binary is not None, f"{name}: mounts unexpected config {config.name}"
            result = validate_config(binary, config, env=env)
            assert result.returncode == 0, f"{name}: {result.stderr}{result.stdout}"
            checked += 1
    assert checked == 2, f"expected the two configs to be mounted, validated {checked}"

    collector_env = next(env for env in env_of.values() if "CALLSPAN_OTELCOL_JAEGER_ENDPOINT" in env)
    jaeger_service = next(name for name, env in env_of.items() if "CALLSPAN_JAEGER_OTLP_GRPC_ENDPOINT" in env)
    host, _, port = collector_env["CALLSPAN_OTELCOL_JAEGER_ENDPOINT"].rpartition(":")
    assert host == jaeger_service
    assert port == env_of[jaeger_service]["CALLSPAN_JAEGER_OTLP_GRPC_ENDPOINT"].rpartition(":")[2]


# --------------------------------------------------------------------------- running pipeline


def test_file_exporter_writes_exactly_the_spans_sent(otelcol: Collector) -> None:
    trace_id, sent, request = make_trace()
    send_trace(otelcol, request)

    wait_for_spans(otelcol, 3)
    # A graceful stop flushes everything; then nothing more may be there.
    assert otelcol.stop() == 0, otelcol.process.log_tail()
    requests = otelcol.read_output()
    written = spans_in(requests)

    assert sorted(map(_key, written)) == sorted(map(_key, sent))
    by_id = {_as_hex(s["spanId"], 8): s for s in written}
    for span in sent:
        got = by_id[span["spanId"]]
        assert got["startTimeUnixNano"] == span["startTimeUnixNano"]
        assert got["endTimeUnixNano"] == span["endTimeUnixNano"]
        assert _attrs(got) == _attrs(span)
    resources = [rs["resource"] for r in requests for rs in r["resourceSpans"]]
    assert all(_attrs(res)["service.name"] == "callspan-it" for res in resources)
    assert {_as_hex(s["traceId"], 16) for s in written} == {trace_id}


def test_collector_restart_keeps_the_output_file(otelcol: Collector) -> None:
    _, first, request = make_trace()
    send_trace(otelcol, request)
    wait_for_spans(otelcol, 3)

    otelcol.restart()  # graceful stop, same ports and file
    _, second, request = make_trace()
    send_trace(otelcol, request)
    written = wait_for_spans(otelcol, 6)
    assert sorted(map(_key, written)) == sorted(map(_key, first + second))

    otelcol.kill()  # a crash; the ports must be free again at once
    assert not otelcol.process.running
    otelcol.restart()
    assert otelcol.process.running


def test_collector_forwards_to_jaeger(otelcol: Collector, jaeger: Jaeger) -> None:
    assert otelcol.jaeger_endpoint == jaeger.otlp_grpc_endpoint
    trace_id, sent, request = make_trace(service="callspan-jaeger-it")
    send_trace(otelcol, request)

    # The file output and Jaeger get the same spans.
    assert sorted(map(_key, wait_for_spans(otelcol, 3))) == sorted(map(_key, sent))

    body = jaeger.wait_for_trace(trace_id, 3)
    (trace,) = body["data"]
    assert trace["traceID"] == trace_id
    assert {s["spanID"] for s in trace["spans"]} == {s["spanId"] for s in sent}
    assert {s["operationName"] for s in trace["spans"]} == {s["name"] for s in sent}
    (process,) = {s["processID"] for s in trace["spans"]}
    assert trace["processes"][process]["serviceName"] == "callspan-jaeger-it"

    status, v3 = jaeger.get_trace_v3(trace_id)
    assert status == 200, v3
    v3_spans = [
        span
        for rs in v3["result"]["resourceSpans"]
        for ss in rs.get("scopeSpans", [])
        for span in ss.get("spans", [])
    ]
    assert sorted(map(_key, v3_spans)) == sorted(map(_key, sent))


def test_jaeger_serves_the_ui_assets_it_is_given(jaeger_bin: Path, tmp_path: Path) -> None:
    """extensions.jaeger_query.ui.assets_path: a UI build directory replaces the placeholder."""
    assets = tmp_path / "ui"
    assets.mkdir()
    (assets / "index.html").write_text('<!doctype html><html><head><base href="/" data-inject-target="BASE_URL" />'
                                       "</head><body>callspan test UI</body></html>")
    with start_jaeger(jaeger_bin, tmp_path / "with", ui_assets=assets) as served:
        status, body = http_get(f"{served.query_url}/")
        assert status == 200 and b"callspan test UI" in body
        status, _ = http_get_json(f"{served.query_url}/api/services")
        assert status == 200
    with start_jaeger(jaeger_bin, tmp_path / "without") as placeholder:
        status, body = http_get(f"{placeholder.query_url}/")
        assert status == 200 and b"callspan test UI" not in body


def test_jaeger_unknown_trace_is_404(jaeger: Jaeger) -> None:
    status, _ = jaeger.get_trace(_hex_id(16))
    assert status == 404
