"""Library workload: Jinja2 templates, traced whole (callspan: --include jinja2).

Follows Jinja's "Template Designer Documentation" and API docs: a base layout with blocks, a
child template that ``{% extends %}`` it and ``{% import %}``s a macro library, loops with
``loop.index``/``loop.cycle``, filters (``escape``, ``title``, ``truncate``, ``join``,
``format``, ``default``, ``groupby``, ``sum``, ``sort``), tests, ``{% set %}``, conditional
expressions and autoescaping. Two parts:

- render: ``lib_jinja2_templates/page.html`` is loaded and compiled once by an
  ``Environment(loader=FileSystemLoader(...))`` and rendered many times with different contexts
  (the common compile-once/render-many case). Loading from files gives the compiled template
  code a real ``co_filename`` (the .html path), so a tracer can select it by path; templates made
  by ``from_string`` are all named ``<template>``;
- compile: ``env.from_string`` on generated template sources (each one different, so nothing is
  cached), which runs Jinja's lexer, parser, optimizer and code generator, then compiles the
  generated Python with ``compile()`` and renders it once.

Deterministic. ``python lib_jinja2.py [SCALE]`` (SCALE multiplies both counts). The last stdout
line is ``ELAPSED <seconds>`` for the work section only (contexts are built outside it).
"""

import os
import random
import sys
import time
import zlib

from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib_jinja2_templates")
SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
RENDERS = max(1, round(600 * SCALE))
COMPILES = max(1, round(50 * SCALE))

NAMES = ("ada lovelace", "alan turing", "grace hopper", "edsger dijkstra", "barbara liskov",
         "donald knuth", "margaret hamilton", "ken thompson")
CITIES = ("Berlin", "Paris", "London", "Lisbon")
TAGS = ("admin", "ops", "dev", "qa", "sales", "oncall")


def make_context(rng, i):
    users = []
    for n in range(12):
        tags = []
        for _ in range(rng.randint(1, 3)):
            tags.append(rng.choice(TAGS))
        users.append({"name": rng.choice(NAMES), "city": rng.choice(CITIES), "admin": n % 5 == 0,
                      "email": f"User{n}@Example.com" if n % 3 else "", "tags": tags})
    orders = []
    for n in range(25):
        items = []
        for _ in range(rng.randint(1, 4)):
            items.append({"sku": f"SKU-{rng.randint(0, 99):02d}"})
        orders.append({"id": f"ord-{i:04d}-{n:02d}", "amount": rng.uniform(1, 200), "lines": items,
                       "paid": rng.random() < 0.7, "note": rng.choice([None, "leave at the door please", "gift"])})
    navigation = []
    for caption in ("home", "about us", "products", "contact"):
        navigation.append({"href": "/" + caption.replace(" ", "-"), "caption": caption})
    return {"title": f"Order report number {i} for the <team>", "users": users, "orders": orders,
            "navigation": navigation, "site_name": "Callspan"}


def make_source(rng, i):
    """A different small template each time (so from_string cannot reuse anything)."""
    parts = [f"{{# generated template {i} #}}",
             f"{{% macro cell(v, w={rng.randint(4, 12)}) %}}<td>{{{{ v|string|center(w) }}}}</td>{{% endmacro %}}"]
    for k in range(rng.randint(4, 8)):
        var = f"row{k}"
        parts.append(f"{{% for {var} in rows{k % 3} %}}<tr>{{{{ cell({var}.a) }}}}"
                     f"{{% if {var}.b is even %}}{{{{ cell({var}.b * {k + 1}) }}}}{{% else %}}"
                     f"{{{{ {var}.c|upper|replace('X', 'y') }}}}{{% endif %}}"
                     f"{{{{ loop.index0 ~ '/' ~ loop.length }}}}</tr>{{% endfor %}}")
    parts.append(f"{{% set n = rows0|length + {i} %}}{{{{ n }}}} {{{{ [1, 2, 3]|select('odd')|list }}}}")
    return "\n".join(parts)


def make_rows(rng):
    rows = {}
    for k in range(3):
        lst = []
        for _ in range(5):
            lst.append({"a": rng.randint(0, 99), "b": rng.randint(0, 99), "c": rng.choice(["xa", "Xb", "cX"])})
        rows[f"rows{k}"] = lst
    return rows


def render_one(page, context):
    return page.render(context)


def compile_one(env, source, rows):
    return env.from_string(source).render(rows)


rng = random.Random(7)
contexts = []
for i in range(min(RENDERS, 50)):
    contexts.append(make_context(rng, i))
contexts = (contexts * (RENDERS // len(contexts) + 1))[:RENDERS]
sources = []
for i in range(COMPILES):
    sources.append(make_source(rng, i))
rows = make_rows(rng)
env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=select_autoescape(), auto_reload=False)

# The driver loops are module-level code (as a web framework's would be, not traced functions):
# every render and every compilation is its own root call.
start = time.perf_counter()
page = env.get_template("page.html")  # loaded and compiled once, then cached by the environment
rendered = 0
for context in contexts:
    rendered = zlib.crc32(render_one(page, context).encode(), rendered)
compiled = 0
for source in sources:
    compiled = zlib.crc32(compile_one(env, source, rows).encode(), compiled)
elapsed = time.perf_counter() - start
print("renders", RENDERS, "compiles", COMPILES, "checksum", rendered, compiled)
print(f"ELAPSED {elapsed:.6f}")
