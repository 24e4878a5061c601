"""Arguments whose __hash__/__eq__/__sizeof__ print, count, raise, or exit: under python nothing
calls them; with CALLSPAN_USER_HASH=off (production mode's default) callspan calls none either.
(`callspan run`'s default hashes user types as lru_cache would: see the README.)"""
#: env: CALLSPAN_USER_HASH=off
import sys

hash_calls = 0


class Loud:
    def __hash__(self):
        global hash_calls
        hash_calls += 1
        print("Loud.__hash__ called")
        return 1

    def __eq__(self, other):
        print("Loud.__eq__ called")
        return self is other

    def __sizeof__(self):
        print("Loud.__sizeof__ called")
        return 1


class Exiting:
    def __hash__(self):
        raise SystemExit(9)


class Raising:
    def __hash__(self):
        raise RuntimeError("no hashing")


def take(value):
    return value


def give():
    return Loud()


for _ in range(40):
    take(Loud())
    take((1, Loud()))
    take(Exiting())
    take(Raising())
    give()
print("hash calls:", hash_calls)
sys.exit(0)
