"""atexit handlers run last-registered first, after the main module, with its output order."""
import atexit
import sys


def say(text: str, stream=None) -> None:
    print(text, file=stream or sys.stdout)


atexit.register(say, "first registered, runs last")
atexit.register(say, "to stderr", sys.stderr)
atexit.register(say, "last registered, runs first")
print("main done")
