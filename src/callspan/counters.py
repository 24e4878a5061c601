"""CPU counters: hardware instructions via perf_event_open where the CPU exposes them, perf
software events, or thread CPU time. Each says truthfully what it measures.

A counter hands each thread its own zero-argument reader (perf counters are per thread).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import time
from collections.abc import Callable
from typing import Protocol

from callspan.errors import CallspanError

Reader = Callable[[], int]

_PERF_TYPE_HARDWARE = 0
_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_HW_INSTRUCTIONS = 1
_PERF_COUNT_SW_CPU_CLOCK = 0
_PERF_COUNT_SW_TASK_CLOCK = 1
_PERF_FLAG_FD_CLOEXEC = 8
_EXCLUDE_KERNEL = 1 << 5
_EXCLUDE_HV = 1 << 6
_SYSCALL_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "arm64": 241}

PERF_EVENTS = {
    "instructions": (_PERF_TYPE_HARDWARE, _PERF_COUNT_HW_INSTRUCTIONS, "instructions"),
    "task-clock": (_PERF_TYPE_SOFTWARE, _PERF_COUNT_SW_TASK_CLOCK, "ns"),
    "cpu-clock": (_PERF_TYPE_SOFTWARE, _PERF_COUNT_SW_CPU_CLOCK, "ns"),
}


class CpuCounter(Protocol):
    name: str  # e.g. "perf:instructions", "thread_time"
    unit: str  # "instructions" or "ns"

    def thread_reader(self) -> Reader: ...


class ThreadTimeCounter:
    """CLOCK_THREAD_CPUTIME_ID through time.thread_time_ns: CPU nanoseconds of the calling thread."""

    name = "thread_time"
    unit = "ns"

    def thread_reader(self) -> Reader:
        return time.thread_time_ns


def _perf_event_open(event_type: int, config: int, flags: int) -> int:
    number = _SYSCALL_PERF_EVENT_OPEN.get(platform.machine())
    if number is None or os.name != "posix":
        raise OSError(0, "perf_event_open is not available on this platform")
    # struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): type, size, config,
    # sample_period, sample_type, read_format, flag bits, wakeup_events, bp_type, config1.
    attr = struct.pack("IIQQQQQIIQ", event_type, 64, config, 0, 0, 0, flags, 0, 0, 0)
    buffer = ctypes.create_string_buffer(attr, 64)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(number), buffer, ctypes.c_int(0), ctypes.c_int(-1),
                      ctypes.c_int(-1), ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


class PerfEventCounter:
    """A perf_event counter opened for each thread that reads it (pid=0, cpu=-1: this thread)."""

    def __init__(self, event: str) -> None:
        event_type, config, unit = PERF_EVENTS[event]
        self.name = f"perf:{event}"
        self.unit = unit
        self._type = event_type
        self._config = config
        self._flags = _EXCLUDE_KERNEL | _EXCLUDE_HV if event_type == _PERF_TYPE_HARDWARE else 0
        self._fds: list[int] = []
        os.close(self._open())  # fail now, in the caller, not in some thread later

    def _open(self) -> int:
        return _perf_event_open(self._type, self._config, self._flags)

    def thread_reader(self) -> Reader:
        fd = self._open()
        self._fds.append(fd)
        read = os.read
        from_bytes = int.from_bytes

        def read_counter() -> int:
            return from_bytes(read(fd, 8), "little")

        return read_counter

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


def choose_counter(mode: str) -> tuple[CpuCounter | None, str]:
    """The counter for a CALLSPAN_CPU mode, and why it was chosen."""
    if mode == "off":
        return None, "CPU counting is off"
    if mode == "thread":
        return ThreadTimeCounter(), "thread CPU time requested"
    if mode in ("instructions", "task-clock", "cpu-clock"):
        try:
            return PerfEventCounter(mode), f"perf_event {mode} requested"
        except OSError as exc:
            raise CallspanError(f"CPU counter {mode!r} is not available here: {exc.strerror or exc}") from None
    try:
        return PerfEventCounter("instructions"), "hardware instruction counter available"
    except OSError as exc:
        why = exc.strerror or str(exc)
        return ThreadTimeCounter(), f"no hardware instruction counter ({why}); using thread CPU time"
