"""A program's own sys.setprofile / threading.setprofile function (a pure-Python profiler such as
yappi's fallback): it sees its calls, and sys.getprofile() returns it."""
import sys
import threading

events = []


def profiler(frame, event, arg):
    if frame.f_code.co_name in ("work", "run_in_thread"):
        events.append((threading.current_thread().name, event, frame.f_code.co_name))


def work(n):
    return sum(range(n))


def run_in_thread():
    return work(5)


sys.setprofile(profiler)
threading.setprofile(profiler)
work(10)
print(sys.getprofile() is profiler, threading.getprofile() is profiler)
thread = threading.Thread(target=run_in_thread, name="worker")
thread.start()
thread.join()
sys.setprofile(None)
threading.setprofile(None)
work(20)
print(sys.getprofile(), events)
