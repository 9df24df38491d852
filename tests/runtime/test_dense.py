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
