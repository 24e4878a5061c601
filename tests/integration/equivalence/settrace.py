"""A program that uses sys.settrace itself (a debugger, a line tracer) sees its calls and lines."""
import sys

events = []


def tracer(frame, event, arg):
    if frame.f_code.co_filename == __file__:
        events.append((event, frame.f_code.co_name, frame.f_lineno - first_line))
        return tracer
    return None


def add(a, b):
    c = a + b
    return c


first_line = add.__code__.co_firstlineno
sys.settrace(tracer)
add(1, 2)
sys.settrace(None)
print(events)
