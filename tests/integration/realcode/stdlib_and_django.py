"""Real code callspan's authors did not write, traced whole: the standard library's pure-Python
TOML parser, decimal arithmetic, diff, text wrapping and e-mail parser, and Django's template
engine, with the examples of their documentation grown a little; one part in a second thread.

The cyclic garbage collector runs only at the end: a collection at an arbitrary allocation calls
weak-reference callbacks (Django's signal receivers) under whatever call is running then, which
differs from run to run (callspan's own allocations move it), and counts must not."""

import gc

gc.disable()

import _pydecimal as decimal  # noqa: E402
import difflib  # noqa: E402
import email  # noqa: E402
import textwrap  # noqa: E402
import threading  # noqa: E402
import tomllib  # noqa: E402

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure()  # the template engine standalone, as Django's docs show it
django.setup()
from django.template import Context, Engine  # noqa: E402

TOML = """
title = "TOML Example"
[owner]
name = "Tom Preston-Werner"
dob = 1979-05-27T07:32:00-08:00
[database]
enabled = true
ports = [ 8000, 8001, 8002 ]
data = [ ["delta", "phi"], [3.14] ]
temp_targets = { cpu = 79.5, case = 72.0 }
[servers.alpha]
ip = "10.0.0.1"
role = "frontend"
[servers.beta]
ip = "10.0.0.2"
role = "backend"
[[products]]
name = "Hammer"
sku = 738594937
[[products]]
name = "Nail"
sku = 284758393
color = "gray"
"""

TEMPLATE = """<h1>{{ title|title }}</h1>
<ul>{% for item in items %}
  <li class="{% cycle 'odd' 'even' %}">{{ forloop.counter }}. {{ item.name|upper }}: {{ item.price|floatformat:2 }}
  {% if item.tags %}[{{ item.tags|join:", " }}]{% else %}-{% endif %}</li>{% endfor %}
</ul>{% with total=items|length %}<p>{{ total }} item{{ total|pluralize }}</p>{% endwith %}"""

MAIL = """From: Alice <alice@example.com>
To: Bob <bob@example.com>
Subject: =?utf-8?q?Caf=C3=A9?= meeting
Content-Type: multipart/alternative; boundary="XX"

--XX
Content-Type: text/plain; charset=utf-8

See you at the caf\u00e9 at noon.
--XX
Content-Type: text/html; charset=utf-8

<p>See you at noon.</p>
--XX--
"""


def numbers() -> str:
    decimal.getcontext().prec = 40
    two = decimal.Decimal(2)
    values = [two.sqrt(), two.exp(), two.ln(), (two ** decimal.Decimal("0.5")).quantize(decimal.Decimal("1e-30"))]
    return " ".join(str(v) for v in values)


def documents() -> int:
    out = 0
    for _ in range(3):
        data = tomllib.loads(TOML)
        out += len(data["products"]) + len(data["servers"])
        message = email.message_from_string(MAIL)
        out += sum(len(part.get_payload()) for part in message.walk() if not part.is_multipart())
    return out


def texts() -> int:
    before = [f"line {i} {'x' * (i % 7)}\n" for i in range(120)]
    after = [line.replace("x", "y") if i % 9 == 0 else line for i, line in enumerate(before)]
    diff = list(difflib.unified_diff(before, after, "a.txt", "b.txt"))
    ratio = difflib.SequenceMatcher(None, "".join(before), "".join(after)).ratio()
    wrapped = textwrap.fill(" ".join(before), width=50)
    return len(diff) + int(ratio * 100) + len(wrapped)


def templates() -> int:
    engine = Engine()
    template = engine.from_string(TEMPLATE)
    items = [{"name": f"item {i}", "price": i * 1.25, "tags": ["a", "b"][: i % 3]} for i in range(40)]
    return sum(len(template.render(Context({"title": "price list", "items": items[:n]}))) for n in (5, 40))


worker = threading.Thread(target=lambda: print("thread", texts()), name="worker")
worker.start()
worker.join()
print("numbers", numbers())
print("documents", documents())
print("templates", templates())
gc.collect()
gc.enable()
