"""Rediscovery workload: Rich with its ``functools.lru_cache``/``cache`` memoization off.

What Rich's documentation shows (https://rich.readthedocs.io/): ``Console.print`` of console
markup and styled text, ``Table`` with styled columns and rows, ``Panel``, ``Tree``, ``Rule``,
``Columns``, ``Padding``, text wrapping and justification, hex/rgb colours downgraded to a
256-colour terminal, and ``export_html``/``export_text`` of the recorded output. The console writes
to a ``StringIO`` at a fixed width, so the output is deterministic.

``python rediscover_rich.py [SCALE]`` (SCALE multiplies the rounds); prints a checksum of the output.
"""

import io
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memo_off import disable_functools_caches  # noqa: E402

disable_functools_caches("rich")

from rich import box  # noqa: E402
from rich.columns import Columns  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.padding import Padding  # noqa: E402
from rich.panel import Panel  # noqa: E402
from rich.rule import Rule  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402
from rich.tree import Tree  # noqa: E402

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
ROUNDS = max(1, round(6 * SCALE))
STATUSES = ("[green]shipped[/]", "[yellow]pending[/]", "[bold red]failed[/]", "[dim]draft[/]")
COLOURS = ("#ff8800", "rgb(10,120,200)", "#33cc99", "magenta", "bright_blue", "color(208)")
WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
         "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "日本語")


def render(console, round_number):
    console.print(Rule(f"[bold]Report {round_number}[/]", style=COLOURS[round_number % len(COLOURS)]))
    console.print("Hello, [bold magenta]World[/bold magenta]!", ":vampire:", "[italic #ff8800]styled[/]")
    table = Table(title="Orders", box=box.ROUNDED, header_style="bold #33cc99", show_lines=round_number % 2 == 0)
    table.add_column("Id", justify="right", style="cyan", no_wrap=True)
    table.add_column("Customer", style="magenta")
    table.add_column("Status")
    table.add_column("Amount", justify="right", style="rgb(10,120,200)")
    for row in range(25):
        table.add_row(str(1000 + row), f"{WORDS[row % len(WORDS)].title()} {WORDS[(row * 7) % len(WORDS)]}",
                      STATUSES[row % len(STATUSES)], f"[{COLOURS[row % len(COLOURS)]}]{row * 13.25:,.2f}[/]")
    console.print(table)
    text = Text(" ".join(WORDS[(i * 3 + round_number) % len(WORDS)] for i in range(120)))
    text.stylize("bold underline", 0, 11)
    text.highlight_words(["dolor", "magna"], style="reverse #ff8800")
    for justify in ("left", "center", "right", "full"):
        console.print(Padding(Panel(text, title=justify, border_style=COLOURS[round_number % 3]), (0, 2)),
                      justify=justify)
    tree = Tree("[bold]project")
    for package in range(4):
        branch = tree.add(f"[{COLOURS[package]}]package_{package}")
        for module in range(5):
            branch.add(f"module_{module}.py [dim]({module * 120 + package} lines)[/]")
    console.print(tree)
    console.print(Columns([Panel(f"[b]{word}[/b]\n{len(word)} letters", expand=True) for word in WORDS[:12]]))


console = Console(file=io.StringIO(), width=100, color_system="256", force_terminal=True, record=True,
                  legacy_windows=False, emoji=True)
for round_number in range(ROUNDS):
    render(console, round_number)
html = console.export_html(clear=False)
plain = console.export_text()
checksum = zlib.crc32(plain.encode(), zlib.crc32(html.encode()))
print(f"CHECKSUM {checksum:08x}")
