"""IFT gradients against central finite differences, and MinBackProp's P3P example."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROBLEMS, accuracy_cases, float32_solve_cases, generated_module

import geometry


def ift_jacobians(solver, params):
    """d solution / d params for every solution slot: [B, S, N, M] (zeros for invalid slots)."""
    a = params.clone().requires_grad_(True)
    solutions, valid = solver(a)
    batch, slots, unknowns = solutions.shape
    out = torch.zeros(batch, slots, unknowns, params.shape[-1], dtype=params.dtype)
    for s in range(slots):
        for n in range(unknowns):
            (grad,) = torch.autograd.grad(solutions[:, s, n].sum(), a, retain_graph=True)
            out[:, s, n] = grad
    return solutions.detach(), valid, out


def fd_jacobians(solver, params, solutions, valid, step, flip=None):
    """Central differences, each perturbed solution matched to the nearest base solution (and
    with `flip`, a plan's `sign_flip`, given the sign of the base solution).

    Returns [B, S, N, M] and a mask [B, S] of slots whose match was unambiguous at every
    perturbation (the nearest perturbed solution much nearer than the second nearest).
    """
    flip = None if flip is None else torch.tensor(flip, dtype=params.dtype)
    batch, slots, unknowns = solutions.shape
    out = torch.zeros(batch, slots, unknowns, params.shape[-1], dtype=params.dtype)
    clear = valid.clone()
    for m in range(params.shape[-1]):
        h = step * (1 + params[:, m].abs())
        moved = []
        for sign in (1, -1):
            p = params.clone()
            p[:, m] += sign * h
            sol, ok = solver(p)
            dist = torch.cdist(solutions, sol)  # [B, S(base), S(moved)]
            if flip is not None:  # match each moved solution with its sign aligned to the base
                flipped = torch.cdist(solutions, sol * flip)
                sol_flipped = flipped < dist
                dist = torch.minimum(dist, flipped)
            dist = torch.where(ok.unsqueeze(1), dist, torch.full_like(dist, float("inf")))
            dist = torch.cat([dist, torch.full_like(dist[..., :1], float("inf"))], dim=-1)  # S = 1
            two = dist.topk(2, dim=-1, largest=False)
            index = two.indices[..., 0]
            clear &= two.values[..., 0] * 100 < two.values[..., 1].clamp_max(1e300)
            picked = sol.gather(1, index.unsqueeze(-1).expand(-1, -1, unknowns))
            if flip is not None:
                picked = torch.where(sol_flipped.gather(2, index.unsqueeze(-1)), picked * flip, picked)
            moved.append(picked)
        out[..., m] = (moved[0] - moved[1]) / (2 * h.view(-1, 1, 1))
    return out, clear


def relative_difference(a, b):
    return (a - b).flatten(-2).norm(dim=-1) / b.flatten(-2).norm(dim=-1).clamp_min(1e-300)


def vector_difference(a, b):
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-300)


@pytest.mark.parametrize("name", accuracy_cases())
def test_ift_matches_finite_differences(name):
    module = generated_module(name)
    assert_ift_matches_finite_differences(name, module, module.Solver())


def assert_ift_matches_finite_differences(name, module, solver):
    """The IFT Jacobians of `solver` agree with finite differences on 120 instances."""
    params, truth = geometry.INSTANCES[name](120, np.random.default_rng(11))
    params = torch.from_numpy(params)
    solutions, valid, ift = ift_jacobians(solver, params)
    truth = torch.from_numpy(truth).unsqueeze(1)
    flip = module.PLAN.sign_flip
    distance = (solutions - truth).norm(dim=-1)
    if flip is not None:
        distance = torch.minimum(distance, (solutions * torch.tensor(flip, dtype=params.dtype) - truth).norm(dim=-1))
    truth_slot = torch.where(valid, distance, torch.inf).argmin(dim=1)
    fd1, clear1 = fd_jacobians(solver, params, solutions, valid, 1e-7, flip)
    fd2, clear2 = fd_jacobians(solver, params, solutions, valid, 2e-7, flip)
    reference = (4 * fd1 - fd2) / 3  # Richardson: the h^2 error of central differences cancels
    # Well-conditioned: the solution is far from its neighbours (unambiguous matching) and
    # the function is smooth at the step size (the two central differences nearly agree).
    smooth = relative_difference(fd1, fd2) < 1e-3
    considered = valid & clear1 & clear2 & smooth
    assert solver.ill_conditioned is not None
    # Every valid solution is checked where finite differences can judge it; the geometric
    # solution (the one a training loss uses) must be judgeable on nearly every instance.
    judged = considered[torch.arange(len(params)), truth_slot].double().mean().item()
    assert judged >= 0.95, f"only {judged:.1%} of true solutions are well-conditioned"
    agree = relative_difference(ift, reference) < 1e-5
    per_instance = (agree | ~considered).all(dim=1)
    share = per_instance[considered.any(dim=1)].double().mean().item()
    assert share >= 0.99, f"IFT agrees with finite differences on {share:.1%} of instances"

    # One backward for a loss on every valid solution (several solutions per instance), and one
    # through `select` (the picked solution, sign-aligned with the reference where the problem
    # has a sign gauge), against the same finite differences.
    weights = torch.randn(solutions.shape[1:], dtype=params.dtype, generator=torch.Generator().manual_seed(12))
    a = params.clone().requires_grad_(True)
    x, v = solver(a)
    (x * weights * v.unsqueeze(-1)).sum().backward()
    expected = torch.einsum("bsnm,sn->bm", reference * valid[..., None, None], weights)
    judged = (considered | ~valid).all(dim=1) & valid.any(dim=1)
    close = vector_difference(a.grad, expected) < 1e-5
    assert judged.double().mean() >= 0.9 and close[judged].double().mean() >= 0.99, close[judged].double().mean()

    a = params.clone().requires_grad_(True)
    x, v = solver(a)
    picked, found = solver.select(x, v, reference=truth.squeeze(1))
    (picked * weights[0]).sum().backward()
    rows = torch.arange(len(params))
    sign = torch.ones(len(params), x.shape[-1], dtype=params.dtype)  # the sign select gave the pick
    if flip is not None:
        slot, flip = x.detach()[rows, truth_slot], torch.tensor(flip, dtype=params.dtype)
        flipped = (slot * flip - truth[:, 0]).norm(dim=-1) < (slot - truth[:, 0]).norm(dim=-1)
        sign = torch.where(flipped.unsqueeze(-1), flip, sign)
    expected = torch.einsum("bnm,bn->bm", reference[rows, truth_slot], sign * weights[0])
    judged = found & considered[rows, truth_slot]
    close = vector_difference(a.grad, expected) < 1e-5
    assert judged.double().mean() >= 0.95 and close[judged].double().mean() >= 0.99, close[judged].double().mean()


# MinBackProp Example 1: b = [A1; A2; A3; a1; a2; a3], solution x = [3, 3, 3]. Reference
# columns from ../shared/reference.md (confirmed by finite differences; the paper's print has
# sign slips).
P3P_EXAMPLE = [0, 0, 3, 2, 0, 3, 0, 6, 3, -1 / 3, -1 / 3, 1, 1 / 3, -1 / 3, 1, -1 / 3, 5 / 3, 1]
P3P_COLUMNS = {
    0: (-1.667, -1.333, 0.333),
    1: (-1.333, 1.333, -0.333),
    3: (1.25, 1.75, -0.25),
    16: (-0.25, 0.25, -1.75),
}


def test_p3p_example_1_derivatives():
    solver = generated_module("p3p").Solver()
    params = torch.tensor([P3P_EXAMPLE], dtype=torch.float64)
    solutions, valid, ift = ift_jacobians(solver, params)
    slot = ((solutions[0] - 3).abs().amax(dim=-1) < 1e-9) & valid[0]
    assert slot.sum() == 1, "x = [3, 3, 3] is not among the solutions"
    jacobian = ift[0, slot.nonzero()[0, 0]]
    for column, expected in P3P_COLUMNS.items():
        np.testing.assert_allclose(jacobian[:, column].numpy(), expected, atol=1e-3)
    fd1, _ = fd_jacobians(solver, params, solutions, valid, 1e-5)
    fd2, _ = fd_jacobians(solver, params, solutions, valid, 2e-5)
    fd = ((4 * fd1 - fd2) / 3)[0, slot.nonzero()[0, 0]]
    assert relative_difference(jacobian, fd).item() < 1e-8


@pytest.mark.parametrize("name", PROBLEMS)
def test_autograd_baseline_agrees_on_clean_instances(name):
    """backward='autograd' differentiates the forward itself; where it is finite it must
    agree with the IFT (a check of both)."""
    module = generated_module(name)
    params, _ = geometry.INSTANCES[name](16, np.random.default_rng(3))
    params = torch.from_numpy(params)
    weights = torch.randn(16, module.NUM_SOLUTIONS, len(module.UNKNOWN_NAMES), dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0))
    grads = {}
    for mode in ("ift", "autograd"):
        a = params.clone().requires_grad_(True)
        solutions, valid = module.Solver(backward=mode)(a)
        (solutions * weights * valid.unsqueeze(-1)).sum().backward()
        grads[mode] = a.grad
    finite = torch.isfinite(grads["autograd"]).all(dim=-1)
    assert finite.sum() >= 12
    diff = (grads["ift"] - grads["autograd"]).norm(dim=-1) / grads["ift"].norm(dim=-1).clamp_min(1e-300)
    assert (diff[finite] < 1e-5).double().mean() >= 0.9
def _picked_gradient(solver, params, truth, weights):
    """The picked solution, whether it was found, the gradient of <weights, picked> wrt params,
    and the solver's ill_conditioned count."""
    a = params.clone().requires_grad_(True)
    solutions, valid = solver(a)
    picked, found = solver.select(solutions, valid, reference=truth.to(solutions.dtype))
    (picked * weights.to(picked.dtype)).sum().backward()
    ill = solver.ill_conditioned
    return picked.detach().double(), found, a.grad.double(), int(ill) if ill is not None else 0


def _relative(a, b):
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-300)


def float32_gradient_agreement(module, count, seed, **float32_options):
    """precision="float32" against float64: on `count` random instances in float32 (the float64
    reference gets the same rounded values), the gradient of a fixed combination of the solution
    picked toward the truth (`select`), where both solvers found the truth (relative error below
    1e-3: the truth is that of the unrounded parameters). A dict: how many were compared, zeroed
    (float32 gradient exactly zero: refused as ill-conditioned), ill_conditioned (the float32
    solver's count), the share within 1e-2 relative, the number over 10% off, median and worst."""
    params, truth = geometry.INSTANCES[module.PLAN.name](count, np.random.default_rng(seed))
    params32 = torch.from_numpy(params).float()
    truth = torch.from_numpy(truth)
    weights = torch.randn(len(module.UNKNOWN_NAMES), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x64, found64, g64, _ = _picked_gradient(module.Solver(), params32.double(), truth, weights)
    x32, found32, g32, ill32 = _picked_gradient(
        module.Solver(precision="float32", **float32_options), params32, truth, weights
    )
    err64, err32 = _relative(x64, truth), _relative(x32, truth)  # (select aligned their signs with it)
    both = found64 & found32 & (err64 < 1e-3) & (err32 < 1e-3)
    zeroed = both & (g32 == 0).all(dim=-1) & (g64 != 0).any(dim=-1)
    compared = both & ~zeroed
    error = _relative(g32, g64)[compared]
    return dict(
        problem=module.PLAN.name,
        instances=count,
        both_found=int(both.sum()),
        zeroed=int(zeroed.sum()),
        ill_conditioned=ill32,
        within_1e2=float((error <= 1e-2).double().mean()) if len(error) else float("nan"),
        over_10_percent=int((error > 0.1).sum()),
        median=float(error.median()) if len(error) else float("nan"),
        worst=float(error.max()) if len(error) else float("nan"),
    )




@pytest.mark.parametrize("name", float32_solve_cases())
def test_float32_gradients_agree_with_float64(name):
    """precision="float32" (the backward refines each solution in float64): the gradient of the
    selected solution is float64's to within 1e-2 on at least 99% of the instances where both
    found the truth, never more than 10% off, and every zeroed one is counted."""
    row = float32_gradient_agreement(generated_module(name), 300, seed=13)
    assert row["both_found"] >= 0.9 * 300, row
    assert row["within_1e2"] >= 0.99 and row["over_10_percent"] == 0, row
    assert row["zeroed"] <= row["ill_conditioned"], row
