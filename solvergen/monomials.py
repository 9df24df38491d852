"""Monomials as exponent tuples, and the graded reverse lexicographic (grevlex) order."""
from __future__ import annotations

from itertools import combinations_with_replacement

Exponent = tuple[int, ...]


def grevlex_key(exponent: Exponent):
    """Sort key: larger key = larger monomial in grevlex (x1 > x2 > ... > xn)."""
    return (sum(exponent), tuple(-e for e in reversed(exponent)))


def degree(exponent: Exponent) -> int:
    return sum(exponent)


def multiply(a: Exponent, b: Exponent) -> Exponent:
    return tuple(x + y for x, y in zip(a, b))


def divides(a: Exponent, b: Exponent) -> bool:
    """True if monomial a divides monomial b."""
    return all(x <= y for x, y in zip(a, b))


def unit(n: int, i: int) -> Exponent:
    return tuple(1 if j == i else 0 for j in range(n))


def up_to_degree(n: int, d: int) -> list[Exponent]:
    """All monomials in n variables of total degree <= d, grevlex-descending."""
    out = []
    for total in range(d + 1):
        for combo in combinations_with_replacement(range(n), total):
            e = [0] * n
            for i in combo:
                e[i] += 1
            out.append(tuple(e))
    return sorted(out, key=grevlex_key, reverse=True)


def name(exponent: Exponent, names) -> str:
    parts = []
    for e, v in zip(exponent, names):
        if e == 1:
            parts.append(str(v))
        elif e > 1:
            parts.append(f"{v}^{e}")
    return "*".join(parts) or "1"
