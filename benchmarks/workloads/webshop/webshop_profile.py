"""The worker's set-up after OpenTelemetry's. cProfile on for the whole worker (every request)
when BENCH_CPROFILE=1: what the benchmark compares callspan at 100% with. Started in the thread
that serves the requests (gunicorn's sync worker, uvicorn's event loop); nothing is written out.
SHOP_CALLSPAN=processor: callspan armed with its span processor only, no middleware (what
``CALLSPAN_ENABLED=1 opentelemetry-instrument`` does): the framework's sampled server spans open
the gate."""

import cProfile
import os

_profiles: list[cProfile.Profile] = []


def start() -> None:
    if os.environ.get("SHOP_CALLSPAN") == "processor":
        import callspan.production

        callspan.production.arm(include=["request_mix"])
    if os.environ.get("BENCH_CPROFILE") == "1" and not _profiles:
        profile = cProfile.Profile()
        profile.enable()
        _profiles.append(profile)
