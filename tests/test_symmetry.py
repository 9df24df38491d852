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
from solvergen.template import sign_parities


def test_sign_parities(root):
    assert sign_parities(build_system(load_spec(root / "problems" / "p3p.py"))) == (0, 0, 0)
    assert sign_parities(build_system(load_spec(root / "problems" / "relpose_5pt_nullspace.py"))) is None


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
