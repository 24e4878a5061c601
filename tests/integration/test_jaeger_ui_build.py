"""scripts/build-jaeger-ui.sh without building: what it says and does when the source is absent
or wrong, that a cached build serves without the source, and what the UI tests say without a
build. (The build itself, ~1-3 min, is exercised by the Jaeger UI tests that use its output.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import otelbins  # type: ignore[import-not-found]
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-jaeger-ui.sh"


def build(cache: Path, source: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSPAN_")}
    env["CALLSPAN_BIN_CACHE"] = str(cache)
    if source is not None:
        env["CALLSPAN_JAEGER_UI_SRC"] = str(source)
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_without_source_or_cache_it_says_how_to_get_them(tmp_path: Path) -> None:
    result = build(tmp_path / "cache")
    assert result.returncode == 3 and result.stdout == ""
    assert "CALLSPAN_JAEGER_UI_SRC" in result.stderr and "v1.76.0" in result.stderr


def test_a_source_of_another_release_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "jaeger-ui"
    (source / "packages" / "jaeger-ui").mkdir(parents=True)
    (source / "package-lock.json").write_text("{}")
    (source / "packages" / "jaeger-ui" / "package.json").write_text(json.dumps({"name": "jaeger-ui",
                                                                                "version": "1.70.0"}))
    result = build(tmp_path / "cache", source)
    assert result.returncode == 1 and result.stdout == ""
    assert "jaeger-ui v1.70.0" in result.stderr and "needs v1.76.0" in result.stderr
    assert build(tmp_path / "cache", tmp_path / "nowhere").returncode == 1


def test_a_cached_build_serves_without_the_source(tmp_path: Path) -> None:
    built = tmp_path / "cache" / "jaeger-ui-v1.76.0-0123456789abcdef"
    built.mkdir(parents=True)
    (built / "index.html").write_text("<html></html>")
    assert build(tmp_path / "cache").returncode == 3  # not marked complete by this recipe
    (built / ".recipe-1").touch()
    result = build(tmp_path / "cache")
    assert result.returncode == 0
    assert result.stdout == f"CALLSPAN_JAEGER_UI_ASSETS={built}\n"


def test_the_cache_must_be_outside_the_repository() -> None:
    result = build(SCRIPT.parents[1] / "build-cache")
    assert result.returncode == 1 and "outside the repository" in result.stderr
    assert not (SCRIPT.parents[1] / "build-cache").exists()


def test_an_archive_of_the_source_is_unpacked_and_checked(tmp_path: Path) -> None:
    top = tmp_path / "src" / "jaeger-ui-1.70.0"
    (top / "packages" / "jaeger-ui").mkdir(parents=True)
    (top / "package-lock.json").write_text("{}")
    (top / "packages" / "jaeger-ui" / "package.json").write_text('{\n  "version": "1.70.0"\n}\n')
    archive = tmp_path / "jaeger-ui-1.70.0.tar.gz"
    subprocess.run(["tar", "-C", str(tmp_path / "src"), "-czf", str(archive), "jaeger-ui-1.70.0"], check=True)
    result = build(tmp_path / "cache", archive)
    assert result.returncode == 1 and "is jaeger-ui v1.70.0" in result.stderr
    assert list((tmp_path / "cache").iterdir()) == []  # the unpacked copy is gone
    (tmp_path / "notes.txt").write_text("x")
    assert "not a .tar.gz" in build(tmp_path / "cache", tmp_path / "notes.txt").stderr


def test_the_ui_tests_skip_without_a_build_saying_how_to_make_one(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """What a fresh machine shows for the Jaeger UI tests (the ``jaeger_ui`` fixture)."""
    monkeypatch.delenv(otelbins.JAEGER_UI_ASSETS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        otelbins.jaeger_ui_assets()
    message = str(skipped.value)
    assert "CALLSPAN_JAEGER_UI_ASSETS is not set" in message
    assert "git clone --branch v1.76.0 https://github.com/jaegertracing/jaeger-ui" in message
    assert "CALLSPAN_JAEGER_UI_SRC=/path/to/jaeger-ui bash scripts/build-jaeger-ui.sh" in message
    # Set, but not a build: a failure, not a skip.
    monkeypatch.setenv(otelbins.JAEGER_UI_ASSETS_ENV, str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="has no index.html"):
        otelbins.jaeger_ui_assets()
    (tmp_path / "index.html").write_text("<html></html>")
    assert otelbins.jaeger_ui_assets() == tmp_path.resolve()
