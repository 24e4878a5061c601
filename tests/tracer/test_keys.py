"""Cache-key attributes: lru_cache-style argument keys and return hashes, keyed per process."""

from __future__ import annotations

import functools
from typing import Any

from callspan.tracer import keys
from callspan.tracer.keys import KeyHasher, args_key
from callspan.tracer.selection import CodeInfo


class FakeFrame:
    def __init__(self, **f_locals: object) -> None:
        self.f_locals = f_locals


def plain(a: int, b: str = "x") -> tuple[int, str]:
    return (a, b)


def with_kwargs(a: int, *rest: int, flag: bool = False, **extra: int) -> int:
    return a + sum(rest) + len(extra) + flag


def listy(items: list[int], table: dict[str, int]) -> list[int]:
    return sorted(items) + sorted(table.values())


class Shop:
    def __init__(self, name: str) -> None:
        self.name = name

    def price(self, sku: str) -> int:
        return len(sku) + len(self.name)


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    def __hash__(self) -> int:
        return hash(self.cents)

    def doubled(self) -> int:
        return 2 * self.cents


def test_a_self_with_its_own_hash_is_not_hashed_with_user_hashes_off(traced) -> None:  # type: ignore[no-untyped-def]
    # CALLSPAN_USER_HASH=off: Money.__hash__ is the program's code: callspan does not call it
    # (keys.py), and says why.
    run = traced(user_hash="off")
    run.run(lambda: (Money(5).doubled(), Money(5).doubled()))
    nodes = run.sink.named(".Money.doubled")
    assert len(nodes) == 2 and "callspan.args.identity" not in nodes[0].attributes
    assert [n.attributes.get("callspan.args.hash") for n in nodes] == [None, None]
    assert [n.attributes["callspan.args.unhashable"] for n in nodes] == ["Money:user-hash"] * 2


def test_a_self_with_its_own_hash_keys_by_value_with_user_hashes_on(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()  # CALLSPAN_USER_HASH=on: as lru_cache would, Money(5) and Money(5) are one key
    run.run(lambda: (Money(5).doubled(), Money(5).doubled(), Money(6).doubled()))
    keys_seen = [n.attributes["callspan.args.hash"] for n in run.sink.named(".Money.doubled")]
    assert keys_seen[0] == keys_seen[1] != keys_seen[2]


class Palette:
    @classmethod
    def parse(cls, name: str) -> int:
        return len(name)


def test_classmethod_cls_is_not_identity_keyed(traced) -> None:  # type: ignore[no-untyped-def]
    # A class hashes by identity, but it outlives the cache: classmethods are cached by value.
    run = traced()
    run.run(lambda: (Palette.parse("red"), Palette.parse("red"), Palette.parse("blue")))
    nodes = run.sink.named(".Palette.parse")
    assert len(nodes) == 3
    assert [n.attributes.get("callspan.args.identity") for n in nodes] == [None, None, None]
    assert all(n.attributes["callspan.method"] is True for n in nodes)
    keys = [n.attributes["callspan.args.hash"] for n in nodes]
    assert keys[0] == keys[1] != keys[2]


def keyed(nodes, name):  # type: ignore[no-untyped-def]
    return [(n.attributes.get("callspan.args.hash"), n.attributes.get("callspan.return.hash"))
            for n in nodes if n.name.endswith("." + name)]


def test_equal_arguments_give_equal_keys_and_different_give_different(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()

    def calls() -> None:
        plain(1)
        plain(1, "x")
        plain(2)
        plain(1, "y")

    run.run(calls)
    keys = keyed(run.sink.closed, "plain")
    assert len(keys) == 4
    assert keys[0] == keys[1]
    assert len({k[0] for k in keys}) == 3
    assert all(k[0] and len(k[0]) == 16 and int(k[0], 16) >= 0 for k in keys)
    node = run.sink.named(".plain")[0]
    # hashable is the rule: only its exception is written
    assert "callspan.args.hashable" not in node.attributes
    assert "callspan.return.hashable" not in node.attributes
    assert node.attributes["callspan.return.size"] > 0


def test_varargs_and_kwargs_are_part_of_the_key(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()

    def calls() -> None:
        with_kwargs(1, 2, 3)
        with_kwargs(1, 2, 3)
        with_kwargs(1, 2, 3, flag=True)
        with_kwargs(1, 2, 3, z=1)
        with_kwargs(1, 2)

    run.run(calls)
    keys = [k[0] for k in keyed(run.sink.closed, "with_kwargs")]
    assert keys[0] == keys[1]
    assert len(set(keys)) == 4


def test_unhashable_arguments_are_flagged_and_fingerprinted(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()

    def calls() -> None:
        listy([3, 1], {"a": 1})
        listy([3, 1], {"a": 1})
        listy([1, 3], {"a": 1})

    run.run(calls)
    nodes = run.sink.named(".listy")
    assert [n.attributes["callspan.args.hashable"] for n in nodes] == [False] * 3
    assert nodes[0].attributes["callspan.args.unhashable"] == "items:list,table:dict"
    args = [n.attributes["callspan.args.hash"] for n in nodes]
    assert args[0] == args[1] != args[2]
    rets = [n.attributes["callspan.return.hash"] for n in nodes]
    assert rets[0] == rets[1] == rets[2]  # equal lists fingerprint equally
    assert nodes[0].attributes["callspan.return.hashable"] is False


class ValueShop(Shop):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValueShop) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def test_methods_key_on_self_by_value(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    a, a2, b = ValueShop("a"), ValueShop("a"), ValueShop("b")

    def calls() -> None:
        a.price("x")
        a2.price("x")  # an equal instance: the same key, as lru_cache would find
        b.price("x")

    run.run(calls)
    nodes = run.sink.named(".Shop.price")
    keys = [n.attributes["callspan.args.hash"] for n in nodes]
    assert keys[0] == keys[1] != keys[2]
    assert all(n.attributes["callspan.method"] is True for n in nodes)
    assert all("callspan.args.identity" not in n.attributes for n in nodes)
    assert all("callspan.return.hash" in n.attributes for n in nodes)


def test_methods_of_identity_hashed_self_are_counted_not_keyed(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()
    a, b = Shop("a"), Shop("b")

    def calls() -> None:
        a.price("x")
        a.price("x")
        b.price("x")

    run.run(calls)
    nodes = run.sink.named(".Shop.price")
    assert len(nodes) == 3
    assert all(n.attributes["callspan.method"] is True for n in nodes)
    assert all(n.attributes["callspan.args.identity"] is True for n in nodes)
    # neither the arguments nor the return value were hashed
    assert all("callspan.args.hash" not in n.attributes for n in nodes)
    assert all("callspan.return.hash" not in n.attributes for n in nodes)
    rows = [(window, row) for window in run.sink.windows for row, fid in enumerate(window["cache.function"])
            if dict(zip(window["function.id"], window["function.name"], strict=True))[fid].endswith(".Shop.price")]
    assert len(rows) == 1
    window, row = rows[0]
    assert window["cache.identity_calls"][row] == 3
    assert window["cache.calls"][row] == 0 and window["cache.keys"][row] == 0
    assert window["function.calls"][window["function.id"].index(window["cache.function"][row])] == 3


def test_keys_off_and_keys_for_chosen_functions(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced(keys="off")
    run.run(lambda: (plain(1), listy([1], {})))
    assert all("callspan.args.hash" not in n.attributes for n in run.sink.closed)
    assert all("callspan.return.hash" not in n.attributes for n in run.sink.closed)
    run = traced(keys="plain")
    run.run(lambda: (plain(1), listy([1], {})))
    assert "callspan.args.hash" in run.sink.named(".plain")[0].attributes
    assert "callspan.args.hash" not in run.sink.named(".listy")[0].attributes


def test_hashes_are_keyed_with_the_secret() -> None:
    one, two = KeyHasher(b"a" * 32), KeyHasher(b"b" * 32)
    assert one.keyed(12345) == KeyHasher(b"a" * 32).keyed(12345)
    assert one.keyed(12345) != two.keyed(12345)
    assert one.keyed(12345) != one.keyed(12346)
    assert "12345" not in one.keyed(12345) and len(one.keyed(-1)) == 16


def test_key_equality_matches_lru_cache() -> None:
    # Whenever lru_cache would hit, the fingerprints agree; distinct keys do not collide here.
    # (Known limit: Python hashes str and bytes of equal ASCII content alike, so "1" and b"1"
    # in the same argument position share a key; lru_cache would tell them apart.)
    values = [1, 1.0, True, "1", (1,), (1, 2), frozenset({1}), None, b"x1", 2, "2"]
    seen: dict[int, object] = {}

    @functools.cache
    def cached(x: object) -> object:
        return x

    def key_hash(v: object) -> int | None:
        return args_key(CodeInfo(cached.__wrapped__.__code__, "m", True), FakeFrame(x=v))[0]

    for v in values:
        cached(v)
        h = key_hash(v)
        assert h is not None
        if h in seen:
            assert seen[h] == v
        seen[h] = v
    assert cached.cache_info().currsize == len({key_hash(v) for v in values}) == 10


def three(a: object, b: object, c: object) -> int:
    return 3


def lone(x: object) -> int:
    return 1


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def at(self, dx: int) -> int:
        return self.x + dx


def test_every_core_keys_positional_arguments_as_the_reference(traced) -> None:  # type: ignore[no-untyped-def]
    # The compiled cores hash plain positional arguments straight from the frame: the keys must
    # be the reference's (keys.args_key) for every kind of built-in value, -1 and -1.0 included.
    secret = b"k" * 32
    hasher = KeyHasher(secret)
    token = object()
    argument_lists = [(1, 2, 3), (-1, 2, 3), (1, -1.0, None), ("a", b"b", 2.5), (True, 0, -2),
                      ((1, 2), frozenset({3}), "x"), (token, 1, 2), ([1], 2, 3)]
    lone_values = [5, -1, -2, "s", -1.0, None, (1, -1), token]
    run = traced(key_secret=secret)

    def calls() -> None:
        for args in argument_lists:
            three(*args)
        for value in lone_values:
            lone(value)
        Point(1).at(2)  # self hashed by identity: counted, not keyed

    run.run(calls)

    def reference(func: Any, **arguments: object) -> str | None:
        raw = args_key(CodeInfo(func.__code__, "m", True), FakeFrame(**arguments))[0]
        return hasher.keyed(raw) if raw is not None else None

    got = [key for key, _ in keyed(run.sink.closed, "three")]
    assert got == [reference(three, a=a, b=b, c=c) for a, b, c in argument_lists]
    assert None not in got
    # the list: unhashable, fingerprinted by the general path
    assert [n.attributes.get("callspan.args.hashable") for n in run.sink.named(".three")] == [None] * 7 + [False]
    assert [key for key, _ in keyed(run.sink.closed, "lone")] == [reference(lone, x=v) for v in lone_values]
    (at,) = run.sink.named(".at")
    assert "callspan.args.hash" not in at.attributes


def minus_one_or_two(n: int) -> int:
    return n * 10


def pair_sum(a: int, b: int) -> tuple[int, int]:
    return (a, -1) if a == -1 else (a, -2)


def assert_minus_one_apart_from_minus_two(run: Any, *names: str) -> None:
    """Calls made with -1, -2, -1, -2 (in that order): two keys and two return hashes each."""
    for name in names:
        nodes = run.sink.named(name)
        args = [n.attributes["callspan.args.hash"] for n in nodes]
        rets = [n.attributes["callspan.return.hash"] for n in nodes]
        assert args[0] == args[2] != args[1] == args[3], name
        assert rets[0] == rets[2] != rets[1] == rets[3], name


def test_minus_one_and_minus_two_are_different_keys_and_returns(traced) -> None:  # type: ignore[no-untyped-def]
    from tests.tracer.test_aggregate import cache_column

    # CPython hashes -1 like -2: without the salt f(-1) and f(-2) were one key with two returns.
    assert hash(-1) == hash(-2) and hash((-1, 3)) == hash((-2, 3))
    run = traced()

    def calls() -> None:
        for n in (-1, -2, -1, -2):
            minus_one_or_two(n)
            pair_sum(n, 3)

    run.run(calls)
    assert_minus_one_apart_from_minus_two(run, ".minus_one_or_two", ".pair_sum")
    windows = run.sink.windows
    assert cache_column(windows, "minus_one_or_two", "inconsistent_keys") == 0
    assert cache_column(windows, "minus_one_or_two", "keys") == 2
    assert cache_column(windows, "pair_sum", "inconsistent_keys") == 0


class Whole:
    """A number class hashing like an int, as sympy's Integer does: Whole(-1) and Whole(-2) hash alike."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return self.n == (other.n if isinstance(other, Whole) else other)


class Touchy(Whole):
    """Hashes like Whole but raises when compared with anything but itself."""

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise ValueError("not comparable")

    __hash__ = Whole.__hash__


def negated(w: Whole) -> Whole:
    return Whole(-w.n)


def scaled(w: Whole, k: float) -> tuple[Whole, float]:
    return (w, k * 2)


def flipped(t: Touchy) -> Whole:
    return Whole(-t.n)


class Power:
    """x**n hashing like sympy's Pow: a tuple holding its exponent, so x**-1 and x**-2 hash alike."""

    def __init__(self, n: int) -> None:
        self.n = Whole(n)

    def __hash__(self) -> int:
        return hash(("x", self.n))


def exponent(p: Power) -> Whole:
    return p.n


def test_values_hashing_like_minus_one_are_told_from_minus_two(traced) -> None:  # type: ignore[no-untyped-def]
    from tests.tracer.test_aggregate import cache_column

    # A class hashing like an int (sympy's Integer) and floats hash -1 like -2 too; sympy's negated
    # integers made dozens of its functions look inconsistent. Argument keys are salted for them.
    assert hash(Whole(-1)) == hash(Whole(-2)) and hash(-1.0) == hash(-2.0)
    run = traced()

    def calls() -> None:
        for n in (-1, -2, -1, -2):
            negated(Whole(n))
            scaled(Whole(n), float(n))
            flipped(Touchy(n))  # cannot be compared with -1: one key, as before
            exponent(Power(n))

    run.run(calls)
    assert_minus_one_apart_from_minus_two(run, ".negated", ".scaled")
    windows = run.sink.windows
    assert cache_column(windows, "scaled", "inconsistent_keys") == 0
    assert cache_column(windows, "scaled", "keys") == 2
    assert cache_column(windows, "negated", "keys") == 2
    assert cache_column(windows, "negated", "inconsistent_keys") == 0
    # Touchy(-1) and Touchy(-2) cannot be told apart: one key whose returns differ.
    assert cache_column(windows, "flipped", "keys") == 1
    assert cache_column(windows, "flipped", "inconsistent_keys") == 1
    # x**-1 and x**-2 are one key (the -1 is inside the class's own hash): their returns, the
    # exponents, are not salted either, so the unavoidable merge does not read as inconsistency.
    assert cache_column(windows, "exponent", "keys") == 1
    assert cache_column(windows, "exponent", "inconsistent_keys") == 0


def test_the_salt_separates_minus_one_only() -> None:
    assert keys.salted(hash(-1), -1) != hash(-2)
    assert keys.salted(hash((-1, -1)), (-1, -1)) != keys.salted(hash((-2, -2)), (-2, -2))
    assert keys.salted(hash((-1, -2)), (-1, -2)) != keys.salted(hash((-2, -1)), (-2, -1))
    assert keys.salted(hash((5, 3)), (5, 3)) == hash((5, 3))  # no -1: unchanged
    # What equals -1 and hashes like it: floats, and classes with a hash of their own.
    assert keys.salted(hash(-1.0), -1.0) == keys.salted(hash(-1), -1) != hash(-2.0) == keys.salted(hash(-2.0), -2.0)
    one, two = (Whole(-1), 3), (Whole(-2), 3)
    assert keys.salted(hash(one), one, own_hashes=True) == keys.salted(hash((-1, 3)), (-1, 3))
    assert keys.salted(hash(one), one, own_hashes=True) != keys.salted(hash(two), two, own_hashes=True) == hash(two)
    assert keys.salted(hash(one), one) == hash(one)  # return values: only the built-in -1 and -1.0
    assert keys.salted(hash(Whole(-1)), Whole(-1), own_hashes=True) != hash(Whole(-1)) == keys.salted(
        hash(Whole(-1)), Whole(-1))
    touchy = (Touchy(-1), 3)
    assert keys.salted(hash(touchy), touchy, own_hashes=True) == hash(touchy)  # its __eq__ raised


def captured(x: int, *rest: int, scale: int = 1, **options: int) -> int:
    # every parameter is captured by the closure: Python keeps them in cells
    return (lambda: (x + sum(rest)) * scale + len(options))()


def uncaptured(x: int, *rest: int, scale: int = 1, **options: int) -> int:
    return (x + sum(rest)) * scale + len(options)


def test_parameters_held_in_cells_key_by_their_values(traced) -> None:  # type: ignore[no-untyped-def]
    run = traced()

    def calls() -> None:
        captured(3, 4, scale=2, flag=1)
        uncaptured(3, 4, scale=2, flag=1)
        captured(3, 5, scale=2, flag=1)

    run.run(calls)
    first, other = run.sink.named(".captured")
    same = run.sink.named(".uncaptured")[0]
    # the same arguments give the same key, whether the function keeps them in cells or not
    assert first.attributes["callspan.args.hash"] == same.attributes["callspan.args.hash"]
    assert first.attributes["callspan.args.hash"] != other.attributes["callspan.args.hash"]


def pair(a: object, b: object, *more: object) -> int:
    return 0


def test_unhashable_names_follow_each_calls_arguments(traced) -> None:  # type: ignore[no-untyped-def]
    # the names of one call pattern are reused for the next call with the same pattern only
    run = traced()
    calls = [([1], 2), ([1], 3), (1, [2]), ([1], {"b": 2}), ([1], 2, [3]), ([1], 2, {4}), ([1], 2), ({1}, 2)]

    def body() -> None:
        for args in calls:
            pair(*args)

    run.run(body)
    names = [n.attributes["callspan.args.unhashable"] for n in run.sink.named(".pair")]
    assert names == ["a:list", "a:list", "b:list", "a:list,b:dict", "a:list,*more:list", "a:list,*more:set",
                     "a:list", "a:set"]
