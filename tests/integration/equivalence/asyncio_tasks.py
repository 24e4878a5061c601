"""asyncio: gather, cancellation, TaskGroup, to_thread, Runner, timeouts."""
import asyncio
import sys


async def worker(name, delay):
    await asyncio.sleep(delay)
    return name


async def sleeper():
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        print("sleeper cancelled")
        raise


def blocking(x):
    return x * 2


async def main():
    print(await asyncio.gather(worker("a", 0.002), worker("b", 0.001)))
    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        print("task cancelled:", task.cancelled())
    async with asyncio.TaskGroup() as group:
        first = group.create_task(worker("x", 0))
        second = group.create_task(worker("y", 0))
    print(first.result(), second.result())
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(worker("ok", 0))
            group.create_task(asyncio.sleep(0, result=1 / 1))
            raise ValueError("in group")
    except* ValueError as errors:
        print("group errors:", [str(e) for e in errors.exceptions])
    print(await asyncio.to_thread(blocking, 21))
    try:
        async with asyncio.timeout(0.001):
            await asyncio.sleep(1)
    except TimeoutError:
        print("timed out")


asyncio.run(main())
with asyncio.Runner() as runner:
    print(runner.run(worker("runner", 0)))

if sys.version_info >= (3, 12):
    async def eager():
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        task = asyncio.create_task(worker("eager", 0))
        print(await task)
    asyncio.run(eager())
else:
    print("eager")
