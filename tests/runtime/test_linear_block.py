"""The linear block L x = b and the gauge (solvergen/runtime/linear.py): the QR null space and
least-norm particular solution against numpy and scipy on hand-made blocks, the inputs of the
reduced equations against the declared equations they were substituted from, the linear
residual, and the rescaling to an even or odd gauge."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import generated_module

import geometry
from solvergen.runtime import Equations, Gauge, LinearBlock, equations, forward, linear

CPU = torch.device("cpu")


def hand_made_block(rng, rows, unknowns, homogeneous, dropped=0):
    """A LinearBlock over a hand-made coefficient vector c = [entries of L, constants]: L has
    `dropped` structural zeros, its entries sit in c in a shuffled order, and b = -constants
    (shuffled rows too). Returns the block and a function c -> (L, b) in numpy, by hand."""
    positions = rng.permutation(rows * unknowns)[: rows * unknowns - dropped]
    order = rng.permutation(len(positions))  # c[order[i]] is the entry at positions[i]
    rhs_rows = () if homogeneous else tuple(int(r) for r in rng.permutation(rows))
    rhs_sources = tuple(len(positions) + i for i in range(len(rhs_rows)))
    block = LinearBlock(
        rows=tuple(range(rows)),
        block=tuple(range(unknowns)),
        null_dim=unknowns - rows,
        homogeneous=homogeneous,
        matrix_positions=tuple(int(p) for p in positions),
        matrix_sources=tuple(int(o) for o in order),
        rhs_positions=rhs_rows,
        rhs_sources=rhs_sources,
        null_mix=tuple(tuple(row) for row in rng.normal(size=(unknowns, unknowns - rows)).round(6)),
        used_parameters=(),
    )

    def matrices(c):
        L = np.zeros((len(c), rows * unknowns))
        L[:, positions] = c[:, order]
        b = np.zeros((len(c), rows))
        for row, source in zip(rhs_rows, rhs_sources):
            b[:, row] = -c[:, source]
        return L.reshape(len(c), rows, unknowns), b

    return block, matrices


@pytest.mark.parametrize("homogeneous", [False, True])
@pytest.mark.parametrize("rows, unknowns, dropped", [(1, 2, 0), (4, 6, 5), (5, 9, 0)])
def test_null_space_against_numpy(rows, unknowns, dropped, homogeneous):
    """L and b are assembled from c as the tables say; the basis is orthonormal, L N = 0, and it
    spans scipy's null space; x_p is numpy's least-norm solution of L x = b (zero when
    homogeneous); every full-rank block is reported ok. Batch 300 also runs the threaded QR."""
    rng = np.random.default_rng(rows * 10 + unknowns)
    block, matrices = hand_made_block(rng, rows, unknowns, homogeneous, dropped)
    count = 300
    size = len(block.matrix_sources) + len(block.rhs_sources)
    c_np = rng.normal(size=(count, size)) * rng.uniform(0.1, 10, size=(count, 1))
    L, b = matrices(c_np)
    tables = linear.tensors(block, CPU, torch.float64)
    matrix, rhs, null, particular, ok = linear.null_space(torch.from_numpy(c_np), block, tables)
    assert ok.all()
    np.testing.assert_array_equal(matrix.numpy(), L)
    np.testing.assert_array_equal(rhs.numpy(), b)
    assert null.shape == (count, unknowns, unknowns - rows)
    null = null.numpy()
    eye = np.eye(unknowns - rows)
    identities = np.broadcast_to(eye, null.shape[:1] + eye.shape)
    np.testing.assert_allclose(null.transpose(0, 2, 1) @ null, identities, atol=1e-12)
    size_of_L = np.linalg.norm(L, axis=(1, 2))[:, None, None]
    assert np.abs(L @ null).max(axis=(1, 2)).max() <= 1e-12 * size_of_L.max()
    for i in range(count):
        reference = scipy.linalg.null_space(L[i])
        np.testing.assert_allclose(null[i] @ null[i].T, reference @ reference.T, atol=1e-11)
    if homogeneous:
        assert torch.equal(particular, torch.zeros_like(particular))
    else:
        least_norm = np.stack([np.linalg.lstsq(L[i], b[i], rcond=None)[0] for i in range(count)])
        scale = np.linalg.norm(least_norm, axis=1, keepdims=True)
        np.testing.assert_allclose(particular.numpy() / scale, least_norm / scale, rtol=0, atol=1e-11)


def test_rank_deficient_blocks_are_not_ok():
    """Rows whose L lost rank (a dependent row, a zero row) or holds a NaN are reported not ok;
    the other rows of the same batch are ok and unaffected."""
    rng = np.random.default_rng(3)
    block, matrices = hand_made_block(rng, 3, 5, homogeneous=False)
    c = rng.normal(size=(6, 18))
    # c[order[i]] is the entry at positions[i]: the entry of L at flat (row * N + column).
    source = dict(zip(block.matrix_positions, block.matrix_sources))

    def set_row(k, row, values):
        for column, value in enumerate(values):
            c[k, source[row * 5 + column]] = value

    L, _ = matrices(c)
    set_row(1, 2, 2 * L[1, 0] - 0.5 * L[1, 1])  # a dependent row
    set_row(2, 0, np.zeros(5))  # a zero row
    c[3, source[7]] = np.nan
    L, _ = matrices(c)
    assert np.linalg.matrix_rank(L[1]) == 2 and np.linalg.matrix_rank(L[2]) == 2
    tables = linear.tensors(block, CPU, torch.float64)
    _, _, null, particular, ok = linear.null_space(torch.from_numpy(c), block, tables)
    assert ok.tolist() == [True, False, False, False, True, True]
    for i in (0, 4, 5):  # the good rows: a correct null space and particular solution
        np.testing.assert_allclose(L[i] @ null[i].numpy(), 0, atol=1e-12)
        reference = np.linalg.lstsq(L[i], matrices(c)[1][i], rcond=None)[0]
        np.testing.assert_allclose(particular[i].numpy(), reference, rtol=1e-11, atol=1e-12)


def test_reduced_inputs_layout():
    """[N row-major (entry (i, j) at i * k + j), x_p unless homogeneous, the used parameters in
    the order listed], as the printed reduced coefficient functions name them (null{i}_{j})."""
    rng = np.random.default_rng(4)
    null = torch.from_numpy(rng.normal(size=(5, 3, 2)))
    particular = torch.from_numpy(rng.normal(size=(5, 3)))
    a = torch.from_numpy(rng.normal(size=(5, 4)))
    for homogeneous in (False, True):
        block = LinearBlock(
            rows=(0,), block=(0, 1, 2), null_dim=2, homogeneous=homogeneous, matrix_positions=(), matrix_sources=(),
            rhs_positions=(), rhs_sources=(), null_mix=((0.0, 0.0),) * 3, used_parameters=(2, 0),
        )
        inputs = linear.reduced_inputs(a, null, particular, block, linear.tensors(block, CPU, torch.float64))
        assert inputs.shape == (5, block.num_reduced_inputs)
        n = null.numpy()
        expected = [n[:, 0, 0], n[:, 0, 1], n[:, 1, 0], n[:, 1, 1], n[:, 2, 0], n[:, 2, 1]]
        if not homogeneous:
            expected += [particular[:, 0].numpy(), particular[:, 1].numpy(), particular[:, 2].numpy()]
        expected += [a[:, 2].numpy(), a[:, 0].numpy()]
        np.testing.assert_array_equal(inputs.numpy(), np.stack(expected, axis=1))


# The declared equations that remain after the linear block (neither linear nor the gauge), and
# whether the block is homogeneous, has a gauge, free unknowns, and parameters of its own.
REMAINING = {
    "implicit_example": [0],  # y1 = 1 / x (a 0-dimensional null space), y2 free
    "relpose_5pt": list(range(5, 15)),
    "relpose_6pt_shared_focal_natural": list(range(6, 16)),  # F in a chart, w free
}
KINDS = {
    "implicit_example": (False, False, True, True),
    "relpose_5pt": (True, True, False, False),
    "relpose_6pt_shared_focal_natural": (True, True, True, False),
}


@pytest.mark.parametrize("name", list(REMAINING))
def test_reduced_equations_are_the_declared_ones_in_null_space_coordinates(name):
    """The compiled plans' reduced equations, with coefficients from `reduced_inputs`, evaluated
    at random z equal the remaining declared equations at x = x_p + N z (in the chart z_last = 1
    for a gauge), with the free unknowns as they are: an inhomogeneous block with a used
    parameter and a free unknown, a homogeneous chart, and a chart with a free unknown."""
    plan = generated_module(name).PLAN
    block = plan.linear
    tables = forward.tensors(plan, CPU, torch.float64)
    rng = np.random.default_rng(5)
    params, _ = geometry.INSTANCES[name](40, rng)
    a = torch.from_numpy(params)
    c = plan.coefficients(a)
    _, _, null, particular, ok = linear.null_space(c, block, tables["linear"])
    assert ok.all()
    assert KINDS[name] == (block.homogeneous, block.gauge is not None, bool(block.free), bool(block.used_parameters))
    inputs = linear.reduced_inputs(a, null, particular, block, tables["linear"])
    c_reduced = block.reduced_coefficients(inputs)
    reduced = tables["reduced"]
    assert reduced["equations"] == len(REMAINING[name])
    z = torch.from_numpy(rng.normal(size=(40, 3, reduced["unknowns"])))
    free = z[..., z.shape[-1] - len(block.free):]
    coordinates = z[..., : z.shape[-1] - len(block.free)]
    if block.gauge is not None:
        coordinates = torch.cat([coordinates, torch.ones_like(coordinates[..., :1])], -1)
    x = torch.zeros(40, 3, plan.num_unknowns, dtype=torch.float64)
    x[..., list(block.block)] = coordinates @ null.transpose(1, 2) + particular.unsqueeze(1)
    x[..., list(block.free)] = free
    h_reduced, _, _ = equations.evaluate(equations.prepare(c_reduced, reduced), z, reduced)
    declared = tables["declared"]
    h, scale, _ = equations.evaluate(equations.prepare(c, declared), x, declared)
    remaining = torch.tensor(REMAINING[name])
    h, scale = h.index_select(-1, remaining), scale.index_select(-1, remaining)
    assert ((h_reduced - h).abs() <= 1e-12 * scale).all()
    assert (h.abs() > 1e-6 * scale).any()  # random z: the equations do not vanish


def test_linear_error_against_numpy():
    """max_k |L x - b|_k / (|L| |x| + |b|)_k per point, and about roundoff on the solutions
    x_p + N z of the block."""
    rng = np.random.default_rng(6)
    block, matrices = hand_made_block(rng, 4, 7, homogeneous=False)
    c = rng.normal(size=(50, 32)) * 3
    tables = linear.tensors(block, CPU, torch.float64)
    matrix, rhs, null, particular, ok = linear.null_space(torch.from_numpy(c), block, tables)
    assert ok.all()
    L, b = matrices(c)
    x = rng.normal(size=(50, 6, 7))
    error = linear.linear_error(matrix, rhs, torch.from_numpy(x)).numpy()
    h = np.einsum("bkn,bsn->bsk", L, x) - b[:, None]
    size = np.einsum("bkn,bsn->bsk", np.abs(L), np.abs(x)) + np.abs(b[:, None])
    np.testing.assert_allclose(error, (np.abs(h) / size).max(axis=-1), rtol=1e-12)
    solutions = particular.unsqueeze(1) + torch.from_numpy(rng.normal(size=(50, 6, 3))) @ null.transpose(1, 2)
    on_block = linear.linear_error(matrix, rhs, solutions)
    assert on_block.max() < 1e-14 and error.min() > 1e-6


def gauge_tables(gauge):
    return {
        "gauge": equations.system_tensors(gauge.equations, CPU, torch.float64),
        "gauge_coefficients": torch.tensor(gauge.coefficients),
    }


def test_even_gauge_of_the_5pt_plan():
    """relpose_5pt's gauge ||E||^2 = 1 (degree 2, from its compiled plan and coefficients): each
    point becomes x / ||x|| (the positive root: the sign is kept); a zero point cannot be
    scaled and is not ok."""
    plan = generated_module("relpose_5pt").PLAN
    gauge = plan.linear.gauge
    assert gauge.degree == 2 and plan.sign_gauge
    rng = np.random.default_rng(7)
    params, _ = geometry.INSTANCES["relpose_5pt"](20, rng)
    c = plan.coefficients(torch.from_numpy(params))
    x = rng.normal(size=(20, 4, 9)) * rng.uniform(1e-3, 1e3, size=(20, 4, 1))
    x[3, 1] = 0
    tables = forward.tensors(plan, CPU, torch.float64)["linear"]
    scaled, ok = linear.rescale_to_gauge(torch.from_numpy(x), c, gauge, tables)
    expected = x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-300)
    good = np.ones((20, 4), dtype=bool)
    good[3, 1] = False
    assert ok.numpy().tolist() == good.tolist()
    np.testing.assert_allclose(scaled.numpy()[good], expected[good], rtol=1e-14, atol=1e-15)


def indefinite_quadratic_gauge():
    """q(x) = c0 x0^2 + c1 x1^2 + c2 x2^2 = -c3 (coefficients (0, 1, 2), none a number)."""
    tables = Equations(
        unknowns=3,
        equations=1,
        levels=(((0, 0, 0), (0, 1, 2)), ((0, 1, 2), (0, 1, 2))),  # x0 x1 x2 | x0^2 x1^2 x2^2
        term_equation=(0, 0, 0),
        term_monomial=(4, 5, 6),
        derivative_position=(0, 1, 2),
        derivative_coefficient=(0, 1, 2),
        derivative_factor=(2.0, 2.0, 2.0),
        derivative_monomial=(1, 2, 3),
        constants=(),
    )
    return Gauge(equation=0, degree=2, coefficients=(0, 1, 2), constant=3, equations=tables)


def cubic_gauge():
    """q(x) = x0 x1 x2 = -c1 (coefficient 0 is the number 1)."""
    tables = Equations(
        unknowns=3,
        equations=1,
        # x0 x1 x2 | x0 x1, x0 x2, x1 x2 | x0 x1 x2
        levels=(((0, 0, 0), (0, 1, 2)), ((0, 0, 1), (1, 2, 2)), ((0,), (2,))),
        term_equation=(0,),
        term_monomial=(7,),
        derivative_position=(0, 1, 2),
        derivative_coefficient=(0, 0, 0),
        derivative_factor=(1.0, 1.0, 1.0),
        derivative_monomial=(6, 5, 4),
        constants=((0, 1.0),),
    )
    return Gauge(equation=0, degree=3, coefficients=(0,), constant=1, equations=tables)


def test_even_gauge_needs_a_positive_ratio():
    """q = x0^2 - 2 x1^2 + 0.5 x2^2 = t (hand-made tables, t = r q(x) for a chosen ratio r):
    where r > 0 the point is scaled by +sqrt(r) and then satisfies the gauge; where r < 0 (no
    real scaling), or x is not finite, it is not ok."""
    gauge = indefinite_quadratic_gauge()
    rng = np.random.default_rng(8)
    weights = np.array([1.0, -2.0, 0.5])
    x = rng.normal(size=(200, 3))
    ratio = rng.choice([-1, 1], size=200) * rng.uniform(0.2, 5, size=200)
    target = ratio * (weights * x**2).sum(-1)
    c = np.concatenate([np.broadcast_to(weights, (200, 3)), -target[:, None]], axis=1)
    x[5] = np.nan
    scaled, ok = linear.rescale_to_gauge(
        torch.from_numpy(x[:, None]), torch.from_numpy(c), gauge, gauge_tables(gauge)
    )
    expected_ok = ratio > 0
    expected_ok[5] = False
    assert ok[:, 0].numpy().tolist() == expected_ok.tolist()
    assert expected_ok.sum() > 50 and (~expected_ok).sum() > 50  # both cases, many times
    scaled = scaled[:, 0].numpy()[expected_ok]
    np.testing.assert_allclose(scaled, x[expected_ok] * np.sqrt(ratio[expected_ok])[:, None], rtol=1e-14)
    np.testing.assert_allclose((weights * scaled**2).sum(-1), target[expected_ok], rtol=1e-13)


def test_odd_gauge_takes_the_real_cube_root():
    """x0 x1 x2 = t (degree 3, hand-made tables, t = r q(x) for a chosen ratio r): each point
    is scaled by the real cube root of r, negative ratios included (the point's sign flips),
    and then satisfies the gauge; q(x) = 0 is not ok."""
    gauge = cubic_gauge()
    rng = np.random.default_rng(9)
    x = rng.normal(size=(100, 2, 3))
    # One gauge per instance: slot 1 is slot 0 rolled and scaled by s, its ratio is r / s^3.
    s = rng.choice([-1, 1], size=(100, 1)) * rng.uniform(0.6, 1.6, size=(100, 1))
    x[:, 1] = s * np.roll(x[:, 0], 1, axis=-1)
    r = rng.choice([-1, 1], size=100) * rng.uniform(0.2, 5, size=100)
    target = r * x[:, 0].prod(-1)
    ratio = np.stack([r, r / s[:, 0] ** 3], axis=1)
    x[7, 0, 1] = 0
    c = np.stack([np.ones(100), -target], axis=1)
    scaled, ok = linear.rescale_to_gauge(torch.from_numpy(x), torch.from_numpy(c), gauge, gauge_tables(gauge))
    expected_ok = np.ones((100, 2), dtype=bool)
    expected_ok[7, 0] = False
    assert ok.numpy().tolist() == expected_ok.tolist()
    assert (ratio[expected_ok] < 0).sum() > 50 and (ratio[expected_ok] > 0).sum() > 50
    scaled = scaled.numpy()[expected_ok]
    np.testing.assert_allclose(scaled, x[expected_ok] * np.cbrt(ratio[expected_ok])[:, None], rtol=1e-13)
    expected_target = np.broadcast_to(target[:, None], ok.shape)[expected_ok]
    np.testing.assert_allclose(scaled.prod(-1), expected_target, rtol=1e-13)


@pytest.mark.parametrize("degree", [2, 3])
def test_gauge_scaling_keeps_its_digits_when_q_is_small(degree):
    """The scale (c / q(x))^(1/m) is a well-conditioned function of x and c (relative changes of
    either change it by as much at most), so the rescaled point should satisfy the gauge to a
    few ulps whatever the size of q(x) relative to c: here q(x) is about 1e-8 c."""
    gauge = indefinite_quadratic_gauge() if degree == 2 else cubic_gauge()
    rng = np.random.default_rng(10)
    x = rng.uniform(0.5, 2, size=(50, 1, 3))
    x[..., 0] *= 1e-8 ** (1 / degree)  # the quadratic: q = x0^2 (weights 1, 0, 0)
    target = rng.uniform(0.5, 2, size=50)
    if degree == 2:
        c = np.stack([np.ones(50), np.zeros(50), np.zeros(50), -target], axis=1)
    else:
        x[..., 0] *= 1e-8 ** (2 / 3)  # the cubic: q = x0 x1 x2, about 1e-8 too
        c = np.stack([np.ones(50), -target], axis=1)
    scaled, ok = linear.rescale_to_gauge(torch.from_numpy(x), torch.from_numpy(c), gauge, gauge_tables(gauge))
    assert ok.all()
    q = scaled[:, 0, 0].numpy() ** 2 if degree == 2 else scaled[:, 0].numpy().prod(-1)
    np.testing.assert_allclose(q, target, rtol=1e-13)
