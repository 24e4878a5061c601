"""Cache keys: hash arguments the way functools.lru_cache keys them, and return values.

What user code the hook may run (README, "What user code callspan calls"): with
``CALLSPAN_USER_HASH=on`` (``callspan run``'s default, ``set_user_hash``) a class's own
``__hash__`` runs as functools.lru_cache would run it; whatever it raises, KeyboardInterrupt
aside, is swallowed and leaves the call unkeyed. Two limits apply: the types named by
``CALLSPAN_USER_HASH_SKIP`` are never hashed (as with ``off``), and a function whose user hashes
take too long (``USER_HASH_BUDGET_NS``, ``USER_HASH_MAX_NS``) stops calling them: its calls that
would need one are not keyed, their types counted as ``Name:slow-hash``. With ``off`` (production mode's default) a value
is hashed only when its hash is a built-in type's own (ints, strings, bytes, floats, None,
ranges, frozensets, tuples of such, and objects hashed by identity); a value whose class defines
``__hash__`` in Python is never hashed: the call is not keyed and its type is counted among the
function's unkeyed types as ``Name:user-hash``. ``__eq__`` is never called (keys are compared as
hash numbers; the one exception, a value whose own hash gave -2 compared with -1, is in
``stands_for_minus_one``) and ``__sizeof__`` only when it is a built-in one.

The hot path only computes Python's ``hash()`` of the key (so equal keys give equal numbers, the
same equality lru_cache uses). The raw number never leaves the process: ``KeyHasher.keyed`` turns
it into a keyed BLAKE2b digest off the hot path.
"""

from __future__ import annotations

import os
import time
import types
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from types import FrameType
from typing import Any

from callspan.tracer.selection import CodeInfo

try:  # blake2 itself: importing hashlib would also load OpenSSL (~3 ms at start-up), unused here
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - CPython builds _blake2 everywhere
    from hashlib import blake2b

# After this many consecutive calls whose arguments could not be keyed at all (unhashable and
# not fingerprinted: a parsed JSON request, say), a function's calls are no longer keyed: its
# keys were useless and computing them (reading the frame, hashing the return value) was the
# hot path's largest cost. Its records keep the unhashable type names. The compiled hot path
# uses the same number (UNKEYABLE_AFTER in _hotpath.c).
UNKEYABLE_AFTER = 64

# sys.getsizeof of return values (for the analyzer's memory estimates) is taken on the first
# call of each function and then on one call in this many. Also in _hotpath.c.
RET_SIZE_EVERY = 16

# CPython hashes -1 like -2 (-1 is its C error value), so keys or returns that differ only by a
# -1 where the other has -2 would be one key (f(-1) and f(-2) "returning different values"). So
# do the values of classes whose hash is an int's (sympy's Integer(-1) and Integer(-2), say). Each
# value at the top level of a key or return value that stands for -1 (``stands_for_minus_one``)
# salts its hash, by position.
_MINUS_ONE = -1
_MINUS_ONE_SALT = 0x9E3779B97F4A7C15
_MASK64 = 0xFFFFFFFFFFFFFFFF


def has_own_hash(value: Any) -> bool:
    """Whether ``value``'s class hashes it with a hash of its own (Python code, or a C type not
    among the built-in ones of ``_NO_USER_CODE_HASHES``), not a tuple's, and is hashable."""
    slot = type(value).__hash__
    return slot is not None and slot is not _TUPLE_HASH and slot not in _NO_USER_CODE_HASHES


def stands_for_minus_one(value: Any, h: int) -> bool:
    """Whether ``value`` (whose hash is ``h``) is one of the values CPython hashes as -2 although
    they equal -1: the exact int -1 (CPython's cached small int: found by identity), the exact
    float -1.0, or a value of a class with a hash of its own that hashed to -2 and compares equal to
    -1. That comparison is the only ``__eq__`` the keys ever call, as ``functools.lru_cache`` would
    on two keys whose hashes collide; if it raises (KeyboardInterrupt aside), the value does not."""
    if value is _MINUS_ONE:
        return True
    if h != -2:
        return False
    if type(value) is float:
        return bool(value == -1.0)
    if not has_own_hash(value):
        return False
    try:
        return bool(value == -1)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return False


def salted(h: int, value: Any, own_hashes: bool = False) -> int:
    """``h`` (the hash of ``value``) salted by the positions (1-based, summed) of what stands for
    -1 (``stands_for_minus_one``): ``value`` itself, or its top-level items when it is a tuple, as
    a signed 64-bit number (the compiled hot path does the same). Positions keep (-1, -2) apart
    from (-2, -1).

    ``own_hashes``: whether values of classes with a hash of their own may stand for -1: for
    argument keys (more distinct keys only ever remove false merges), not for return values. A
    class hashing like an int usually also hashes structures holding one (sympy's x**-1 and x**-2
    are one key); told apart, their returns (the exponents -1 and -2) would make that unavoidable
    merge read as inconsistency."""
    if type(value) is tuple:
        where = 0
        for position, item in enumerate(value, 1):
            if item is _MINUS_ONE or (type(item) is float and item == -1.0) or (
                    own_hashes and has_own_hash(item) and _hashed_minus_one(item)):
                where += position
        if not where:
            return h
    elif (value is _MINUS_ONE or type(value) is float or own_hashes) and stands_for_minus_one(value, h):
        where = 1
    else:
        return h
    mixed = (h ^ (where * _MINUS_ONE_SALT)) & _MASK64
    return mixed - (1 << 64) if mixed >= 1 << 63 else mixed


def _hashed_minus_one(item: Any) -> bool:
    """``stands_for_minus_one`` of a tuple's item, whose hash is computed again (a hash that
    raises, KeyboardInterrupt aside, stands for nothing)."""
    try:
        h = hash(item)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return False
    return stands_for_minus_one(item, h)


# Separates positional from keyword parts, as lru_cache's kwd_mark does.
_KWD_MARK = ("callspan.kwd_mark",)
_FAST_TYPES = (int, str)
_OBJECT_HASH = object.__hash__
# Hash slots that run no Python code: the built-in types' own (subclasses that do not override
# __hash__ inherit them). The compiled hot path compares tp_hash with the same types' (_keys.c).
_NO_USER_CODE_HASHES = frozenset({
    int.__hash__, str.__hash__, bytes.__hash__, float.__hash__, complex.__hash__,
    type(None).__hash__, range.__hash__, frozenset.__hash__, object.__hash__,
    types.MethodType.__hash__, types.BuiltinFunctionType.__hash__, types.CodeType.__hash__,
})
_TUPLE_HASH = tuple.__hash__
_TYPE_HASH = type.__hash__
# Nesting of tuples walked to decide; deeper keys are not keyed.
_MAX_TUPLE_DEPTH = 16
USER_HASH_SUFFIX = ":user-hash"


# CALLSPAN_USER_HASH=on (the default of `callspan run` and `tracing()`): a user __hash__ may run,
# as functools.lru_cache would run it; off (production's default): only built-in hashes.
_user_hash = False
# CALLSPAN_USER_HASH_SKIP: glob patterns of qualified type names (``module.QualName``) whose
# __hash__ never runs; decided once per type (_skip_decisions, bounded).
_skip_patterns: tuple[str, ...] = ()
_skip_decisions: dict[type, bool] = {}
_MAX_SKIP_DECISIONS = 1024

# The bound on a function's user hashing: once the user __hash__ calls made to key its arguments
# and return values have taken more than USER_HASH_BUDGET_NS in all, and more than
# USER_HASH_MAX_NS per timed hash on average, no user __hash__ runs for it again (its
# ``slow_hash``). Typical value types hash in 0.1-0.4 us (a frozen dataclass of three fields
# ~0.2 us, Fraction ~0.4 us; docs/performance.md): 10 us is 25 times the slowest of those and
# ten times what the hook costs a traced call, and the budget lets a few slow first hashes (a
# hash computed once and then cached on the object) pass. The compiled hot path uses the same
# numbers (_keys.c).
USER_HASH_BUDGET_NS = 1_000_000
USER_HASH_MAX_NS = 10_000
SLOW_HASH_SUFFIX = ":slow-hash"

# What hashing a value would run (hash_verdict): refused (CALLSPAN_USER_HASH=off or a skipped
# type: "Name:user-hash"), refused because the function's user hashing was too slow
# ("Name:slow-hash"), only built-in code, or a user __hash__ (timed).
REFUSED, SLOW, BUILTIN, USER = range(4)


def set_user_hash(allowed: bool, skip: Iterable[str] = ()) -> None:
    """Whether keys may call user ``__hash__`` methods, and the types whose ``__hash__`` never
    runs (``skip``: glob patterns of ``module.QualName``; process-wide; the compiled hot path has
    its own switch, set with it by the session)."""
    global _user_hash, _skip_patterns
    _user_hash = allowed
    _skip_patterns = tuple(skip)
    _skip_decisions.clear()
    try:
        from callspan.tracer import _hotpath
    except ImportError:  # no compiled hot path: nothing else to switch
        return
    _hotpath.set_user_hash(allowed, type_skipped if _skip_patterns else None)


def type_skipped(kind: type) -> bool:
    """Whether the qualified name of ``kind`` or of one of its base classes matches a
    CALLSPAN_USER_HASH_SKIP pattern: skipping ``django.utils.functional.LazyObject`` skips
    ``django.conf.LazySettings`` too (a type that cannot be named is not skipped). Both hot
    paths cache the answer per type."""
    try:
        names = [f"{base.__module__}.{base.__qualname__}" for base in kind.__mro__]
    except KeyboardInterrupt:
        raise
    except BaseException:
        return False
    return any(fnmatchcase(name, pattern) for name in names for pattern in _skip_patterns)


def _skipped(kind: type) -> bool:
    if not _skip_patterns:
        return False
    if type(kind).__hash__ is not _TYPE_HASH:  # a metaclass with a hash of its own: not a dict key
        return type_skipped(kind)
    decision = _skip_decisions.get(kind)
    if decision is None:
        decision = type_skipped(kind)
        if len(_skip_decisions) < _MAX_SKIP_DECISIONS:
            _skip_decisions[kind] = decision
    return decision


def hash_verdict(value: Any, info: CodeInfo | None = None, depth: int = 0) -> int:
    """What hash(value) would run, for a function (``info``; None: no function's bound): BUILTIN,
    USER (a user __hash__ that may run), or why one may not: REFUSED (user hashes off, or the
    type skipped), SLOW (the function's user hashing was too slow). A tuple's verdict is its
    first refusal, else USER if any item is; deeper than _MAX_TUPLE_DEPTH, what a user hash gets.
    An unhashable value (whose hash raises TypeError, no user code) is BUILTIN when user hashes
    are on, as before this function existed."""
    kind = type(value)
    if kind is int or kind is str or value is None:  # the commonest: no lookup
        return BUILTIN
    slot = kind.__hash__
    if slot is _TUPLE_HASH:
        if depth >= _MAX_TUPLE_DEPTH:
            return _user_verdict(info)
        return _verdicts(value, info, depth + 1)
    if slot in _NO_USER_CODE_HASHES:
        return BUILTIN
    if slot is None:
        return BUILTIN if _user_hash else REFUSED
    if _user_hash and _skipped(kind):
        return REFUSED
    return _user_verdict(info)


def _user_verdict(info: CodeInfo | None) -> int:
    if not _user_hash:
        return REFUSED
    return SLOW if info is not None and info.slow_hash else USER


def runs_no_user_code(value: Any, depth: int = 0) -> bool:
    """True when hash(value) runs only built-in code (see the module's docstring), or when user
    hashes are allowed (``set_user_hash``) for its type."""
    return hash_verdict(value, None, depth) >= BUILTIN


def _account(info: CodeInfo, elapsed: int) -> None:
    """One timed user hash of ``info``'s keys took ``elapsed`` ns: past the bound, its user
    hashing stops (``slow_hash``)."""
    info.hash_ns += elapsed
    info.hash_runs += 1
    if info.hash_ns > USER_HASH_BUDGET_NS and info.hash_ns > info.hash_runs * USER_HASH_MAX_NS:
        info.slow_hash = True


def skipped_type_names(key: tuple[Any, ...], info: CodeInfo | None = None) -> str:
    """Why a key is not hashed: its unhashable argument types, then the types whose hash
    would run user code ("Name:user-hash", or "Name:slow-hash" when the function's user hashing
    was too slow; a tuple holding such a value is named "tuple")."""
    unhashable = [type(v).__name__ for v in key if type(v).__hash__ is None]
    users = []
    for v in key:
        if type(v).__hash__ is not None:
            verdict = hash_verdict(v, info)
            if verdict < BUILTIN:
                users.append(type(v).__name__ + (USER_HASH_SUFFIX if verdict == REFUSED else SLOW_HASH_SUFFIX))
    return ",".join(dict.fromkeys(unhashable + users))


def builtin_sizeof(value: Any) -> bool:
    """True when sys.getsizeof(value) runs no user code (its __sizeof__ is not Python)."""
    return not isinstance(getattr(type(value), "__sizeof__", None), types.FunctionType)
# Elements: larger unhashable values are flagged but not fingerprinted, since walking them on
# every call (a request dict passed to each validator, say) would cost more than the call.
_FINGERPRINT_LIMIT = 16


def fingerprint(value: Any, budget: list[int], info: CodeInfo | None = None,
                clock: Callable[[], int] = time.perf_counter_ns) -> int | None:
    """hash() of ``value``, or of its structure when it is an unhashable builtin container
    whose elements are hashable; None otherwise, or when larger than ``budget`` elements.

    The fingerprint is what the lru_cache key would hash to after converting lists to tuples,
    dicts to frozensets of items, sets to frozensets and bytearrays to bytes. Containers of
    containers (a parsed JSON request, say) are not walked: that would cost more than the call.
    The argument tuple itself is the one level allowed to hold such containers. User hashes run
    for ``info`` (its bound; timed by ``clock``) as in ``args_key``.
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
                    part = _flat_fingerprint(item, budget, info, clock)
                    if part is None:
                        return None
                    parts.append(part)
                return hash((False, tuple(parts)))
            return _flat_fingerprint(value, budget, info, clock)
        return _flat_fingerprint(value, budget, info, clock)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return None


def _hash_of(build: Callable[[], Any], user: bool, info: CodeInfo | None, clock: Callable[[], int]) -> int:
    """hash(build()), timed for ``info`` when it runs a user __hash__ (building included: a
    frozenset of a dict's items hashes them)."""
    if not user or info is None:
        return hash(build())
    start = clock()
    try:
        return hash(build())
    finally:
        _account(info, clock() - start)


def _verdicts(values: Iterable[Any], info: CodeInfo | None, depth: int = 0) -> int:
    """The verdict of hashing all of ``values``: the first refusal, else USER if any is."""
    verdict = BUILTIN
    for value in values:
        found = hash_verdict(value, info, depth)
        if found < BUILTIN:
            return found
        if found > verdict:
            verdict = found
    return verdict


def _flat_fingerprint(value: Any, budget: list[int], info: CodeInfo | None,
                      clock: Callable[[], int]) -> int | None:
    kind = type(value)
    if kind.__hash__ is not None:
        verdict = hash_verdict(value, info)
        return None if verdict < BUILTIN else _hash_of(lambda: value, verdict == USER, info, clock)
    if kind is list:
        budget[0] -= len(value)
        if budget[0] < 0:
            return None
        verdict = _verdicts(value, info)
        if verdict < BUILTIN:
            return None
        return _hash_of(lambda: (True, tuple(value)), verdict == USER, info, clock)
    if kind is dict:
        budget[0] -= len(value)
        if budget[0] < 0:
            return None
        verdict = BUILTIN
        for key, item in value.items():
            if type(item).__hash__ is None:
                return None  # a nested container (a parsed JSON request): not walked
            found = _verdicts((key, item), info)
            if found < BUILTIN:
                return None
            verdict = max(verdict, found)
        return _hash_of(lambda: ("dict", frozenset(value.items())), verdict == USER, info, clock)
    if kind is set:
        return hash(("set", frozenset(value)))  # a set's items keep their hashes: none is called
    if kind is bytearray:
        return hash(bytes(value))
    return None


# The argument key of a call whose ``self`` hashes by identity: counted, not keyed. Such a key
# is only as good as ``id()`` (a new instance at a freed one's address gets it, so its hits and
# "different returns" are unreliable) and a per-instance cache is never advised, so hashing the
# other arguments and the return value would cost without answering anything.
IDENTITY_ONLY: tuple[None, str, bool] = (None, "", True)

# CPython's tuple hash (xxHash-based, Objects/tupleobject.c, 3.8-3.13, 64-bit hashes), for a key
# whose items were hashed one by one (``_user_key_hash``).
_XXPRIME_1 = 11400714785074694791
_XXPRIME_2 = 14029467366897019727
_XXPRIME_5 = 2870177450012600261


def tuple_hash(lanes: list[int]) -> int:
    """hash() of a tuple whose items hash to ``lanes``."""
    acc = _XXPRIME_5
    for lane in lanes:
        acc = (acc + (lane & _MASK64) * _XXPRIME_2) & _MASK64
        acc = ((acc << 31) | (acc >> 33)) & _MASK64
        acc = (acc * _XXPRIME_1) & _MASK64
    acc = (acc + (len(lanes) ^ (_XXPRIME_5 ^ 3527539))) & _MASK64
    if acc == _MASK64:
        return 1546275796
    return acc - (1 << 64) if acc >= 1 << 63 else acc


def _user_key_hash(key: tuple[Any, ...]) -> int:
    """``salted(hash(key), key, own_hashes=True)`` calling each item's __hash__ once (salted
    would hash the items with a hash of their own again), as the compiled hot path does."""
    lanes = []
    where = 0
    for position, item in enumerate(key, 1):
        lane = hash(item)
        lanes.append(lane)
        if item is _MINUS_ONE or (type(item) is float and item == -1.0) or (
                has_own_hash(item) and stands_for_minus_one(item, lane)):
            where += position
    h = tuple_hash(lanes)
    if not where:
        return h
    mixed = (h ^ (where * _MINUS_ONE_SALT)) & _MASK64
    return mixed - (1 << 64) if mixed >= 1 << 63 else mixed


def args_key(info: CodeInfo, frame: FrameType,
             clock: Callable[[], int] = time.perf_counter_ns) -> tuple[int | None, str, bool]:
    """(hash of the lru_cache-style key, "" or the unhashable argument type names, whether
    ``self`` hashes by identity): ``IDENTITY_ONLY`` when it does.

    Parameters are keyed positionally in declaration order, then *args, then keyword-only and
    **kwargs items in call order. (lru_cache also distinguishes f(1, b=2) from f(1, 2); the
    frame no longer shows how an argument was passed, so callspan treats them as one key.)
    A key whose hash runs a user __hash__ is timed by ``clock`` against the function's bound.
    """
    local = frame.f_locals
    key: tuple[Any, ...] = tuple(local[name] for name in info.arg_names)
    # A class (``cls`` of a classmethod) hashes by identity too, but lives as long as its module:
    # its key is stable and caching keeps nothing alive that would not be anyway.
    if info.is_method and type(key[0]).__hash__ is _OBJECT_HASH and not isinstance(key[0], type):
        return IDENTITY_ONLY
    if info.varargs is not None:
        key += local[info.varargs]
    if info.kwonly or info.varkw is not None:
        key += _KWD_MARK
        for name in info.kwonly:
            key += (name, local[name])
        if info.varkw is not None:
            for item in local[info.varkw].items():
                key += item
    user = unhashable = False
    if len(key) == 1 and type(key[0]) in _FAST_TYPES:
        key = key[0]  # lru_cache keys a lone int/str argument as itself: f(1) and f(1.0) differ
    else:
        for value in key:
            if type(value).__hash__ is None:
                unhashable = True
                continue
            verdict = hash_verdict(value, info)
            if verdict < BUILTIN:
                return None, skipped_type_names(key, info), False  # not keyed: see hash_verdict
            if verdict == USER:
                user = True
    try:
        if unhashable:
            raise TypeError  # hash(key) would raise it: fingerprinted below
        if not user:
            return salted(hash(key), key, own_hashes=True), "", False
        start = clock()
        try:
            return _user_key_hash(key), "", False
        finally:
            _account(info, clock() - start)
    except TypeError:
        pass
    except KeyboardInterrupt:
        raise  # the program's own (a signal), never swallowed
    except BaseException:  # a user __hash__ raising SystemExit must not end the program
        return None, "error", False
    return (*unhashable_args(key, info.arg_names, info.varargs, info, clock), False)


def unhashable_args(key: Any, arg_names: tuple[str, ...] = (), varargs: str | None = None,
                    info: CodeInfo | None = None,
                    clock: Callable[[], int] = time.perf_counter_ns) -> tuple[int | None, str]:
    """(fingerprint or None, the unhashable arguments as ``name:type`` items) of an argument key
    that hash() refused. Both hot paths compute this (the compiled one in _keys.c).

    An argument is named by its parameter, ``*args`` items by ``*`` and the parameter, keyword
    items by their keyword; ``?`` when ``arg_names`` does not say. Only builtin unhashable types
    (``__hash__`` None) are named: a tuple holding one is reported as ``tuple`` alone.
    """
    values = key if type(key) is tuple else (key,)
    mark = _KWD_MARK[0]
    names = []
    keyword = False
    for i, value in enumerate(values):
        if value is mark:
            keyword = True
        elif type(value).__hash__ is None:
            if keyword:
                label = values[i - 1]
            elif i < len(arg_names):
                label = arg_names[i]
            else:
                label = "*" + varargs if varargs else "?"
            names.append(f"{label}:{type(value).__name__}")
    unhashable = ",".join(dict.fromkeys(names)) if names else "tuple"
    return fingerprint(key, [_FINGERPRINT_LIMIT], info, clock), unhashable


def value_key(value: Any, info: CodeInfo | None = None,
              clock: Callable[[], int] = time.perf_counter_ns) -> tuple[int | None, bool]:
    """(hash or fingerprint of a return value, whether it was hashable). A value whose hash
    is user code not allowed for ``info`` (hash_verdict): (None, False), like an unhashable one
    without a fingerprint."""
    user = False
    if type(value).__hash__ is not None:
        verdict = hash_verdict(value, info)
        if verdict < BUILTIN:
            return None, False
        user = verdict == USER and info is not None
    try:
        if not user:
            return salted(hash(value), value), True
        start = clock()
        try:
            return salted(hash(value), value), True
        finally:
            _account(info, clock() - start)  # type: ignore[arg-type]
    except TypeError:
        pass
    except KeyboardInterrupt:
        raise
    except BaseException:
        return None, False
    return unhashable_value(value, info, clock), False


def unhashable_value(value: Any, info: CodeInfo | None = None,
                     clock: Callable[[], int] = time.perf_counter_ns) -> int | None:
    """Fingerprint (or None) of a return value that hash() refused."""
    return fingerprint(value, [_FINGERPRINT_LIMIT], info, clock)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK64


def siphash24_py(k0: int, k1: int, message: int) -> int:
    """SipHash-2-4 of one 64-bit word (as 8 little-endian bytes) under the 128-bit key (k0, k1).
    The reference for the compiled ``callspan.tracer._hotpath.siphash24``; slow, used without it."""
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    for word in (message & _MASK64, 8 << 56):  # the message, then the length block
        v3 ^= word
        rounds(2)
        v0 ^= word
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


try:
    from callspan.tracer._hotpath import siphash24 as _siphash24
except ImportError:
    _siphash24 = siphash24_py


class KeyHasher:
    """Turns raw hash() numbers into keyed digests with a per-process secret.

    SipHash-2-4, a pseudorandom function for short inputs, under a 128-bit key taken from the
    secret: without the secret, a digest tells nothing about the argument values (Python's raw
    hash of a small int is the int itself), and equal keys still give equal digests."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret if secret else os.urandom(32)
        key = blake2b(self.secret, digest_size=16, person=b"callspan.keys").digest()
        self.k0 = int.from_bytes(key[:8], "little")
        self.k1 = int.from_bytes(key[8:], "little")

    def digest(self, raw: int) -> int:
        return _siphash24(self.k0, self.k1, raw & _MASK64)

    def keyed(self, raw: int) -> str:
        """The digest as exported: 16 hex digits."""
        return f"{self.digest(raw):016x}"
