"""Start and stop the real OpenTelemetry Collector and Jaeger binaries in tests.

The binaries are built by ``scripts/build-otel-binaries.sh`` (outside the repo)
and found through two environment variables::

    set -a; eval "$(scripts/build-otel-binaries.sh)"; set +a
    # -> CALLSPAN_OTELCOL_BIN=..., CALLSPAN_JAEGER_BIN=...

When a variable is unset, the tests that need it are skipped; when it is set
but wrong, they fail. Both programs run with the configs in
``collector-config/``; every listen address and the output path are passed
through the ``${env:...}`` variables those configs read, on free ports of
127.0.0.1, so tests never edit a config nor clash with each other or with a
collector already running on the default ports.

This module holds no tests; ``tests/integration/conftest.py`` turns it into
the ``otelcol`` and ``jaeger`` fixtures.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "collector-config"
OTELCOL_CONFIG = CONFIG_DIR / "otelcol.yaml"
JAEGER_CONFIG = CONFIG_DIR / "jaeger.yaml"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-otel-binaries.sh"

OTELCOL_BIN_ENV = "CALLSPAN_OTELCOL_BIN"
JAEGER_BIN_ENV = "CALLSPAN_JAEGER_BIN"
BUILD_HINT = "run scripts/build-otel-binaries.sh and export the printed variables"
# The real Jaeger UI's built assets (scripts/build-jaeger-ui.sh), served by Jaeger when given.
JAEGER_UI_ASSETS_ENV = "CALLSPAN_JAEGER_UI_ASSETS"
JAEGER_UI_HINT = ("get the jaeger-ui source at tag v1.76.0 (git clone --branch v1.76.0 "
                  "https://github.com/jaegertracing/jaeger-ui), run CALLSPAN_JAEGER_UI_SRC=/path/to/jaeger-ui "
                  "bash scripts/build-jaeger-ui.sh once and export the CALLSPAN_JAEGER_UI_ASSETS it prints "
                  "(scripts/test.sh does that from the cache)")

LOCALHOST = "127.0.0.1"
# Variables read by the configs; the harness sets all of its own, and strips
# any inherited ones so a developer's shell cannot redirect a test.
_CONFIG_ENV_PREFIXES = ("CALLSPAN_OTELCOL_", "CALLSPAN_JAEGER_")
_READY_LOG_LINE = "Everything is ready"

T = TypeVar("T")


class ProcessError(RuntimeError):
    """A binary exited early, or did not get ready in time."""


# --------------------------------------------------------------------------- binaries


def find_binary(env_var: str) -> Path | None:
    """The binary named by ``env_var``, or None when the variable is unset or empty.

    Raises ProcessError when the variable is set but names no executable file.
    """
    value = os.environ.get(env_var, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ProcessError(f"{env_var}={value} is not an executable file; {BUILD_HINT}")
    return path.resolve()


def require_binary(env_var: str) -> Path:
    """Like find_binary, for tests: skips when unset, fails when set but wrong."""
    try:
        path = find_binary(env_var)
    except ProcessError as exc:
        problem = str(exc)
    else:
        if path is None:
            pytest.skip(f"{env_var} is not set: {BUILD_HINT}")
        return path
    pytest.fail(problem, pytrace=False)


def jaeger_ui_assets() -> Path:
    """The built Jaeger UI named by CALLSPAN_JAEGER_UI_ASSETS: skips when unset, fails when set
    to a directory without the UI's index.html."""
    value = os.environ.get(JAEGER_UI_ASSETS_ENV, "").strip()
    if not value:
        pytest.skip(f"{JAEGER_UI_ASSETS_ENV} is not set (no Jaeger UI build): {JAEGER_UI_HINT}")
    path = Path(value).expanduser()
    if not (path / "index.html").is_file():
        pytest.fail(f"{JAEGER_UI_ASSETS_ENV}={value} has no index.html; {JAEGER_UI_HINT}", pytrace=False)
    return path.resolve()


def otelcol_binary() -> Path:
    return require_binary(OTELCOL_BIN_ENV)


def jaeger_binary() -> Path:
    return require_binary(JAEGER_BIN_ENV)


def validate_config(
    binary: Path | str,
    config: Path | str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``<binary> validate --config=<config>`` and return the finished process.

    ``env`` adds to (and overrides) a copy of the environment, e.g. to check a
    config with the values docker-compose.yaml sets. The caller checks
    ``returncode`` (0 when valid); stdout and stderr are captured as text.
    """
    return subprocess.run(
        [str(binary), "validate", f"--config={config}"],
        env=_child_env(env or {}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def has_subcommand(binary: Path | str, name: str, timeout: float = 30.0) -> bool:
    """Whether ``<binary> <name> --help`` is a known subcommand."""
    result = subprocess.run(
        [str(binary), name, "--help"],
        env=_child_env({}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode == 0 and "unknown command" not in (result.stdout + result.stderr)


# --------------------------------------------------------------------------- ports & polling


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` right now.

    All sockets stay open until every port is chosen, so the ports differ; a
    race with another program that binds one of them before our child does
    remains possible but is rare (the kernel hands out ephemeral ports in turn).
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = LOCALHOST) -> int:
    return free_ports(1, host)[0]


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    check: Callable[[], None] | None = None,
) -> T:
    """Call ``probe`` until it returns something other than None/False, and return that.

    ``check`` runs before each try and may raise to give up early (e.g. when the
    process under test died). Raises TimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body), also for 4xx/5xx answers."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url`` and decode JSON: (status, value or None when the body is not JSON)."""
    status, body = http_get(url, timeout)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def post_json(url: str, payload: Any, timeout: float = 10.0) -> tuple[int, Any]:
    """POST ``payload`` as JSON: (status, decoded JSON answer or None)."""
    data = json.dumps(payload).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


def _child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_ENV_PREFIXES)}
    env.update(overrides)
    return env


# --------------------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    """One run of a binary, its output going to ``log_path``; restartable."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)
    # Where this run's output starts in log_path (earlier runs come before it).
    log_offset: int = field(default=0, init=False)

    def start(self) -> None:
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.log_offset = log.tell()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C of pytest must not hit it before stop()
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise ProcessError (with the end of its log) if the process has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessError(
                f"{self.name} exited with code {self.popen.returncode}; last log lines:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (graceful: flushes and closes its exporters), then SIGKILL after ``timeout``."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        return self.popen.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, like a crash: nothing buffered gets flushed."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10.0)
        return self.popen.returncode


def _wait_ready(
    proc: ManagedProcess,
    probes: list[tuple[str, Callable[[], bool]]],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    try:
        for what, probe in probes:
            wait_until(
                probe,
                timeout=max(0.0, deadline - time.monotonic()),
                what=f"{proc.name}: {what}",
                check=proc.check_alive,
            )
    except TimeoutError as exc:
        tail = proc.log_tail()
        proc.stop()
        raise ProcessError(f"{exc}; last log lines:\n{tail}") from None
    except ProcessError:
        proc.stop()
        raise


# --------------------------------------------------------------------------- the collector


@dataclass
class Collector:
    """A running callspan-otelcol started from collector-config/otelcol.yaml.

    ``grpc_endpoint`` is ``host:port`` (what gRPC exporters take, with
    insecure=True); ``http_endpoint`` is a base URL such as
    ``http://127.0.0.1:PORT`` (POST OTLP to ``traces_url``, i.e. ``/v1/traces``).
    ``output_file`` is where the file exporter writes OTLP JSON lines.
    """

    grpc_endpoint: str
    http_endpoint: str
    output_file: Path
    jaeger_endpoint: str
    metrics_url: str
    process: ManagedProcess
    ready_timeout: float = 30.0

    @property
    def traces_url(self) -> str:
        return f"{self.http_endpoint}/v1/traces"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful shutdown (flushes the file exporter); SIGKILL after ``timeout``."""
        return self.process.stop(timeout)

    def kill(self) -> int | None:
        """Abrupt SIGKILL (simulates a crash)."""
        return self.process.kill()

    def restart(self) -> None:
        """Stop if running, then start again on the same ports and output file."""
        self.process.stop()
        self.process.start()
        self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        grpc_host, grpc_port = _split_host_port(self.grpc_endpoint)
        http_host, http_port = _split_host_port(self.http_endpoint.removeprefix("http://"))
        _wait_ready(
            self.process,
            [
                (
                    "its ready log line",
                    lambda: _log_has(self.process.log_path, self.process.log_offset, _READY_LOG_LINE),
                ),
                (f"OTLP gRPC on {self.grpc_endpoint}", lambda: port_is_open(grpc_host, grpc_port)),
                (f"OTLP/HTTP on {self.http_endpoint}", lambda: port_is_open(http_host, http_port)),
            ],
            self.ready_timeout if timeout is None else timeout,
        )

    def read_output(self) -> list[dict[str, Any]]:
        """The OTLP JSON requests in ``output_file`` so far, one per line (none if absent)."""
        return read_jsonl(self.output_file)

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_collector(
    binary: Path | str,
    workdir: Path,
    *,
    config: Path | str = OTELCOL_CONFIG,
    jaeger_endpoint: str | None = None,
    output_file: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
) -> Collector:
    """Start the collector in ``workdir`` on free ports and wait until it is ready.

    ``jaeger_endpoint`` (``host:port`` of Jaeger's OTLP gRPC receiver) defaults
    to a free port with nothing behind it: forwarding then fails and retries
    quietly in the background while the file exporter works as usual.
    ``output_file`` defaults to ``workdir/traces/callspan-traces.jsonl``.
    The log goes to ``workdir/otelcol.log``. Use as a context manager or call
    ``stop()``.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port, metrics_port, dead_port = free_ports(4)
    grpc_endpoint = f"{LOCALHOST}:{grpc_port}"
    http_endpoint = f"{LOCALHOST}:{http_port}"
    jaeger = jaeger_endpoint or f"{LOCALHOST}:{dead_port}"
    out = Path(output_file) if output_file is not None else workdir / "traces" / "callspan-traces.jsonl"
    env = _child_env(
        {
            "CALLSPAN_OTELCOL_GRPC_ENDPOINT": grpc_endpoint,
            "CALLSPAN_OTELCOL_HTTP_ENDPOINT": http_endpoint,
            "CALLSPAN_OTELCOL_TRACES_FILE": str(out),
            "CALLSPAN_OTELCOL_JAEGER_ENDPOINT": jaeger,
            "CALLSPAN_OTELCOL_METRICS_HOST": LOCALHOST,
            "CALLSPAN_OTELCOL_METRICS_PORT": str(metrics_port),
            **(extra_env or {}),
        }
    )
    process = ManagedProcess(
        name="otelcol",
        argv=[str(binary), f"--config={Path(config).resolve()}"],
        env=env,
        cwd=workdir,
        log_path=workdir / "otelcol.log",
    )
    collector = Collector(
        grpc_endpoint=grpc_endpoint,
        http_endpoint=f"http://{http_endpoint}",
        output_file=out,
        jaeger_endpoint=jaeger,
        metrics_url=f"http://{LOCALHOST}:{metrics_port}/metrics",
        process=process,
        ready_timeout=ready_timeout,
    )
    process.start()
    collector.wait_ready()
    return collector


# --------------------------------------------------------------------------- Jaeger


@dataclass
class Jaeger:
    """A running Jaeger v2 started from collector-config/jaeger.yaml (memory storage).

    ``otlp_grpc_endpoint`` is ``host:port`` (give it to the collector);
    ``query_url`` is the base URL of the UI and the HTTP query APIs
    (``/api/traces/<id>``, ``/api/v3/traces/<id>``).
    """

    otlp_grpc_endpoint: str
    otlp_http_endpoint: str
    query_url: str
    query_grpc_endpoint: str
    process: ManagedProcess
    ready_timeout: float = 60.0

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout)

    def kill(self) -> int | None:
        return self.process.kill()

    def restart(self) -> None:
        """Stop and start again on the same ports; memory storage starts empty."""
        self.process.stop()
        self.process.start()
        self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        host, port = _split_host_port(self.otlp_grpc_endpoint)
        _wait_ready(
            self.process,
            [
                (f"query API at {self.query_url}/api/services", self._query_api_answers),
                (f"OTLP gRPC on {self.otlp_grpc_endpoint}", lambda: port_is_open(host, port)),
            ],
            self.ready_timeout if timeout is None else timeout,
        )

    def _query_api_answers(self) -> bool:
        try:
            status, _ = http_get(f"{self.query_url}/api/services", timeout=2.0)
        except OSError:
            return False
        return status == 200

    def get_trace(self, trace_id: str) -> tuple[int, Any]:
        """``/api/traces/<id>`` (the UI's API): (status, JSON)."""
        return http_get_json(f"{self.query_url}/api/traces/{trace_id}")

    def get_trace_v3(self, trace_id: str) -> tuple[int, Any]:
        """``/api/v3/traces/<id>`` (OTLP-shaped API): (status, JSON)."""
        return http_get_json(f"{self.query_url}/api/v3/traces/{trace_id}")

    def wait_for_trace(self, trace_id: str, span_count: int, timeout: float = 20.0) -> dict[str, Any]:
        """Poll ``/api/traces/<id>`` until the trace has ``span_count`` spans; return its JSON."""

        def probe() -> dict[str, Any] | None:
            status, body = self.get_trace(trace_id)
            if status != 200 or not isinstance(body, dict):
                return None
            traces = body.get("data") or []
            spans = sum(len(t.get("spans") or []) for t in traces)
            return body if spans >= span_count else None

        return wait_until(
            probe,
            timeout=timeout,
            interval=0.25,
            what=f"trace {trace_id} with {span_count} spans in Jaeger",
            check=self.process.check_alive,
        )

    def __enter__(self) -> Jaeger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_jaeger(
    binary: Path | str,
    workdir: Path,
    *,
    config: Path | str = JAEGER_CONFIG,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
    ui_assets: Path | None = None,
) -> Jaeger:
    """Start Jaeger in ``workdir`` on free ports and wait until its query API answers.

    ``ui_assets``: a built Jaeger UI to serve (``jaeger_ui_assets()``); by default the
    placeholder page of the Go module. The log goes to ``workdir/jaeger.log``. Use as a
    context manager or call ``stop()``.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    otlp_grpc, otlp_http, query_http, query_grpc, metrics = free_ports(5)
    env = _child_env(
        {
            "CALLSPAN_JAEGER_OTLP_GRPC_ENDPOINT": f"{LOCALHOST}:{otlp_grpc}",
            "CALLSPAN_JAEGER_OTLP_HTTP_ENDPOINT": f"{LOCALHOST}:{otlp_http}",
            "CALLSPAN_JAEGER_QUERY_HTTP_ENDPOINT": f"{LOCALHOST}:{query_http}",
            "CALLSPAN_JAEGER_QUERY_GRPC_ENDPOINT": f"{LOCALHOST}:{query_grpc}",
            "CALLSPAN_JAEGER_METRICS_HOST": LOCALHOST,
            "CALLSPAN_JAEGER_METRICS_PORT": str(metrics),
            **({JAEGER_UI_ASSETS_ENV: str(ui_assets)} if ui_assets is not None else {}),
            **(extra_env or {}),
        }
    )
    process = ManagedProcess(
        name="jaeger",
        argv=[str(binary), f"--config={Path(config).resolve()}"],
        env=env,
        cwd=workdir,
        log_path=workdir / "jaeger.log",
    )
    jaeger = Jaeger(
        otlp_grpc_endpoint=f"{LOCALHOST}:{otlp_grpc}",
        otlp_http_endpoint=f"http://{LOCALHOST}:{otlp_http}",
        query_url=f"http://{LOCALHOST}:{query_http}",
        query_grpc_endpoint=f"{LOCALHOST}:{query_grpc}",
        process=process,
        ready_timeout=ready_timeout,
    )
    process.start()
    jaeger.wait_ready()
    return jaeger


# --------------------------------------------------------------------------- output files


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` ([] when it does not exist yet).

    A last line without its newline (the exporter is mid-write) is left out.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    complete = lines[:-1]  # after the last "\n": "" or a partial line
    return [json.loads(line) for line in complete if line.strip()]


def spans_in(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All spans of a list of OTLP JSON ExportTraceServiceRequests (file exporter lines)."""
    return [
        span
        for request in requests
        for resource_spans in request.get("resourceSpans", [])
        for scope_spans in resource_spans.get("scopeSpans", [])
        for span in scope_spans.get("spans", [])
    ]


def wait_for_spans(collector: Collector, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Poll the collector's output file until it holds at least ``count`` spans; return all of them."""

    def probe() -> list[dict[str, Any]] | None:
        spans = spans_in(collector.read_output())
        return spans if len(spans) >= count else None

    return wait_until(
        probe,
        timeout=timeout,
        interval=0.2,
        what=f"{count} spans in {collector.output_file}",
        check=collector.process.check_alive,
    )


# --------------------------------------------------------------------------- helpers


def _split_host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def _log_has(path: Path, offset: int, needle: str) -> bool:
    """Whether ``needle`` appears in ``path`` after byte ``offset`` (this run's output)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return needle.encode() in f.read()
    except FileNotFoundError:
        return False
