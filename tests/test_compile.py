"""Solver(compile=True): the coefficient programs, the IFT backward and (closed-form eigenpairs)
the template-to-Newton stage through torch.compile give the eager solver's solutions and
gradients, and finite differences agree with them."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import generated_module
from test_gradients import assert_ift_matches_finite_differences

import geometry

# Inductor compiles C++ on the CPU: the first call of each compiled function takes 10-60 s here
# (torch caches the kernels on disk). The default suite compiles the small implicit example (a
# linear block and a 2 x 2 action matrix); P3P (sparse elimination, even template: about 2
# minutes to compile) runs with the slow checks.
pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler"
)
COMPILED_PROBLEMS = ["implicit_example", pytest.param("p3p", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", COMPILED_PROBLEMS)
def test_compiled_equals_eager(name):
    module = generated_module(name)
    params, _ = geometry.INSTANCES[name](300, np.random.default_rng(5))
    params = torch.from_numpy(params)
    params[7] = float("nan")  # a garbage row stays masked, compiled too
    weights = torch.randn(len(params), module.NUM_SOLUTIONS, len(module.UNKNOWN_NAMES), dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))
    # compile=True picks the closed-form eigenpairs for these small action matrices (they fuse);
    # the eager reference uses the same method.
    eig = module.Solver(compile=True).resolved_eig(torch.device("cpu"))
    assert eig == "closed_form"
    results = {}
    for compiled in (False, True):
        a = params.clone().requires_grad_(True)
        solver = module.Solver(compile=compiled, eig=eig)
        solutions, valid = solver(a)
        (solutions * weights * valid.unsqueeze(-1)).sum().backward()
        results[compiled] = solutions.detach(), valid, a.grad, int(solver.ill_conditioned)
    compiled_functions = {fn.__name__ for fn in module.PLAN.cache["compiled"]}
    assert {"_coefficients", "polished_candidates", "implicit_vjp"} <= compiled_functions  # compiled paths ran
    (x0, v0, g0, ill0), (x1, v1, g1, ill1) = results[False], results[True]
    assert torch.equal(v0, v1) and not v1[7].any()
    assert ill0 == ill1
    # The same solutions; in the same order except in the rows the compiled stage hands back to
    # LAPACK (`template.solve_candidates`), whose eigenvalue order differs from the closed form's.
    distance = torch.cdist(x1, x0).masked_fill(~(v1.unsqueeze(-1) & v0.unsqueeze(-2)), float("inf"))
    scale = x0.norm(dim=-1).amax(dim=-1)[:, None]
    assert (distance.amin(dim=-1)[v1] <= 1e-10 * scale.expand_as(v1)[v1]).all()
    assert (distance.amin(dim=-2)[v0] <= 1e-10 * scale.expand_as(v0)[v0]).all()
    same_order = (x1 - x0).abs().amax(dim=(-2, -1)) <= 1e-10 * scale.squeeze(-1) + 1e-12
    assert same_order.double().mean() >= 0.98
    assert torch.isfinite(g1).all() and (g1[7] == 0).all()
    # Fused kernels round differently; ill-conditioned instances amplify that.
    relative = (g1 - g0).norm(dim=-1) / g0.norm(dim=-1).clamp_min(1e-300)
    assert (relative < 1e-8).double().mean() >= 0.99


@pytest.mark.parametrize("name", COMPILED_PROBLEMS)
def test_compiled_ift_matches_finite_differences(name):
    module = generated_module(name)
    assert_ift_matches_finite_differences(name, module, module.Solver(compile=True))


def test_compile_needs_the_ift_backward():
    module = generated_module("p3p")
    with pytest.raises(ValueError, match="compile=True needs backward='ift'"):
        module.Solver(backward="autograd", compile=True)
    with pytest.raises(ValueError, match="compile must be True or False"):
        module.Solver(compile="yes")


@pytest.mark.slow
def test_compiled_natural_5pt_matches_finite_differences():
    """The natural 5-point: a sparse system with a least-squares IFT (Cholesky by entries)."""
    module = generated_module("relpose_5pt")
    assert_ift_matches_finite_differences("relpose_5pt", module, module.Solver(compile=True))


@pytest.mark.parametrize("batch", [0, 1, 2])
def test_compiled_small_batches(batch):
    """Batches of 0 and 1 run as written (see `runtime.compiled`); 2 is the smallest compiled one."""
    module = generated_module("implicit_example")
    params, _ = geometry.INSTANCES["implicit_example"](4, np.random.default_rng(6))
    results = {}
    for compiled in (False, True):
        a = torch.from_numpy(params[:batch]).requires_grad_(True)
        solutions, valid = module.Solver(compile=compiled, eig="closed_form")(a)
        (solutions * valid.unsqueeze(-1)).sum().backward()
        results[compiled] = solutions.detach(), valid, a.grad
    for eager, compiled in zip(results[False], results[True]):
        torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)
