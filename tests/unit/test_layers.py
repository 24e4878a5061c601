"""Import direction: the core never imports OpenTelemetry; the analyzer imports neither."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = [
    "callspan.tracer.recorder", "callspan.tracer.builder", "callspan.tracer.session", "callspan.tracer.cores.select",
    "callspan.tracer.cores.setprofile", "callspan.tracer.keys", "callspan.tracer.counters", "callspan.tracer.selection", "callspan.tracer.aggregate",
]


def imported_after(module: str) -> set[str]:
    code = f"import sys; before = set(sys.modules); import {module}; print('\\n'.join(sorted(set(sys.modules) - before)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_does_not_import_opentelemetry() -> None:
    for module in CORE_MODULES:
        leaked = {m for m in imported_after(module) if m.startswith("opentelemetry")}
        assert not leaked, f"{module} imports {sorted(leaked)[:3]}"


def test_analyzer_imports_neither_core_nor_sdk() -> None:
    modules = imported_after("callspan.analysis.cli")
    assert not {m for m in modules if m.startswith("opentelemetry")}
    allowed = ("callspan.analysis", "callspan.errors", "callspan.otlp_json", "callspan.outfiles", "callspan.untrusted")
    assert {m for m in modules if m.startswith("callspan.")} - {"callspan"} <= {
        m for m in modules if m.startswith(allowed)
    }


def test_callspan_run_does_not_load_the_analyzer() -> None:
    # Start-up time of every traced program: the analyzer's modules are imported by `analyze` only.
    modules = imported_after("callspan.cli; callspan.cli._parser(['run', 'x.py'])")
    assert not {m for m in modules if m.startswith("callspan.analysis")}
    # `analyze` gets its options
    modules = imported_after("callspan.cli; callspan.cli._parser(['analyze', 'x.jsonl'])")
    assert "callspan.analysis.cli" in modules


def test_callspan_run_starts_without_ctypes_or_openssl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Start-up again: choosing the CPU counter opens perf events through the compiled module, and
    # the key secret is derived with blake2 itself, so `callspan run` loads neither ctypes nor
    # OpenSSL (hashlib's _hashlib, or hmac through secrets): ~5 ms of every traced program's start.
    import pytest

    pytest.importorskip("callspan.tracer._hotpath")
    script = tmp_path / "report.py"
    script.write_text("import sys\nprint(sorted(m for m in ('ctypes', '_hashlib', 'hmac', 'secrets') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-m", "callspan", "run", "-o", str(tmp_path / "spans.jsonl"), str(script)],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.splitlines()[0] == "[]"
