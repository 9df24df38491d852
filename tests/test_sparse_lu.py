"""The template's fixed-pivot sparse elimination (solvergen/sparse_lu.py): the plan, evaluated level
by level, solves random sparse systems like numpy; in the generated solvers it agrees with LAPACK
on the rows it trusts and hands the others to LAPACK."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROBLEMS, generated_module

import geometry
from solvergen.runtime import forward
from solvergen.runtime import template as template_stage
from solvergen.sparse_lu import plan_sparse_lu

# The problems whose template is sparse enough for the sparse elimination (SparseLU.worthwhile).
SPARSE_PROBLEMS = [
    name for name in PROBLEMS
    if generated_module(name).PLAN.template is not None and generated_module(name).PLAN.template.sparse_lu is not None
]


def run_plan(plan, entries, num_reducible, num_basis):
    """The plan evaluated as the generated code does (levels: all reads, then all writes), on
    template entries [count, nonzeros]: X [count, num_reducible, num_basis]."""
    values = np.zeros((plan.slots + 1, entries.shape[0]))
    values[list(plan.template_slots)] = entries.T
    for level in plan.forward + plan.upward:
        f = values[list(level.column)] / values[list(level.pivot)]
        update = f[list(level.factor)] * values[list(level.source)]
        np.subtract.at(values, list(level.target), update)
    x = values[list(plan.numerators)].reshape(num_reducible, num_basis, -1)
    return (x / values[list(plan.denominators)][:, None]).transpose(2, 0, 1)


@pytest.mark.parametrize("seed", range(6))
def test_plan_solves_random_sparse_systems(seed):
    rng = np.random.default_rng(seed)
    rows, num_excess, num_reducible, num_basis = 12, 8, 4, 5
    cols = rows + num_basis
    while True:  # a random pattern whose square block is structurally nonsingular
        pattern = rng.random((rows, cols)) < 0.3
        pattern[np.arange(rows), rng.permutation(rows)] = True
        pattern[:, rows:] |= rng.random((rows, num_basis)) < 0.5
        positions = np.flatnonzero(pattern)
        entries = rng.standard_normal((20, len(positions)))
        dense = np.zeros((20, rows * cols))
        dense[:, positions] = entries
        dense = dense.reshape(20, rows, cols)
        if np.linalg.matrix_rank(dense[0, :, :rows]) == rows:
            break
    samples = rng.standard_normal((8, len(positions)))
    sample_templates = np.zeros((8, rows * cols))
    sample_templates[:, positions] = samples
    plan = plan_sparse_lu(positions, (rows, cols), num_excess, num_reducible, sample_templates.reshape(8, rows, cols))
    expected = np.linalg.solve(dense[:, :, :rows], dense[:, :, rows:])[:, num_excess:]
    got = run_plan(plan, entries, num_reducible, num_basis)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-7 * np.abs(expected).max())
    # Structure only (no samples) is a valid plan too.
    plain = plan_sparse_lu(positions, (rows, cols), num_excess, num_reducible)
    np.testing.assert_allclose(run_plan(plain, entries, num_reducible, num_basis), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def template_coefficients(module, params, monkeypatch):
    """The coefficients the solver fills its template with, for a batch of parameters."""
    captured = []
    original = template_stage.eigen_candidates

    def capture(c, template, tables, method):
        captured.append(c)
        return original(c, template, tables, method)

    with monkeypatch.context() as patch:
        patch.setattr(template_stage, "eigen_candidates", capture)
        with torch.no_grad():
            module.Solver()(params)
    return torch.cat(captured)


def template_tables(module, c):
    return forward.tensors(module.PLAN, c.device, c.dtype)["template"]


def test_sparse_elimination_is_generated_where_it_pays():
    assert "p3p" in SPARSE_PROBLEMS  # 140 updates against 9,700 for a dense LU
    assert "relpose_5pt_nullspace" not in SPARSE_PROBLEMS  # a dense template: LAPACK


@pytest.mark.parametrize("name", SPARSE_PROBLEMS)
def test_sparse_elimination_matches_lapack(name, monkeypatch):
    module = generated_module(name)
    template = module.PLAN.template
    params, _ = geometry.INSTANCES[name](500, np.random.default_rng(31))
    c = template_coefficients(module, torch.from_numpy(params), monkeypatch)
    tables = template_tables(module, c)
    dense, dense_ok = template_stage.dense_elimination(c, template, tables)
    sparse, trusted = template_stage.sparse_elimination(c, template, tables)
    assert dense_ok.all()
    assert trusted.double().mean() >= 0.9  # the rest goes to LAPACK: correct, but slower
    scale = dense.abs().amax(dim=(1, 2), keepdim=True)
    difference = ((sparse - dense).abs() / scale)[trusted].amax(dim=(1, 2))
    assert difference.median() < 1e-12 and difference.max() < 1e-6, difference.max()
    combined, solved = template_stage.eliminate(c, template, tables)
    assert solved.all()
    torch.testing.assert_close(combined[~trusted], dense[~trusted], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(combined[trusted], sparse[trusted], rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in SPARSE_PROBLEMS if generated_module(n).PLAN.template.sparse_lu.forward])
def test_untrusted_rows_go_to_lapack(name, monkeypatch):
    """A zero pivot (here: its coefficient set to zero) and a NaN entry are not trusted; the zero
    pivot's row is solved by LAPACK, the NaN row fails alone."""
    module = generated_module(name)
    template = module.PLAN.template
    params, _ = geometry.INSTANCES[name](8, np.random.default_rng(32))
    c = template_coefficients(module, torch.from_numpy(params), monkeypatch)
    tables = template_tables(module, c)
    first_pivot = template.sparse_lu.forward[0].pivot[0]
    entry = template.sparse_lu.template_slots.index(first_pivot)
    c[1, template.sources[entry]] = 0.0
    c[2, template.sources[-1]] = float("nan")
    _, trusted = template_stage.sparse_elimination(c, template, tables)
    assert not trusted[1] and not trusted[2]
    dense, dense_ok = template_stage.dense_elimination(c, template, tables)
    x, solved = template_stage.eliminate(c, template, tables)
    assert solved[1] and dense_ok[1]
    torch.testing.assert_close(x[1], dense[1], rtol=1e-10, atol=1e-12)
    assert not (solved[2] and torch.isfinite(x[2]).all())  # the caller masks either
    keep = [0, 3, 4, 5, 6, 7]
    assert solved[keep].all() and torch.isfinite(x[keep]).all()
