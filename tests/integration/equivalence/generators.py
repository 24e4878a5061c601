"""Generators (send/throw/close, yield from) and async generators."""
import asyncio


def counter(n):
    total = 0
    for i in range(n):
        got = yield i
        total += got or 0
    return total


def delegate():
    result = yield from counter(3)
    print("delegate got", result)


def closing():
    try:
        yield 1
        yield 2
    finally:
        print("closed")


gen = delegate()
print(next(gen), gen.send(10), gen.send(20))
try:
    gen.send(30)
except StopIteration:
    print("stopped")
c = closing()
print(next(c))
c.close()
t = closing()
next(t)
try:
    t.throw(ValueError("thrown"))
except ValueError as exc:
    print("throw:", exc)


async def ticks(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


async def main():
    print([i async for i in ticks(4)])
    agen = ticks(10)
    print(await agen.__anext__())
    await agen.aclose()
    print("aclosed")


asyncio.run(main())
