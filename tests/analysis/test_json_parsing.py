"""The analyzer's JSON parsing: orjson when installed, the standard library's rules always."""

from __future__ import annotations

import json

import pytest

from callspan.analysis import otlp, readers


def test_orjson_is_installed_with_callspan() -> None:
    # A declared dependency: the speed target of the analyzer is measured with it.
    assert otlp.FAST_LOADS is not None


@pytest.mark.parametrize("text", [
    b'{"a": [1, 2.5, "x", null, true], "b": {"c": "\\u00e9"}}',
    b'{"edges": [9223372036854775807, -9223372036854775808, 18446744073709551615]}',  # 64-bit: exact
    b'{"n": NaN, "i": -Infinity}',  # not JSON, but json.loads reads it (and writers emit it)
    b'[' * 600 + b']' * 600,  # deeper than orjson's limit, within json's
])
def test_same_documents_as_the_standard_library(text: bytes) -> None:
    expected = json.loads(text)
    got = readers._loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("text", [b'{"a": 1', b'{"a": 1}}', b"\xff\xfe", b""])
def test_same_errors_as_the_standard_library(text: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(ValueError) as got:
        readers._loads(text)
    assert type(got.value) is type(expected.value) and str(got.value) == str(expected.value)


def test_integers_beyond_64_bits_are_read_as_floats() -> None:
    # The one known difference (OTLP's integers are int64, written as strings by the Collector).
    assert readers._loads(b'{"big": 123456789012345678901234567890}') == {"big": 1.2345678901234568e29}
