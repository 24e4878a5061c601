"""os.fork: the child calls traced functions and leaves through sys.exit, os._exit, or an
exception; no 'multi-threaded fork' DeprecationWarning, no extra lines."""
import os
import sys


def work(n):
    return sum(range(n))


def child(mode):
    print("child", mode, work(100), flush=True)
    if mode == "exit":
        sys.exit(3)
    if mode == "raise":
        raise ValueError("child failed")
    os._exit(5)


for mode in ("exit", "raise", "_exit"):
    pid = os.fork()
    if pid == 0:
        child(mode)
    _, status = os.waitpid(pid, 0)
    print("parent saw", mode, os.waitstatus_to_exitcode(status), flush=True)
print("parent", work(10))
