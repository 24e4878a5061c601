"""The program's own sys.excepthook reports the uncaught exception; sys.last_* are set for atexit."""
import atexit
import sys


def hook(kind, value, tb):
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    print("hook:", kind.__name__, value, frames)


def at_exit():
    print("last:", sys.last_type.__name__, sys.last_value, sys.last_traceback.tb_frame.f_code.co_name)


sys.excepthook = hook
atexit.register(at_exit)


def fail():
    raise LookupError("nothing here")


fail()
