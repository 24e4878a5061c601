"""``opentelemetry-instrument`` arms production mode when CALLSPAN_ENABLED is set.

    CALLSPAN_ENABLED=1 opentelemetry-instrument gunicorn -w 4 shop.wsgi

The ``opentelemetry_post_instrument`` entry point runs after the distro configured the SDK and
the instrumentations were loaded (in a pre-fork server: in the master, before the fork). It adds
the gate span processor to the configured TracerProvider; each process starts tracing on its
first sampled request (the master serves none). ``callspan.production.gunicorn`` runs the same
set-up in each gunicorn worker instead, after the fork.
"""

from __future__ import annotations

import os
import sys

from callspan.config import CALLSPAN_ENABLED
from callspan.untrusted import printable

_TRUE = ("1", "true", "yes", "on")


def post_instrument() -> None:
    if os.environ.get(CALLSPAN_ENABLED, "").strip().lower() in _TRUE:
        arm_or_say_why_not()


def arm_or_say_why_not() -> None:
    """Arm production mode from the CALLSPAN_* settings; a bad one is said on stderr, never
    raised: the application starts either way."""
    try:
        from callspan.production import arm

        arm()
    except Exception as exc:
        print(f"callspan: production mode not armed: {printable(str(exc))}", file=sys.stderr)
