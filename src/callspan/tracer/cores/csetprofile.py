"""The compiled setprofile core: a C profile function (as cProfile's), for Python 3.11.

The same events, decisions and records as the Python setprofile core (its reference), with the
hook and the recorder's transitions in C (src/callspan/tracer/c/_hotpath.c). Code that is not selected
still gets a profile event per call, but it costs one table lookup in C, not a Python call.
"""

from __future__ import annotations

import sys
import threading

from callspan import _env
from callspan.tracer.cores.base import compiled_hot_path
from callspan.tracer.cores.setprofile import PreviousProfile, _UnknownException
from callspan.tracer.recorder import Recorder


class CompiledSetProfileCore:
    name = "csetprofile"

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.hot = compiled_hot_path(recorder, None)
        self.hot.configure_setprofile(_UnknownException(), _env.RETURN_OPCODES, _env.YIELD_OPCODES,
                                      _env.RESUME_OPCODE, _env.YIELD_REPORTED_AT_NEXT_RESUME)
        self._previous = PreviousProfile()

    def start(self) -> None:
        self._previous.save()
        # New threads get a Python-level hook that swaps itself for the C function on its first
        # event; existing threads: this one on 3.11 (as the Python core), all of them on 3.12+.
        threading.setprofile(self.hot.thread_bootstrap)
        self.hot.profile_install()

    def cover_current_thread(self) -> None:
        if sys.getprofile() is not self.hot:
            self.hot.profile_install_thread()

    def stop(self) -> None:
        self.hot.profile_uninstall()
        self._previous.restore()
