"""Text from traces, files and servers made safe to show: terminal controls escaped, URL credentials hidden.

Function names, file paths and error details in a trace file or a server's answer come from
elsewhere: printed raw, an escape sequence in them could rewrite the user's terminal (move the
cursor, retitle the window, hide lines), a newline could forge a line of the report, and a
bidirectional override could make text read differently than it is. Standard library only: the
tracer, the exporter and the analyzer all use it.
"""

from __future__ import annotations

import re
import urllib.parse

# C0 controls (newline and tab too: a report line or an error message must stay one line), DEL,
# C1 controls (U+009B is a one-character CSI on some terminals), line/paragraph separators,
# bidirectional marks, embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every terminal control and bidirectional character written as ``\\xNN``/``\\uNNNN``."""
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` with its password and every query value replaced by ``***``, for showing.

    A query in a URL the user gives (``?token=...``) is usually a credential; its keys stay
    visible so that the user can tell which URL it was.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{REDACTED}@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{urllib.parse.quote(key, safe='._-')}={REDACTED}" for key, _ in pairs) or REDACTED
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
