"""__main__ is this module, with Python's attributes, at start and in atexit handlers; its __file__
is absolute (the suite runs it as `main_module.py`), so it still works after a chdir."""
import atexit
import builtins
import os
import sys
import warnings

import __main__

PATH = __file__


def describe(where: str) -> None:
    main = sys.modules["__main__"]
    print(where, main is __main__, main.__name__, main.__package__, main.__spec__,
          type(main.__loader__).__name__, main.__loader__.name, main.__builtins__ is builtins,
          main.__annotations__, getattr(main, "__cached__", "no __cached__"),
          os.path.isabs(getattr(main, "__file__", "")), getattr(main, "__file__", None) == PATH)


print([name for name in vars(__main__) if name.startswith("__")])
print(sys.argv, sys.path[0] == os.path.dirname(os.path.realpath(__file__)))
print(os.path.basename(os.path.dirname(sys.path[1])) != "bin")
print(warnings.filters[:5])
describe("start")
os.chdir("/")  # __file__ still names this file: it is absolute, as typed or not
with open(__file__) as source:
    print(source.readline().rstrip())
atexit.register(describe, "atexit")  # Python has removed __file__ and __cached__ by then
