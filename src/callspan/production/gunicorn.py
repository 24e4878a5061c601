"""gunicorn: OpenTelemetry and callspan set up in each worker, after gunicorn forks it.

    gunicorn -c python:callspan.production.gunicorn -w 4 shop.wsgi

or, in a gunicorn.conf.py of your own (calling it from your own ``post_fork`` if you have one)::

    from callspan.production.gunicorn import post_fork

In the worker, ``post_fork`` runs what ``opentelemetry-instrument`` runs at start-up (the distro,
the SDK configured from the OTEL_* variables, the installed instrumentations), then arms
production mode (CALLSPAN_* settings). The master imports none of it, so every exporter, gRPC
channel and thread belongs to the worker that uses it: OTLP/gRPC works whatever gRPC's fork
support is. Under ``opentelemetry-instrument gunicorn`` the SDK is built in the master and the
workers inherit its exporter; a gRPC channel made before a fork is usable after it only where
gRPC's fork handling allows (with GRPC_ENABLE_FORK_SUPPORT=0, or a grpcio release that defaults
to it, no worker can export over gRPC at all: gRPC was initialized in the master).
"""

from __future__ import annotations

import sys
from typing import Any

from callspan.production.autoinstrument import arm_or_say_why_not
from callspan.untrusted import printable


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn's post_fork server hook (in the worker, before it loads the application)."""
    instrument_this_process()
    arm_or_say_why_not()


def instrument_this_process() -> None:
    """OpenTelemetry's auto-instrumentation in this process, unless the SDK is already set up
    here (gunicorn run under opentelemetry-instrument too: the master did it)."""
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return
    try:
        from opentelemetry.instrumentation.auto_instrumentation import initialize
    except ImportError as exc:
        print(f"callspan: OpenTelemetry auto-instrumentation not set up in this worker ({printable(str(exc))}): "
              "pip install opentelemetry-distro opentelemetry-exporter-otlp", file=sys.stderr)
        return
    initialize()
