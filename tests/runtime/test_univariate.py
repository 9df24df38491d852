"""Roots of univariate polynomials (solvergen/runtime/univariate.py): the closed forms of degree
1 to 4, and Aberth-Ehrlich iteration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from solvergen.runtime import univariate


def real_roots(coefficients):  # ascending, monic
    c = [torch.tensor([float(v)], dtype=torch.float64) for v in coefficients]
    values, real = univariate.real_roots(c)
    return np.sort(values[real].numpy())


def test_closed_form_special_polynomials():
    """Roots where the general formulas divide by zero: a biquadratic quartic (no cubic term
    after the shift), a triple root, a double root."""
    np.testing.assert_allclose(real_roots([4, 0, -5, 0, 1]), [-2, -1, 1, 2], atol=1e-12)  # (x^2 - 1)(x^2 - 4)
    np.testing.assert_allclose(real_roots([-6, 11, -6, 1]), [1, 2, 3], atol=1e-12)
    np.testing.assert_allclose(real_roots([-1, 3, -3, 1]), [1, 1, 1], atol=1e-12)  # (x - 1)^3
    np.testing.assert_allclose(real_roots([1, -2, 1]), [1, 1], atol=1e-12)
    assert len(real_roots([1, 0, 1])) == 0  # x^2 + 1
    np.testing.assert_allclose(real_roots([24, -50, 35, -10, 1]), [1, 2, 3, 4], atol=1e-10)
    np.testing.assert_allclose(real_roots([-3, 1]), [3], atol=0)  # degree 1


def test_quartic_with_widely_spread_roots():
    """Two close real roots next to a complex pair 1e5 times larger (a P3P action matrix met
    them): Ferrari's split loses digits to cancellation (it returned 6.13 and 5.45 for 5.70 and
    5.89); the Newton steps on the factorization restore them."""
    small = np.poly1d([1.0, -(5.698089 + 5.886083), 5.698089 * 5.886083])
    large = np.poly1d([1.0, 733.455274, 366.727637**2 + 482758.729485**2])
    np.testing.assert_allclose(real_roots((small * large).coeffs[::-1]), [5.698089, 5.886083], rtol=1e-9)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_real_roots_of_random_polynomials(degree):
    """Against numpy's companion-matrix roots on 2,000 random monic polynomials: the same
    number of real roots (but for near-double roots) and the same values."""
    rng = np.random.default_rng(degree)
    coefficients = rng.normal(size=(2000, degree))
    c = [torch.from_numpy(coefficients[:, k]) for k in range(degree)] + [torch.ones(2000, dtype=torch.float64)]
    values, real = univariate.real_roots(c)
    agree = 0
    for i in range(2000):
        reference = np.roots(np.concatenate([[1.0], coefficients[i, ::-1]]))
        reference = np.sort(reference.real[np.abs(reference.imag) <= 1e-9])
        ours = np.sort(values[:, i][real[:, i]].numpy())
        if len(ours) == len(reference):
            np.testing.assert_allclose(ours, reference, rtol=1e-7, atol=1e-7)
            agree += 1
    assert agree >= 0.998 * 2000, agree


def test_aberth_finds_every_complex_root():
    """polynomial_roots: all roots of degree-10 polynomials with known roots (real, complex
    pairs, clustered at 1e-3), no host synchronization (a fixed iteration count)."""
    rng = np.random.default_rng(7)
    roots = []
    for i in range(200):
        real = rng.normal(size=4)
        pair = rng.normal(size=3) + 1j * rng.uniform(0.1, 2, size=3)
        cluster = 2.0 + 1e-3 * np.arange(3) if i % 2 else rng.normal(size=3)
        roots.append(np.concatenate([real, pair, pair.conj(), cluster[:0]])[:10])
    roots = np.array(roots)
    coefficients = np.array([np.poly(r)[::-1].real for r in roots])  # ascending, monic
    found = univariate.polynomial_roots(torch.from_numpy(coefficients)).numpy()
    for ours, theirs in zip(found, roots):
        distance = np.abs(ours[:, None] - theirs[None, :])
        assert distance.min(axis=0).max() < 1e-8 * max(1, np.abs(theirs).max())
