"""The README as a user's guide: what it promises about itself (issue 13, item 4).

Exactly two set-up commands; the pictures are the browser tests' own screenshots; the
performance section is one table (the history lives in docs/performance.md); the configuration
table names every CALLSPAN_* variable the settings read; the three uses, privacy and limits.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from callspan.config import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
IMAGES = ROOT / "docs" / "images"
# The browser tests that save the README's screenshots (with CALLSPAN_SCREENSHOTS=docs/images).
SCREENSHOT_TESTS = (ROOT / "tests" / "integration" / "test_report_browser.py",
                    ROOT / "tests" / "integration" / "test_jaeger_ui.py")


def sections() -> dict[str, str]:
    """Level-2 heading -> its text up to the next level-2 heading (subsections included)."""
    parts = re.split(r"^## (.+)$", README, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def section(prefix: str) -> str:
    found = [text for heading, text in sections().items() if heading.startswith(prefix)]
    assert len(found) == 1, (prefix, list(sections()))
    return found[0]


def shell_commands(text: str) -> list[str]:
    """The command lines of the ```sh blocks in ``text`` (comments and blank lines aside)."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def tables(text: str) -> int:
    """Markdown tables in ``text``: one header separator row each."""
    return len(re.findall(r"^\| *-{3,}", text, flags=re.MULTILINE))


def test_set_up_is_exactly_two_commands() -> None:
    assert shell_commands(section("Set-up")) == ["python3 -m pip install . && python3 -m callspan demo",
                                                 "bash scripts/test.sh"]


def test_the_pictures_are_the_browser_tests_screenshots() -> None:
    shown = re.findall(r"!\[[^\]]+\]\(docs/images/([^)]+)\)", README)
    saved = {name: int(width) for path in SCREENSHOT_TESTS
             for name, width, _ in re.findall(r'screenshot\(Path\(where\) / "([\w.-]+\.png)", (\d+), (\d+)\)',
                                              path.read_text(encoding="utf-8"))}
    assert sorted(shown) == sorted(saved) == sorted(p.name for p in IMAGES.iterdir())
    assert len(saved) == 4
    for name, width in saved.items():
        header = (IMAGES / name).read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n", name
        # Headless Chromium's window is the viewport's width (its height loses the window frame).
        assert struct.unpack(">I", header[16:20])[0] == width, name


def test_the_performance_section_is_one_table_and_points_to_the_history() -> None:
    text = section("Performance")
    assert tables(text) == 1
    assert "docs/performance.md" in text
    assert (ROOT / "docs" / "performance.md").is_file()


def test_the_configuration_table_names_every_variable() -> None:
    text = section("Configuration")
    assert tables(text) == 1
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    named = [name for row in rows for name in re.findall(r"`(CALLSPAN_[A-Z_]+)`", row.split("|")[1])]
    assert sorted(named) == sorted(ENV_VARS)


def test_the_guide_covers_the_three_uses_privacy_and_limits() -> None:
    headings = list(sections())
    for prefix in ("Set-up", "Use 1:", "Use 2:", "Use 3:", "Configuration", "What is exported (privacy)",
                   "Performance", "How it works"):
        assert sum(h.startswith(prefix) for h in headings) == 1, (prefix, headings)
    assert "### Known limits" in section("How it works")
    # Use 2: Jaeger with Docker and without it.
    use2 = section("Use 2:")
    assert "docker compose -f collector-config/docker-compose.yaml up -d" in use2
    assert "scripts/build-otel-binaries.sh" in use2 and "scripts/build-jaeger-ui.sh" in use2
