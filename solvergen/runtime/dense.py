"""Small dense linear algebra per instance: closed forms up to 3 x 3 (no LAPACK call per
matrix), LAPACK beyond; the Gram solve of the least-squares IFT backward."""
from __future__ import annotations

import functools

import torch

from . import parallel


def adjugate(m):
    """Adjugate and determinant of [..., n, n], n <= 3."""
    n = m.shape[-1]
    if n == 1:
        return torch.ones_like(m), m[..., 0, 0]
    if n == 2:
        a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
        return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2), a * d - b * c
    r0, r1, r2 = m[..., 0, :], m[..., 1, :], m[..., 2, :]
    c0 = torch.linalg.cross(r1, r2)
    columns = torch.stack([c0, torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)], -1)
    return columns, (r0 * c0).sum(-1)


EQUILIBRATION_SWEEPS = 8  # Ruiz sweeps: each halves the spread (in orders of magnitude) of the rows and columns


def equilibrate(m, symmetric=False):
    """Diagonal scalings r, c [..., n] (powers of two: scaling by them is exact) with which
    diag(r) m diag(c) has rows and columns whose largest absolute entry is about 1 (Ruiz's
    iteration). `symmetric`: r = c, a congruence, which keeps the inertia (Sylvester). Zero or
    non-finite rows and columns keep the scale 1. A KKT matrix with a Hessian entry 1e16 next
    to entries of order 1 (an entropy's tau / y at y = 1e-16) has eigenvalues spread over 16
    orders of magnitude; equilibrated, over about one."""
    rows = torch.ones_like(m[..., 0])
    columns = torch.ones_like(m[..., 0])
    magnitude = m.abs()
    for _ in range(EQUILIBRATION_SWEEPS):
        scaled = magnitude * rows.unsqueeze(-1) * columns.unsqueeze(-2)
        row_max, column_max = scaled.amax(-1), scaled.amax(-2)
        if symmetric:
            column_max = row_max
        rows = rows * _power_of_two_rsqrt(row_max)
        columns = rows if symmetric else columns * _power_of_two_rsqrt(column_max)
    return rows, columns


def _power_of_two_rsqrt(value):
    """2^round(-log2(value) / 2): about 1/sqrt(value), exactly representable; 1 where value is
    0 or not finite."""
    usable = (value > 0) & torch.isfinite(value)
    exponent = torch.round(-0.5 * torch.log2(torch.where(usable, value, torch.ones_like(value))))
    return torch.exp2(exponent.clamp(-500, 500))


def norm1(m):
    """The 1-norm (largest absolute column sum) of [..., n, n]. Up to 3 x 3 by slices: a
    reduction over a dimension of 2 or 3 costs more than the arithmetic (batch 1,024, 2 x 2:
    51 -> 12 us)."""
    if m.shape[-1] > 3:
        return m.abs().sum(-2).amax(-1)
    columns = functools.reduce(torch.add, m.abs().unbind(-2))
    return functools.reduce(torch.maximum, columns.unbind(-1))


def matvec(m, v):
    """m v for [..., n, n], [..., n]; up to 3 x 3 by slices (see `norm1`)."""
    if m.shape[-1] > 3:
        return (m @ v.unsqueeze(-1)).squeeze(-1)
    return functools.reduce(torch.add, (m * v.unsqueeze(-2)).unbind(-1))


def small_solve(m, rhs):
    """m x = rhs for [..., n, n], [..., n]; singular systems give non-finite x."""
    if m.shape[-1] <= 3:
        cofactors, determinant = adjugate(m)
        return (cofactors @ rhs.unsqueeze(-1)).squeeze(-1) / determinant.unsqueeze(-1)
    return torch.linalg.solve_ex(m, rhs.unsqueeze(-1))[0].squeeze(-1)


def small_inverse(m):
    """Inverse of [..., n, n] and whether it exists."""
    if m.shape[-1] <= 3:
        cofactors, determinant = adjugate(m)
        return cofactors / determinant[..., None, None], determinant != 0
    inverse, info = parallel.per_matrix(torch.linalg.inv_ex, m)
    return inverse, info == 0


def gram_solve(gram, rhs):
    """gram^-1 rhs for symmetric positive definite [P, N, N], [P, N]; whether gram is invertible,
    and an upper bound of the condition number cond_2(J D) of the matrix J whose Gram it is,
    after column equilibration (D = diag(gram)^-1/2, so that D gram D has a unit diagonal).

    No explicit equilibration is needed: the Cholesky factorization and the closed-form inverse
    are invariant under diagonal scaling. Up to 3 x 3 in closed form, with the bound
    sqrt(||G'||_F ||G'^-1||_F), G' = D gram D. Larger: gram = L L^T by Cholesky and L^-1, with the
    bound sqrt(N trace(G'^-1)) = sqrt(N) ||L^-1 D^-1||_F (||G'||_2 <= trace(G') = N).
    """
    diagonal = torch.diagonal(gram, dim1=-2, dim2=-1)  # D^-2
    if gram.shape[-1] <= 3:
        inverse, invertible = small_inverse(gram)
        scale = diagonal.rsqrt()
        outer = scale.unsqueeze(-1) * scale.unsqueeze(-2)
        condition = (torch.linalg.matrix_norm(gram * outer) * torch.linalg.matrix_norm(inverse / outer)).sqrt()
        return (inverse @ rhs.unsqueeze(-1)).squeeze(-1), invertible, condition
    # One batched call on this thread: about 1 us of LAPACK per matrix, less than the thread
    # pool's dispatch saves (5-point natural, backward at batch 1024: 1.10-1.23x faster so).
    inverse, info = inverse_cholesky_factor(gram)
    solution = (inverse.transpose(-1, -2) @ (inverse @ rhs.unsqueeze(-1))).squeeze(-1)
    trace = (inverse.square().sum(dim=-2) * diagonal).sum(dim=-1)  # trace(G'^-1)
    return solution, info == 0, (gram.shape[-1] * trace).sqrt()


def inverse_cholesky_factor(gram):
    """L^-1 with gram = L L^T, and LAPACK's info (0: positive definite)."""
    if torch.compiler.is_compiling():
        return inverse_cholesky_factor_by_entries(gram)
    factor, info = torch.linalg.cholesky_ex(gram)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device).expand_as(factor)
    return torch.linalg.solve_triangular(factor, eye, upper=False), info


def inverse_cholesky_factor_by_entries(gram):
    """`inverse_cholesky_factor` by the textbook recurrences, entry by entry over the batch: when
    compiled (compile=True), one fused kernel instead of two LAPACK loops over the matrices
    (5-point natural, selected backward at batch 1024: 4.3 -> 3.8 ms). Eager, it would be slower.
    info is 1 where a pivot is not positive (the other entries are then finite garbage)."""
    n = gram.shape[-1]
    g = [[gram[..., i, j] for j in range(n)] for i in range(n)]
    factor = [[None] * n for _ in range(n)]
    positive = torch.ones_like(g[0][0], dtype=torch.bool)
    for j in range(n):
        pivot = g[j][j]
        for k in range(j):
            pivot = pivot - factor[j][k] * factor[j][k]
        positive = positive & (pivot > 0)
        factor[j][j] = torch.where(pivot > 0, pivot, torch.ones_like(pivot)).sqrt()
        for i in range(j + 1, n):
            entry = g[i][j]
            for k in range(j):
                entry = entry - factor[i][k] * factor[j][k]
            factor[i][j] = entry / factor[j][j]
    inverse = [[torch.zeros_like(g[0][0])] * n for _ in range(n)]  # forward substitution
    for i in range(n):
        inverse[i][i] = 1 / factor[i][i]
        for j in range(i):
            entry = factor[i][j] * inverse[j][j]
            for k in range(j + 1, i):
                entry = entry + factor[i][k] * inverse[k][j]
            inverse[i][j] = -entry * inverse[i][i]
    rows = [torch.stack(row, dim=-1) for row in inverse]
    return torch.stack(rows, dim=-2), (~positive).to(torch.int32)
