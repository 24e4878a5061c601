import os

from django.http import HttpResponse


def price(sku: int) -> int:
    """The planted cacheable helper: pure, 7 distinct arguments, a few hundred microseconds (so
    that it is a span at production mode's CALLSPAN_MIN_SPAN_US default, 100 us)."""
    total = 0
    for i in range(4000):
        total += (sku * i) % 97
    return total


def item(request, n: int) -> HttpResponse:
    response = HttpResponse(f"item {n} costs {price(n % 7)}\n".encode())
    response["X-Worker"] = str(os.getpid())  # which worker served it (the body stays the same)
    return response
