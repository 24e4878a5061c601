"""Library workload: docutils, reStructuredText -> HTML, traced whole (callspan: --include docutils).

A generated but realistic reST document (title, sections and subsections, bullet/enumerated/
definition/field lists, grid and simple tables, literal blocks, block quotes, admonitions,
inline markup, hyperlink and footnote references) is rendered with
``docutils.core.publish_parts(source, writer_name="html")``, as in the docutils "Docutils
Hacker's Guide" / ``publish_parts`` documentation, several times. Each render parses the
document (the reST state machine), runs the transforms and writes HTML: tens of thousands of
Python-level calls inside docutils.

Deterministic. ``python lib_docutils.py [SCALE]`` (SCALE multiplies the number of renders).
The last stdout line is ``ELAPSED <seconds>`` for the work section only (the document is
generated and docutils imported outside it).
"""

import random
import sys
import time
import zlib

from docutils.core import publish_parts

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
RENDERS = max(1, round(16 * SCALE))
SECTIONS = 6

WORDS = ("tracer", "span", "profile", "module", "function", "latency", "cache", "request",
         "thread", "export", "sample", "counter", "budget", "summary", "argument", "result")

# syntax_highlight none: the same output whether or not Pygments is installed.
SETTINGS = {"report_level": 5, "halt_level": 5, "warning_stream": False, "syntax_highlight": "none",
            "embed_stylesheet": False, "stylesheet_path": "", "_disable_config": True}


def sentence(rng, n):
    words = []
    for _ in range(n):
        w = rng.choice(WORDS)
        r = rng.random()
        if r < 0.06:
            w = "*" + w + "*"
        elif r < 0.10:
            w = "**" + w + "**"
        elif r < 0.14:
            w = "``" + w + "()``"
        elif r < 0.16:
            w = "`" + w + "`_"
        words.append(w)
    return " ".join(words).capitalize() + "."


def paragraph(rng, sentences=4):
    parts = []
    for _ in range(sentences):
        parts.append(sentence(rng, rng.randint(6, 14)))
    return "\n".join(parts)


def make_document():
    rng = random.Random(42)
    out = ["=================", "Callspan Handbook", "=================", "",
           ":Author: The callspan developers", ":Version: 1.0", ":Date: 2026-01-01", "",
           ".. contents:: Table of contents", "   :depth: 2", "", paragraph(rng), ""]
    for s in range(SECTIONS):
        title = f"Section {s + 1}: {rng.choice(WORDS)} and {rng.choice(WORDS)}"
        out += [title, "=" * len(title), "", paragraph(rng), ""]
        # Bullet and enumerated lists, nested.
        for i in range(5):
            out.append(f"* {sentence(rng, 8)}")
            if i % 2 == 0:
                out += ["", f"  - {sentence(rng, 5)}", f"  - {sentence(rng, 5)}", ""]
        out.append("")
        for _ in range(4):
            out.append(f"#. {sentence(rng, 7)}")
        out.append("")
        sub = f"Details of {rng.choice(WORDS)} ({s + 1})"
        out += [sub, "-" * len(sub), "", paragraph(rng, 3), ""]
        # Definition and field lists.
        for i in range(4):
            out += [f"``{rng.choice(WORDS)}_{i}``", f"    {sentence(rng, 9)}", ""]
        out += [f":{rng.choice(WORDS)}: {sentence(rng, 6)}", f":{rng.choice(WORDS)}: {sentence(rng, 6)}", ""]
        # A literal block and a code block.
        out += ["Example::", "", "    import callspan", f"    callspan.run({s!r}, budget={s * 100})",
                "    for span in spans:", "        print(span.name, span.duration)", ""]
        out += [".. code-block:: python", "", f"    def handler_{s}(request):",
                "        return {'status': 200}", ""]
        # Grid table.
        out += ["+------------+------------+-----------+", "| Header 1   | Header 2   | Header 3  |",
                "+============+============+===========+"]
        for r in range(4):
            cell = "*" + rng.choice(WORDS)[:7] + "*"
            out += [f"| row {r}, c1  | {rng.randint(100, 999)} ms     | {cell:<9} |",
                    "+------------+------------+-----------+"]
        out.append("")
        # Simple table.
        out += ["=====  =====  ======", "A      B      A or B", "=====  =====  ======"]
        for a in ("False", "True"):
            for b in ("False", "True"):
                out.append(f"{a:<5}  {b:<5}  {str(a == 'True' or b == 'True'):<6}")
        out += ["=====  =====  ======", ""]
        # Block quote, admonitions, footnotes, a hyperlink target.
        out += ["    " + sentence(rng, 12), "", "    -- Someone, somewhere", ""]
        out += [".. note::", "", "   " + sentence(rng, 10), ""]
        out += [".. warning:: " + sentence(rng, 8), ""]
        out += [f"See the footnote [#f{s}]_ and `the docs <https://example.com/{s}>`__.", ""]
        out += [f".. [#f{s}] {sentence(rng, 6)}", ""]
    # Targets for the `word`_ references.
    for w in WORDS:
        out.append(f".. _{w}: https://example.com/glossary#{w}")
    out.append("")
    return "\n".join(out)


def render(source):
    parts = publish_parts(source=source, writer_name="html", settings_overrides=SETTINGS)
    return parts["html_body"]


document = make_document()

start = time.perf_counter()
checksum = 0
for _ in range(RENDERS):
    html = render(document)
    checksum = zlib.crc32(html.encode(), checksum)
elapsed = time.perf_counter() - start
print("renders", RENDERS, "source chars", len(document), "html chars", len(html), "checksum", checksum)
print(f"ELAPSED {elapsed:.6f}")
