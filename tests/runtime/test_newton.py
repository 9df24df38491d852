"""Newton polishing (solvergen/runtime/newton.py) on the declared equations of compiled plans,
from perturbed true solutions (geometry.py): quadratic convergence, inactive points left alone,
steps kept only where they lower the residual (against a Gauss-Newton step computed with numpy
from an autograd Jacobian), and the CPU compaction equal to the masked device path. Square
systems (P3P: 3 x 3), and overdetermined ones evaluated densely (5-point null-space form: 10
equations in 3 unknowns) and sparsely (5-point natural form: 16 equations in 9 unknowns)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import generated_module

import geometry
from solvergen.runtime import equations, forward, newton, parallel

CPU = torch.device("cpu")
PROBLEMS = ["p3p", "relpose_5pt_nullspace", "relpose_5pt"]
DENSE = {"p3p": True, "relpose_5pt_nullspace": True, "relpose_5pt": False}


def problem(name, count, seed):
    """Coefficients c [B, n], the declared system's tensors, and the true solutions [B, N]."""
    plan = generated_module(name).PLAN
    params, truth = geometry.INSTANCES[name](count, np.random.default_rng(seed))
    c = plan.coefficients(torch.from_numpy(params))
    system = forward.tensors(plan, CPU, torch.float64)["declared"]
    assert system["dense"] == DENSE[name]  # both evaluations are covered
    assert (system["equations"] == system["unknowns"]) == (name == "p3p")
    return c, system, torch.from_numpy(truth)


def perturbed(truth, relative, rng):
    """truth + a random direction of norm `relative` |truth|, per point."""
    direction = torch.from_numpy(rng.normal(size=truth.shape))
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return truth + relative * truth.norm(dim=-1, keepdim=True) * direction


def relative_distance(x, truth):
    return ((x - truth).norm(dim=-1) / truth.norm(dim=-1)).numpy()


@pytest.mark.parametrize("name", PROBLEMS)
def test_quadratic_convergence_from_perturbed_solutions(name):
    """From 1e-4 relative off the true solution: about 1e-8 after one step (the square of the
    start, not a tenth of it) and roundoff after two; the returned residual is that of the
    returned points. Random instances vary in conditioning: the bars are on quantiles."""
    c, system, truth = problem(name, 100, seed=1)
    start = perturbed(truth, 1e-4, np.random.default_rng(2)).unsqueeze(1)
    active = torch.ones(100, 1, dtype=torch.bool)
    errors = []
    for steps in (1, 2):
        x, residual = newton.polish(c, start, active, steps, system)
        errors.append(relative_distance(x[:, 0], truth))
        h, scale, _ = equations.evaluate(equations.prepare(c, system), x, system)
        torch.testing.assert_close(residual, equations.relative_error(h, scale), rtol=1e-9, atol=1e-15)
    one, two = errors
    assert np.median(one) < 1e-6 and np.quantile(one, 0.9) < 1e-5, (np.median(one), np.quantile(one, 0.9))
    assert np.median(two) < 1e-13 and np.quantile(two, 0.9) < 1e-10, (np.median(two), np.quantile(two, 0.9))
    assert (two <= np.maximum(one, 1e-12)).all()  # the second step does not undo the first


@pytest.mark.parametrize("name", PROBLEMS)
def test_inactive_and_non_finite_points_are_left_alone(name):
    """Per instance three slots: an active perturbed solution (polished), the same point
    inactive (returned bit for bit, with its residual), and an active NaN point (no step: it
    stays NaN)."""
    c, system, truth = problem(name, 30, seed=3)
    point = perturbed(truth, 1e-4, np.random.default_rng(4))
    start = torch.stack([point, point, torch.full_like(point, float("nan"))], dim=1)
    active = torch.tensor([True, False, True]).expand(30, 3)
    x, residual = newton.polish(c, start, active, 2, system)
    assert torch.equal(x[:, 1], start[:, 1])
    h, scale, _ = equations.evaluate(equations.prepare(c, system), start[:, 1:2], system)
    torch.testing.assert_close(residual[:, 1], equations.relative_error(h, scale)[:, 0], rtol=1e-12, atol=0)
    assert torch.isnan(x[:, 2]).all() and torch.isnan(residual[:, 2]).all()
    assert np.median(relative_distance(x[:, 0], truth)) < 1e-13
    assert (residual[:, 0] < residual[:, 1]).all()


def reference_step(c, x, system):
    """One Gauss-Newton step with numpy, rows scaled by the size of their terms, from an
    autograd Jacobian of h: the candidate points, the relative residual before and after, and
    the condition number of each scaled Jacobian."""
    prepared = equations.prepare(c, system)
    h, scale, _ = equations.evaluate(prepared, x, system)
    jacobian = torch.autograd.functional.jacobian(
        lambda y: equations.evaluate(prepared, y, system)[0].sum(dim=(0, 1)), x
    )  # [K, B, S, N]: points are independent
    jacobian = jacobian.permute(1, 2, 0, 3).numpy()
    row = scale.numpy()[..., None]
    scaled, residual = jacobian / row, h.numpy() / row[..., 0]
    delta = np.zeros(x.shape)
    condition = np.zeros(x.shape[:2])
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            delta[b, s] = np.linalg.lstsq(scaled[b, s], residual[b, s], rcond=None)[0]
            condition[b, s] = np.linalg.cond(scaled[b, s])
    candidate = x - torch.from_numpy(delta)
    h1, scale1, _ = equations.evaluate(prepared, candidate, system)
    before = equations.relative_error(h, scale).numpy()
    after = equations.relative_error(h1, scale1).numpy()
    return candidate.numpy(), before, after, condition


@pytest.mark.parametrize("name", PROBLEMS)
def test_a_step_is_kept_only_where_it_lowers_the_residual(name):
    """From far-off starts (10-100% off the solution) one step moves a point to the Gauss-Newton
    candidate where that lowers the relative residual, and leaves it exactly where it was
    otherwise; both happen in this sample. (Near-ties and badly conditioned Jacobians, where the
    two linear solves may disagree, are not judged.)"""
    c, system, truth = problem(name, 40, seed=5)
    rng = np.random.default_rng(6)
    start = torch.stack([perturbed(truth, r, rng) for r in (0.1, 0.3, 1.0)], dim=1)
    active = torch.ones(start.shape[:2], dtype=torch.bool)
    x, residual = newton.polish(c, start, active, 1, system)
    candidate, before, after, condition = reference_step(c, start, system)
    judged = (condition < 1e6) & (np.abs(after - before) > 1e-6 * before)
    keep = after < before
    x, start = x.numpy(), start.numpy()
    kept, rejected = judged & keep, judged & ~keep
    assert kept.sum() >= 10 and rejected.sum() >= 10, (kept.sum(), rejected.sum())
    np.testing.assert_array_equal(x[rejected], start[rejected])
    np.testing.assert_allclose(residual.numpy()[rejected], before[rejected], rtol=1e-12)
    size = np.linalg.norm(start[kept], axis=-1, keepdims=True)
    np.testing.assert_allclose(x[kept] / size, candidate[kept] / size, rtol=0, atol=1e-8)
    assert (residual.numpy()[kept] < before[kept]).all()


@pytest.mark.parametrize("name", PROBLEMS)
def test_compaction_equals_the_masked_path(name, monkeypatch):
    """Two steps with half of the instances active: the CPU path steps on those rows only (seen
    by their batch size), the device path (host_sync_is_free -> False) on every row, masked;
    both give the same points and residuals, and inactive points stay where they were."""
    c, system, truth = problem(name, 60, seed=7)
    rng = np.random.default_rng(8)
    start = torch.stack([perturbed(truth, r, rng) for r in (1e-3, 1e-6, 0.3)], dim=1)
    active = torch.zeros(60, 3, dtype=torch.bool)
    active[::3] = True
    active[1::3, 1] = True  # instances with one active point, already close
    active[1::6, 1] = False
    sizes = []
    step = newton.newton_step

    def recording_step(prepared, x, *rest):
        sizes.append(len(x))
        return step(prepared, x, *rest)

    monkeypatch.setattr(newton, "newton_step", recording_step)
    compacted = newton.polish(c, start, active, 2, system)
    compacted_sizes, sizes[:] = sizes[:], []
    monkeypatch.setattr(parallel, "host_sync_is_free", lambda device: False)
    masked = newton.polish(c, start, active, 2, system)
    assert 0 < max(compacted_sizes) <= 0.75 * 60 and sizes == [60, 60], (compacted_sizes, sizes)
    # The same up to rounding: batched products over other sets of matrices may round
    # differently (seen: Gram matrices 1e-16 apart, amplified by the 9 x 9 solve).
    difference = relative_distance(masked[0], compacted[0])
    assert difference.max() < 1e-10, difference.max()
    torch.testing.assert_close(masked[1], compacted[1], rtol=1e-9, atol=1e-14)
    assert torch.equal(compacted[0][~active], start[~active])
    assert (compacted[1][active] < 1e-3).any()  # the steps did something
