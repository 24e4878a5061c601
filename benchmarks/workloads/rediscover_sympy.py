"""Rediscovery workload: SymPy with its cache off (SYMPY_USE_CACHE=no, and ``lru_cache`` off in sympy).

The calls of SymPy's tutorial (https://docs.sympy.org/latest/tutorials/intro-tutorial/): build
expressions from symbols, ``expand``/``factor``/``simplify``/``trigsimp``/``cancel``/``apart``,
``diff``, ``integrate`` of simple integrands, ``solve``, ``series``, ``limit``, ``subs``/``evalf``
and ``Matrix`` products and determinants, over a few small expressions. Memoization is
SymPy's own ``@cacheit`` (turned off by its documented switch) plus a few ``functools.lru_cache``.

Deterministic. ``python rediscover_sympy.py [SCALE]`` (SCALE multiplies the rounds); prints a
checksum of the results' ``srepr``.
"""

import os
import sys
import zlib

os.environ["SYMPY_USE_CACHE"] = "no"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memo_off import disable_functools_caches, replace_after_import  # noqa: E402

disable_functools_caches("sympy")
replace_after_import("sympy.core.cache", "cacheit")  # the benchmark's cost mode only

import sympy  # noqa: E402
from sympy import (  # noqa: E402
    Matrix,
    Rational,
    apart,
    cancel,
    cos,
    diff,
    exp,
    expand,
    factor,
    integrate,
    limit,
    oo,
    series,
    simplify,
    sin,
    solve,
    sqrt,
    symbols,
    trigsimp,
)

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
ROUNDS = max(1, round(2 * SCALE))

x, y, z = symbols("x y z")


def tutorial(n):
    out = []
    out.append(expand((x + y + n) ** 4))
    out.append(factor(x**3 - x**2 + x - 1 + n * (x - 1)))
    out.append(simplify(sin(x) ** 2 + cos(x) ** 2 + n))
    out.append(trigsimp(sin(x) * cos(y) + cos(x) * sin(y)))
    out.append(cancel((x**2 + 2 * x + 1) / (x**2 + x)))
    out.append(apart((4 * x**3 + 21 * x**2 + 10 * x + 12) / (x**4 + 5 * x**3 + 5 * x**2 + 4 * x)))
    out.append(diff(cos(x) * exp(x) * x**n, x))
    out.append(integrate(exp(x) * sin(x) + exp(x) * cos(x), x))
    out.append(integrate(x**n * exp(x), x))
    out.append(solve(x**2 - 2 * n, x))
    out.append(series(cos(x), x, 0, 6))
    out.append(limit(sin(x) / x, x, 0))
    out.append(limit(exp(-x) * x**n, x, oo))
    out.append((x * y + z).subs({x: n, y: Rational(1, 3)}))
    out.append(sqrt(8 + n).evalf(30))
    matrix = Matrix([[1, x, n], [y, 1, 0], [0, z, 1]])
    out.append(matrix * matrix)
    out.append(matrix.det())
    return out


checksum = 0
for round_number in range(ROUNDS):
    for result in tutorial(round_number + 1):
        checksum = zlib.crc32(sympy.srepr(result).encode(), checksum)
print(f"CHECKSUM {checksum:08x}")
