"""Chooses a core, and records why."""

from __future__ import annotations

from callspan import _env
from callspan.cores.base import Core
from callspan.errors import CallspanError
from callspan.recorder import Recorder


def available_cores() -> list[str]:
    return (["sysmon"] if _env.HAS_SYS_MONITORING else []) + ["setprofile"]


def choose_core(recorder: Recorder, requested: str | None) -> tuple[Core, str]:
    """The core to use and the reason, e.g. ("sysmon", "sys.monitoring available (3.12+)")."""
    if requested == "sysmon" and not _env.HAS_SYS_MONITORING:
        raise CallspanError(f"core 'sysmon' needs Python 3.12+ (this is {_env.PYVERSION[0]}.{_env.PYVERSION[1]})")
    if requested not in (None, "sysmon", "setprofile"):
        raise CallspanError(f"unknown core {requested!r}: choose sysmon or setprofile")
    if requested == "setprofile":
        from callspan.cores.setprofile import SetProfileCore

        return SetProfileCore(recorder), "setprofile requested"
    if _env.HAS_SYS_MONITORING:
        from callspan.cores.sysmon import SysMonitoringCore

        reason = "sysmon requested" if requested else "sys.monitoring available (Python 3.12+)"
        return SysMonitoringCore(recorder), reason
    from callspan.cores.setprofile import SetProfileCore

    return SetProfileCore(recorder), "sys.monitoring unavailable before Python 3.12"
