"""Solver(compile=True): the coefficient programs, the IFT backward and (closed-form eigenpairs)
the template-to-Newton stage through torch.compile give the eager solver's solutions and
gradients, and finite differences agree with them.

Two backends. "inductor" is what users get: it generates C++ on the CPU, 30 s to 3 minutes per
problem on 2 cores with an empty cache, so the default suite compiles only the small implicit
example with it, and every other problem runs with the slow checks (`pytest -m slow`).
"aot_eager" captures the same graphs (dynamo and autograd tracing, guards, dynamic shapes, the
masked paths) without generating code: every shipped problem, in the `compiled` group that
.ci/run runs as a second command (`pytest -m compiled`, about 5 minutes)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import COMPILED_LIMITATIONS, PROBLEMS, generated_module
from test_gradients import assert_ift_matches_finite_differences

import geometry
from solvergen.runtime import compiled, eig

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler"
)


def cases(names, limitations=None):
    """(backend, problem): inductor for the implicit example (default suite) and, slow, for the
    others; aot_eager for each (the `compiled` group). `limitations`: problem -> reason of a
    known, measured shortfall (strict xfail)."""
    out = []
    for name in names:
        known = [pytest.mark.xfail(strict=True, reason=limitations[name])] if limitations and name in limitations else []
        inductor = [] if name == "implicit_example" else [pytest.mark.slow]
        out.append(pytest.param("inductor", name, marks=inductor + known, id=f"inductor-{name}"))
        out.append(pytest.param("aot_eager", name, marks=[pytest.mark.compiled] + known, id=f"aot_eager-{name}"))
    return out


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", request.param)
    return request.param


def solve_and_differentiate(solver, params, truth, weights):
    """Solutions, validity, the gradient of a loss on every valid solution and of one through
    `select`, and the ill-conditioned counts of both backwards."""
    a = params.clone().requires_grad_(True)
    solutions, valid = solver(a)
    (solutions * weights * valid.unsqueeze(-1)).sum().backward()
    every, ill_every = a.grad, int(solver.ill_conditioned)
    a = params.clone().requires_grad_(True)
    picked, _ = solver.select(*solver(a), reference=truth)
    (picked * weights[0, 0]).sum().backward()
    return solutions.detach(), valid, every, a.grad, (ill_every, int(solver.ill_conditioned))


@pytest.mark.parametrize("backend, name", cases(PROBLEMS, COMPILED_LIMITATIONS), indirect=["backend"])
def test_compiled_equals_eager(backend, name):
    module = generated_module(name)
    plan = module.PLAN
    params, truth = geometry.INSTANCES[name](300, np.random.default_rng(5))
    params, truth = torch.from_numpy(params), torch.from_numpy(truth)
    params[7] = float("nan")  # a garbage row stays masked, compiled too
    weights = torch.randn(len(params), module.NUM_SOLUTIONS, len(module.UNKNOWN_NAMES), dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))
    # compile=True picks the closed-form eigenpairs for action matrices up to 4 x 4 (the whole
    # stage then compiles); the eager reference uses the same method.
    method = module.Solver(compile=True).resolved_eig(torch.device("cpu"))
    assert method == ("closed_form" if plan.closed_form_eig else "lapack")
    eager = solve_and_differentiate(module.Solver(eig=method), params, truth, weights)
    result = solve_and_differentiate(module.Solver(compile=True, eig=method), params, truth, weights)
    ran = {fn.__name__ for fn, used in plan.cache["compiled"] if used == backend}
    expected = {"_coefficients", "implicit_vjp"}
    expected |= {"polished_candidates"} if plan.closed_form_eig else set()
    expected |= {"_reduced_coefficients"} if plan.linear is not None and plan.template is not None else set()
    assert expected <= ran, ran  # the compiled paths ran

    (x0, v0, g0, s0, ill0), (x1, v1, g1, s1, ill1) = eager, result
    assert torch.equal(v0, v1) and not v1[7].any()
    assert ill0 == ill1
    # The same solutions; in the same order except in the rows the compiled stage hands back to
    # LAPACK (`template.solve_candidates`), whose eigenvalue order differs from the closed form's.
    # (Compiled coefficients round differently; the 6-point's worst-conditioned roots move 1e-8.)
    distance = torch.cdist(x1, x0).masked_fill(~(v1.unsqueeze(-1) & v0.unsqueeze(-2)), float("inf"))
    scale = x0.norm(dim=-1).amax(dim=-1)[:, None]
    for nearest, valid in ((distance.amin(dim=-1), v1), (distance.amin(dim=-2), v0)):
        relative = nearest[valid] / scale.expand_as(valid)[valid]
        assert relative.max() <= 1e-7 and (relative <= 1e-10).double().mean() >= 0.995, relative.max()
    same_order = (x1 - x0).abs().amax(dim=(-2, -1)) <= 1e-7 * scale.squeeze(-1) + 1e-12
    assert same_order.double().mean() >= 0.98
    # The weights are per solution slot: compare the every-solution gradients where both runs
    # returned the solutions in the same order.
    for compiled_grad, eager_grad, rows in ((g1, g0, same_order), (s1, s0, torch.ones_like(same_order))):
        assert torch.isfinite(compiled_grad).all() and (compiled_grad[7] == 0).all()
        # Compiled code rounds differently (fused kernels; the least-squares backward's Cholesky
        # entry by entry), and ill-conditioned instances amplify that.
        relative = ((compiled_grad - eager_grad).norm(dim=-1) / eager_grad.norm(dim=-1).clamp_min(1e-300))[rows]
        assert relative.median() < 1e-10 and (relative < 1e-6).double().mean() >= 0.99, relative.max()


# The backward's three forms: K == N (the implicit example), least squares with the closed-form
# Gram inverse (5-point null space: 10 equations, 3 unknowns), least squares with the Cholesky
# factor computed entry by entry when compiled (natural 5-point: 16 equations, 9 unknowns).
@pytest.mark.parametrize("backend, name", cases(["implicit_example", "relpose_5pt_nullspace", "relpose_5pt"]),
                         indirect=["backend"])
def test_compiled_ift_matches_finite_differences(backend, name):
    module = generated_module(name)
    assert_ift_matches_finite_differences(name, module, module.Solver(compile=True))


@pytest.mark.compiled
def test_compiled_stage_redoes_rows_without_a_solution(monkeypatch):
    """compile=True runs P3P's closed-form stage compiled; rows left without a solution are redone
    eagerly with LAPACK's eigenpairs. The closed form works from the characteristic polynomial,
    which can lose the real roots of a badly scaled action matrix (seen about 5 times in 10,000
    P3P instances); here the compiled graph is made to lose every root of instance 0."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    module = generated_module("p3p")
    monkeypatch.setitem(module.PLAN.cache, "compiled", {})  # compile afresh, with the patch below
    closed_form = eig.closed_form

    def losing_instance_0(matrix, tables):
        values, vectors = closed_form(matrix, tables)
        # (A large finite imaginary part: FX cannot print an infinite complex constant.)
        return torch.cat([torch.full_like(values[:1], complex(0.0, 1e300)), values[1:]]), vectors

    monkeypatch.setattr(eig, "closed_form", losing_instance_0)
    params, truth = geometry.p3p_instances(50, np.random.default_rng(0))
    errors = {}
    for label, solver in [("closed_form", module.Solver(eig="closed_form")), ("compiled", module.Solver(compile=True))]:
        solutions, valid = solver(torch.from_numpy(params))
        errors[label] = geometry.relative_errors(solutions.numpy(), valid.numpy(), truth, False)
    assert errors["closed_form"][0] == np.inf and (errors["closed_form"][1:] < 1e-9).all()
    assert (errors["compiled"] < 1e-9).all()
    assert {fn.__name__ for fn, _ in module.PLAN.cache["compiled"]} >= {"polished_candidates"}


def test_compile_needs_the_ift_backward():
    module = generated_module("p3p")
    with pytest.raises(ValueError, match="compile=True needs backward='ift'"):
        module.Solver(backward="autograd", compile=True)
    with pytest.raises(ValueError, match="compile must be True or False"):
        module.Solver(compile="yes")


@pytest.mark.parametrize("batch", [0, 1, 2])
def test_compiled_small_batches(batch):
    """Batches of 0 and 1 run as written (see `runtime.compiled`); 2 is the smallest compiled one."""
    module = generated_module("implicit_example")
    params, _ = geometry.INSTANCES["implicit_example"](4, np.random.default_rng(6))
    results = {}
    for compile_ in (False, True):
        a = torch.from_numpy(params[:batch]).requires_grad_(True)
        solutions, valid = module.Solver(compile=compile_, eig="closed_form")(a)
        (solutions * valid.unsqueeze(-1)).sum().backward()
        results[compile_] = solutions.detach(), valid, a.grad
    for eager, result in zip(results[False], results[True]):
        torch.testing.assert_close(result, eager, rtol=1e-9, atol=1e-12)
