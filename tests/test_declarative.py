"""Declarative layers (`Argmin`, `Implicit`): spec errors, values against independent references
(closed forms, a fixed-point iteration, scipy, the `Problem` solver), gradients against central
finite differences, masking of bad rows."""
from __future__ import annotations

import random
import textwrap

import numpy as np
import pytest
import torch
from conftest import ROOT, generated_module

import solvergen
from solvergen import SpecError
from solvergen.generate import generate
from solvergen.spec import read_spec

HEADER = "import sympy as sp\nfrom solvergen import Argmin, Implicit\n"

# Small layers with closed forms, written to a temporary folder.
PROJECTIONS = {
    # The DDN library's linear-equality node gets this gradient wrong.
    "sum_projection": """
        y = sp.symbols("y0:5"); x = sp.symbols("x0:5")
        problem = Argmin("sum_projection", y, x, sum((a - b)**2 for a, b in zip(y, x)) / 2, equalities=[sum(y) - 1])
    """,
    "simplex_projection": """
        y = sp.symbols("y0:4"); x = sp.symbols("x0:4")
        problem = Argmin("simplex_projection", y, x, sum((a - b)**2 for a, b in zip(y, x)) / 2,
                         equalities=[sp.Eq(sum(y), 1)], inequalities=[v >= 0 for v in y], init=sp.Rational(1, 4))
    """,
    # The softmax as the entropy-regularised argmax on the simplex (log of an unknown).
    "entropy_simplex": """
        y = sp.symbols("y0:5"); x = sp.symbols("x0:5")
        problem = Argmin("entropy_simplex", y, x, -sum(a * b for a, b in zip(x, y)) + sum(v * sp.log(v) for v in y),
                         equalities=[sum(y) - 1], inequalities=[v >= 0 for v in y], init=sp.Rational(1, 5))
    """,
    # The entropic projection with a temperature: components down to 1e-18 at small tau, where
    # the final barrier leaves y >= 0 ambiguous and the Hessian entry tau / y reaches 1e17.
    "entropy_projection": """
        y = sp.symbols("y0:5"); x = sp.symbols("x0:5"); tau = sp.Symbol("tau")
        problem = Argmin("entropy_projection", y, [x, tau],
                         sum((a - b)**2 for a, b in zip(y, x)) / 2 + tau * sum(v * sp.log(v) for v in y),
                         equalities=[sum(y) - 1], inequalities=[v >= 0 for v in y], init=sp.Rational(1, 5))
    """,
    # A trust-region subproblem: indefinite Q makes it non-convex.
    "trust_region": """
        y = sp.Matrix(sp.symbols("y0:3")); Q = sp.Matrix(3, 3, sp.symbols("Q0:9")); g = sp.Matrix(sp.symbols("g0:3"))
        problem = Argmin("trust_region", y, [Q, g], (y.T * Q * y)[0] / 2 + (g.T * y)[0], inequalities=[y.dot(y) <= 1])
    """,
    "ball_projection": """
        y = sp.symbols("y0:3"); x = sp.symbols("x0:3")
        problem = Argmin("ball_projection", y, x, sum((a - b)**2 for a, b in zip(y, x)) / 2,
                         inequalities=[sum(v**2 for v in y) <= 1])
    """,
}


@pytest.fixture(scope="module")
def projections(tmp_path_factory):
    folder = tmp_path_factory.mktemp("projections")
    layers = {}
    for name, body in PROJECTIONS.items():
        spec = folder / f"{name}.py"
        spec.write_text(HEADER + textwrap.dedent(body))
        layers[name] = solvergen.load(spec, out_dir=folder / "generated")
    return layers


def layer(name, **options):
    return generated_module(name).Layer(**options)


def finite_difference_check(model, params, h=1e-5, seed=12345):
    """Relative error of the IFT gradient of <w, y> against central differences, per row, and
    the rows' scale (the norm of the finite-difference gradient)."""
    w = torch.randn(params.shape[0], model.plan.num_unknowns, generator=torch.Generator().manual_seed(seed),
                    dtype=params.dtype)
    p = params.clone().requires_grad_(True)
    y, ok = model(p)
    (y * w).sum().backward()
    fd = torch.zeros_like(params)
    for j in range(params.shape[1]):
        e = torch.zeros(params.shape[1], dtype=params.dtype)
        e[j] = h
        fd[:, j] = ((model(params + e)[0] - model(params - e)[0]) * w).sum(-1) / (2 * h)
    return (p.grad - fd).norm(dim=-1), fd.norm(dim=-1), ok


# -- Specs ------------------------------------------------------------------------------------

BAD_SPECS = {
    "objective not scalar": ("problem = Argmin('a', sp.symbols('y0:2'), [sp.Symbol('p')], sp.Matrix(sp.symbols('y0:2')))",
                             "the objective must be a scalar expression, got a 2x1 Matrix"),
    "constraint without unknown": ("y, p = sp.symbols('y p')\nproblem = Argmin('a', [y], [p], y**2, equalities=[p - 1])",
                                   "equality 0 (p - 1) does not involve any unknown"),
    "Abs of an unknown": ("y, p = sp.symbols('y p')\nproblem = Argmin('a', [y], [p], sp.Abs(y - p))",
                          "the objective uses Abs(...) of an unknown, which is not smooth"),
    "Max in an equation": ("y, p = sp.symbols('y p')\nproblem = Implicit('a', [y], [p], [sp.Max(y, p) - 1])",
                           "equation 0 uses Max(...) of an unknown"),
    "undefined function": ("y, p = sp.symbols('y p')\nproblem = Implicit('a', [y], [p], [sp.Function('f')(y) - p])",
                           "equation 0 uses the undefined function f"),
    "too few equations": ("y, z, p = sp.symbols('y z p')\nproblem = Implicit('a', [y, z], [p], [y - p])",
                          "1 equation(s) for 2 unknowns"),
    "equality among inequalities": ("y, p = sp.symbols('y p')\nproblem = Argmin('a', [y], [p], y**2, inequalities=[sp.Eq(y, p)])",
                                    "is not an inequality"),
    "init uses an unknown": ("y, p = sp.symbols('y p')\nproblem = Argmin('a', [y], [p], (y - p)**2, init=[y])",
                             "init entry 0 uses y: it may use the parameters only"),
    "init of the wrong length": ("y, p = sp.symbols('y p')\nproblem = Argmin('a', [y], [p], (y - p)**2, init=[p, p])",
                                 "init has 2 entries for 1 unknowns"),
    "undeclared symbol": ("y, p, q = sp.symbols('y p q')\nproblem = Argmin('a', [y], [p], (y - q)**2)",
                          "the objective uses undeclared symbol(s) q"),
    "entropy started at zero": ("y, p = sp.symbols('y p')\nproblem = Argmin('a', [y], [p], y * sp.log(y) - p * y)",
                                "the default start point y = 0 (no init= given) is outside the domain of the objective"),
    "Abs of a complex parameter": ("y, p = sp.symbols('y p')\nproblem = Argmin('a', [y], [p], (y - sp.Abs(p))**2)",
                                   "Abs(...) of the parameter(s) p, whose derivative sympy gives for real symbols only"),
    "Mod of a parameter": ("y = sp.Symbol('y')\np = sp.Symbol('p', real=True)\n"
                           "problem = Argmin('a', [y], [p], (y - sp.Mod(p, 2))**2)",
                           "the objective uses Mod(...), which solvergen does not support"),
    "init on a pole": ("y, p = sp.symbols('y p')\nproblem = Implicit('a', [y], [p], [1 / (y - 1) - p], init=1)",
                       "the start point init= is outside the domain of equation 0"),
}


@pytest.mark.parametrize("option, value, message", [
    ("tol", -1.0, "tol must be a finite number above 0"), ("max_iterations", 0, "an integer at least 1"),
    ("max_iterations", 2.5, "an integer at least 1"), ("refine_steps", -1, "an integer at least 0"),
    ("cond_max", 0, "cond_max must be a number above 0"), ("backward", "dense", "backward must be"),
])
def test_bad_layer_options_are_refused_in_one_line(option, value, message):
    with pytest.raises(ValueError, match=message):
        layer("robust_line_fit", **{option: value})


@pytest.mark.parametrize("case", BAD_SPECS)
def test_bad_declarative_spec_is_refused_in_one_line(case, tmp_path):
    body, message = BAD_SPECS[case]
    spec = tmp_path / "spec.py"
    spec.write_text(HEADER + body + "\n")
    with pytest.raises(SpecError) as error:
        generate(spec, tmp_path / "out")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


NON_SMOOTH_OF_PARAMETERS = {  # f(a, b) -> x* of argmin (x - f)^2 + (y - b x)^2 + x^4 / 10
    "Abs": "sp.Abs(a)", "sign": "sp.sign(a)", "Max": "sp.Max(a, b, 0)", "Min": "sp.Min(a, 2 * b)",
    "floor": "sp.floor(a)", "ceiling": "sp.ceiling(a)", "Heaviside": "sp.Heaviside(a)",
}


@pytest.mark.parametrize("name", NON_SMOOTH_OF_PARAMETERS)
def test_non_smooth_functions_of_real_parameters(name, tmp_path):
    """Abs, sign, Max, ... of (real) parameters print as batched torch code; their derivative is
    the one almost everywhere (sign, Heaviside, floor: zero), checked by central differences."""
    spec = tmp_path / f"nonsmooth_{name.lower()}.py"
    spec.write_text(HEADER + "x, y = sp.symbols('x y')\na, b = sp.symbols('a b', real=True)\n"
                    f"problem = Argmin('nonsmooth_{name.lower()}', [x, y], [a, b], "
                    f"(x - {NON_SMOOTH_OF_PARAMETERS[name]})**2 + (y - b * x)**2 + x**4 / 10)\n")
    model = solvergen.load(spec, out_dir=tmp_path / "out")
    params = 2 * torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    error, scale, ok = finite_difference_check(model, params)
    assert bool(ok.all())
    assert (error <= 1e-5 * (1 + scale)).float().mean() >= 0.99


def test_inequality_relations_are_read_as_expressions_below_zero():
    y, p = __import__("sympy").symbols("y p")
    problem = solvergen.Argmin("a", [y], [p], (y - p) ** 2, inequalities=[y >= p, y <= 2, y - 3])
    assert problem.inequalities == (p - y, y - 2, y - 3)


# -- Implicit ---------------------------------------------------------------------------------


def test_implicit_example_layer_matches_the_closed_form_and_the_problem_solver():
    model = layer("implicit_example_layer")
    x = torch.tensor([[0.6], [0.8], [1.2], [1.7]], dtype=torch.float64, requires_grad=True)
    y, ok = model(x)
    assert ok.all()
    xs = x.detach().squeeze(-1)
    y2 = (4 - xs**2 - 1 / xs**2).sqrt()
    torch.testing.assert_close(y.detach(), torch.stack([1 / xs, y2], -1), rtol=0, atol=1e-9)
    y[:, 1].sum().backward()
    torch.testing.assert_close(x.grad.squeeze(-1), (-xs + 1 / xs**3) / y2, rtol=1e-9, atol=0)
    # The Problem solver of the same system: its solution with y2 > 0, and the same gradient.
    solver = generated_module("implicit_example").Solver()
    x2 = x.detach().clone().requires_grad_(True)
    solutions, valid = solver(x2)
    picked, found = solver.select(solutions, valid, score=lambda s: s[..., 1])
    assert found.all()
    torch.testing.assert_close(picked.detach(), y.detach(), rtol=0, atol=1e-9)
    picked[:, 1].sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-8, atol=0)


def test_rows_without_a_solution_or_with_nan_are_masked_and_leave_the_others_unchanged():
    model = layer("implicit_example_layer")
    good = torch.tensor([[0.6], [1.2]], dtype=torch.float64)
    alone, _ = model(good)
    mixed = torch.tensor([[0.6], [3.0], [float("nan")], [1.2]], dtype=torch.float64, requires_grad=True)
    y, ok = model(mixed)
    assert ok.tolist() == [True, False, False, True]
    assert torch.equal(y[[0, 3]].detach(), alone) and torch.equal(y[2].detach(), torch.zeros(2, dtype=torch.float64))
    y.sum().backward()
    assert torch.isfinite(mixed.grad).all() and (mixed.grad[[1, 2]] == 0).all() and (mixed.grad[[0, 3]] != 0).all()


def tanh_instances(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(count, 6, 6, generator=g, dtype=torch.float64)
    W = 0.9 * W / torch.linalg.matrix_norm(W, ord=2)[:, None, None]  # a contraction
    x = torch.randn(count, 6, generator=g, dtype=torch.float64)
    return torch.cat([W.flatten(1), x], -1), W, x


def fixed_point(W, x, iterations=600):
    y = torch.zeros_like(x)
    for _ in range(iterations):
        y = torch.tanh((W @ y.unsqueeze(-1)).squeeze(-1) + x)
    return y


def test_tanh_fixed_point_matches_the_fixed_point_iteration_and_attach_gives_the_same_gradient():
    model = layer("tanh_fixed_point")
    params, W, x = tanh_instances(400)
    y, ok = model(params)
    reference = fixed_point(W, x)
    assert ok.float().mean() >= 0.995
    assert ((y - reference).abs().amax(-1) <= 1e-8).float().mean() >= 0.995
    # attach: a y_hat from the plain iteration, the IFT gradient attached.
    w = torch.randn(20, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p1 = params[:20].clone().requires_grad_(True)
    (model(p1)[0] * w).sum().backward()
    p2 = params[:20].clone().requires_grad_(True)
    attached = model.attach(p2, reference[:20])
    torch.testing.assert_close(attached.detach(), reference[:20], rtol=0, atol=1e-12)
    (attached * w).sum().backward()
    torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-8, atol=1e-12)


def test_tanh_fixed_point_gradients_match_finite_differences_and_autograd():
    model = layer("tanh_fixed_point")
    params, _, _ = tanh_instances(25, seed=2)
    error, scale, ok = finite_difference_check(model, params)
    assert ok.all() and (error <= 1e-5 * scale).float().mean() >= 0.99
    baseline = layer("tanh_fixed_point", backward="autograd")
    p1, p2 = params.clone().requires_grad_(True), params.clone().requires_grad_(True)
    model(p1)[0].sum().backward()
    baseline(p2)[0].sum().backward()
    torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-7, atol=1e-10)


def test_float32_params_give_float32_outputs():
    model = layer("tanh_fixed_point")
    params, W, x = tanh_instances(8, seed=3)
    y, ok = model(params.float())
    assert y.dtype == torch.float32 and ok.all()
    torch.testing.assert_close(y.double(), fixed_point(W, x), rtol=0, atol=1e-6)


# -- Argmin -----------------------------------------------------------------------------------


def robust_line_reference(p, start):
    """scipy's trust-region Newton with the pseudo-Huber gradient and Hessian written here, then
    plain Newton steps (scipy stops with gradients near 1e-7 on some instances)."""
    from scipy.optimize import minimize

    xs, ys = p[:20], p[20:]

    def parts(theta):
        r = ys - theta[0] * xs - theta[1]
        root = np.sqrt(1 + r**2)
        d1, d2 = r / root, 1 / root**3  # d/dr and d2/dr2 of sqrt(1 + r^2) - 1
        jac = np.stack([-xs, -np.ones_like(xs)], 1)  # dr/dtheta
        return np.sum(root - 1), jac.T @ d1, jac.T @ (d2[:, None] * jac)

    result = minimize(lambda t: parts(t)[0], start, jac=lambda t: parts(t)[1], hess=lambda t: parts(t)[2],
                      method="trust-exact", options=dict(gtol=1e-13))
    theta = result.x
    for _ in range(5):  # the objective is convex: Newton converges quadratically from there
        _, gradient, hessian = parts(theta)
        theta = theta - np.linalg.solve(hessian, gradient)
    return theta


def robust_line_instances(count, seed=0):
    problem = read_spec(ROOT / "problems" / "robust_line_fit.py").problem
    rng = random.Random(seed)
    return torch.tensor([problem.sampler(rng) for _ in range(count)], dtype=torch.float64)


def test_robust_line_fit_matches_scipy():
    model = layer("robust_line_fit")
    params = robust_line_instances(200)
    y, ok = model(params)
    assert ok.float().mean() >= 0.995
    reference = np.stack([robust_line_reference(p, np.zeros(2)) for p in params.numpy()])
    close = (np.abs(y.numpy() - reference).max(-1) <= 1e-8)
    assert close.mean() >= 0.995


POWER_ON_A_BOX = ("x, y, a, b, s = sp.symbols('x y a b s')\n"
                  "problem = Argmin('power_box', [x, y], [a, b, s], x**1.5 + y**1.5 - a * x - b * y, "
                  "inequalities=[x >= 0, y >= 0, x + y <= s])\n")


def power_box_reference(params, iterations=200):
    """min x^1.5 + y^1.5 - a x - b y over x, y >= 0, x + y <= s: x(m) = (2 max(a - m, 0) / 3)^2
    (y alike) with m = 0 or, where that breaks x + y <= s, the m > 0 giving x + y = s (bisection)."""
    a, b, s = params.unbind(-1)

    def point(m):
        return torch.stack([(2 * (a - m).clamp_min(0) / 3) ** 2, (2 * (b - m).clamp_min(0) / 3) ** 2], -1)
    low, high = torch.zeros_like(s), torch.maximum(a, b).clamp_min(0)
    for _ in range(iterations):
        m = (low + high) / 2
        over = point(m).sum(-1) > s
        low, high = torch.where(over, m, low), torch.where(over, high, m)
    return torch.where((point(torch.zeros_like(s)).sum(-1) <= s).unsqueeze(-1), point(torch.zeros_like(s)),
                       point((low + high) / 2))


def test_power_with_an_infinite_hessian_at_its_bound(tmp_path):
    """x**1.5 on x >= 0: the default start (0, 0) lies on both bounds, where the Hessian is
    infinite (the interior point moves it inside: IPOPT's bound push), and most solutions have
    a coordinate at 0, where the active-set polish, the second-order test and the IFT replace
    the pinned row of the Hessian. (Before: ok on no row from the default start, 60% from
    init=(s/4, s/4).)"""
    spec = tmp_path / "power_box.py"
    spec.write_text(HEADER + POWER_ON_A_BOX)
    model = solvergen.load(spec, out_dir=tmp_path / "out")
    g = torch.Generator().manual_seed(7)
    params = torch.cat([torch.rand(1000, 2, generator=g, dtype=torch.float64) * 2.5 - 0.5,
                        torch.rand(1000, 1, generator=g, dtype=torch.float64) * 1.8 + 0.2], -1)
    y, ok = model(params)
    reference = power_box_reference(params)
    assert ok.float().mean() >= 0.995
    assert ((y - reference).abs().amax(-1) <= 1e-8)[ok].float().mean() >= 0.995
    assert (reference == 0).any(-1).float().mean() > 0.3
    error, scale, ok = finite_difference_check(model, params[:40])
    assert (error <= 1e-5 * (1 + scale))[ok].float().mean() >= 0.95  # FD may cross a kink


def test_projection_onto_a_capped_simplex_at_its_vertices(tmp_path):
    """0 <= y <= 1, y0 + y1 + y2 = 1: most solutions for spread x are vertices (one 1, two 0),
    where the three bounds imply the equality (dependent active constraints, singular KKT
    matrix). Newton, the second-order test and the IFT then use the bounds alone: ok on every
    row (before: on none of the vertex rows), values against bisection, gradient zero there."""
    spec = tmp_path / "capped3.py"
    spec.write_text(HEADER + "y = sp.symbols('y0:3')\nx = sp.symbols('x0:3')\n"
                    "problem = Argmin('capped3', list(y), list(x), sum((y[i] - x[i])**2 for i in range(3)) / 2, "
                    "equalities=[sum(y) - 1], inequalities=[v >= 0 for v in y] + [v <= 1 for v in y])\n")
    model = solvergen.load(spec, out_dir=tmp_path / "out")
    x = 4 * torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    y, ok = model(xg)
    low, high = x.amin(-1, keepdim=True) - 1, x.amax(-1, keepdim=True)
    for _ in range(200):
        t = (low + high) / 2
        over = (x - t).clamp(0, 1).sum(-1, keepdim=True) > 1
        low, high = torch.where(over, t, low), torch.where(over, high, t)
    reference = (x - (low + high) / 2).clamp(0, 1)
    vertex = ((reference - reference.round()).abs() < 1e-9).all(-1)
    assert vertex.float().mean() > 0.5
    assert bool(ok.all()) and (y - reference).abs().max() <= 1e-8
    (y * torch.randn_like(y)).sum().backward()
    assert xg.grad[vertex].abs().max() <= 1e-12
    error, scale, ok = finite_difference_check(model, x[:40])
    assert (error <= 1e-5 * (1 + scale))[ok].float().mean() >= 0.95


def test_curved_equality_from_a_far_start(tmp_path):
    """min (x - a)^2 + (y - b)^2 subject to y = exp(x), started at (0, 0): Newton on the KKT
    equations with |residual|^2 as merit stalled on 1% of rows (a local minimum of the merit
    function); the interior point's inertia correction and l1 merit function do not."""
    spec = tmp_path / "exp_curve.py"
    spec.write_text(HEADER + "x, y, a, b = sp.symbols('x y a b')\n"
                    "problem = Argmin('exp_curve', [x, y], [a, b], (x - a)**2 + (y - b)**2, equalities=[y - sp.exp(x)])\n")
    model = solvergen.load(spec, out_dir=tmp_path / "out")
    g = torch.Generator().manual_seed(8)
    params = torch.stack([torch.rand(2000, generator=g, dtype=torch.float64) * 4 - 2,
                          torch.rand(2000, generator=g, dtype=torch.float64) * 5.6 - 2.8], -1)
    y, ok = model(params)
    a, b = params.unbind(-1)  # x - a + e^2x - b e^x = 0 has one root for b^2 < 8 (increasing)
    low, high = torch.full_like(a, -80.0), torch.full_like(a, 10.0)
    for _ in range(200):
        mid = (low + high) / 2
        above = mid - a + torch.exp(2 * mid) - b * torch.exp(mid) > 0
        low, high = torch.where(above, low, mid), torch.where(above, mid, high)
    x = (low + high) / 2
    reference = torch.stack([x, torch.exp(x)], -1)
    assert ok.float().mean() >= 0.995
    assert ((y - reference).abs().amax(-1) <= 1e-8)[ok].float().mean() >= 0.995
    error, scale, ok = finite_difference_check(model, params[:40])
    assert (error <= 1e-5 * (1 + scale))[ok].float().mean() >= 0.99


def test_robust_line_fit_far_from_the_origin():
    """Points shifted by 1e4 in y: the fit shifts its intercept by 1e4 (translation equivariance).
    The gradient summed over the points does not reach an absolute tol there and the objective
    cannot see the last Newton steps' decrease (its rounding is larger): the layer takes full
    Newton steps that shrink the gradient, and stops at a rounding-level step."""
    model = layer("robust_line_fit")
    params = robust_line_instances(256, seed=4)
    y, ok = model(params)
    shifted = params.clone()
    shifted[:, 20:] += 1e4
    y_shifted, ok_shifted = model(shifted)
    assert bool(ok.all()) and bool(ok_shifted.all())
    expected = y + torch.tensor([0.0, 1e4])
    assert (y_shifted - expected).abs().max() <= 1e-8


def test_robust_line_fit_gradients_match_finite_differences_and_autograd():
    model = layer("robust_line_fit")
    params = robust_line_instances(30, seed=1)
    error, scale, ok = finite_difference_check(model, params)
    assert ok.all() and (error <= 1e-5 * scale).float().mean() >= 0.99
    baseline = layer("robust_line_fit", backward="autograd")
    p1, p2 = params.clone().requires_grad_(True), params.clone().requires_grad_(True)
    model(p1)[0].sum().backward()
    baseline(p2)[0].sum().backward()
    torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-6, atol=1e-9)


def test_sum_projection_value_gradient_and_multiplier(projections):
    model = projections["sum_projection"]
    x = torch.randn(50, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y, ok = model(x)
    assert ok.all()
    torch.testing.assert_close(y.detach(), x.detach() - (x.detach().sum(-1, keepdim=True) - 1) / 5, rtol=0, atol=1e-12)
    equality, inequality = model.multipliers
    assert equality.shape == (50, 1) and inequality.shape == (50, 0)
    torch.testing.assert_close(equality.squeeze(-1), (x.detach().sum(-1) - 1) / 5, rtol=0, atol=1e-12)
    w = torch.randn(50, 5, dtype=torch.float64)
    (y * w).sum().backward()
    # dy/dx = I - 1 1^T / n (symmetric): the gradient is w - mean(w).
    torch.testing.assert_close(x.grad, w - w.mean(-1, keepdim=True), rtol=0, atol=1e-12)


def simplex_projection(v):
    """Projection onto the probability simplex by sorting (Held et al.; Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True, dim=-1)
    cumulative = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    support = (u - cumulative / k > 0).sum(-1, keepdim=True)
    return (v - cumulative.gather(-1, support - 1) / support).clamp_min(0)


def test_simplex_projection_by_interior_point(projections):
    model = projections["simplex_projection"]
    x = torch.randn(400, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y, ok = model(x)
    reference = simplex_projection(x.detach())
    assert ok.float().mean() >= 0.995
    assert ((y.detach() - reference).abs().amax(-1) <= 1e-8).float().mean() >= 0.995
    # dy/dx on the support S: I - 1 1^T / |S|, zero elsewhere (symmetric).
    w = torch.randn(400, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (y * w).sum().backward()
    support = (reference > 1e-9).to(w.dtype)
    expected = support * (w - (w * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True))
    assert ((x.grad - expected).abs().amax(-1) <= 1e-8).float().mean() >= 0.99
    assert model.multipliers[1].shape == (400, 4) and (model.multipliers[1] >= 0).all()


def test_ball_projection_value_and_finite_differences(projections):
    model = projections["ball_projection"]
    x = 1.5 * torch.randn(300, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, ok = model(x)
    assert ok.float().mean() >= 0.995
    assert ((y - x / x.norm(dim=-1, keepdim=True).clamp_min(1)).abs().amax(-1) <= 1e-8).float().mean() >= 0.995
    # Away from the sphere (where the projection is not differentiable).
    rows = ((x.norm(dim=-1) - 1).abs() > 1e-3).nonzero().squeeze(-1)[:30]
    error, scale, ok = finite_difference_check(model, x[rows])
    assert ok.all() and (error <= 1e-5 * scale).float().mean() >= 0.99


# -- The global forward -------------------------------------------------------------------------


def quaternion_rotation(q):
    """R(q) for a unit quaternion (q0 scalar part), Horn's convention."""
    q0, q1, q2, q3 = q.unbind(-1)
    return torch.stack([
        torch.stack([q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3, 2 * (q1 * q2 - q0 * q3), 2 * (q1 * q3 + q0 * q2)], -1),
        torch.stack([2 * (q2 * q1 + q0 * q3), q0 * q0 - q1 * q1 + q2 * q2 - q3 * q3, 2 * (q2 * q3 - q0 * q1)], -1),
        torch.stack([2 * (q3 * q1 - q0 * q2), 2 * (q3 * q2 + q0 * q1), q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3], -1),
    ], -2)


def weighted_kabsch(params):
    """The SVD solution of Wahba's problem for the parameters of kabsch_quaternion, and the
    singular values of M = sum_i w_i a_i b_i^T."""
    w, a, b = params[:, :4], params[:, 4:16].view(-1, 4, 3), params[:, 16:].view(-1, 4, 3)
    M = (w[..., None, None] * a.unsqueeze(-1) * b.unsqueeze(-2)).sum(1)
    U, S, Vh = torch.linalg.svd(M)
    d = torch.linalg.det(Vh.transpose(-1, -2) @ U.transpose(-1, -2))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return Vh.transpose(-1, -2) @ D @ U.transpose(-1, -2), S


def kabsch_instances(count, seed=0):
    problem = read_spec(ROOT / "problems" / "kabsch_quaternion.py").problem
    rng = random.Random(seed)
    return torch.tensor([problem.sampler(rng) for _ in range(count)], dtype=torch.float64)


def test_kabsch_quaternion_finds_the_global_minimiser():
    model = layer("kabsch_quaternion")
    assert model.forward_path == "global"
    params = kabsch_instances(2000)
    q, ok = model(params)
    reference, _ = weighted_kabsch(params)
    assert ok.float().mean() >= 0.999
    assert ((quaternion_rotation(q) - reference).abs().amax((-2, -1)) <= 1e-8).float().mean() >= 0.999
    # The representative of +-q: its entry of largest magnitude is positive.
    assert (q.gather(-1, q.abs().argmax(-1, keepdim=True)) > 0).all()


def test_kabsch_quaternion_never_calls_a_saddle_ok():
    """Every other real critical point (N's other eigenvectors: saddles and the maximum of the
    objective) fails the second-order check."""
    from solvergen.runtime.declarative import second_order

    model = layer("kabsch_quaternion")
    params = kabsch_instances(200, seed=1)
    solutions, valid = model.solutions(params)  # [B, 8, 5]: q, then the multiplier
    q, _ = model(params)
    plan = model.plan
    for s in range(solutions.shape[1]):
        y, m = solutions[:, s, :4], solutions[:, s, 4:]
        minimiser = (y - q).abs().amax(-1).lt(1e-8) | (y + q).abs().amax(-1).lt(1e-8)
        ok = second_order(plan, params, y, m)
        assert not (ok & valid[:, s] & ~minimiser).any()
        assert (ok | ~valid[:, s] | ~minimiser).all()


def test_kabsch_quaternion_gradient_matches_the_svd_and_finite_differences():
    model = layer("kabsch_quaternion")
    params = kabsch_instances(60, seed=2)
    _, singular = weighted_kabsch(params)
    separated = (singular[:, 1] - singular[:, 2]) > 1e-2 * singular[:, 0]  # the SVD's gradient is well defined
    weights = torch.randn(60, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p1, p2 = params.clone().requires_grad_(True), params.clone().requires_grad_(True)
    q, _ = model(p1)
    (quaternion_rotation(q) * weights).sum().backward()
    R, _ = weighted_kabsch(p2)
    (R * weights).sum().backward()
    error = (p1.grad - p2.grad).norm(dim=-1) / p2.grad.norm(dim=-1)
    assert (error[separated] <= 1e-8).all() and separated.float().mean() > 0.9
    error, scale, ok = finite_difference_check(model, params[:20])
    assert ok.all() and (error <= 1e-5 * scale).float().mean() >= 0.99


def test_implicit_example_layer_runs_the_global_forward():
    model = layer("implicit_example_layer")
    assert model.forward_path == "global"
    solutions, valid = model.solutions(torch.tensor([[0.6]], dtype=torch.float64))
    assert valid.sum() == 2 and torch.allclose(solutions[0, :2, 1].abs(), solutions[0, :2, 1].abs().flip(0))
    # From a start near the other solution, that one, as it is: at x = 1.2 its entry of largest
    # magnitude is y2 < 0, which the Argmin's sign representative used to flip, with y1, into
    # (-0.83, 1.37), not a solution.
    for x, start in ((0.6, [1.0, -1.0]), (1.2, [0.8, -1.5])):
        y, ok = model(torch.tensor([[x]], dtype=torch.float64), init=torch.tensor([start], dtype=torch.float64))
        assert ok.all() and y[0, 1] < 0
        torch.testing.assert_close(y[0], torch.tensor([1 / x, -(4 - x**2 - 1 / x**2) ** 0.5], dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)


def test_attach_on_an_unconstrained_argmin():
    """attach on robust_line_fit (no constraints, so no multipliers to recover): the forward's y
    and gradient from the forward's own y, and one refine step from a start 1e-6 off."""
    model = layer("robust_line_fit")
    params = robust_line_instances(8)
    y, ok = model(params)
    p_forward = params.clone().requires_grad_(True)
    model(p_forward)[0].sum().backward()
    for offset in (0.0, 1e-6):
        p = params.clone().requires_grad_(True)
        attached = model.attach(p, y.detach() + offset)
        attached.sum().backward()
        assert ok.all() and model.multipliers[0].shape == (8, 0)
        torch.testing.assert_close(attached, y, rtol=0, atol=1e-10)
        torch.testing.assert_close(p.grad, p_forward.grad, rtol=1e-8, atol=1e-10)


# -- qp_layer against qpth and cvxpy --------------------------------------------------------------


def qp_instances(count, seed=0):
    problem = read_spec(ROOT / "problems" / "qp_layer.py").problem
    rng = random.Random(seed)
    return torch.tensor([problem.sampler(rng) for _ in range(count)], dtype=torch.float64)


def qp_matrices(params):
    """(Q, p, G, h, A, b) in qpth's argument order."""
    return (params[:, :64].view(-1, 8, 8), params[:, 64:72], params[:, 90:138].view(-1, 6, 8), params[:, 138:144],
            params[:, 72:88].view(-1, 2, 8), params[:, 88:90])


def test_qp_layer_matches_qpth_and_cvxpy():
    qpth = pytest.importorskip("qpth.qp")
    cp = pytest.importorskip("cvxpy")
    model = layer("qp_layer")
    params = qp_instances(400)
    y, ok = model(params)
    assert ok.float().mean() >= 0.995
    reference = qpth.QPFunction(verbose=-1, eps=1e-12, maxIter=50)(*qp_matrices(params))
    assert ((y - reference).abs().amax(-1) <= 1e-8).float().mean() >= 0.995
    gaps = []
    for i in range(40):  # an independent interior point method (Clarabel through cvxpy)
        Q, p, G, h, A, b = (t[i].numpy() for t in qp_matrices(params))
        x = cp.Variable(8)
        problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + p @ x), [A @ x == b, G @ x <= h])
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        gaps.append(np.abs(x.value - y[i].numpy()).max())
    assert np.median(gaps) <= 1e-9 and max(gaps) <= 1e-7  # Clarabel's own tolerance, 1e-10 on its gap


def test_qp_layer_gradients_match_finite_differences_and_qpth():
    qpth = pytest.importorskip("qpth.qp")
    model = layer("qp_layer")
    params = qp_instances(12, seed=1)
    error, scale, ok = finite_difference_check(model, params)
    assert ok.all() and (error <= 1e-5 * scale).float().mean() >= 0.99
    w = torch.randn(12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p1, p2 = params.clone().requires_grad_(True), params.clone().requires_grad_(True)
    (model(p1)[0] * w).sum().backward()
    (qpth.QPFunction(verbose=-1, eps=1e-12, maxIter=50)(*qp_matrices(p2)) * w).sum().backward()
    assert ((p1.grad - p2.grad).norm(dim=-1) <= 1e-5 * p2.grad.norm(dim=-1)).all()


def test_entropy_regularised_argmax_is_the_softmax(projections):
    model = projections["entropy_simplex"]
    x = (2 * torch.randn(300, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    y, ok = model(x)
    assert ok.float().mean() >= 0.995
    torch.testing.assert_close(y.detach(), torch.softmax(x.detach(), -1), rtol=0, atol=1e-10)
    w = torch.randn(300, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (y * w).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (torch.softmax(x2, -1) * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-10)


def entropy_projection_reference(params):
    """y_i = tau omega((x_i - nu) / tau - 1 - log tau) (stationarity y - x + tau (log y + 1) + nu
    = 0 solved by the Wright omega function), nu by bisection on sum(y) = 1, then Newton."""
    from scipy.optimize import brentq
    from scipy.special import wrightomega

    out = []
    for row in params.numpy():
        x, tau = row[:5], row[5]

        def y_of(nu):
            return tau * np.real(wrightomega((x - nu) / tau - 1 - np.log(tau)))

        nu = brentq(lambda nu: y_of(nu).sum() - 1, -50, 50, xtol=1e-15, rtol=1e-15)
        for _ in range(3):  # Newton on sum(y(nu)) = 1: dy/dnu = -y / (y + tau)
            y = y_of(nu)
            nu += (y.sum() - 1) / (y / (y + tau)).sum()
        out.append(y_of(nu))
    return torch.tensor(np.array(out))


def test_entropy_projection_with_components_near_zero(projections):
    """Small temperatures put components at 1e-9 to 1e-18: every row is ok, matches the Wright
    omega closed form, and has the finite-difference gradient (the interior point's last barrier
    leaves the bound y >= 0 looking active there, and the Hessian entry tau / y is up to 1e17)."""
    model = projections["entropy_projection"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 5, dtype=torch.float64, generator=g) * 3
    tau = 0.05 + 0.3 * torch.rand(200, 1, dtype=torch.float64, generator=g)
    params = torch.cat([x, tau], -1)
    y, ok = model(params)
    reference = entropy_projection_reference(params)
    assert reference.amin() < 1e-12  # the hard rows are there
    assert ok.all()
    assert ((y - reference).abs().amax(-1) <= 1e-8).all()
    error, scale, ok = finite_difference_check(model, params[:40])
    assert ok.all() and (error <= 1e-5 * scale).all()


def trust_region_instances(count, convex, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(count, 3, 3, dtype=torch.float64, generator=g)
    Q = Q @ Q.transpose(-1, -2) + 0.1 * torch.eye(3, dtype=torch.float64) if convex else Q + Q.transpose(-1, -2)
    return torch.cat([Q.flatten(1), 2 * torch.randn(count, 3, dtype=torch.float64, generator=g)], -1)


def test_convex_trust_region_subproblem(projections):
    model = projections["trust_region"]
    params = trust_region_instances(300, convex=True)
    y, ok = model(params)
    assert ok.float().mean() >= 0.995
    # KKT by hand: (Q + 2 mu I) y = -g with mu >= 0, |y| <= 1, mu (|y|^2 - 1) = 0.
    Q, g = params[:, :9].view(-1, 3, 3), params[:, 9:]
    mu = model.multipliers[1].squeeze(-1)
    stationarity = (Q @ y.unsqueeze(-1)).squeeze(-1) + g + 2 * mu.unsqueeze(-1) * y
    assert stationarity.abs().max() <= 1e-8 and (mu >= 0).all() and ((y * y).sum(-1) <= 1 + 1e-9).all()
    assert (mu * ((y * y).sum(-1) - 1)).abs().max() <= 1e-8


def trust_region_global_minimiser(Q, g):
    """The global minimiser of y^T Q y / 2 + g^T y over |y| <= 1 (More and Sorensen): y = -(Q +
    2 mu I)^-1 g with mu >= max(0, -lambda_min / 2) and |y| = 1 unless mu = 0 is interior, mu found
    by bisection on the secular equation in Q's eigenbasis (the hard case has probability 0)."""
    from scipy.optimize import brentq

    lam, V = np.linalg.eigh(Q)
    b = V.T @ g
    if lam[0] > 0 and np.sum((b / lam) ** 2) <= 1:
        return -np.linalg.solve(Q, g)
    secular = lambda mu: np.sum((b / (lam + 2 * mu)) ** 2) - 1
    low = max(0.0, -lam[0] / 2)
    high = low + 1.0
    while secular(high) > 0:
        high *= 2
    mu = brentq(secular, low + 1e-15 * (1 + low), high, xtol=1e-15, rtol=1e-15)
    return -V @ (b / (lam + 2 * mu))


def test_nonconvex_trust_region_subproblem(projections):
    """Indefinite Q: the interior point needs its inertia correction and merit line search here.
    At least 99.5% of the rows are ok and the global minimiser; the others that are ok are a
    local minimiser (a trust-region subproblem has at most one that is not global, and the local
    forward may land there): a KKT point (mu >= 0 on the sphere) with Q + 2 mu I positive definite
    on the sphere's tangent plane."""
    model = projections["trust_region"]
    params = trust_region_instances(1000, convex=False)
    y, ok = model(params)
    reference = torch.tensor(np.stack([trust_region_global_minimiser(p[:9].view(3, 3).numpy(), p[9:].numpy())
                                       for p in params]))
    global_minimum = (y - reference).abs().amax(-1) <= 1e-8
    assert (ok & global_minimum).float().mean() >= 0.995
    Q, g = params[:, :9].view(-1, 3, 3), params[:, 9:]
    mu = model.multipliers[1].squeeze(-1)
    local = ok & ~global_minimum
    stationarity = (Q @ y.unsqueeze(-1)).squeeze(-1) + g + 2 * mu.unsqueeze(-1) * y
    assert (stationarity[local].abs().amax(-1) <= 1e-8).all() and (mu[local] > 0).all()
    assert (((y * y).sum(-1)[local] - 1).abs() <= 1e-9).all()
    for i in local.nonzero().squeeze(-1).tolist():  # the reduced Hessian on the tangent plane
        tangent = torch.linalg.svd(y[i].view(1, 3)).Vh[1:]
        reduced = tangent @ (Q[i] + 2 * mu[i] * torch.eye(3, dtype=Q.dtype)) @ tangent.T
        assert torch.linalg.eigvalsh(reduced).min() > 0
    error, scale, ok = finite_difference_check(model, params[:40])
    assert ok.all() and (error <= 1e-5 * scale).float().mean() >= 0.99


@pytest.mark.parametrize("name", ["entropy_simplex", "trust_region"])
def test_autograd_through_the_interior_point_matches_the_ift(projections, name):
    """backward="autograd" through the interior point (logs of the unknowns, a non-convex
    problem): finite, and the same gradient as the IFT on the rows that are ok."""
    ift = projections[name]
    autograd = type(ift)(backward="autograd")
    g = torch.Generator().manual_seed(4)
    params = (2 * torch.randn(200, 5, dtype=torch.float64, generator=g) if name == "entropy_simplex"
              else trust_region_instances(200, convex=False, seed=4))
    w = torch.randn(200, ift.plan.num_unknowns, dtype=torch.float64, generator=g)
    grads = []
    for model in (ift, autograd):
        p = params.clone().requires_grad_(True)
        y, ok = model(p)
        (y * w).sum().backward()
        grads.append(p.grad)
    assert ok.float().mean() >= 0.99 and torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1][ok], grads[0][ok], rtol=1e-6, atol=1e-7)


def test_declarative_layers_example_trains():
    import importlib.util

    spec = importlib.util.spec_from_file_location("declarative_layers", ROOT / "examples" / "declarative_layers.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    before, after = example.train_equilibrium_cell(steps=30)
    assert after < 0.1 * before
    before, after = example.train_qp_cost(steps=20)
    assert after < 0.5 * before


@pytest.mark.parametrize("name", ["qp_layer", "kabsch_quaternion", "robust_line_fit"])
def test_nan_rows_are_masked_in_argmin_layers(name):
    """Interior point (qp_layer), global (kabsch_quaternion), unconstrained Newton (robust_line_fit):
    a NaN row is not ok, gets zero gradient, and leaves the other rows as they are alone."""
    model = layer(name)
    params = {"qp_layer": qp_instances, "kabsch_quaternion": kabsch_instances,
              "robust_line_fit": robust_line_instances}[name](3, seed=5)
    alone, _ = model(params[[0, 2]])
    mixed = params.clone()
    mixed[1, 3] = float("nan")
    mixed.requires_grad_(True)
    y, ok = model(mixed)
    assert ok.tolist() == [True, False, True]
    assert torch.equal(y[[0, 2]].detach(), alone) and (y[1] == 0).all()
    y.sum().backward()
    assert torch.isfinite(mixed.grad).all() and (mixed.grad[1] == 0).all() and (mixed.grad[[0, 2]] != 0).any()


def test_autograd_backward_gives_zero_gradient_to_rows_that_are_not_ok():
    """backward="autograd" differentiates through the iterations, but a row that did not converge
    (here: one Newton step allowed) gets zero gradient, as with the IFT."""
    params = robust_line_instances(4, seed=6)
    model = layer("robust_line_fit", backward="autograd", max_iterations=1)
    p = params.clone().requires_grad_(True)
    y, ok = model(p)
    assert not ok.all()
    y.sum().backward()
    assert (p.grad[~ok] == 0).all()
    converged = layer("robust_line_fit", backward="autograd")
    p = params.clone().requires_grad_(True)
    y, ok = converged(p)
    y.sum().backward()
    assert ok.all() and (p.grad != 0).any(dim=-1).all()
