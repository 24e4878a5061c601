"""A sys.excepthook that itself raises: Python reports both."""
import sys


def hook(kind, value, tb):
    raise RuntimeError("hook broke")


sys.excepthook = hook
raise ValueError("original")
