"""Threads with results, a thread that raises (threading.excepthook), and a non-daemon thread
still running when the main module ends."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def square(x):
    return x * x


with ThreadPoolExecutor(max_workers=3) as pool:
    print(sorted(pool.map(square, range(10))))


def broken():
    raise RuntimeError("thread failed")


t = threading.Thread(target=broken, name="broken-thread")
t.start()
t.join()


def late():
    time.sleep(0.05)
    print("non-daemon thread finished after the main module")


threading.Thread(target=late).start()
print("main module ends")
