"""cProfile on for the whole worker (every request) when BENCH_CPROFILE=1: what the benchmark
compares callspan at 100% with. Started in the thread that serves the requests (gunicorn's sync
worker, uvicorn's event loop); nothing is written out."""

import cProfile
import os

_profiles: list[cProfile.Profile] = []


def start() -> None:
    if os.environ.get("BENCH_CPROFILE") == "1" and not _profiles:
        profile = cProfile.Profile()
        profile.enable()
        _profiles.append(profile)
