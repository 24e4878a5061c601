import os

import otel_setup
from fastapi import FastAPI, Response

otel_setup.configure("fastapi")


def price(sku: int) -> int:
    """The planted cacheable helper: pure, 7 distinct arguments, a few hundred microseconds (so
    that it is a span at production mode's CALLSPAN_MIN_SPAN_US default, 100 us)."""
    total = 0
    for i in range(4000):
        total += (sku * i) % 97
    return total


app = FastAPI()


@app.get("/item/{n}")
async def item(n: int) -> Response:
    # X-Worker: which worker served it (the body stays the same)
    return Response(f"item {n} costs {price(n % 7)}\n", media_type="text/plain",
                    headers={"X-Worker": str(os.getpid())})


if os.environ.get("SHOP_OTEL", "1") != "0":
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app)
if os.environ.get("SHOP_CALLSPAN", "1") == "1":
    from callspan.production.asgi import CallspanMiddleware

    app.add_middleware(CallspanMiddleware, include=["asgi_shop"])
