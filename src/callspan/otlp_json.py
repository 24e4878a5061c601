"""OTLP/JSON attribute values: the one encoder of Python values as OTLP ``AnyValue`` objects.

A leaf module (standard library only) so that the OTel boundary's JSON-lines exporter, the
analyzer's Jaeger converter and the tests all write the same encoding: ``intValue`` as a JSON
string, as the OTLP/JSON specification and the Collector's file exporter write it.

``any_value`` gives the JSON object, ``any_value_json`` its text (what ``json.dumps`` with
``separators=(",", ":")`` writes for it, tested equal): the exporter writes arrays of 10^5
values per profile window, and joining their text is ~4x faster than a dict per value that
``json`` then walks.
"""

from __future__ import annotations

import base64
import json
import math
from json.encoder import encode_basestring_ascii as json_string
from typing import Any


def any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": _array_values(value)}}
    return {"stringValue": "" if value is None else str(value)}


def _array_values(values: Any) -> list[dict[str, Any]]:
    # The profile windows' columns are arrays of 10^5 values of one type (the SDK makes attribute
    # arrays homogeneous): one comprehension per type instead of a recursive call per value.
    if values:
        kind = type(values[0])
        if len(set(map(type, values))) == 1:
            if kind is int:
                return [{"intValue": v} for v in map(str, values)]
            if kind is float:
                return [{"doubleValue": v} for v in values]
            if kind is str:
                return [{"stringValue": v} for v in values]
    return [any_value(v) for v in values]


def key_values(attributes: Any) -> list[dict[str, Any]]:
    """OTLP ``KeyValue`` objects of a mapping of attributes."""
    return [{"key": k, "value": any_value(v)} for k, v in (attributes or {}).items()]


def any_value_json(value: Any) -> str:
    """``any_value(value)`` as compact JSON text."""
    if isinstance(value, bool):
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, int):
        return '{"intValue":"' + str(value) + '"}'
    if isinstance(value, float):
        return '{"doubleValue":' + json.dumps(value) + "}"
    if isinstance(value, str):
        return '{"stringValue":' + json_string(value) + "}"
    if isinstance(value, (list, tuple)):
        return '{"arrayValue":{"values":[' + _array_values_json(value) + "]}}"
    return json.dumps(any_value(value), separators=(",", ":"))


def _array_values_json(values: Any) -> str:
    if values:
        kind = type(values[0])
        if len(set(map(type, values))) == 1:
            if kind is int:
                return '{"intValue":"' + '"},{"intValue":"'.join(map(str, values)) + '"}'
            if kind is str:
                return '{"stringValue":' + '},{"stringValue":'.join(map(json_string, values)) + "}"
            if kind is float and all(map(math.isfinite, values)):
                return '{"doubleValue":' + '},{"doubleValue":'.join(map(float.__repr__, values)) + "}"
    return ",".join(map(any_value_json, values))


# Entries in each text cache below; a full one is cleared.
_MAX_CACHED_TEXTS = 4096
# '{"key":<key>,"value":' per attribute key: spans repeat the same few keys (the program's and
# the SDK's attribute names, a small set).
_KEY_PREFIXES: dict[str, str] = {}
# The whole text of a string attribute, per (key, value): spans repeat their functions' names,
# files, threads and argument hashes.
_STRING_ATTRIBUTES: dict[tuple[str, str], str] = {}


def key_values_json(attributes: Any) -> str:
    """``key_values(attributes)`` as compact JSON text.

    The exporter calls this for every attribute of every span (~14 a span): the common value
    types are written inline, exact types only (a bool or an IntEnum is not an ``int`` here;
    ``any_value_json`` takes every other value)."""
    if not attributes:
        return "[]"
    prefixes = _KEY_PREFIXES
    strings = _STRING_ATTRIBUTES
    parts = []
    for item in attributes.items():
        key, value = item
        kind = type(value)
        if kind is str:
            text = strings.get(item)
            if text is None:
                if len(strings) >= _MAX_CACHED_TEXTS:
                    strings.clear()
                text = strings[item] = '{"key":' + json_string(key) + ',"value":{"stringValue":' + json_string(value) + "}}"
            parts.append(text)
            continue
        prefix = prefixes.get(key)
        if prefix is None:
            if len(prefixes) >= _MAX_CACHED_TEXTS:
                prefixes.clear()
            prefix = prefixes[key] = '{"key":' + json_string(key) + ',"value":'
        if kind is int:
            parts.append(prefix + '{"intValue":"' + str(value) + '"}}')
        elif kind is bool:
            parts.append(prefix + ('{"boolValue":true}}' if value else '{"boolValue":false}}'))
        else:
            parts.append(prefix + any_value_json(value) + "}")
    return "[" + ",".join(parts) + "]"
