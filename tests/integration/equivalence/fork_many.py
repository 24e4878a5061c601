"""100 forks in a row with every warning shown, and an after-fork hook of the program's own that
runs Python code after callspan's hooks: never the 'multi-threaded fork' DeprecationWarning
(callspan's builder thread does not exist while os.fork() counts threads: before the after-fork
hooks on 3.12, after them on 3.13)."""
import os
import warnings

warnings.simplefilter("always")
hook_runs = 0


def after_in_parent():
    global hook_runs
    hook_runs += sum(1 for _ in range(1000)) // 1000


os.register_at_fork(after_in_parent=after_in_parent)


def work(n):
    return sum(range(n))


statuses = set()
for i in range(100):
    pid = os.fork()
    if pid == 0:
        os._exit(work(i) % 7)
    _, status = os.waitpid(pid, 0)
    statuses.add(os.waitstatus_to_exitcode(status))
print(hook_runs, sorted(statuses))
