"""A __hash__ that raises SystemExit(9) and one that raises ValueError, with callspan's default
(user hashes run, as functools.lru_cache would run them): nothing they raise may end or change
the program; under python nothing calls them and the program exits 0."""


class Quitter:
    def __hash__(self):
        raise SystemExit(9)


class Broken:
    def __hash__(self):
        raise ValueError("no hash")


def handle(item, n):
    return n * 2


total = 0
for i in range(20):
    total += handle(Quitter(), i) + handle(Broken(), i)
print(total)
