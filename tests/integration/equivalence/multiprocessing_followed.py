#: callspan: --follow-children
"""multiprocessing children under --follow-children, with the fork, forkserver and spawn start
methods: a Pool ended by its with-block (terminate: SIGTERM), a child that raises, one that exits
with a code, one terminated while it sleeps, one with a SIGTERM handler of its own, and a
ProcessPoolExecutor. Their output, exit codes and tracebacks are Python's."""
import concurrent.futures
import multiprocessing as mp
import os
import signal
import sys
import time


def square(x):
    return x * x


def fail(queue):
    queue.put(square(3))
    raise ValueError("child failed")


def exit_with(code):
    sys.exit(code)


# The children killed below tell the parent they are ready through a pipe of their own: a child
# killed just after putting into a multiprocessing queue may still hold the queue's lock.
def sleep_long(connection):
    connection.send("sleeping")
    time.sleep(60)


def own_handler(connection):
    def handler(signum, frame):
        print("child handler", signum, flush=True)
        os._exit(7)

    signal.signal(signal.SIGTERM, handler)
    connection.send("ready")
    # Short sleeps: CPython 3.11 and 3.12 may run a Python handler only when the main thread's
    # blocking call returns if the process has another thread (callspan's builder thread here:
    # the same program with any background thread and no callspan hung 2 times in 900 under
    # python 3.11, 2 in 600 under 3.12; cpython#85300).
    while True:
        time.sleep(0.05)


def run(context, target, *args):
    process = context.Process(target=target, args=args)
    process.start()
    return process


if __name__ == "__main__":
    for method in ("fork", "forkserver", "spawn"):
        context = mp.get_context(method)
        with context.Pool(2) as pool:
            print(method, "pool", pool.map(square, range(5)), flush=True)
        queue = context.Queue()
        failing = run(context, fail, queue)
        print(method, "got", queue.get(), flush=True)
        failing.join()
        exiting = run(context, exit_with, 4)
        exiting.join()
        ours, theirs = context.Pipe()
        sleeping = run(context, sleep_long, theirs)
        print(method, ours.recv(), flush=True)
        sleeping.terminate()
        sleeping.join()
        ours, theirs = context.Pipe()
        handling = run(context, own_handler, theirs)
        print(method, ours.recv(), flush=True)
        handling.terminate()
        handling.join()
        print(method, "exit codes", failing.exitcode, exiting.exitcode, sleeping.exitcode, handling.exitcode,
              flush=True)
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
            print(method, "executor", list(executor.map(square, range(4))), flush=True)
