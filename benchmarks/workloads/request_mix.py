"""Workload (b): a request-handler-like mix.

Each request: parse a JSON body, validate it with several small helpers, some dict/str work,
a pure ``price`` function called with repeating arguments, and a response rendered with
json.dumps. The driver loop is module-level code (as a web framework would be, it is not a
traced function), so every request is its own root call, like one request = one trace.

Deterministic. ``python request_mix.py [SCALE]`` (SCALE multiplies the number of requests).
The last stdout line is ``ELAPSED <seconds>`` for the work section only. Imported (the web
applications of benchmarks/bench_production.py), it defines the handler and runs nothing.
"""

import json
import random
import sys
import time
import zlib

SKUS = [f"SKU-{n:04d}" for n in range(40)]
TIERS = ("basic", "silver", "gold")
CURRENCIES = ("EUR", "USD", "GBP")
BASE_PRICES = {sku: 100 + (n * 37) % 900 for n, sku in enumerate(SKUS)}
RATES = {"EUR": 1.0, "USD": 1.08, "GBP": 0.86}


def make_bodies(n):
    # Explicit loops, no comprehensions: comprehensions are separate (traced) code objects on
    # 3.11 but inlined on 3.12+, which would make the setup differ between versions.
    rng = random.Random(1234)
    bodies = []
    for i in range(n):
        items = []
        for _ in range(rng.randint(1, 4)):
            items.append({"sku": rng.choice(SKUS), "qty": rng.randint(1, 4)})
        metadata = {}
        for j in range(rng.randint(8, 16)):
            metadata[f"k{j:02d}"] = f"v{rng.randint(0, 10**6)}"
        notes = []
        for _ in range(12):
            notes.append(rng.choice(["fast", "gift", "fragile", "please", "door", "bell"]))
        req = {
            "request_id": f"req-{i:07d}",
            "user": {"id": rng.randint(1, 5000), "email": f"user{rng.randint(1, 5000)}@example.com",
                     "name": rng.choice(["Ada Lovelace", "alan turing", "Grace  Hopper", "Edsger Dijkstra"])},
            "tier": rng.choice(TIERS),
            "currency": rng.choice(CURRENCIES),
            "coupon": rng.choice([None, None, "SPRING10", "WELCOME5", "bogus"]),
            "items": items,
            "shipping": {"street": f"{rng.randint(1, 999)} {rng.choice(['Main', 'High', 'Park'])} street",
                         "city": rng.choice(["Berlin", "Paris", "London", "Lisbon"]),
                         "zip": f"{rng.randint(10000, 99999)}"},
            "metadata": metadata,
            "notes": " ".join(notes),
        }
        if i % 50 == 7:
            req["currency"] = "XXX"  # an invalid request now and then
        bodies.append(json.dumps(req))
    return bodies


# -- validation helpers ----------------------------------------------------------------------

def check_request_id(req):
    rid = req.get("request_id", "")
    return None if rid.startswith("req-") and rid[4:].isdigit() else "bad request_id"


def check_email(email):
    local, _, domain = email.partition("@")
    return None if local and "." in domain else "bad email"


def check_user(req):
    user = req.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), int):
        return "bad user"
    return check_email(user.get("email", ""))


def check_currency(req):
    return None if req.get("currency") in RATES else "bad currency"


def check_items(req):
    items = req.get("items")
    if not items:
        return "no items"
    for item in items:
        if item.get("sku") not in BASE_PRICES or not 0 < item.get("qty", 0) < 100:
            return "bad item"
    return None


def validate(req):
    errors = []
    for check in (check_request_id, check_user, check_currency, check_items):
        error = check(req)
        if error:
            errors.append(error)
    return errors


# -- business logic --------------------------------------------------------------------------

def normalize_name(name):
    return " ".join(map(str.capitalize, name.split()))


def price(sku, qty, tier):
    """Pure, and called with few distinct arguments: a cache candidate."""
    base = BASE_PRICES[sku]
    discount = {"basic": 0.0, "silver": 0.05, "gold": 0.1}[tier]
    total = 0.0
    for unit in range(qty):
        total += base * (1.0 - discount) * (0.98 ** unit)
    return round(total, 2)


def coupon_rate(code):
    return {"SPRING10": 0.10, "WELCOME5": 0.05}.get(code or "", 0.0)


def render(payload):
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def handle_request(body):
    req = json.loads(body)
    errors = validate(req)
    if errors:
        return render({"request_id": req.get("request_id"), "status": 400, "errors": errors})
    rate = RATES[req["currency"]]
    lines = []
    subtotal = 0.0
    for item in req["items"]:
        amount = price(item["sku"], item["qty"], req["tier"])
        subtotal += amount
        lines.append({"sku": item["sku"], "qty": item["qty"], "amount": round(amount * rate, 2)})
    discount = coupon_rate(req.get("coupon"))
    total = round(subtotal * rate * (1.0 - discount), 2)
    # Plain dict/str work, inline (untraced builtins): tags, address label, metadata digest.
    ship = req["shipping"]
    label = f"{ship['street'].title()}, {ship['zip']} {ship['city'].upper()}"
    tags = sorted(set(req["notes"].lower().split()))
    meta = req["metadata"]
    digest = 0
    for key in sorted(meta):
        digest = zlib.crc32(f"{key}={meta[key]};".encode(), digest)
    return render({
        "request_id": req["request_id"], "status": 200,
        "customer": normalize_name(req["user"]["name"]), "currency": req["currency"],
        "lines": lines, "discount": discount, "total": total,
        "ship_to": label, "tags": tags, "meta_digest": digest, "meta": meta,
    })


if __name__ == "__main__":  # still module-level code: each request is a root call
    SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    REQUESTS = max(1, int(40000 * SCALE))
    bodies = make_bodies(REQUESTS)

    start = time.perf_counter()
    checksum = 0
    for body in bodies:
        response = handle_request(body)
        checksum = (checksum * 31 + len(response)) & 0xFFFFFFFF
    elapsed = time.perf_counter() - start
    print("requests", len(bodies), "checksum", checksum)
    print(f"ELAPSED {elapsed:.6f}")
