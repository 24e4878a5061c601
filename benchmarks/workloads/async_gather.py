"""Workload (c): asyncio fan-out with gather and TaskGroup.

Handlers fan out to coroutines that await asyncio.sleep(0) and do a little work; half the
handlers use asyncio.gather, half asyncio.TaskGroup (3.11+).

Deterministic. ``python async_gather.py [SCALE]`` (SCALE multiplies the number of batches).
The last stdout line is ``ELAPSED <seconds>`` for the work section only.
"""

import asyncio
import sys
import time

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
BATCHES = max(1, int(1000 * SCALE))
HANDLERS_PER_BATCH = 20
FANOUT = 5


def crunch(seed):
    acc = seed
    for i in range(40):
        acc = (acc * 1103515245 + 12345 + i) & 0x7FFFFFFF
    return acc


async def fetch(key):
    await asyncio.sleep(0)
    value = crunch(key)
    await asyncio.sleep(0)
    return value % 1000


# Explicit loops rather than comprehensions/generator expressions: those are separate traced
# code objects (list comprehensions only on 3.11), which would make versions differ.

async def gather_handler(request_id):
    coros = []
    for k in range(FANOUT):
        coros.append(fetch(request_id * FANOUT + k))
    values = await asyncio.gather(*coros)
    return sum(values)


async def taskgroup_handler(request_id):
    tasks = []
    async with asyncio.TaskGroup() as tg:
        for k in range(FANOUT):
            tasks.append(tg.create_task(fetch(request_id * FANOUT + k)))
    total = 0
    for task in tasks:
        total += task.result()
    return total


async def serve_batch(batch):
    base = batch * HANDLERS_PER_BATCH
    coros = []
    for n in range(HANDLERS_PER_BATCH):
        handler = gather_handler if n % 2 == 0 else taskgroup_handler
        coros.append(handler(base + n))
    return sum(await asyncio.gather(*coros))


async def main():
    total = 0
    for batch in range(BATCHES):
        total = (total + await serve_batch(batch)) & 0xFFFFFFFF
    return total


start = time.perf_counter()
result = asyncio.run(main())
elapsed = time.perf_counter() - start
print("result", result)
print(f"ELAPSED {elapsed:.6f}")
