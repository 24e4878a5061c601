"""Real asyncio code traced whole: the standard library's event loop, tasks, queues, gather,
TaskGroup and wait_for running a producer, three workers (cancelled at the end), a gather of
coroutines some of which raise, a task group and a timeout. The cyclic garbage collector runs
only at the end (see stdlib_and_django.py)."""

import asyncio
import gc

gc.disable()


async def worker(name, queue, results):
    while True:
        item = await queue.get()
        try:
            await asyncio.sleep(0)
            results.append((name, item * item))
        finally:
            queue.task_done()


async def produce(queue, n):
    for i in range(n):
        await queue.put(i)


async def fetch(i):
    await asyncio.sleep(0)
    if i % 7 == 0:
        raise ValueError(i)
    return i


async def main():
    queue = asyncio.Queue(maxsize=5)
    results = []
    workers = [asyncio.create_task(worker(f"w{i}", queue, results)) for i in range(3)]
    await produce(queue, 40)
    await queue.join()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    got = await asyncio.gather(*(fetch(i) for i in range(30)), return_exceptions=True)
    async with asyncio.TaskGroup() as group:
        for i in range(1, 7):
            group.create_task(fetch(i))
    try:
        await asyncio.wait_for(asyncio.sleep(10), timeout=0.01)
    except TimeoutError:
        pass
    return len(results), sum(1 for g in got if isinstance(g, ValueError))


print(asyncio.run(main()))
gc.collect()
gc.enable()
