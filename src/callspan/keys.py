"""Cache keys: hash arguments the way functools.lru_cache keys them, and return values.

The hot path only computes Python's ``hash()`` of the key (so equal keys give equal numbers, the
same equality lru_cache uses). The raw number never leaves the process: ``KeyHasher.keyed`` turns
it into a keyed BLAKE2b digest off the hot path.
"""

from __future__ import annotations

import hashlib
import os
from types import FrameType
from typing import Any

from callspan.selection import CodeInfo

# Separates positional from keyword parts, as lru_cache's kwd_mark does.
_KWD_MARK = ("callspan.kwd_mark",)
_FAST_TYPES = (int, str)
_OBJECT_HASH = object.__hash__
# Elements: larger unhashable values are flagged but not fingerprinted, since walking them on
# every call (a request dict passed to each validator, say) would cost more than the call.
_FINGERPRINT_LIMIT = 16


def fingerprint(value: Any, budget: list[int]) -> int | None:
    """hash() of ``value``, or of its structure when it is an unhashable builtin container
    whose elements are hashable; None otherwise, or when larger than ``budget`` elements.

    The fingerprint is what the lru_cache key would hash to after converting lists to tuples,
    dicts to frozensets of items, sets to frozensets and bytearrays to bytes. Containers of
    containers (a parsed JSON request, say) are not walked: that would cost more than the call.
    The argument tuple itself is the one level allowed to hold such containers.
    """
    kind = type(value)
    try:
        if kind is list or kind is tuple:
            budget[0] -= len(value)
            if budget[0] < 0:
                return None
            if kind is tuple:  # the key tuple: one level of unhashable containers inside
                parts = []
                for item in value:
                    part = _flat_fingerprint(item, budget)
                    if part is None:
                        return None
                    parts.append(part)
                return hash((False, tuple(parts)))
            return _flat_fingerprint(value, budget)
        return _flat_fingerprint(value, budget)
    except Exception:
        return None


def _flat_fingerprint(value: Any, budget: list[int]) -> int | None:
    kind = type(value)
    if kind.__hash__ is not None:
        return hash(value)
    if kind is list:
        budget[0] -= len(value)
        if budget[0] < 0:
            return None
        return hash((True, tuple(value)))
    if kind is dict:
        budget[0] -= len(value)
        if budget[0] < 0:
            return None
        return hash(("dict", frozenset(value.items())))
    if kind is set:
        return hash(("set", frozenset(value)))
    if kind is bytearray:
        return hash(bytes(value))
    return None


def args_key(info: CodeInfo, frame: FrameType) -> tuple[int | None, str, bool]:
    """(hash of the lru_cache-style key, "" or the unhashable argument type names, whether
    ``self`` hashes by identity).

    An identity-hashed ``self`` makes keys only as good as ``id()``: a new instance at a freed
    instance's address gets its key, so such keys may "disagree" without any impurity.

    Parameters are keyed positionally in declaration order, then *args, then keyword-only and
    **kwargs items in call order. (lru_cache also distinguishes f(1, b=2) from f(1, 2); the
    frame no longer shows how an argument was passed, so callspan treats them as one key.)
    """
    local = frame.f_locals
    key: tuple[Any, ...] = tuple(local[name] for name in info.arg_names)
    identity = info.is_method and type(key[0]).__hash__ is _OBJECT_HASH
    if info.varargs is not None:
        key += local[info.varargs]
    if info.kwonly or info.varkw is not None:
        key += _KWD_MARK
        for name in info.kwonly:
            key += (name, local[name])
        if info.varkw is not None:
            for item in local[info.varkw].items():
                key += item
    if len(key) == 1 and type(key[0]) in _FAST_TYPES:
        key = key[0]  # lru_cache keys a lone int/str argument as itself: f(1) and f(1.0) differ
    try:
        return hash(key), "", identity
    except TypeError:
        pass
    except Exception:
        return None, "error", identity
    # Unhashable builtins have __hash__ None; a tuple holding one is named as a tuple.
    values = key if type(key) is tuple else (key,)
    names = [type(v).__name__ for v in values if type(v).__hash__ is None]
    unhashable = ",".join(dict.fromkeys(names)) if names else "tuple"
    return fingerprint(key, [_FINGERPRINT_LIMIT]), unhashable, identity


def value_key(value: Any) -> tuple[int | None, bool]:
    """(hash or fingerprint of a return value, whether it was hashable)."""
    try:
        return hash(value), True
    except TypeError:
        pass
    except Exception:
        return None, False
    return fingerprint(value, [_FINGERPRINT_LIMIT]), False


class KeyHasher:
    """Turns raw hash() numbers into keyed digests with a per-process secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret if secret else os.urandom(32)

    def keyed(self, raw: int) -> str:
        data = (raw & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        return hashlib.blake2b(data, key=self.secret[:64], digest_size=8).hexdigest()
