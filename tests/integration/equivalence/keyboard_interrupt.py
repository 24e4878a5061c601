"""An unhandled KeyboardInterrupt: Python prints it, runs atexit, then dies by SIGINT."""
import atexit

atexit.register(print, "atexit before the signal")


def work():
    raise KeyboardInterrupt


work()
