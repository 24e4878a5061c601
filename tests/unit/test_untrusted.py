"""Text from inputs made safe for a terminal; credentials in URLs hidden."""

from __future__ import annotations

from callspan.untrusted import printable, redact_url


def test_controls_and_bidi_overrides_are_escaped_visibly() -> None:
    assert printable("app.f") == "app.f"
    assert printable("é 函数 ok") == "é 函数 ok"  # printable non-ASCII stays
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("one\ntwo\r\tthree") == "one\\x0atwo\\x0d\\x09three"
    assert printable("\x9b31m\x7f") == "\\x9b31m\\x7f"
    assert printable("abc\u202edcba\u2066") == "abc\\u202edcba\\u2066"


def test_urls_lose_passwords_and_query_values() -> None:
    assert redact_url("http://localhost:16686") == "http://localhost:16686"
    assert redact_url("https://me:s3cret@jaeger.example:443/q/?token=abc&org=x") == \
        "https://me:***@jaeger.example:443/q/?token=***&org=***"
    assert redact_url("https://tok3n@jaeger.example/") == "https://***@jaeger.example/"
    assert redact_url("http://[::1/") == "***"  # unparseable: nothing of it shown
