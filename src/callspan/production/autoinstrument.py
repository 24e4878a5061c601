"""``opentelemetry-instrument`` arms production mode when CALLSPAN_ENABLED is set.

    CALLSPAN_ENABLED=1 opentelemetry-instrument gunicorn -w 4 shop.wsgi

The ``opentelemetry_post_instrument`` entry point runs after the distro configured the SDK and
the instrumentations were loaded (in a pre-fork server: in the master, before the fork). It adds
the gate span processor to the configured TracerProvider; each process starts tracing on its
first sampled request (the master serves none).
"""

from __future__ import annotations

import os
import sys

from callspan.config import CALLSPAN_ENABLED

_TRUE = ("1", "true", "yes", "on")


def post_instrument() -> None:
    if os.environ.get(CALLSPAN_ENABLED, "").strip().lower() not in _TRUE:
        return
    try:
        from callspan.production import arm

        arm()
    except Exception as exc:  # a bad CALLSPAN_* setting: say so, never stop the application
        print(f"callspan: production mode not armed: {exc}", file=sys.stderr)
