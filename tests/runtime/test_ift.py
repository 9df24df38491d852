"""The implicit-function-theorem backward (solvergen/runtime/ift.py, `implicit_vjp`) against a
dense reference: J = dh/dx and dh/da by autograd through the evaluation of the declared
equations at the solver's valid solutions, then d<g, x>/da = -g^T J^+ dh/da with numpy's
pseudo-inverse (J^-1 when K == N; (J^T J)^-1 J^T when K > N, MinBackProp Theorem 1). Square
(P3P), overdetermined dense (5-point null-space form, 3 unknowns) and overdetermined sparse
(5-point natural form, 9 unknowns: the Cholesky Gram solve); several weighted solutions per
instance or one; pairs without gradient, ill-conditioned pairs, and the masked device path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import generated_module

import geometry
from solvergen.runtime import equations, forward, ift, parallel

CPU = torch.device("cpu")
PROBLEMS = ["p3p", "relpose_5pt_nullspace", "relpose_5pt"]
COUNT = 12  # instances per problem


_solved = {}


def solved(name):
    """The plan, its declared system's tensors, params a [B, M], the solver's solutions x and
    valid [B, S], and the declared coefficients c (computed once per problem)."""
    if name not in _solved:
        module = generated_module(name)
        params, _ = geometry.INSTANCES[name](COUNT, np.random.default_rng(21))
        a = torch.from_numpy(params)
        with torch.no_grad():
            x, valid = module.Solver(newton_steps=4)(a)  # polished to roundoff
        plan = module.PLAN
        system = forward.tensors(plan, CPU, torch.float64)["declared"]
        _solved[name] = plan, system, a, x, valid, plan.coefficients(a)
    return _solved[name]


def jacobians(plan, system, a, x):
    """dh/dx [P, K, N] and dh/da [P, K, M] at the points x [P, N] for parameters a [P, M], by
    autograd through c(a) and the evaluation of h (each pair is its own instance)."""

    def h(points, params):
        c = plan.coefficients(params)
        values, _, _ = equations.evaluate(equations.prepare(c, system), points.unsqueeze(1), system)
        return values[:, 0].sum(dim=0)  # [K]: pairs are independent

    dx, da = torch.autograd.functional.jacobian(h, (x, a))
    return dx.transpose(0, 1).numpy(), da.transpose(0, 1).numpy()


def reference_vjp(plan, system, a, x, valid, grad):
    """sum over the valid pairs with a non-zero gradient of -g^T pinv(J) dh/da, per instance;
    also each pair's cond_2 of J after unit rows and then unit columns, and its instance."""
    use = valid & (grad != 0).any(dim=-1)
    instance, slot = use.nonzero(as_tuple=True)
    dx, da = jacobians(plan, system, a[instance], x[instance, slot])
    g = grad[instance, slot].numpy()
    contribution = -np.einsum("pn,pnk,pkm->pm", g, np.linalg.pinv(dx), da)
    out = np.zeros(tuple(a.shape))
    np.add.at(out, instance.numpy(), contribution)
    rows = dx / np.linalg.norm(dx, axis=-1, keepdims=True)
    equilibrated = rows / np.linalg.norm(rows, axis=-2, keepdims=True)
    return out, contribution, np.linalg.cond(equilibrated), instance.numpy()


def incoming(valid, unknowns, mode, seed):
    """Incoming gradients [B, S, N]: `all` on every slot (the invalid ones too, which must be
    ignored), `one` on one valid slot per instance (as after `select`)."""
    batch, slots = valid.shape
    grad = torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, slots, unknowns)))
    if mode == "one":
        picked = torch.where(valid, torch.rand(batch, slots, generator=torch.Generator().manual_seed(seed)), -1.0)
        grad = grad * (torch.arange(slots) == picked.argmax(dim=1, keepdim=True)).unsqueeze(-1)
    return grad


def assert_matches(got, reference, rtol=1e-8):
    """Per instance: |got - reference| <= rtol |reference| (2-norms over the parameters)."""
    got = got.numpy()
    error = np.linalg.norm(got - reference, axis=-1)
    size = np.linalg.norm(reference, axis=-1)
    assert (size > 0).sum() >= len(size) - 1  # nearly every instance has a valid solution
    assert (error <= rtol * size).all(), (error / np.maximum(size, 1e-300)).max()


@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_against_the_dense_reference(name, mode):
    """K == N (P3P), K > N dense with N = 3 (closed-form Gram solve) and K > N sparse with N = 9
    (Cholesky); every valid solution weighted (the per-instance evaluation, then the pairs) or
    one per instance (each pair on its own, as after `select`)."""
    plan, system, a, x, valid, c = solved(name)
    assert system["dense"] == (name != "relpose_5pt")
    assert (plan.num_equations == plan.num_unknowns) == (name == "p3p")
    assert (plan.num_unknowns > 3) == (name == "relpose_5pt")
    grad = incoming(valid, plan.num_unknowns, mode, seed=22)
    pairs = (valid & (grad != 0).any(-1)).sum().item()
    assert pairs > COUNT if mode == "all" else pairs == valid.any(-1).sum().item()
    got, skipped = ift.implicit_vjp(a, x, valid, c, grad, 1e10, plan, system)
    reference, _, condition, _ = reference_vjp(plan, system, a, x, valid, grad)
    assert skipped.item() == 0 and condition.max() < 1e8
    assert_matches(got, reference)


# A point where the declared Jacobian is singular (E = 0; P3P: x = 0, where J = 0) or, where
# there is none at hand, not finite.
BROKEN = {"p3p": 0.0, "relpose_5pt_nullspace": float("nan"), "relpose_5pt": 0.0}


@pytest.mark.parametrize("name", PROBLEMS)
def test_pairs_without_gradient_cost_nothing(name):
    """A valid-flagged pair with zero incoming gradient is not differentiated: put where J is
    singular (or NaN) it is neither counted as skipped nor spoils the result; the same pair
    with a gradient is skipped, counted, and contributes zero."""
    plan, system, a, x, valid, c = solved(name)
    # One more slot per instance, valid-flagged, holding the broken point.
    x = torch.cat([x, torch.full_like(x[:, :1], BROKEN[name])], dim=1)
    valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
    last = valid.shape[1] - 1
    grad = incoming(valid, plan.num_unknowns, "all", seed=23)
    reference, _, _, _ = reference_vjp(plan, system, a, x, valid & (torch.arange(last + 1) < last), grad)
    grad[:, last] = 0
    got, skipped = ift.implicit_vjp(a, x, valid, c, grad, 1e10, plan, system)
    assert skipped.item() == 0
    assert_matches(got, reference)
    grad[:, last] = 1.0
    got, skipped = ift.implicit_vjp(a, x, valid, c, grad, 1e10, plan, system)
    assert skipped.item() == COUNT
    assert_matches(got, reference)


@pytest.mark.parametrize("name", PROBLEMS)
def test_ill_conditioned_pairs_are_zeroed_and_counted(name):
    """cond_max = 1: every usable pair is skipped (zero gradient, all counted). cond_max between
    the pairs' condition numbers (one pair per instance): a pair is zeroed where cond_2 of its
    equilibrated J exceeds cond_max and kept (matching the reference) where even N cond_2 is
    below it (the estimate lies between them); `skipped` counts exactly the zeroed pairs."""
    plan, system, a, x, valid, c = solved(name)
    grad = incoming(valid, plan.num_unknowns, "all", seed=24)
    got, skipped = ift.implicit_vjp(a, x, valid, c, grad, 1.0, plan, system)
    assert torch.equal(got, torch.zeros_like(got)) and skipped.item() == (valid & (grad != 0).any(-1)).sum()

    grad = incoming(valid, plan.num_unknowns, "one", seed=25)
    _, contribution, condition, instance = reference_vjp(plan, system, a, x, valid, grad)
    n = plan.num_unknowns
    cond_max = 1.01 * n * np.sort(condition)[1]  # the two best conditioned pairs are kept
    zeroed, kept = condition > cond_max, n * condition < cond_max
    assert zeroed.sum() >= 2 and kept.sum() >= 2, (condition, cond_max)
    got, skipped = ift.implicit_vjp(a, x, valid, c, grad, cond_max, plan, system)
    got = got.numpy()[instance]
    is_zero = (got == 0).all(axis=-1)
    assert is_zero[zeroed].all() and not is_zero[kept].any()
    assert skipped.item() == is_zero.sum()
    error = np.linalg.norm(got - contribution, axis=-1)
    assert (error[~is_zero] <= 1e-8 * np.linalg.norm(contribution[~is_zero], axis=-1)).all()


COND_MAX = {"p3p": 5.0, "relpose_5pt_nullspace": 30.0, "relpose_5pt": 300.0}  # some pairs above


@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_masked_path_equals_the_compacted_one(name, mode, monkeypatch):
    """Off the CPU (host_sync_is_free -> False) every pair is processed, masked: the same
    gradient and count of skipped pairs as the CPU's compaction to the usable pairs (invalid
    slots hold NaN, which masking must keep out; cond_max is set so that some pairs are
    skipped)."""
    plan, system, a, x, valid, c = solved(name)
    grad = incoming(valid, plan.num_unknowns, mode, seed=26)
    x = torch.where(valid.unsqueeze(-1), x, torch.full_like(x, float("nan")))
    compacted, skipped = ift.implicit_vjp(a, x, valid, c, grad, COND_MAX[name], plan, system)
    monkeypatch.setattr(parallel, "host_sync_is_free", lambda device: False)
    masked, masked_skipped = ift.implicit_vjp(a, x, valid, c, grad, COND_MAX[name], plan, system)
    usable = (valid & (grad != 0).any(-1)).sum().item()
    assert 0 < skipped.item() < usable  # some pairs skipped, some not
    assert torch.isfinite(compacted).all() and masked_skipped.item() == skipped.item()
    torch.testing.assert_close(masked, compacted, rtol=1e-10, atol=1e-12 * compacted.abs().max().item())
