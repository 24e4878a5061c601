"""OTLP/JSON attribute values: the one encoder of Python values as OTLP ``AnyValue`` objects.

A leaf module (standard library only) so that the OTel boundary's JSON-lines exporter, the
analyzer's Jaeger converter and the tests all write the same encoding: ``intValue`` as a JSON
string, as the OTLP/JSON specification and the Collector's file exporter write it.
"""

from __future__ import annotations

import base64
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
        if all(type(v) is kind for v in values):
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
