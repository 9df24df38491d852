"""The template stage (solvergen/runtime/template.py): the runtime's fixed-pivot sparse elimination
against LAPACK and numpy on random sparse templates, the read-off of the unknowns from exact
eigenvectors (monomial vectors) of hand-made templates, the quadratic read-off of even
templates, the whole stage on a template with known roots, and when the stage runs compiled."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import generated_module

import solvergen
from solvergen import render, runtime
from solvergen.runtime import template as template_stage
from solvergen.sparse_lu import plan_sparse_lu

CPU = torch.device("cpu")

# -- Sparse elimination ----------------------------------------------------------------------

ROWS, EXCESS, REDUCED, BASIS = 12, 8, 4, 5  # a square [E | T] block of 12, 5 basis columns
COLS = ROWS + BASIS


def random_pattern(rng):
    """Flat nonzero positions of a random sparse template whose square block is structurally
    nonsingular (as in tests/test_sparse_lu.py)."""
    while True:
        pattern = rng.random((ROWS, COLS)) < 0.3
        pattern[np.arange(ROWS), rng.permutation(ROWS)] = True
        pattern[:, ROWS:] |= rng.random((ROWS, BASIS)) < 0.5
        positions = np.flatnonzero(pattern)
        probe = np.zeros(ROWS * COLS)
        probe[positions] = rng.standard_normal(len(positions))
        if np.linalg.matrix_rank(probe.reshape(ROWS, COLS)[:, :ROWS]) == ROWS:
            return positions


def runtime_template(positions, plan):
    """A runtime Template whose entry k is coefficient k (c = the template's entries), with the
    compile-time plan converted by the renderer; no action matrix or read-off."""
    lu = render._sparse_lu_plan(plan)
    return runtime.Template(
        unknowns=1, shape=(ROWS, COLS), square=EXCESS + REDUCED, num_reduced=REDUCED, basis=BASIS,
        positions=tuple(int(p) for p in positions), sources=tuple(range(len(positions))),
        action_constant=(), action_rows=(), action_reduced=(), action_scale=(),
        num_read=0, read_monomial=(), read_basis=(), read_value=(), sparse_lu=lu,
    )


def numpy_reference(c, positions):
    """X by numpy.linalg.solve on the dense templates."""
    dense = np.zeros((len(c), ROWS * COLS))
    dense[:, positions] = c
    dense = dense.reshape(-1, ROWS, COLS)
    return np.linalg.solve(dense[:, :, :ROWS], dense[:, :, ROWS:])[:, EXCESS:]


def relative_difference(x, reference):
    return np.abs(x - reference).max(axis=(1, 2)) / np.abs(reference).max(axis=(1, 2))


@pytest.mark.parametrize("samples", [True, False], ids=["threshold", "structure"])
@pytest.mark.parametrize("seed", range(4))
def test_sparse_elimination_against_lapack(seed, samples):
    """On random sparse templates (plans with the threshold test on sample templates, and by
    structure only): most rows are trusted, and there X equals numpy's solve and the runtime's
    LAPACK path to 1e-10 relative to its largest entry. `eliminate` returns the sparse X on
    trusted rows and LAPACK's on the others."""
    rng = np.random.default_rng(seed)
    positions = random_pattern(rng)
    sample_templates = None
    if samples:
        sample_templates = np.zeros((8, ROWS * COLS))
        sample_templates[:, positions] = rng.standard_normal((8, len(positions)))
        sample_templates = sample_templates.reshape(8, ROWS, COLS)
    template = runtime_template(positions, plan_sparse_lu(positions, (ROWS, COLS), EXCESS, REDUCED, sample_templates))
    tables = template_stage.tensors(template, CPU, torch.float64)
    c = rng.standard_normal((1000, len(positions)))
    reference = numpy_reference(c, positions)
    c = torch.from_numpy(c)

    x, trusted = template_stage.sparse_elimination(c, template, tables)
    dense, dense_ok = template_stage.dense_elimination(c, template, tables)
    assert x.shape == dense.shape == (1000, REDUCED, BASIS)
    assert dense_ok.all()
    assert trusted.double().mean() >= 0.8, trusted.double().mean()
    assert relative_difference(dense.numpy(), reference).max() <= 1e-10
    trusted = trusted.numpy()
    assert relative_difference(x.numpy()[trusted], reference[trusted]).max() <= 1e-10
    assert relative_difference(x.numpy()[trusted], dense.numpy()[trusted]).max() <= 1e-10

    combined, solved = template_stage.eliminate(c, template, tables)
    assert solved.all()
    assert torch.equal(combined[trusted], x[trusted])
    assert torch.equal(combined[~trusted], dense[~trusted])


def test_untrusted_rows_are_handed_to_lapack():
    """A zero pivot (its row is infinite or NaN) and a pivot 1e-7 of its size (every value finite,
    but a forward factor far beyond GROWTH_LIMIT) are not trusted: `eliminate` solves those rows
    with LAPACK, equal to numpy's solve. A NaN entry fails its own row only."""
    rng = np.random.default_rng(7)
    positions = random_pattern(rng)
    template = runtime_template(positions, plan_sparse_lu(positions, (ROWS, COLS), EXCESS, REDUCED))
    assert template.sparse_lu.forward  # there is a forward elimination to break
    tables = template_stage.tensors(template, CPU, torch.float64)
    c = rng.standard_normal((6, len(positions)))
    first_pivot = template.sparse_lu.template_slots.index(template.sparse_lu.forward[0].pivot[0])
    c[1, first_pivot] = 0.0
    c[2, first_pivot] *= 1e-7
    c[3, -1] = np.nan
    reference = numpy_reference(c, positions)
    c = torch.from_numpy(c)

    x, trusted = template_stage.sparse_elimination(c, template, tables)
    assert trusted.tolist()[1:4] == [False, False, False]
    assert torch.isfinite(x[2]).all()  # distrusted for its growth alone
    combined, solved = template_stage.eliminate(c, template, tables)
    good = [0, 1, 2, 4, 5]
    assert solved[good].all()
    assert relative_difference(combined.numpy()[good], reference[good]).max() <= 1e-10
    assert not (solved[3] and torch.isfinite(combined[3]).all())  # the caller masks either


# -- Read-off --------------------------------------------------------------------------------


def read_off_template(pairs, unknowns, basis, reduced, even=False, action_read=-1):
    """A Template with read-off pairs only (read monomial, basis index, value index)."""
    monomial, basis_index, value = zip(*pairs)
    return runtime.Template(
        unknowns=unknowns, shape=(1, 1), square=0, num_reduced=reduced, basis=basis,
        positions=(), sources=(), action_constant=(), action_rows=(), action_reduced=(), action_scale=(),
        num_read=max(monomial) + 1, read_monomial=monomial, read_basis=basis_index, read_value=value,
        action_read=action_read, even=even,
    )


def exact_eigenvectors(basis_values, reduced_values, rng):
    """From the basis and reduced monomials at each solution ([B, basis, S], [B, T, S], S = basis):
    the eigenvectors (the monomial vectors, each scaled by a random factor of either sign) and
    the reduced block X with -X v = the reduced monomials for each of them."""
    batch, _, count = basis_values.shape
    scale = rng.uniform(0.2, 5.0, size=(batch, 1, count)) * rng.choice([-1.0, 1.0], size=(batch, 1, count))
    reduced = -reduced_values @ np.linalg.inv(basis_values)
    return torch.from_numpy(basis_values * scale), torch.from_numpy(reduced)


# Unknowns (x, y); basis [1, x, y]; reduced [x^2, xy, y^2] (value indices 3, 4, 5).
# Read x: 1 -> x, x -> x^2, y -> xy; read y: 1 -> y, x -> xy, y -> y^2.
PLAIN_PAIRS = [(0, 0, 1), (0, 1, 3), (0, 2, 4), (1, 0, 2), (1, 1, 4), (1, 2, 5)]


@pytest.mark.parametrize("magnitude", [1.0, 1e3])
def test_read_off_from_monomial_vectors(magnitude):
    """Eigenvectors that are the basis monomials at three solutions (any scale and sign) read off
    those solutions, also far from the origin; with `action_read` the action's column is the
    eigenvalue."""
    rng = np.random.default_rng(3)
    solutions = rng.uniform(-1, 1, size=(50, 3, 2)) * magnitude  # [B, S, (x, y)]
    x, y = solutions[..., 0], solutions[..., 1]
    basis_values = np.stack([np.ones_like(x), x, y], 1)  # [B, basis, S]
    reduced_values = np.stack([x * x, x * y, y * y], 1)
    vectors, reduced = exact_eigenvectors(basis_values, reduced_values, rng)
    eigenvalues = torch.from_numpy(x)  # the action is x
    template = read_off_template(PLAIN_PAIRS, 2, 3, 3)
    tables = template_stage.tensors(template, CPU, torch.float64)
    got = template_stage.read_off(eigenvalues, vectors, reduced, template, tables)
    np.testing.assert_allclose(got.numpy(), solutions, rtol=1e-10, atol=1e-10 * magnitude)

    acting = read_off_template(PLAIN_PAIRS, 2, 3, 3, action_read=0)
    got = template_stage.read_off(eigenvalues + 0.5, vectors, reduced, acting, tables)
    np.testing.assert_allclose(got[..., 0].numpy(), x + 0.5, rtol=0, atol=0)
    np.testing.assert_allclose(got[..., 1].numpy(), y, rtol=1e-10, atol=1e-10 * magnitude)


# Even template, unknowns (x, y): basis [1, y^2]; reduced [x^2, xy, x^2 y^2, x y^3, y^4] (value
# indices 2..6); read x^2: 1 -> x^2, y^2 -> x^2 y^2; xy: 1 -> xy, y^2 -> x y^3; y^2: 1 -> y^2, y^2 -> y^4.
EVEN_PAIRS = [(0, 0, 2), (0, 1, 4), (1, 0, 3), (1, 1, 5), (2, 0, 1), (2, 1, 6)]


def sign_of_largest(solutions):
    """+-x with the sign that makes its largest |x_k| positive."""
    k = np.abs(solutions).argmax(-1)
    return solutions * np.sign(np.take_along_axis(solutions, k[..., None], -1))


def test_even_read_off_from_monomial_vectors():
    """An even template reads x x^T off the eigenvectors: each pair +-x comes back as the sign
    that makes its largest entry positive."""
    rng = np.random.default_rng(4)
    solutions = rng.uniform(-2, 2, size=(50, 2, 2))
    x, y = solutions[..., 0], solutions[..., 1]
    basis_values = np.stack([np.ones_like(x), y * y], 1)
    reduced_values = np.stack([x * x, x * y, x * x * y * y, x * y**3, y**4], 1)
    vectors, reduced = exact_eigenvectors(basis_values, reduced_values, rng)
    template = read_off_template(EVEN_PAIRS, 2, 2, 5, even=True)
    tables = template_stage.tensors(template, CPU, torch.float64)
    got = template_stage.read_off(torch.from_numpy(y * y), vectors, reduced, template, tables)
    np.testing.assert_allclose(got.numpy(), sign_of_largest(solutions), rtol=1e-10, atol=1e-10)


def test_from_quadratics():
    """x from the upper triangle of x x^T (row by row): +-x with the sign of the column of the
    largest diagonal entry; NaN for the whole point where that entry is not positive (an
    imaginary pair, or zero)."""
    rng = np.random.default_rng(5)
    n = 3
    x = rng.normal(size=(40, 4, n))
    x[0, 0] = [0.5, -3.0, 1.0]  # the largest diagonal entry is x_1^2: x comes back negated
    upper = [(i, j) for i in range(n) for j in range(i, n)]

    def quadratics(points):
        return np.stack([points[..., i] * points[..., j] for i, j in upper], -1)

    q = quadratics(x)
    q[1, 2] = -quadratics(x[1:2, 2:3])[0, 0]  # x = i v: G = -v v^T, every diagonal negative
    q[3, 1] = 0.0
    got = template_stage.from_quadratics(torch.from_numpy(q), n).numpy()
    expected = sign_of_largest(x)
    np.testing.assert_allclose(got[0, 0], [-0.5, 3.0, -1.0], rtol=1e-14)
    assert np.isnan(got[1, 2]).all() and np.isnan(got[3, 1]).all()
    real = np.ones((40, 4), dtype=bool)
    real[1, 2] = real[3, 1] = False
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-12, atol=1e-14)


# -- The stage on a generated plan -----------------------------------------------------------


@pytest.fixture(scope="module")
def quadratic(tmp_path_factory):
    """The plan of a * z^2 + b * z + c = 0: the 1 x 3 template c0 z^2 + c1 z + c2 (basis [z, 1])."""
    folder = tmp_path_factory.mktemp("quadratic")
    spec = folder / "quadratic.py"
    spec.write_text(
        "import sympy as sp\nfrom solvergen import Problem\nz, a, b, c = sp.symbols('z a b c')\n"
        "problem = Problem('quadratic', [z], [a, b, c], [a*z**2 + b*z + c])\n"
    )
    return solvergen.load(spec, out_dir=folder / "generated").plan


@pytest.mark.parametrize("method", ["lapack", "charpoly", "closed_form"])
def test_eigen_candidates_of_a_quadratic(method, quadratic):
    """The template c0 z^2 + c1 z + c2 (basis [z, 1]): its candidates are the roots of that
    quadratic; complex roots come with complex eigenvalues, and c0 = 0 (a zero pivot, which
    LAPACK finds singular too) leaves the row unusable."""
    template = quadratic.template
    assert template.shape == (1, 3) and template.basis == 2 and template.unknowns == 1
    tables = template_stage.tensors(template, CPU, torch.float64)
    rng = np.random.default_rng(6)
    roots = np.sort(rng.uniform(-3, 3, size=(200, 2)), axis=-1)
    lead = rng.uniform(0.5, 2, size=200) * rng.choice([-1, 1], size=200)
    c = np.stack([lead, -lead * roots.sum(-1), lead * roots.prod(-1)], -1)
    c = np.concatenate([c, [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])  # z^2 + 1; a linear "quadratic"
    z, eigenvalues, ok = template_stage.eigen_candidates(torch.from_numpy(c), template, tables, method)
    assert z.shape == (202, 2, 1)
    assert ok[:201].all() and not ok[201]
    found = np.sort(z[:200, :, 0].numpy(), axis=-1)
    np.testing.assert_allclose(found, roots, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.sort(eigenvalues[:200].real.numpy(), -1), roots, rtol=1e-9, atol=1e-9)
    assert (eigenvalues[200].imag.abs() > 0.5).all()


# -- Compiled or not -------------------------------------------------------------------------


def test_compiled_stage_decision():
    """The stage runs compiled only with compile=True, the closed-form eigenpairs (explicit, or
    eig="auto" which compile=True resolves to it for action matrices up to 4 x 4) and a batch of
    2 or more."""
    small = generated_module("p3p")  # 4 x 4 action matrix
    large = generated_module("relpose_5pt_nullspace")  # 10 x 10
    c = torch.zeros(8, 12, dtype=torch.float64)
    assert template_stage.compiled_stage(small.Solver(compile=True, eig="closed_form"), c)
    assert template_stage.compiled_stage(small.Solver(compile=True), c)  # auto -> closed_form
    assert template_stage.compiled_stage(small.Solver(compile=True), c[:2])
    assert not template_stage.compiled_stage(small.Solver(compile=True), c[:1])
    assert not template_stage.compiled_stage(small.Solver(compile=True), c[:0])
    assert not template_stage.compiled_stage(small.Solver(compile=True, eig="lapack"), c)
    assert not template_stage.compiled_stage(small.Solver(compile=True, eig="charpoly"), c)
    assert not template_stage.compiled_stage(small.Solver(eig="closed_form"), c)
    assert not template_stage.compiled_stage(small.Solver(), c)
    assert not template_stage.compiled_stage(large.Solver(compile=True), c)  # auto -> lapack on the CPU
