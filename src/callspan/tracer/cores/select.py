"""Chooses a core, and records why."""

from __future__ import annotations

from callspan import _env
from callspan.errors import CallspanError
from callspan.tracer.cores.base import Core
from callspan.tracer.recorder import Recorder

CORE_NAMES = ("csysmon", "sysmon", "csetprofile", "setprofile")


def available_cores() -> list[str]:
    cores = []
    if _env.HAS_SYS_MONITORING and _env.HAS_COMPILED_HOTPATH:
        cores.append("csysmon")
    if _env.HAS_SYS_MONITORING:
        cores.append("sysmon")
    if _env.HAS_COMPILED_HOTPATH:
        cores.append("csetprofile")
    return cores + ["setprofile"]


def choose_core(recorder: Recorder, requested: str | None) -> tuple[Core, str]:
    """The core to use and the reason, e.g. ("csysmon", "sys.monitoring with the compiled hot path")."""
    if requested not in (None, *CORE_NAMES):
        raise CallspanError(f"unknown core {requested!r}: choose one of {', '.join(CORE_NAMES)}")
    version = f"{_env.PYVERSION[0]}.{_env.PYVERSION[1]}"
    if requested in ("sysmon", "csysmon") and not _env.HAS_SYS_MONITORING:
        raise CallspanError(f"core {requested!r} needs Python 3.12+ (this is {version})")
    if requested in ("csysmon", "csetprofile") and not _env.HAS_COMPILED_HOTPATH:
        raise CallspanError(f"core {requested!r} needs the compiled hot path (callspan.tracer._hotpath), "
                            "which was not built when callspan was installed (no C compiler?)")
    if requested == "csysmon" and not _env.HAS_COMPILED_HOTPATH:
        raise CallspanError("core 'csysmon' needs the compiled hot path (callspan.tracer._hotpath), "
                            "which was not built when callspan was installed (no C compiler?)")
    if requested == "setprofile":
        from callspan.tracer.cores.setprofile import SetProfileCore

        return SetProfileCore(recorder), "setprofile requested"
    if requested == "csetprofile":
        from callspan.tracer.cores.csetprofile import CompiledSetProfileCore

        return CompiledSetProfileCore(recorder), "csetprofile requested"
    if requested == "sysmon":
        from callspan.tracer.cores.sysmon import SysMonitoringCore

        return SysMonitoringCore(recorder), "sysmon (pure Python) requested"
    if _env.HAS_SYS_MONITORING and _env.HAS_COMPILED_HOTPATH:
        from callspan.tracer.cores.csysmon import CompiledSysMonitoringCore

        reason = "csysmon requested" if requested else "sys.monitoring (Python 3.12+) with the compiled hot path"
        return CompiledSysMonitoringCore(recorder), reason
    if _env.HAS_SYS_MONITORING:
        from callspan.tracer.cores.sysmon import SysMonitoringCore

        return SysMonitoringCore(recorder), "sys.monitoring (Python 3.12+); compiled hot path not built"
    if _env.HAS_COMPILED_HOTPATH:
        from callspan.tracer.cores.csetprofile import CompiledSetProfileCore

        return CompiledSetProfileCore(recorder), (
            f"sys.monitoring unavailable before Python 3.12 (this is {version}); compiled profile hook")
    from callspan.tracer.cores.setprofile import SetProfileCore

    return SetProfileCore(recorder), (
        f"sys.monitoring unavailable before Python 3.12 (this is {version}); compiled hot path not built")
