"""CPU counters: hardware instructions via perf_event_open where the CPU exposes them, perf
software events, or thread CPU time. Each says truthfully what it measures.

A counter hands each thread its own zero-argument reader (perf counters are per thread).
"""

from __future__ import annotations

import os
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


class IntervalThreadClock:
    """One thread's CPU time, reading the kernel clock at most once per ``interval`` ns of wall time.

    Reading CLOCK_THREAD_CPUTIME_ID is a system call (0.5-1 us on a VM: more than a small Python
    call). Between two real readings less than ``interval`` apart, the wall time elapsed counts
    as CPU time; each real reading re-anchors the value (never backwards), so totals over longer
    stretches are the kernel's, and only the split among calls inside one interval is by wall time.
    The compiled hot path implements the same rule (``_hotpath.interval_clock_replay`` tests it).
    """

    __slots__ = ("interval", "wall", "cpu", "anchor", "last", "value", "ready")

    def __init__(self, interval: int, wall: Reader = time.perf_counter_ns,
                 cpu: Reader = time.thread_time_ns) -> None:
        self.interval = interval
        self.wall = wall
        self.cpu = cpu
        self.anchor = self.last = self.value = 0
        self.ready = False

    def __call__(self) -> int:
        now = self.wall()
        if not self.ready or now - self.anchor >= self.interval:
            real = self.cpu()
            if not self.ready or real > self.value:
                self.value = real
            self.anchor = now
            self.ready = True
        else:
            self.value += now - self.last
        self.last = now
        return self.value


class ThreadTimeCounter:
    """CLOCK_THREAD_CPUTIME_ID: CPU nanoseconds of the calling thread, read from the kernel at
    every call boundary (``interval_ns`` 0) or at most once per ``interval_ns`` of wall time."""

    name = "thread_time"
    unit = "ns"

    def __init__(self, interval_ns: int = 0) -> None:
        self.interval_ns = interval_ns

    def thread_reader(self) -> Reader:
        if self.interval_ns > 0:
            return IntervalThreadClock(self.interval_ns)
        return time.thread_time_ns


class PerfReader:
    """Reads one thread's perf_event counter: 8 bytes from its file descriptor."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self) -> int:
        return int.from_bytes(os.read(self.fd, 8), "little")


_NATIVE_THREAD_TIME = -2
_NATIVE_INTERVAL_THREAD_TIME = -3
_NATIVE_NONE = -1


def native_reader(reader: Reader | None) -> int:
    """How compiled code can read ``reader`` itself: -2 for thread CPU time
    (CLOCK_THREAD_CPUTIME_ID), -3 for an IntervalThreadClock of the real clocks (the interval is
    the counter's, handed to the compiled core once), a perf_event file descriptor, or -1 (call
    the reader)."""
    if reader is time.thread_time_ns:
        return _NATIVE_THREAD_TIME
    if (isinstance(reader, IntervalThreadClock) and reader.wall is time.perf_counter_ns
            and reader.cpu is time.thread_time_ns):
        return _NATIVE_INTERVAL_THREAD_TIME
    if isinstance(reader, PerfReader):
        return reader.fd
    return _NATIVE_NONE


def _perf_event_open(event_type: int, config: int, flags: int) -> int:
    try:
        from callspan.tracer._hotpath import perf_event_open
    except ImportError:
        return _perf_event_open_ctypes(event_type, config, flags)
    return perf_event_open(event_type, config, flags)


def _perf_event_open_ctypes(event_type: int, config: int, flags: int) -> int:
    """The same syscall without the compiled module (ctypes: ~3 ms to import, so only here)."""
    import ctypes
    import platform
    import struct

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
        return PerfReader(fd)

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


def choose_counter(mode: str, interval_us: int = 0) -> tuple[CpuCounter | None, str]:
    """The counter for a CALLSPAN_CPU mode, and why it was chosen."""
    if mode == "off":
        return None, "CPU counting is off"
    interval = f", read at most every {interval_us} us" if interval_us else ""
    if mode == "thread":
        return ThreadTimeCounter(interval_us * 1000), f"thread CPU time requested{interval}"
    if mode in ("instructions", "task-clock", "cpu-clock"):
        try:
            return PerfEventCounter(mode), f"perf_event {mode} requested"
        except OSError as exc:
            raise CallspanError(f"CPU counter {mode!r} is not available here: {exc.strerror or exc}") from None
    try:
        return PerfEventCounter("instructions"), "hardware instruction counter available"
    except OSError as exc:
        why = exc.strerror or str(exc)
        return ThreadTimeCounter(interval_us * 1000), f"no hardware instruction counter ({why}); using thread CPU time{interval}"
