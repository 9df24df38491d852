"""Eigenpairs of action matrices (solvergen/runtime/eig.py): LAPACK, the characteristic
polynomial with Aberth roots, and the closed form up to 4 x 4, on matrices with known spectra."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from solvergen.runtime import eig


def closed_form(matrices):
    n = matrices.shape[-1]
    return eig.closed_form(matrices, eig.closed_form_tables(n, matrices.device, matrices.dtype))


METHODS = {"lapack": eig.lapack, "charpoly": eig.charpoly, "closed_form": closed_form}


def with_spectrum(eigenvalues, rng, condition=10.0):
    """V diag(eigenvalues) V^-1 for random V of about the given condition number."""
    n = eigenvalues.shape[-1]
    u, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), n, n)))
    w, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), n, n)))
    v = u @ (np.geomspace(1, condition, n)[:, None] * w)
    return v @ (eigenvalues[..., None] * np.linalg.inv(v)), v


def check_real_eigenpairs(method, matrices, expected, rtol):
    """Every expected (real) eigenvalue is found with a real eigenvector of small residual."""
    values, vectors = METHODS[method](torch.from_numpy(matrices))
    if method == "lapack":
        vectors = vectors.real
    matrices, values, vectors = torch.from_numpy(matrices), values.numpy(), vectors.numpy()
    for a, found, v, truth in zip(matrices.numpy(), values, vectors, expected):
        real = np.abs(found.imag) <= 1e-6 * np.maximum(1, np.abs(found.real))
        for target in truth:
            k = np.argmin(np.abs(found.real - target) + np.where(real, 0, np.inf))
            assert abs(found[k].real - target) <= rtol * max(1, abs(target)), (found, truth)
            residual = np.linalg.norm(a @ v[:, k] - found[k].real * v[:, k]) / np.linalg.norm(v[:, k])
            assert residual <= 10 * rtol * np.abs(truth).max()


@pytest.mark.parametrize("method", ["lapack", "charpoly", "closed_form"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_known_real_spectra(method, n):
    rng = np.random.default_rng(n)
    spectrum = rng.uniform(-3, 3, size=(300, n))
    matrices, _ = with_spectrum(spectrum, rng)
    check_real_eigenpairs(method, matrices, spectrum, rtol=1e-8)


@pytest.mark.parametrize("method", ["lapack", "charpoly"])
def test_known_spectra_of_larger_matrices(method):
    """10 x 10 (the 5-point's size): 6 real eigenvalues (at least 0.6 apart: the characteristic
    polynomial's roots lose digits when they cluster; Newton polishes the solutions) and two
    complex pairs."""
    rng = np.random.default_rng(11)
    real = np.linspace(-3, 3, 6) + rng.uniform(-0.2, 0.2, size=(200, 6))
    pairs = rng.uniform(-2, 2, size=(200, 2)) + 1j * rng.uniform(0.5, 2, size=(200, 2))
    spectrum = np.concatenate([real, pairs, pairs.conj()], axis=1)
    matrices, _ = with_spectrum(spectrum, rng)
    check_real_eigenpairs(method, matrices.real, real, rtol=1e-7)


@pytest.mark.parametrize("method", ["lapack", "charpoly", "closed_form"])
def test_clustered_eigenvalues(method):
    """Eigenvalues 1e-4 apart: each still found to about sqrt(eps) / separation."""
    rng = np.random.default_rng(12)
    cluster = [np.full(200, 1.0), np.full(200, 1.0 + 1e-4)]
    spectrum = np.stack(cluster + [rng.uniform(2, 3, 200), rng.uniform(-3, -2, 200)], 1)
    matrices, _ = with_spectrum(spectrum, rng)
    check_real_eigenpairs(method, matrices, spectrum, rtol=1e-6)


@pytest.mark.parametrize("method", ["lapack", "charpoly", "closed_form"])
@pytest.mark.parametrize("scale", [1e-8, 1e8])
def test_badly_scaled_matrices(method, scale):
    """The same spectra times 1e-8 and 1e8: every method is scale-invariant (it scales first)."""
    rng = np.random.default_rng(13)
    spectrum = rng.uniform(-3, 3, size=(200, 4))
    matrices, _ = with_spectrum(spectrum, rng)
    check_real_eigenpairs(method, matrices * scale, spectrum * scale, rtol=1e-8)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_closed_form_against_numpy_on_random_matrices(n):
    """Real eigenpairs of random n x n matrices against numpy: the same number of real
    eigenvalues, the same values, small residuals."""
    matrices = torch.from_numpy(np.random.default_rng(33).normal(size=(4000, n, n)))
    values, vectors = closed_form(matrices)
    real = values.imag == 0
    reference = np.linalg.eigvals(matrices.numpy())
    reference_real = np.abs(reference.imag) <= 1e-9 * np.maximum(1, np.abs(reference.real))
    assert (real.sum(-1).numpy() == reference_real.sum(-1)).mean() >= 0.999
    for ours, theirs, mask, mask_ref in zip(values.real.numpy(), reference.real, real.numpy(), reference_real):
        if mask.sum() == mask_ref.sum():
            np.testing.assert_allclose(np.sort(ours[mask]), np.sort(theirs[mask_ref]), rtol=1e-8, atol=1e-10)
    residual = (matrices @ vectors - vectors * values.real.unsqueeze(1)).norm(dim=1)
    assert residual[real].max() < 1e-10
    assert torch.allclose(vectors.norm(dim=1)[real], torch.ones(()).double())


def test_lapack_failure_gives_nan_for_that_matrix_only():
    """A matrix LAPACK cannot decompose (NaN entries) gets NaN eigenpairs; the others are fine."""
    rng = np.random.default_rng(14)
    spectrum = rng.uniform(-3, 3, size=(4, 3))
    matrices, _ = with_spectrum(spectrum, rng)
    matrices[2, 0, 0] = np.nan
    values, _ = eig.lapack(torch.from_numpy(matrices))
    assert torch.isnan(values[2].real).all()
    for i in (0, 1, 3):
        np.testing.assert_allclose(np.sort(values[i].real.numpy()), np.sort(spectrum[i]), rtol=1e-10)


def test_nan_on_failure_keeps_the_other_matrices_and_the_result_types():
    """The symmetric solver (torch.linalg.eigh) through the same per-matrix fallback."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 3, 3))
    matrices = torch.from_numpy(a + a.transpose(0, 2, 1))
    alone = torch.linalg.eigh(matrices)

    def eigh_failing_on_nan(batch):
        if torch.isnan(batch).any():
            raise RuntimeError("simulated LAPACK failure")
        return torch.linalg.eigh(batch)

    bad = matrices.clone()
    bad[1, 0, 0] = float("nan")
    values, vectors = eig.nan_on_failure(eigh_failing_on_nan, bad)
    assert values.dtype == alone[0].dtype and vectors.shape == alone[1].shape
    assert torch.isnan(values[1]).all() and torch.isnan(vectors[1]).all()
    keep = [0, 2, 3]
    assert torch.equal(values[keep], alone[0][keep]) and torch.equal(vectors[keep], alone[1][keep])
