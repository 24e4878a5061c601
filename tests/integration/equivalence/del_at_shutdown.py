#: shutdown-output: yes
"""An object whose __del__ raises when the interpreter shuts down: the 'Exception ignored' report
(after atexit, so after callspan's line: see README, Known limits)."""


class Leaky:
    def __del__(self):
        raise ValueError("from __del__")


keep = Leaky()
print("main done")
