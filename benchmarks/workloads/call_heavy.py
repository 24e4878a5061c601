"""Workload (a): call-heavy code: naive recursion (fib) and many tiny functions.

Deterministic. ``python call_heavy.py [SCALE]`` (SCALE multiplies the number of jobs, default 1).
The last stdout line is ``ELAPSED <seconds>`` for the work section only.
"""

import sys
import time

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
JOBS = max(1, int(2000 * SCALE))


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def inc(x):
    return x + 1


def double(x):
    return x * 2


def clamp(x, lo, hi):
    return lo if x < lo else hi if x > hi else x


def mix(a, b):
    return (a * 31 + b) & 0xFFFF


def step(x):
    return clamp(double(inc(x)) % 1009, 0, 1000)


def pipeline(n, seed):
    acc = seed
    for i in range(n):
        acc = mix(acc, step(i))
    return acc


def job(i):
    # One "job" per loop iteration: each is its own root call (the loop is module-level code).
    return fib(16 + i % 3) + pipeline(1500, i)


start = time.perf_counter()
total = 0
for i in range(JOBS):
    total += job(i)
elapsed = time.perf_counter() - start
print("result", total)
print(f"ELAPSED {elapsed:.6f}")
