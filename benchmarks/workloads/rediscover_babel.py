"""Rediscovery workload: Babel with its ``functools.lru_cache``/``cache`` memoization off.

What Babel's user guide shows (https://babel.pocoo.org/en/latest/dates.html, numbers.html):
``format_date``/``format_time``/``format_datetime`` with the named formats and custom patterns,
``format_timedelta``, ``format_decimal``/``format_currency``/``format_percent``, and
``Locale.parse`` with display names, for a dozen locales given as strings (as applications
pass them). Locale data is Babel's own (bundled); no time zone but UTC is used.

Deterministic. ``python rediscover_babel.py [SCALE]`` (SCALE multiplies the rounds); prints a
checksum of the formatted strings.
"""

import datetime
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memo_off import disable_functools_caches  # noqa: E402

disable_functools_caches("babel")

from babel import Locale  # noqa: E402
from babel.dates import format_date, format_datetime, format_time, format_timedelta  # noqa: E402
from babel.numbers import format_currency, format_decimal, format_percent  # noqa: E402

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
ROUNDS = max(1, round(4 * SCALE))
LOCALES = ("en_US", "de_DE", "fr_FR", "ja_JP", "es_ES", "ru_RU", "pt_BR", "it_IT", "nl_NL", "sv_SE",
           "pl_PL", "zh_Hans_CN")
PATTERNS = ("EEE, MMM d, ''yy", "yyyy.MM.dd G 'at' HH:mm:ss", "h 'o''clock' a", "EEEE, d MMMM y", "dd/MM/yyyy HH:mm")


def format_all(round_number):
    out = []
    base = datetime.datetime(2024, 3, 1 + round_number, 14, 30, 15, tzinfo=datetime.UTC)
    for index, locale in enumerate(LOCALES):
        moment = base + datetime.timedelta(days=index * 17, minutes=index * 7)
        for style in ("full", "long", "medium", "short"):
            out.append(format_date(moment.date(), format=style, locale=locale))
            out.append(format_time(moment, format=style if style != "full" else "long", locale=locale))
            out.append(format_datetime(moment, format=style if style != "full" else "long", locale=locale))
        for pattern in PATTERNS:
            out.append(format_datetime(moment, pattern, locale=locale))
        out.append(format_timedelta(datetime.timedelta(seconds=index * 3600 + 59), locale=locale))
        out.append(format_timedelta(datetime.timedelta(days=index + 1), add_direction=True, locale=locale))
        for amount in (1234.5, 0.25 * (index + 1), 1099511627776 + round_number):
            out.append(format_decimal(amount, locale=locale))
            out.append(format_currency(amount, "EUR", locale=locale))
            out.append(format_percent(amount / 10000, locale=locale))
        parsed = Locale.parse(locale)
        out.append(parsed.get_display_name("en_US") or "")
        out.append(parsed.territories.get("DE", ""))
    return out


checksum = 0
for round_number in range(ROUNDS):
    for text in format_all(round_number):
        checksum = zlib.crc32(text.encode(), checksum)
print(f"CHECKSUM {checksum:08x}")
