"""The interface every core implements."""

from __future__ import annotations

import time
from typing import Any, Protocol

from callspan import _env
from callspan.tracer.keys import _KWD_MARK
from callspan.tracer.recorder import Recorder, current_coroutine_var


class Core(Protocol):
    """A hook that turns interpreter events into Recorder transitions.

    ``start`` installs the hook (for every thread it can reach); ``stop`` removes it. Neither
    raises into the application once started; the hook swallows and counts its own faults in
    ``recorder.faults``.
    """

    name: str
    recorder: Recorder

    def start(self) -> None: ...

    def stop(self) -> None: ...


def compiled_hot_path(recorder: Recorder, disable: Any) -> Any:
    """The compiled recorder (callspan.tracer._hotpath.HotPath) both compiled cores drive.

    The default clock is read natively (CLOCK_MONOTONIC, what time.perf_counter_ns reads on
    Linux, through the time-stamp counter where the kernel keeps time with it: _hotpath.c's
    _clock.c); an injected clock is called. ``disable`` is sys.monitoring.DISABLE, or None.

    The compiled hot path folds into compiled aggregates (callspan.tracer._hotpath.Aggregates, the twin
    of callspan.tracer.aggregate.Aggregates): they replace ``recorder.aggregates``, with its limits.
    """
    from callspan.tracer import _hotpath

    python = recorder.aggregates
    if not isinstance(python, _hotpath.Aggregates):
        recorder.aggregates = _hotpath.Aggregates(
            max_nodes=python.max_nodes, max_depth=python.max_depth, max_keys=python.max_keys,
            max_keys_total=python.max_keys_total, key_min_ns=python.key_min_ns)

    native_clock = recorder.clock is time.perf_counter_ns and _env.PERF_COUNTER_IS_CLOCK_MONOTONIC
    # The key's separator item, as keys.args_key adds it (``key += _KWD_MARK``).
    (kwd_mark,) = _KWD_MARK
    hot_path = _hotpath.HotPath(recorder, current_coroutine_var, kwd_mark, disable, native_clock)
    if native_clock:
        # The native clock may be the time-stamp counter (_hotpath.clock_source()): CLOCK_MONOTONIC
        # within the scale's error. The recorder's own readings (the tokens, open calls at stop)
        # are compared with the hot path's: the same clock.
        recorder.clock = _hotpath.clock_ns
    return hot_path
