"""ASGI middleware: production mode for any ASGI application (Starlette, FastAPI, Django ASGI).

    from callspan.production.asgi import CallspanMiddleware
    app = CallspanMiddleware(app)            # Starlette/FastAPI: app.add_middleware(CallspanMiddleware)

Arms the process and, per HTTP or WebSocket connection, opens the gate when it is sampled: by
the current OpenTelemetry span's sampled flag when the OpenTelemetry ASGI middleware wraps this
one, else at ``sample_rate`` (CALLSPAN_SAMPLE_RATE). The gate is a context variable: the
request's task, the tasks it creates and the threads it runs work in with the context copied
(Starlette's run_in_threadpool) are traced; other connections on the same event loop are not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from callspan.production import arm, close_request, open_request

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class CallspanMiddleware:
    def __init__(self, app: ASGIApp, **arm_options: Any) -> None:
        self.app = app
        arm(**arm_options)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        token = open_request() if scope.get("type") in ("http", "websocket") else None
        if token is None:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            close_request(token)
