"""The OTLP/JSON text encoder writes exactly what ``json.dumps`` writes for the object form."""

from __future__ import annotations

import enum
import json
import math
import random
from typing import Any

from callspan.otlp_json import any_value, any_value_json, key_values, key_values_json


class Level(enum.IntEnum):
    HIGH = 3


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth == 0 else 6)
    if kind == 0:
        return rng.random() < 0.5
    if kind == 1:
        return rng.randrange(-2**63, 2**63)
    if kind == 2:
        return rng.choice([0.0, -1.5, 1e300, 5e-324, math.nan, math.inf, -math.inf, rng.random()])
    if kind == 3:
        return "".join(rng.choice(['a', '"', "\\", "\x1b", "é", "\u2028", "\U0001f600", " "]) for _ in range(rng.randrange(5)))
    if kind == 4:
        return rng.choice([b"\x00\xff", Level.HIGH, None])
    if kind == 5:
        return rng.choice([(), []])
    # arrays: one type (the fast paths), or mixed
    size = rng.randrange(0, 40)
    pick = rng.randrange(4)
    if pick == 3:
        return tuple(random_value(rng, depth + 1) for _ in range(size))
    make = [lambda: rng.randrange(-10**6, 10**6), lambda: rng.choice([rng.random(), math.nan, 2.0]),
            lambda: "s" + "\x1b" * rng.randrange(2)][pick]
    return [make() for _ in range(size)]


def test_text_equals_the_object_form_dumped() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        value = random_value(rng)
        assert any_value_json(value) == dumps(any_value(value)), value
    attributes = {f"k{i}\x1b\"": random_value(rng) for i in range(50)}
    assert key_values_json(attributes) == dumps(key_values(attributes))
    assert key_values_json(attributes) == dumps(key_values(attributes))  # string attributes from the cache
    same_values = {"a": "x", "b": "x", "x": "a"}  # a cached text is its key's and value's only
    assert key_values_json(same_values) == dumps(key_values(same_values))
    assert key_values_json(None) == dumps(key_values(None)) == "[]"
    big = list(range(100_000))
    assert any_value_json(big) == dumps(any_value(big))
