"""Rediscovery workload: Textual with its ``functools.lru_cache``/``cache`` memoization off.

Apps built from Textual's documentation (https://textual.textualize.io/): the widget gallery's
``DataTable`` (the swimmers table, zebra stripes, cursor moved with the keyboard), ``Markdown``,
``Tree``, ``Input`` (typed into), ``Button``s and ``Label``s laid out with CSS (grid, borders,
colours, ``:hover``/``:focus`` rules), run headless with ``App.run_test`` (the test pilot presses
keys, clicks and resizes the terminal), and ``export_screenshot`` of every screen. Textual's own
caches are off; Rich's (Textual draws with it) stay on.

Deterministic: a fixed terminal size, animations off, no timers (the cursor does not blink).
``python rediscover_textual.py [SCALE]`` (SCALE multiplies the rounds); prints a checksum of the
screenshots.
"""

import asyncio
import os
import sys
import zlib

os.environ["TEXTUAL_ANIMATIONS"] = "none"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memo_off import disable_functools_caches  # noqa: E402

disable_functools_caches("textual")

from textual.app import App, ComposeResult  # noqa: E402
from textual.containers import Grid, Horizontal, Vertical  # noqa: E402
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Markdown, Tree  # noqa: E402

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
ROUNDS = max(1, round(2 * SCALE))

ROWS = [
    ("lane", "swimmer", "country", "time"),
    (4, "Joseph Schooling", "Singapore", 50.39),
    (2, "Michael Phelps", "United States", 51.14),
    (5, "Chad le Clos", "South Africa", 51.14),
    (6, "László Cseh", "Hungary", 51.14),
    (3, "Li Zhuhao", "China", 51.26),
    (8, "Mehdy Metella", "France", 51.58),
    (7, "Tom Shields", "United States", 51.73),
    (1, "Aleksandr Sadovnikov", "Russia", 51.84),
    (10, "Darren Burns", "Scotland", 51.84),
]

MARKDOWN = """\
# Markdown Document

This is an example of Textual's `Markdown` widget.

## Features

Markdown syntax and extensions are supported.

- Typography *emphasis*, **strong**, `inline code` etc.
- Headers
- Lists (bullet and ordered)
- Syntax highlighted code blocks
- Tables!

| Name | Type | Default | Description |
| --- | --- | --- | --- |
| `show_header` | `bool` | `True` | Show the table header |
| `fixed_rows` | `int` | `0` | Number of fixed rows |
| `fixed_columns` | `int` | `0` | Number of fixed columns |

> Block quotes are supported, with *styles* inside them.

1. One
2. Two
3. Three
"""

CSS = """
Screen { layout: vertical; }
#forms { height: 9; }
Grid { grid-size: 3 2; grid-gutter: 1 2; height: 9; }
Button { width: 100%; }
Button:hover { background: $accent; }
Input { width: 1fr; }
Input:focus { border: tall $success; }
Label { padding: 0 1; border: round $primary; width: 100%; }
.warning { color: $warning; text-style: bold; }
DataTable { height: 12; }
Tree { height: 10; border: solid $secondary; }
Markdown { height: 1fr; }
"""


class Gallery(App):
    CSS = CSS

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="forms"):
            with Grid():
                for n in range(6):
                    yield Button(f"Button {n}", id=f"b{n}", variant=("default", "primary", "success",
                                                                     "warning", "error", "default")[n])
            with Vertical():
                yield Input(placeholder="First name", id="first")
                yield Input(placeholder="Last name", id="last")
                yield Label("Ready", id="status", classes="warning")
        yield DataTable(zebra_stripes=True)
        yield Tree("Dune")
        yield Markdown(MARKDOWN)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*ROWS[0])
        table.add_rows(ROWS[1:])
        tree = self.query_one(Tree)
        tree.root.expand()
        characters = tree.root.add("Characters", expand=True)
        for name in ("Paul", "Jessica", "Chani", "Stilgar", "Duncan"):
            characters.add_leaf(name)
        places = tree.root.add("Places", expand=True)
        for name in ("Arrakis", "Caladan", "Giedi Prime"):
            places.add_leaf(name)
        for widget in self.query(Input):
            widget.cursor_blink = False

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.query_one("#status", Label).update(f"Pressed {event.button.id}")


async def session(round_number: int) -> int:
    checksum = 0
    app = Gallery()
    async with app.run_test(size=(100, 48)) as pilot:
        checksum = zlib.crc32(app.export_screenshot().encode(), checksum)
        await pilot.click("#first")
        await pilot.press(*f"Ada {round_number}")
        await pilot.click("#last")
        await pilot.press(*"Lovelace", "backspace", "e")
        for n in range(6):
            await pilot.click(f"#b{n}")
            await pilot.hover(f"#b{(n + 1) % 6}")
        checksum = zlib.crc32(app.export_screenshot().encode(), checksum)
        app.query_one(DataTable).focus()
        await pilot.press("down", "down", "right", "down", "up", "left", "end", "home")
        app.query_one(Tree).focus()
        await pilot.press("down", "down", "enter", "down", "enter", "up")
        checksum = zlib.crc32(app.export_screenshot().encode(), checksum)
        for width, height in ((80, 40), (120, 50), (100, 48)):
            await pilot.resize_terminal(width, height)
            await pilot.pause()
            checksum = zlib.crc32(app.export_screenshot().encode(), checksum)
    return checksum


checksum = 0
for round_number in range(ROUNDS):
    checksum = zlib.crc32(asyncio.run(session(round_number)).to_bytes(4, "big"), checksum)
print(f"CHECKSUM {checksum:08x}")
