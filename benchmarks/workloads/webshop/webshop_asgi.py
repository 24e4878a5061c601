import os

import otel_setup
import webshop_profile
from fastapi import FastAPI, Response
from request_mix import handle_request, make_bodies

otel_setup.configure("fastapi")
webshop_profile.start()
BODIES = make_bodies(200)
app = FastAPI()


@app.get("/item/{n}")
async def item(n: int) -> Response:
    return Response(handle_request(BODIES[n % len(BODIES)]), media_type="application/json")


if os.environ.get("SHOP_OTEL", "1") != "0":
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app)
if os.environ.get("SHOP_CALLSPAN") == "1":
    from callspan.production.asgi import CallspanMiddleware

    app.add_middleware(CallspanMiddleware, include=["request_mix"])
