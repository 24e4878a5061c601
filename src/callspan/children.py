"""``callspan run --follow-children``: the children the program starts with multiprocessing are
traced, each as a process of its own (its pid, its ``service.instance.id``, its calls under its
own roots), into the parent's destinations: the JSON-lines file, opened for appending, receives
whole lines from every process.

- fork: the child inherits the running session, which re-arms itself at the fork
  (callspan.tracer.session).
- spawn, forkserver: multiprocessing pickles "preparation data" for the child before anything
  else; a TracingPlan travels with it (``get_preparation_data`` wrapped), with the parent's
  output file as a descriptor passed to the child the way multiprocessing passes its own. When
  the child unpickles it, tracing starts, before the program's main module is run again there.

In the child (once multiprocessing's bootstrap runs in a forked one: ``register_after_fork``),
the calls it inherited running are dropped, a multiprocessing finalizer run last exports
everything before the child's ``os._exit``, and a SIGTERM the program leaves to its default
action (``Pool.terminate``, the end of a ``with Pool()`` block, ``Process.terminate``) makes
callspan's builder thread export first and then lets it end the child as it would have
(``Session.on_signal``: the child's main thread may be in any blocking call).

multiprocessing is imported before the program runs (its atexit handler then runs after the
program's own); without the flag none of this happens.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from typing import Any

from callspan.run_tracing import RunTracing, TracingPlan

_PREPARATION_KEY = "callspan"  # multiprocessing.spawn.prepare() ignores keys it does not know
# multiprocessing runs finalizers with higher priorities first; its own go down to -5 (a queue's
# feeder thread): callspan's comes after all of them.
_LAST = -(1 << 30)


def follow_children(tracing: RunTracing) -> None:
    """In a traced process, before the program runs: trace the children it starts."""
    import multiprocessing.spawn
    import multiprocessing.util

    multiprocessing.util.register_after_fork(tracing, _in_multiprocessing_child)
    original = multiprocessing.spawn.get_preparation_data

    @functools.wraps(original)
    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        data[_PREPARATION_KEY] = _TracingForSpawnedChild(tracing)
        return data

    multiprocessing.spawn.get_preparation_data = get_preparation_data


def _in_multiprocessing_child(tracing: RunTracing) -> None:
    """Run by multiprocessing's bootstrap in each child made by fork or forkserver, after it has
    dropped the finalizers it inherited (a spawned child's bootstrap runs none of this)."""
    try:
        tracing.session.recorder.forget_running_calls()
        _export_before_the_end(tracing)
    except Exception:
        tracing.sink.faults += 1


def _export_before_the_end(tracing: RunTracing) -> None:
    """In a child: export before multiprocessing's os._exit, and on SIGTERM. Run when the child
    starts and again by multiprocessing's bootstrap, which drops the finalizers it inherited (the
    fork and forkserver start methods)."""
    import multiprocessing.util

    finalizer = tracing.exit_finalizer
    if finalizer is None or not finalizer.still_active():
        tracing.exit_finalizer = multiprocessing.util.Finalize(None, tracing.finish, exitpriority=_LAST)
    if tracing.signal_watched_in == os.getpid():
        return
    tracing.signal_watched_in = os.getpid()
    if tracing.session.on_signal(signal.SIGTERM, tracing.finish_and_die_by):
        return
    # Without the compiled module: a Python handler, run by the main thread (if SIGTERM comes
    # just as it enters a blocking call, the handler waits for that call to return).
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, tracing))


def _on_sigterm(tracing: RunTracing, signum: int, frame: Any) -> None:
    tracing.finish_and_die_by(signum)


class _TracingForSpawnedChild:
    """Pickled with the child's preparation data; unpickled, it starts tracing in the child."""

    def __init__(self, tracing: RunTracing) -> None:
        self.tracing = tracing

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing import context, reduction

        fd = self.tracing.pipeline.output_fileno()
        if fd < 0:
            return _start_in_spawned_child, (self.tracing.child_plan(), None)
        if context.get_spawning_popen() is None:
            return _not_traced, ()  # pickled outside a child's start: no way to pass the file
        # The child receives the descriptor (the same open file, appending) as multiprocessing
        # passes its own: kept by number for spawn, sent to the fork server for forkserver.
        return _start_in_spawned_child, (self.tracing.child_plan(), reduction.DupFd(fd))


def _not_traced() -> None:
    return None


def _start_in_spawned_child(plan: TracingPlan, output: Any) -> None:
    """In a child started by spawn or forkserver, while multiprocessing unpickles its preparation
    data: trace it as its parent is traced. A failure leaves the child untraced, never broken."""
    import atexit

    try:
        tracing = RunTracing(plan, output_fd=output.detach() if output is not None else None)
        follow_children(tracing)
        _export_before_the_end(tracing)
        atexit.register(tracing.finish)  # a child that fails before multiprocessing's bootstrap
        tracing.start()
    except Exception:
        pass
