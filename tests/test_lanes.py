"""Lanes (solvergen/lanes.py): repeated terms of an Argmin's objective found and evaluated
vectorised. The grouping rules, and layers generated with lanes against the same layers
generated term by term and against central differences."""
from __future__ import annotations

import textwrap

import pytest
import sympy as sp
import torch

import solvergen
from solvergen import lanes
from solvergen.lanes import find_lanes, lane_slice
from solvergen.spec import read_spec
from conftest import ROOT


def test_robust_line_fit_is_one_group_of_twenty_lanes():
    spec = read_spec(ROOT / "problems" / "robust_line_fit.py").problem
    rest, groups = find_lanes(spec.objective, spec.parameters)
    assert rest == -20 and len(groups) == 1
    (group,) = groups
    assert group.indices == (tuple(range(20)), tuple(range(20, 40)))
    assert [lane_slice(i) for i in group.indices] == ["0:20", "20:40"]
    k, b = spec.unknowns
    x, y = group.placeholders
    assert sp.simplify(group.term - sp.sqrt(1 + (y - k * x - b) ** 2)) == 0


def test_shared_parameters_stay_symbols_and_lane_parameters_elsewhere_are_refused():
    y = sp.Symbol("y")
    alpha = sp.Symbol("alpha")
    p = sp.symbols("p0:5")
    objective = sum(alpha * (y - v) ** 2 for v in p) + alpha**2
    rest, (group,) = find_lanes(objective, [alpha, *p])
    assert rest == alpha**2 and group.indices == ((1, 2, 3, 4, 5),)
    assert alpha in group.term.free_symbols
    # p0 also in a constraint: its term cannot be a lane; the other four still are.
    rest, (group,) = find_lanes(objective, [alpha, *p], elsewhere=[y - p[0]])
    assert group.indices == ((2, 3, 4, 5),) and rest == alpha**2 + alpha * (y - p[0]) ** 2
    # Too few repeated terms, or terms that are different expressions: no lanes.
    assert find_lanes(sum((y - v) ** 2 for v in p[:3]), p)[1] == ()
    assert find_lanes(sum((y - v) ** (i + 2) for i, v in enumerate(p)), p)[1] == ()


def test_lane_slices():
    assert lane_slice((3, 5, 7, 9)) == "3:10:2"
    assert lane_slice((0, 1, 5)) == "[0, 1, 5]"
    assert lane_slice((4,)) == "[4]"


SPEC = """
import sympy as sp
from solvergen import Argmin
y = sp.symbols("y0:3")
points = sp.Matrix(6, 3, sp.symbols("p0:18"))
scale, total = sp.symbols("scale total")
# A Cauchy-robust centre of six points in R^3 on the plane sum(y) = total; the scale is shared.
objective = sum(scale * sp.log(1 + sum((y[j] - points[i, j]) ** 2 for j in range(3)) / scale) for i in range(6))
problem = Argmin("cauchy_centre", y, [points, scale, total], objective, equalities=[sum(y) - total],
                 init=[sum(points[i, j] for i in range(6)) / 6 for j in range(3)])
"""


@pytest.fixture(scope="module")
def cauchy_layers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lanes")
    spec = folder / "cauchy_centre.py"
    spec.write_text(textwrap.dedent(SPEC))
    with_lanes = solvergen.load(spec, out_dir=folder / "lanes")
    saved = lanes.MIN_LANES
    lanes.MIN_LANES = 10**9
    try:
        term_by_term = solvergen.load(spec, out_dir=folder / "terms")
    finally:
        lanes.MIN_LANES = saved
    assert "_lanes = _a[..., " in (folder / "lanes" / "cauchy_centre.py").read_text()
    assert "_lanes" not in (folder / "terms" / "cauchy_centre.py").read_text()
    return with_lanes, term_by_term


def cauchy_instances(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(count, 18, dtype=torch.float64, generator=g)
    scale = 0.5 + torch.rand(count, 1, dtype=torch.float64, generator=g)
    total = torch.randn(count, 1, dtype=torch.float64, generator=g)
    return torch.cat([points, scale, total], -1)


def test_lanes_give_the_same_layer_as_terms(cauchy_layers):
    with_lanes, term_by_term = cauchy_layers
    params = cauchy_instances(200)
    w = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for layer in cauchy_layers:
        p = params.clone().requires_grad_(True)
        y, ok = layer(p)
        (y * w).sum().backward()
        results.append((y.detach(), ok, p.grad, layer.multipliers[0]))
    (y1, ok1, g1, m1), (y2, ok2, g2, m2) = results
    assert ok1.float().mean() >= 0.99 and torch.equal(ok1, ok2)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(m1, m2, rtol=0, atol=1e-11)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11)
    plan = with_lanes.plan
    a, y, m = params[:5], y1[:5], m1[:5]
    for name in ("objective", "gradient", "lagrangian_hessian"):
        args = (y, a, m) if name == "lagrangian_hessian" else (y, a)
        torch.testing.assert_close(getattr(plan, name)(*args), getattr(term_by_term.plan, name)(*args), rtol=1e-12,
                                   atol=1e-12)


def test_lane_gradients_match_finite_differences(cauchy_layers):
    layer = cauchy_layers[0]
    params = cauchy_instances(20, seed=2)
    w = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    p = params.clone().requires_grad_(True)
    y, ok = layer(p)
    (y * w).sum().backward()
    h = 1e-6
    fd = torch.zeros_like(params)
    for j in range(params.shape[1]):
        e = torch.zeros(params.shape[1], dtype=params.dtype)
        e[j] = h
        fd[:, j] = ((layer(params + e)[0] - layer(params - e)[0]) * w).sum(-1) / (2 * h)
    assert ok.all()
    assert ((p.grad - fd).norm(dim=-1) <= 1e-6 * fd.norm(dim=-1)).all()
