"""ASGI middleware: production mode for any ASGI application (Starlette, FastAPI, Django ASGI).

    from callspan.production.asgi import CallspanMiddleware
    app = CallspanMiddleware(app)            # Starlette/FastAPI: app.add_middleware(CallspanMiddleware)

Arms the process, exports the last aggregates at the lifespan shutdown (uvicorn's workers end
by re-raising SIGTERM: no exit hook runs) and, per HTTP or WebSocket connection, opens the gate when it is sampled: by
the current OpenTelemetry span's sampled flag when the OpenTelemetry ASGI middleware wraps this
one, else at ``sample_rate`` (CALLSPAN_SAMPLE_RATE). The gate is a context variable: the
request's task, the tasks it creates and the threads it runs work in with the context copied
(Starlette's run_in_threadpool) are traced; other connections on the same event loop are not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from callspan.production import arm, close_request, disarm, open_request

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class CallspanMiddleware:
    def __init__(self, app: ASGIApp, **arm_options: Any) -> None:
        self.app = app
        arm(**arm_options)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope.get("type") == "lifespan":
            await self.app(scope, self._exporting_at_shutdown(receive), send)
            return
        token = open_request() if scope.get("type") in ("http", "websocket") else None
        if token is None:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            close_request(token)

    @staticmethod
    def _exporting_at_shutdown(receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def receive_and_export() -> Any:
            message = await receive()
            if isinstance(message, dict) and message.get("type") == "lifespan.shutdown":
                import asyncio

                # The session's last window, flushed: bounded by the export timeout, off the loop.
                await asyncio.get_running_loop().run_in_executor(None, disarm)
            return message

        return receive_and_export
