#: run: -m
#: args: a b
"""Run as `-m module_mode` from its directory: __main__ is this module with Python's -m
attributes, sys.path[0] is the working directory, sys.argv[0] the absolute path, and an uncaught
exception's traceback shows runpy's frames as Python shows them."""
import os
import sys

import __main__


def describe() -> None:
    print(__name__, __spec__.name, repr(__package__), type(__loader__).__name__, __loader__.name)
    print(sys.modules["__main__"] is __main__, os.path.isabs(__file__), __file__ == os.path.abspath("module_mode.py"))
    print(sys.argv[0] == __file__, sys.argv[1:], sys.path[0] == os.getcwd())
    print([name for name in vars(__main__) if name.startswith("__")])


def fail() -> None:
    raise LookupError("from a module run with -m")


describe()
fail()
