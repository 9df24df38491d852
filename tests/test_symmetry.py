"""Sign-symmetric systems (even templates, solutions in pairs +-x). (The closed-form eigenpairs and
roots: tests/runtime/; the compiled closed-form stage's redo path: tests/test_compile.py.)"""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from conftest import generated_module

import geometry
import solvergen
from solvergen.compiler import compile_problem
from solvergen.polynomials import build_system
from solvergen.spec import load_spec
from solvergen.template import SignSymmetry, sign_symmetry


def test_sign_symmetry(root):
    assert sign_symmetry(build_system(load_spec(root / "problems" / "p3p.py"))) == SignSymmetry((0, 1, 2), (0, 0, 0))
    assert sign_symmetry(build_system(load_spec(root / "problems" / "relpose_5pt_nullspace.py"))) is None


def test_p3p_even_template(root):
    """P3P's equations are even: the template reduces x1^2 on the 4 even standard monomials
    (a 4 x 4 eigenproblem instead of 8 x 8), and every solution comes with its negative."""
    compiled = compile_problem(load_spec(root / "problems" / "p3p.py"))
    template = compiled.elimination.template
    assert template.even and len(template.basis) == 4 and compiled.num_solutions == 8
    assert "(action x1^2)" in compiled.describe()

    module = generated_module("p3p")
    params, truth = geometry.INSTANCES["p3p"](200, np.random.default_rng(31))
    solutions, valid = module.Solver()(torch.from_numpy(params))
    err = geometry.relative_errors(solutions.numpy(), valid.numpy(), truth, module.PLAN.sign_flip)
    assert np.mean(err < 1e-9) == 1.0
    for x, v in zip(solutions, valid):
        found = x[v]
        assert len(found) % 2 == 0
        distance = (found.unsqueeze(0) + found.unsqueeze(1)).norm(dim=-1)  # x_i + x_j = 0 for a pair
        assert (distance.min(dim=1).values < 1e-9).all()


HEADER = "import sympy as sp\nfrom solvergen import Problem\n"


def test_odd_and_even_equations(tmp_path):
    """A system with an even and an odd equation (x^2 + y^2 = a, x^3 + b x y^2 + c y = 0): an
    even template, and the generated solver finds the truth and its negative."""
    spec = tmp_path / "mixed.py"
    spec.write_text(HEADER + textwrap.dedent("""
        x, y, a, b, c = sp.symbols('x y a b c')
        problem = Problem('mixed', [x, y], [a, b, c], [x**2 + y**2 - a, x**3 + b*x*y**2 + c*y])
    """))
    solver = solvergen.load(spec, out_dir=tmp_path / "gen")
    rng = np.random.default_rng(32)
    x0, y0, b = rng.uniform(0.5, 2, size=(3, 100))
    params = np.stack([x0**2 + y0**2, b, -(x0**3 + b * x0 * y0**2) / y0], -1)
    solutions, valid = solver(torch.from_numpy(params))
    truth = np.stack([x0, y0], -1)
    for sign in (1, -1):
        err = geometry.relative_errors(solutions.numpy(), valid.numpy(), sign * truth, False)
        assert np.mean(err < 1e-9) == 1.0


def test_closed_form_needs_a_small_action_matrix():
    with pytest.raises(ValueError, match="closed_form.*at most 4 x 4"):
        generated_module("relpose_5pt_nullspace").Solver(eig="closed_form")


PARTIAL = '''
import sympy as sp
from solvergen import Problem

x1, x2, w = sp.symbols("x1 x2 w")
a = sp.symbols("a1:6")
problem = Problem("partial_symmetry", unknowns=[x1, x2, w], parameters=a, equations=[
    x1**2 + x2**2 - w - a[0], x1 * x2 - a[1] * w - a[2], w**2 - a[3] * x1**2 - a[4]])
'''


def test_partial_sign_symmetry(tmp_path):
    """Equations even in (x1, x2) with w untouched: an even template on the part of the ring
    even in x1, x2 (a 4 x 4 eigenproblem for 8 solutions), each eigenvector giving the pair
    (x1, x2, w) and (-x1, -x2, w); the truth and its partner are found."""
    from solvergen.generate import generate, import_generated
    from solvergen.template import sign_symmetry

    spec = tmp_path / "partial_symmetry.py"
    spec.write_text(PARTIAL)
    compiled = compile_problem(load_spec(spec))
    assert sign_symmetry(compiled.system).symmetric == (0, 1)
    assert compiled.elimination.template.symmetric == (0, 1) and compiled.num_solutions == 8
    module = import_generated(generate(spec, tmp_path / "generated").path)
    assert module.PLAN.template.even and module.PLAN.template.fixed == (2,)
    assert module.PLAN.template.basis == 4
    rng = np.random.default_rng(5)
    x = rng.uniform(0.5, 2, size=(500, 3)) * rng.choice([-1, 1], size=(500, 3))
    b = rng.normal(size=(500, 2))
    params = np.stack([x[:, 0] ** 2 + x[:, 1] ** 2 - x[:, 2], b[:, 0], x[:, 0] * x[:, 1] - b[:, 0] * x[:, 2],
                       b[:, 1], x[:, 2] ** 2 - b[:, 1] * x[:, 0] ** 2], axis=1)
    solutions, valid = module.Solver()(torch.from_numpy(params))
    partner = x * np.array([-1, -1, 1])
    for truth in (x, partner):
        err = np.linalg.norm(solutions.numpy() - truth[:, None], axis=-1) / np.linalg.norm(truth, axis=-1)[:, None]
        err = np.where(valid.numpy(), err, np.inf).min(axis=1)
        assert np.mean(err < 1e-8) >= 0.995, np.mean(err < 1e-8)
