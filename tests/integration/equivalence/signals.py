"""Signal handlers run in the main thread between bytecodes, also inside traced calls."""
import os
import signal
import time

received = []


def handler(signum, frame):
    received.append((signal.Signals(signum).name, frame.f_code.co_name))


signal.signal(signal.SIGUSR1, handler)


def busy():
    os.kill(os.getpid(), signal.SIGUSR1)
    total = 0
    for i in range(1000):
        total += i
    return total


print(busy(), received)
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.01)
deadline = time.monotonic() + 2
while len(received) < 2 and time.monotonic() < deadline:
    time.sleep(0.001)
print([name for name, _ in received])
