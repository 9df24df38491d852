"""Exact linear algebra over the prime field Z_p, vectorised with numpy int64.

p < 2^31 keeps every product below 2^62, so no intermediate overflows.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

PRIME = 2147483629  # the largest prime below 2^31


def to_field(value, prime: int = PRIME) -> int:
    """A rational number (sympy, Fraction or int) as an element of Z_p; ZeroDivisionError if its
    denominator vanishes there."""
    q = Fraction(int(value.p), int(value.q)) if hasattr(value, "q") else Fraction(value)
    if q.denominator % prime == 0:
        raise ZeroDivisionError
    return q.numerator * pow(q.denominator, -1, prime) % prime


def pivot_columns(matrix: np.ndarray, prime: int = PRIME, stop_after: int | None = None) -> list[int]:
    """Columns that hold pivots in a row echelon form of `matrix` (columns taken left to right).

    The input is not modified. `stop_after` ends the search once that column index is passed.
    """
    m = np.array(matrix, dtype=np.int64) % prime
    rows, cols = m.shape
    pivots: list[int] = []
    r = 0
    last = cols if stop_after is None else min(cols, stop_after + 1)
    for c in range(last):
        if r == rows:
            break
        nonzero = np.flatnonzero(m[r:, c])
        if nonzero.size == 0:
            continue
        i = r + int(nonzero[0])
        if i != r:
            m[[r, i]] = m[[i, r]]
        inv = pow(int(m[r, c]), -1, prime)
        m[r, c:] = (m[r, c:] * inv) % prime
        below = r + 1 + np.flatnonzero(m[r + 1 :, c])
        if below.size:
            m[below, c:] = (m[below, c:] - np.outer(m[below, c], m[r, c:])) % prime
        pivots.append(c)
        r += 1
    return pivots


def solve(a: np.ndarray, b: np.ndarray, prime: int = PRIME) -> np.ndarray | None:
    """Solve a x = b for square a over Z_p; None if a is singular."""
    n = a.shape[0]
    m = np.concatenate([np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)], axis=1) % prime
    for c in range(n):
        nonzero = np.flatnonzero(m[c:, c])
        if nonzero.size == 0:
            return None
        i = c + int(nonzero[0])
        if i != c:
            m[[c, i]] = m[[i, c]]
        m[c] = (m[c] * pow(int(m[c, c]), -1, prime)) % prime
        others = np.flatnonzero(m[:, c])
        others = others[others != c]
        if others.size:
            m[others] = (m[others] - np.outer(m[others, c], m[c])) % prime
    return m[:, n:]


def independent_rows(matrix: np.ndarray, prime: int = PRIME) -> list[int]:
    """Rows (in order) that are independent of the rows before them."""
    return pivot_columns(np.asarray(matrix).T, prime)


def left_solution_support(matrix: np.ndarray, num_excess: int, num_target: int,
                          prime: int = PRIME) -> list[int] | None:
    """For a matrix [E | T | ...] with independent rows whose span reduces T, the rows used by
    the unique Y with Y E = 0 and Y T = I."""
    a = np.asarray(matrix)[:, : num_excess + num_target] % prime
    columns = pivot_columns(a, prime)
    if len(columns) != a.shape[0]:
        return None
    rhs = np.zeros((len(columns), num_target), dtype=np.int64)
    for i, c in enumerate(columns):
        if c >= num_excess:
            rhs[i, c - num_excess] = 1
    # Y on the pivot columns; it satisfies the other columns too whenever such a Y exists
    # (callers check that: the reduction condition holds for these rows).
    y = solve(a[:, columns].T, rhs, prime)  # Y^T, one column per target monomial
    if y is None:
        return None
    return [i for i in range(a.shape[0]) if y[i].any()]


def row_reduce(matrix: np.ndarray, prime: int = PRIME) -> tuple[np.ndarray, list[int]]:
    """Reduced row echelon form over Z_p and its pivot columns."""
    m = np.array(matrix, dtype=np.int64) % prime
    rows, cols = m.shape
    pivots: list[int] = []
    r = 0
    for c in range(cols):
        if r == rows:
            break
        nonzero = np.flatnonzero(m[r:, c])
        if nonzero.size == 0:
            continue
        i = r + int(nonzero[0])
        if i != r:
            m[[r, i]] = m[[i, r]]
        m[r] = (m[r] * pow(int(m[r, c]), -1, prime)) % prime
        others = np.flatnonzero(m[:, c])
        others = others[others != r]
        if others.size:
            m[others] = (m[others] - np.outer(m[others, c], m[r])) % prime
        pivots.append(c)
        r += 1
    return m[:r], pivots


def null_space(matrix: np.ndarray, prime: int = PRIME) -> np.ndarray:
    """A basis (columns) of {x : matrix x = 0} over Z_p."""
    reduced, pivots = row_reduce(matrix, prime)
    n = np.asarray(matrix).shape[1]
    free = [c for c in range(n) if c not in pivots]
    basis = np.zeros((n, len(free)), dtype=np.int64)
    for j, f in enumerate(free):
        basis[f, j] = 1
        for i, p in enumerate(pivots):
            basis[p, j] = (-reduced[i, f]) % prime
    return basis
