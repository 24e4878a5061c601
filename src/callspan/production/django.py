"""Django: production mode from settings.py.

    MIDDLEWARE = [
        "callspan.production.django.CallspanMiddleware",   # first, or right after OpenTelemetry's
        ...
    ]
    CALLSPAN = {"include": ["shop"], "sample_rate": 0.01}   # optional: callspan.config.Settings

With ``opentelemetry-instrumentation-django`` (DjangoInstrumentor().instrument(), or
``opentelemetry-instrument``) the request's server span is started before this middleware runs:
the application's sampler decides. Without it, ``sample_rate`` does. Works for sync (WSGI) and
async (ASGI) Django.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from callspan.production import arm, close_request, open_request


def _arm_from_settings() -> None:
    from django.conf import settings

    options = dict(getattr(settings, "CALLSPAN", {}) or {})
    if "roots" not in options:
        base = getattr(settings, "BASE_DIR", None)
        if base is not None:
            options["roots"] = (str(base),)
    arm(**options)


class CallspanMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = inspect.iscoroutinefunction(get_response)
        if self.is_async:
            from asgiref.sync import markcoroutinefunction

            markcoroutinefunction(self)
        _arm_from_settings()

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        token = open_request()
        try:
            return self.get_response(request)
        finally:
            close_request(token)

    async def _acall(self, request: Any) -> Any:
        token = open_request()
        try:
            return await self.get_response(request)
        finally:
            close_request(token)
