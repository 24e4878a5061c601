"""callspan's demo: a tiny asyncio "shop" service handling a burst of requests.

It has what callspan is for: a pure, costly function called with the same arguments again and
again (price), a coroutine whose identical calls overlap in time (inventory lookups), a method
keyed by self, and an impure function that must never be cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random

CATALOG = {f"sku-{i}": 10 + i for i in range(40)}
_clock = itertools.count()


def price(sku: str, currency: str) -> float:
    """Costly and pure: a cache would pay."""
    digest = sku.encode()
    for _ in range(300):
        digest = hashlib.sha256(digest).digest()
    rate = {"EUR": 0.92, "USD": 1.0}[currency]
    return round(CATALOG[sku] * rate, 2)


def request_id() -> int:
    """Impure: same (no) arguments, a different result every time."""
    return next(_clock)


class Cart:
    def __init__(self, items: list[str]) -> None:
        self.items = items

    def total(self, currency: str) -> float:
        return sum(price(sku, currency) for sku in self.items)


async def inventory(sku: str) -> int:
    """A slow backend call: identical concurrent calls could be coalesced."""
    await asyncio.sleep(0.002)
    return len(sku) * 3


async def handle_checkout(items: list[str]) -> float:
    request_id()
    counts = await asyncio.gather(*(inventory(sku) for sku in items))
    cart = Cart([sku for sku, n in zip(items, counts, strict=True) if n > 0])
    return cart.total("EUR")


async def handle_browse(sku: str) -> float:
    request_id()
    await inventory(sku)
    return price(sku, "USD")


async def main() -> None:
    rng = random.Random(7)
    skus = list(CATALOG)[:12]
    for _ in range(20):
        batch = [handle_checkout(rng.sample(skus, 3)) for _ in range(3)]
        batch.append(handle_browse(rng.choice(skus)))
        await asyncio.gather(*batch)


if __name__ == "__main__":
    asyncio.run(main())
    print("demo: served 80 requests")
