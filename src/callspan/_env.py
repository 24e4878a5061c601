"""Version facts, each with its evidence. The rest of callspan asks this module, not sys.version."""

from __future__ import annotations

import opcode
import sys

PYVERSION = sys.version_info[:2]

# PEP 669: sys.monitoring exists from 3.12. It lets a tool DISABLE events per code location, which
# is what makes unselected code nearly free.
HAS_SYS_MONITORING = hasattr(sys, "monitoring")

# PEP 669 / CPython docs: PY_UNWIND and PY_THROW are not local events, so their callbacks must not
# return DISABLE (CPython raises ValueError if they do).
GLOBAL_ONLY_EVENTS = ("PY_UNWIND", "PY_THROW")

# Measured with callspan's own probe (tests/unit/test_env.py): on 3.12 and 3.13, an await suspension fires
# PY_YIELD for every coroutine in the await chain, innermost first; resuming fires PY_RESUME outermost
# first; an exception delivered into a suspended coroutine (Task.cancel, a failed awaited task) fires
# PY_THROW instead of PY_RESUME.
AWAIT_CHAIN_FIRES_EVERY_FRAME = HAS_SYS_MONITORING

# CPython 3.13 (gh-111964 era gen_close fast path): closing a generator suspended outside any
# try-block does not run its frame, so no PY_THROW/PY_UNWIND arrives. Suspended generator records
# must therefore be bounded and evicted, never trusted to be closed.
GENERATOR_CLOSE_MAY_BE_SILENT = PYVERSION >= (3, 13)

# sys.setprofile reports a generator's yield, a return and an exception exit all as "return"
# (arg None for the last); Python 3.11's ceval hides the in-flight exception from the profile
# function (PyErr_Fetch before the call), so the setprofile core can tell *that* a call raised,
# from the opcode at f_lasti, but not *which* exception. It reports error.type "_OTHER".
SETPROFILE_SEES_EXCEPTION_TYPE = False

# Opcodes that end a frame normally, or suspend it, as seen at frame.f_lasti in a "return" event.
RETURN_OPCODES = frozenset(opcode.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST") if name in opcode.opmap)
YIELD_OPCODES = frozenset(opcode.opmap[name] for name in ("YIELD_VALUE",) if name in opcode.opmap)
# Measured (tests/tracer/test_core.py generator test under setprofile): on 3.13 the "return" event
# of a yield reports f_lasti at the RESUME that follows YIELD_VALUE, not at YIELD_VALUE itself.
RESUME_OPCODE = opcode.opmap.get("RESUME", -1)
# Measured on 3.11.7, 3.12.1, 3.13.0 (tests/tracer/test_core.py, generator frame reuse): a "call"
# profile event's f_lasti is at the RESUME being run; its oparg's low two bits are 0 when the frame
# starts and 1-3 when it resumes (3.13 sets higher bits too), so a generator's start is told from
# a resume without trusting the frame's address (a dead generator's frame address is reused).
RESUME_AT_START_OPARG_MASK = 3
YIELD_REPORTED_AT_NEXT_RESUME = PYVERSION >= (3, 13)

# The compiled hot path (callspan.tracer._hotpath, an optional C extension built at install time):
# sys.monitoring callbacks (3.12+) and a C profile function (every version); without a C
# compiler at install time it is absent.
try:
    from callspan.tracer import _hotpath as _compiled

    HAS_COMPILED_HOTPATH = hasattr(_compiled, "HotPath")
    HAS_COMPILED_HASH = hasattr(_compiled, "siphash24")
except ImportError:
    HAS_COMPILED_HOTPATH = HAS_COMPILED_HASH = False

# CPython's time.perf_counter_ns is clock_gettime(CLOCK_MONOTONIC) on Linux (Python/pytime.c,
# py_get_monotonic_clock), so compiled code reads that clock and gets the same numbers.
PERF_COUNTER_IS_CLOCK_MONOTONIC = sys.platform.startswith("linux")

# threading.setprofile_all_threads appeared in 3.12; on 3.11 the setprofile core only reaches the
# threads started after it is installed (plus the current one).
HAS_SETPROFILE_ALL_THREADS = hasattr(__import__("threading"), "setprofile_all_threads")

# CPython's os.fork() warns (3.12+, DeprecationWarning) when the process has other threads: 3.12
# counts them before the after-fork hooks run, 3.13 after them (Modules/posixmodule.c,
# os_fork_impl: warn_about_fork_with_threads follows PyOS_AfterFork_Parent since 3.13).
FORK_WARNING_AFTER_HOOKS = PYVERSION >= (3, 13)

# Python 3.12's Thread.join returns when the thread has released its Python state, before its OS
# thread exits (3.13 joins the OS thread: pthread_join in _thread's ThreadHandle). A fork right
# after such a join can still count the thread (measured in tests/tracer/test_coexistence.py).
JOIN_RETURNS_BEFORE_THREAD_EXITS = PYVERSION < (3, 13)
