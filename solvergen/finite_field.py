"""Exact linear algebra over the prime field Z_p, on FLINT (python-flint's `nmod_mat`).

Matrices come in and go out as numpy int64 arrays with entries in [0, p); the elimination itself
runs in FLINT, the reference implementation of this arithmetic. p < 2^31 also keeps every
product of two entries below 2^62, so the numpy code around these functions never overflows.
"""
from __future__ import annotations

from fractions import Fraction

import flint
import numpy as np

PRIME = 2147483629  # the largest prime below 2^31


def to_field(value, prime: int = PRIME) -> int:
    """A rational number (sympy, Fraction or int) as an element of Z_p; ZeroDivisionError if its
    denominator vanishes there."""
    q = Fraction(int(value.p), int(value.q)) if hasattr(value, "q") else Fraction(value)
    if q.denominator % prime == 0:
        raise ZeroDivisionError
    return q.numerator * pow(q.denominator, -1, prime) % prime


def to_nmod(matrix, prime: int = PRIME) -> flint.nmod_mat:
    """A numpy integer matrix as an nmod_mat, written entry by entry from its nonzeros (the
    matrices of template search are sparse: this is much faster than a dense conversion)."""
    a = np.asarray(matrix)
    rows, cols = a.shape
    out = flint.nmod_mat(rows, cols, prime)
    a = a % prime
    for i, j in zip(*np.nonzero(a)):
        out[int(i), int(j)] = int(a[i, j])
    return out


def from_nmod(matrix: flint.nmod_mat, rows: int | None = None) -> np.ndarray:
    """The first `rows` rows (default all) of an nmod_mat as a numpy int64 array."""
    rows = matrix.nrows() if rows is None else rows
    cols = matrix.ncols()
    return np.array([[int(matrix[i, j]) for j in range(cols)] for i in range(rows)],
                    dtype=np.int64).reshape(rows, cols)


def _pivots(reduced: flint.nmod_mat, rank: int) -> list[int]:
    """Pivot columns of a reduced row echelon form: each row's first nonzero (one pass over the
    columns, since they increase row by row)."""
    pivots = []
    c = 0
    for i in range(rank):
        while reduced[i, c] == 0:
            c += 1
        pivots.append(c)
        c += 1
    return pivots


def pivot_columns(matrix, prime: int = PRIME, stop_after: int | None = None) -> list[int]:
    """Columns that hold pivots in a row echelon form of `matrix` (columns taken left to right):
    the first maximal set of independent columns. `stop_after` keeps only those up to that
    column index (they do not depend on the columns after it)."""
    a = np.asarray(matrix)
    if a.size == 0:
        return []
    if stop_after is not None:
        a = a[:, : stop_after + 1]
    reduced, rank = to_nmod(a, prime).rref()
    return _pivots(reduced, rank)


def solve(a, b, prime: int = PRIME) -> np.ndarray | None:
    """Solve a x = b for square a over Z_p; None if a is singular."""
    try:
        x = to_nmod(a, prime).solve(to_nmod(b, prime))
    except ZeroDivisionError:
        return None
    return from_nmod(x)


def independent_rows(matrix, prime: int = PRIME) -> list[int]:
    """Rows (in order) that are independent of the rows before them."""
    return pivot_columns(np.asarray(matrix).T, prime)


def left_solution_support(matrix, num_excess: int, num_target: int,
                          prime: int = PRIME, columns: list[int] | None = None) -> list[int] | None:
    """For a matrix [E | T | ...] with independent rows whose span reduces T, the rows used by
    the unique Y with Y E = 0 and Y T = I. `columns`: the pivot columns of [E | T] when known
    (they depend only on the row space: those of any matrix with the same rows' span)."""
    a = np.asarray(matrix)[:, : num_excess + num_target] % prime
    if columns is None:
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


def row_reduce(matrix, prime: int = PRIME) -> tuple[np.ndarray, list[int]]:
    """Reduced row echelon form over Z_p (its nonzero rows) and its pivot columns."""
    reduced, rank = to_nmod(matrix, prime).rref()
    return from_nmod(reduced, rank), _pivots(reduced, rank)


def null_space(matrix, prime: int = PRIME) -> np.ndarray:
    """A basis (columns) of {x : matrix x = 0} over Z_p: one column per free column f of the
    reduced row echelon form, 1 at f and 0 at the other free columns."""
    reduced, pivots = row_reduce(matrix, prime)
    n = np.asarray(matrix).shape[1]
    free = [c for c in range(n) if c not in pivots]
    basis = np.zeros((n, len(free)), dtype=np.int64)
    for j, f in enumerate(free):
        basis[f, j] = 1
        for i, p in enumerate(pivots):
            basis[p, j] = (-reduced[i, f]) % prime
    return basis
