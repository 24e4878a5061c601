"""sys.exit with a message: printed on stderr, status 1; atexit still runs."""
import atexit
import sys

atexit.register(print, "bye from atexit")
print("working")
sys.exit("fatal: something went wrong")
