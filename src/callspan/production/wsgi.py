"""WSGI middleware: production mode for any WSGI application (Django, Flask, ...).

    from callspan.production.wsgi import CallspanMiddleware
    application = CallspanMiddleware(application)

Arms the process (callspan.production.arm) and, per request, opens the gate when the request is
sampled: by the current OpenTelemetry span's sampled flag when the OpenTelemetry WSGI middleware
wraps this one (put callspan's inside it), else at ``sample_rate`` (CALLSPAN_SAMPLE_RATE). A
request a sampled server span already opened (GateSpanProcessor) is left as it is. Calls made
while the server iterates a streamed response body, after the application returned, are not
traced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from callspan.production import arm, close_request, open_request


class CallspanMiddleware:
    def __init__(self, app: Callable[..., Iterable[bytes]], **arm_options: Any) -> None:
        self.app = app
        arm(**arm_options)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        token = open_request()
        if token is None:
            return self.app(environ, start_response)
        try:
            return self.app(environ, start_response)
        finally:
            close_request(token)
