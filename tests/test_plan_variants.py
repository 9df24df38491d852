"""Plan variants that no shipped problem has, compiled from small specs and run end to end:
a general linear action (no unknown separates the solutions), an even template after a
homogeneous linear block, an odd-degree gauge, a linear block that determines every unknown.
Each: the plan has the branch, the solver finds every true solution, the IFT agrees with
finite differences, and the masked device path gives the CPU path's solutions and gradients."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from test_gradients import fd_jacobians, ift_jacobians, relative_difference

import solvergen
from solvergen.runtime import parallel

HEADER = "import sympy as sp\nfrom solvergen import Problem\n"


def general_action(rng, count):
    a, b = rng.uniform(0.5, 2, size=(2, count))
    truth = [[(sx * np.sqrt(a_), sy * np.sqrt(b_)) for sx in (1, -1) for sy in (1, -1)] for a_, b_ in zip(a, b)]
    return np.stack([a, b], -1), np.array(truth)


def even_after_linear(rng, count):
    a, u, v = rng.uniform(0.5, 2, size=(3, count)) * rng.choice([-1, 1], size=(3, count))
    params = np.stack([a, u * u + v * v, u * v], -1)
    truth = [
        [(a_ * s * p, s * p, s * q) for s in (1, -1) for p, q in ((u_, v_), (v_, u_))] for a_, u_, v_ in zip(a, u, v)
    ]
    return params, np.array(truth)


def odd_gauge(rng, count):
    a, d, y, z = rng.uniform(0.5, 2, size=(4, count)) * rng.choice([-1, 1], size=(4, count))
    b, c = y * y / (z * z), (a * y + d * z) * y * z
    truth = []
    for a_, d_, b_, c_ in zip(a, d, b, c):
        # y = s sqrt(b) z, x = (a s sqrt(b) + d) z, and x y z = c fixes z (the real cube root).
        pairs = [(a_ * s * np.sqrt(b_) + d_, s * np.sqrt(b_)) for s in (1, -1)]
        truth.append([(p * r, q * r, r) for p, q in pairs for r in [np.cbrt(c_ / (p * q))]])
    return np.stack([a, d, b, c], -1), np.array(truth)


def affine(rng, count):
    a, b, t = rng.uniform(-1, 1, size=(3, count))
    c = (t + b) * (a - 2 * t - b)
    other = (a - 3 * b) / 2 - t  # the other root of (t + b)(a - 2 t - b) = c
    truth = [[(s + b_, s, a_ - 2 * s - b_) for s in (t_, o_)] for a_, b_, t_, o_ in zip(a, b, t, other)]
    return np.stack([a, b, c], -1), np.array(truth)


def linear_only(rng, count):
    a, b = rng.normal(size=(2, count))
    return np.stack([a, b], -1), np.stack([(a + 2 * b) / 3, (a - b) / 3], -1)[:, None]


VARIANTS = {
    # x^2 = a, y^2 = b: 4 solutions (+-sqrt a, +-sqrt b); neither x nor y (nor x^2, y^2) separates them.
    "general_action": (
        "x, y, a, b = sp.symbols('x y a b')\n"
        "problem = Problem('general_action', [x, y], [a, b], [x**2 - a, y**2 - b])",
        general_action,
        lambda plan: plan.template.action_read == -1 and not plan.template.even and plan.linear is None,
    ),
    # x1 = a x2 (a homogeneous linear block, no gauge), then even equations in the null space.
    "even_after_linear": (
        "x1, x2, x3, a, b, c = sp.symbols('x1 x2 x3 a b c')\n"
        "problem = Problem('even_after_linear', [x1, x2, x3], [a, b, c],\n"
        "                  [x1 - a*x2, x2**2 + x3**2 - b, x2*x3 - c])",
        even_after_linear,
        lambda plan: plan.template.even and plan.linear.homogeneous and plan.linear.gauge is None,
    ),
    # x = a y + d z, y^2 = b z^2, and the odd gauge x y z = c: 2 solutions, not up to sign.
    "odd_gauge": (
        "x, y, z, a, d, b, c = sp.symbols('x y z a d b c')\n"
        "problem = Problem('odd_gauge', [x, y, z], [a, d, b, c], [x - a*y - d*z, y**2 - b*z**2, x*y*z - c])",
        odd_gauge,
        lambda plan: plan.linear.gauge is not None and plan.linear.gauge.degree == 3 and not plan.sign_gauge,
    ),
    # x + y + z = a, x - y = b (an inhomogeneous block, 1-dimensional null space), x z = c.
    "affine": (
        "x, y, z, a, b, c = sp.symbols('x y z a b c')\n"
        "problem = Problem('affine', [x, y, z], [a, b, c], [x + y + z - a, x - y - b, x*z - c])",
        affine,
        lambda plan: not plan.linear.homogeneous and plan.linear.null_dim == 1 and plan.template is not None,
    ),
    # x + 2y = a, x - y = b: the linear block is the whole problem.
    "linear_only": (
        "x, y, a, b = sp.symbols('x y a b')\n"
        "problem = Problem('linear_only', [x, y], [a, b], [x + 2*y - a, x - y - b])",
        linear_only,
        lambda plan: plan.template is None and not plan.linear.homogeneous and plan.linear.reduced_equations is None,
    ),
}


@pytest.fixture(scope="module")
def solvers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    out = {}
    for name, (body, _, _) in VARIANTS.items():
        spec = folder / f"{name}.py"
        spec.write_text(HEADER + textwrap.dedent(body) + "\n")
        out[name] = solvergen.load(spec, out_dir=folder / "generated")
    return out


def assert_finds_every_solution(solver, params, truth):
    solutions, valid = solver(torch.from_numpy(params))
    assert (valid.sum(-1) == truth.shape[1]).all()
    distance = torch.cdist(torch.from_numpy(truth), solutions).masked_fill(~valid.unsqueeze(1), float("inf"))
    scale = torch.from_numpy(np.abs(truth).max(axis=(1, 2))).clamp_min(1)[:, None]
    assert (distance.amin(dim=-1) <= 1e-10 * scale).all(), distance.amin(dim=-1).max()


@pytest.mark.parametrize("name", VARIANTS)
def test_variant(name, solvers, monkeypatch):
    solver = solvers[name]
    _, instances, has_branch = VARIANTS[name]
    assert has_branch(solver.plan)
    params, truth = instances(np.random.default_rng(51), 200)
    assert_finds_every_solution(solver, params, truth)
    if solver.plan.template is not None:
        for eig in ("charpoly", "closed_form") if solver.plan.closed_form_eig else ("charpoly",):
            assert_finds_every_solution(type(solver)(eig=eig), params, truth)

    # The IFT against central finite differences (Richardson-extrapolated), every valid solution.
    a = torch.from_numpy(params[:60])
    solutions, valid, ift = ift_jacobians(solver, a)
    fd1, clear1 = fd_jacobians(solver, a, solutions, valid, 1e-7)
    fd2, clear2 = fd_jacobians(solver, a, solutions, valid, 2e-7)
    considered = valid & clear1 & clear2
    assert considered.double().mean() >= 0.95 * valid.double().mean()
    difference = relative_difference(ift, (4 * fd1 - fd2) / 3)
    assert (difference[considered] < 1e-6).all(), difference[considered].max()

    # The masked path (off the CPU: no compaction) gives the same solutions and gradients.
    def solve_and_differentiate():
        p = torch.from_numpy(params[:50]).requires_grad_(True)
        x, v = solver(p)
        (x * torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype) * v.unsqueeze(-1)).sum().backward()
        return x.detach(), v, p.grad

    compacted = solve_and_differentiate()
    monkeypatch.setattr(parallel, "host_sync_is_free", lambda device: False)
    masked = solve_and_differentiate()
    assert torch.equal(compacted[1], masked[1])
    torch.testing.assert_close(masked[0], compacted[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(masked[2], compacted[2], rtol=1e-6, atol=1e-9)
