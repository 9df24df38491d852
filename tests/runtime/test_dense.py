"""Small dense linear algebra (solvergen/runtime/dense.py) against LAPACK and numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from solvergen.runtime import dense


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_small_inverse_and_solve(n):
    rng = np.random.default_rng(n)
    m = torch.from_numpy(rng.normal(size=(500, n, n)))
    m[3] = 0  # singular
    rhs = torch.from_numpy(rng.normal(size=(500, n)))
    inverse, invertible = dense.small_inverse(m)
    assert not invertible[3] and invertible[torch.arange(500) != 3].all()
    good = invertible
    torch.testing.assert_close(inverse[good], torch.linalg.inv(m[good]), rtol=1e-8, atol=1e-8)
    x = dense.small_solve(m, rhs)
    torch.testing.assert_close(x[good], torch.linalg.solve(m[good], rhs[good]), rtol=1e-8, atol=1e-8)
    assert not torch.isfinite(x[3]).all()


@pytest.mark.parametrize("n", [2, 3, 9])
def test_gram_solve_against_a_dense_reference(n):
    """gram^-1 rhs, invertibility, and the condition bound >= cond_2 of the column-equilibrated J
    (both branches: closed form up to 3 x 3, Cholesky beyond)."""
    rng = np.random.default_rng(10 + n)
    jacobian = rng.normal(size=(300, n + 4, n)) * np.geomspace(1e-3, 1e3, n)  # badly scaled columns
    gram = torch.from_numpy(jacobian.transpose(0, 2, 1) @ jacobian)
    rhs = torch.from_numpy(rng.normal(size=(300, n)))
    solution, invertible, condition = dense.gram_solve(gram, rhs)
    assert invertible.all()
    torch.testing.assert_close(solution, torch.linalg.solve(gram, rhs), rtol=1e-7, atol=0)
    equilibrated = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    reference = np.linalg.cond(equilibrated)
    assert (condition.numpy() >= reference * (1 - 1e-9)).all()
    assert (condition.numpy() <= reference * n * (1 + 1e-9)).all()  # a bound within a factor N


def test_cholesky_by_entries_equals_lapack():
    """The compiled backward's Cholesky (entry by entry) against LAPACK's, run eagerly."""
    jacobian = torch.randn(64, 16, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gram = jacobian.transpose(1, 2) @ jacobian
    gram[5] = -gram[5]  # not positive definite
    gram[6, 2, 2] = float("nan")
    inverse, info = dense.inverse_cholesky_factor_by_entries(gram)
    reference, reference_info = dense.inverse_cholesky_factor(gram)
    assert torch.equal(info == 0, reference_info == 0) and not (info[5] == 0 or info[6] == 0)
    good = info == 0
    torch.testing.assert_close(inverse[good], reference[good], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_norm1_and_matvec_against_torch(n):
    g = torch.Generator().manual_seed(n)
    m = torch.randn(50, n, n, dtype=torch.float64, generator=g)
    v = torch.randn(50, n, dtype=torch.float64, generator=g)
    torch.testing.assert_close(dense.norm1(m), torch.linalg.matrix_norm(m, ord=1), rtol=1e-15, atol=0)
    torch.testing.assert_close(dense.matvec(m, v), (m @ v.unsqueeze(-1)).squeeze(-1), rtol=1e-14, atol=1e-14)


def test_equilibration_is_exact_and_keeps_the_inertia():
    """Scales are powers of two; the scaled matrix has rows and columns whose largest entry is
    within a factor 4 of 1 (entries from 1e-16 to 1e16 before); the symmetric scaling keeps the
    signs of the eigenvalues; zero and non-finite rows keep the scale 1."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(200, 4, 4, dtype=torch.float64, generator=g))
    values = torch.randn(200, 4, dtype=torch.float64, generator=g)
    spread = torch.diag_embed(10.0 ** torch.randint(-8, 9, (200, 4), generator=g).to(torch.float64))
    k = spread @ q @ torch.diag_embed(values) @ q.transpose(-1, -2) @ spread  # congruent: same inertia
    rows, columns = dense.equilibrate(k)
    for scale in (rows, columns):
        assert (torch.frexp(scale).mantissa == 0.5).all()
    scaled = k * rows.unsqueeze(-1) * columns.unsqueeze(-2)
    for largest in (scaled.abs().amax(-1), scaled.abs().amax(-2)):
        assert (largest > 0.25).all() and (largest < 4).all()
    d, _ = dense.equilibrate(k, symmetric=True)
    inertia = torch.linalg.eigvalsh(k * d.unsqueeze(-1) * d.unsqueeze(-2)) < 0
    assert ((inertia.sum(-1)) == (values < 0).sum(-1)).all()
    zero = torch.zeros(1, 3, 3, dtype=torch.float64)
    zero[0, 0, 0] = float("inf")
    for scale in dense.equilibrate(zero):
        assert (scale == 1).all()
