"""The call record: one per traced call, filled by the hot path, read by the builder.

The pure-Python hot path makes a list with fixed slots (the cheapest record CPython can build
and mutate from Python); the index constants below are its layout. The compiled hot path makes
``callspan.tracer._hotpath.Record`` objects with the same slots, indexed the same way (its integer
slots are C integers inside: one allocation per call, not a GC object).
"""

from __future__ import annotations

from typing import Any

Record = list[Any]

(
    R_INFO,        # CodeInfo of the function
    R_PARENT,      # logical parent record, or None for the outermost traced call
    R_ROOT,        # the outermost record of this call tree; None when this record is the root
    R_START,       # clock reading at the first start
    R_END,         # clock reading at the end (0 while running)
    R_SEG_CPU,     # CPU counter at the start of the current running segment
    R_CPU,         # CPU accumulated over running segments
    R_CHILD_CPU,   # R_CPU of traced children that ran inside this call
    R_ARGS,        # (raw hash or None, unhashable type names) or None when keys are off
    R_RET,         # (raw hash or None, hashable) or None
    R_RET_SIZE,    # sys.getsizeof of the return value (None when not measured: keys.RET_SIZE_EVERY)
    R_ERROR,       # exception type that escaped, or None
    R_SUSPENDS,    # number of suspensions (awaits for coroutines, yields for generators)
    R_SUSP_NS,     # total clock time suspended
    R_SUSP_AT,     # clock reading at the last suspension
    R_THREAD,      # ThreadState of the thread that started the call
    R_CONTEXT,     # for roots: the application's context at the start (from the context getter)
    R_PREV_CURRENT,  # coroutines: the context variable's value before this coroutine started
    R_VIA_TASK,    # True when the parent was found through the task/context, not the stack
    R_INCOMPLETE,  # True when the call never finished (still running at stop, or evicted)
    R_OUT,         # builder-side state (the builder owns this slot)
    R_NODE,        # the call-tree node this call folds into (callspan.tracer.aggregate.Node)
    R_KEEP,        # becomes a span: for a root, how many spans its trace keeps so far (0: none); else 0/1
    R_SHADOW,      # memoized sequence: bits HIT_ROOT (its key was cached), SHADOWED (nested in a hit), ACTIVE
) = range(24)

RECORD_SIZE = 24
HIT_ROOT, SHADOWED, ACTIVE = 1, 2, 4  # ACTIVE: counted among its function's running keyed calls
