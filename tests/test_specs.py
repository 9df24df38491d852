"""Spec files the compiler must refuse (one line, non-zero exit, nothing written), and load()."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

import solvergen

HEADER = "import sympy as sp\nfrom solvergen import Problem\n"

BAD_SPECS = {
    "syntax_error": ("problem = Problem('p', [x], [a], [x - a]\n", "syntax error at line"),
    "no_problem": ("x, a = sp.symbols('x a')\nsolver = Problem('p', [x], [a], [x - a])\n",
                   "defines no module-level `problem`"),
    "not_a_problem": ("problem = 42\n", "not a solvergen.Problem"),
    "bad_name": ("x, a = sp.symbols('x a')\nproblem = Problem('my-problem', [x], [a], [x - a])\n",
                 "not a Python identifier"),
    "unknown_and_parameter": ("x, a = sp.symbols('x a')\nproblem = Problem('p', [x], [x, a], [x - a])\n",
                              "both as unknown and as parameter"),
    "undeclared_symbol": ("x, a, b = sp.symbols('x a b')\nproblem = Problem('p', [x], [a], [x**2 - a*b])\n",
                          "undeclared symbol(s) b"),
    "not_polynomial_sin": ("x, a = sp.symbols('x a')\nproblem = Problem('p', [x], [a], [sp.sin(x) - a])\n",
                           "not polynomial in the unknowns"),
    "not_polynomial_division": ("x, a = sp.symbols('x a')\nproblem = Problem('p', [x], [a], [1/x - a])\n",
                                "not polynomial in the unknowns"),
    "unused_unknown": ("x, y, a = sp.symbols('x y a')\nproblem = Problem('p', [x, y], [a], [x**2 - a])\n",
                       "unknown y appears in no equation"),
    "infinitely_many": ("x, y, a = sp.symbols('x y a')\n"
                        "problem = Problem('p', [x, y], [a], [x + y - a, 2*x + 2*y - 2*a])\n",
                        "infinitely many solutions"),
    "no_solutions": ("x, a = sp.symbols('x a')\nproblem = Problem('p', [x], [a], [x**2 - a, x**2 - a - 1])\n",
                     "no solutions"),
    "inconsistent_overdetermined": ("x, a, b = sp.symbols('x a b')\n"
                                    "problem = Problem('p', [x], [a, b], [x - a, x - b])\n",
                                    "no solutions"),
    "double_root": ("x, y, a = sp.symbols('x y a')\n"
                    "problem = Problem('p', [x, y], [a], [(x - a)**2, y - x])\n",
                    "multiple roots for generic parameters (2 solutions counted with multiplicity, 1 distinct)"),
    "cleared_denominator": ("x, y, a, b = sp.symbols('x y a b')\n"
                            "problem = Problem('p', [x, y], [a, b], [x * (y**2 - a), x * (x + y - b)])\n",
                            "the extra solutions lie on x = 0"),
    "raises": ("x, a = sp.symbols('x a')\nraise RuntimeError('boom')\n", "RuntimeError: boom"),
    "non_rational_parameter": ("x, a = sp.symbols('x a')\nproblem = Problem('p', [x], [a], [x**2 - sp.sqrt(a)])\n",
                               "not rational in the parameters"),
}


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "solvergen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_refused(case, tmp_path):
    body, message = BAD_SPECS[case]
    spec = tmp_path / f"{case}.py"
    spec.write_text(HEADER + body)
    out = tmp_path / "out"
    result = run_cli("generate", str(spec), "--out", str(out), cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {spec}: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_missing_spec_file(tmp_path):
    result = run_cli("generate", "nope.py", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode != 0 and result.stderr.strip() == "error: nope.py: no such file"


def test_generating_over_the_spec_itself_is_refused(tmp_path):
    spec = tmp_path / "cubic.py"
    text = HEADER + "x, a = sp.symbols('x a')\nproblem = Problem('cubic', [x], [a], [x**3 - a])\n"
    spec.write_text(text)
    result = run_cli("generate", str(spec), "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0 and "would overwrite the spec itself" in result.stderr
    assert spec.read_text() == text


def test_good_and_bad_specs_together(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(HEADER + "x, a = sp.symbols('x a')\nproblem = Problem('cubic', [x], [a], [x**3 - a*x + 1])\n")
    bad = tmp_path / "bad.py"
    bad.write_text(HEADER + "problem = None\n")
    result = run_cli("generate", str(good), str(bad), "--out", "out", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("cubic: 3 solutions, template 1x4")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cubic.py"]


def test_rational_parameters_and_equation_forms(tmp_path):
    """Coefficients rational in the parameters, Eq objects and matrices of equations."""
    spec = tmp_path / "rational.py"
    spec.write_text(HEADER + textwrap.dedent("""
        x, y, a, b = sp.symbols('x y a b')
        problem = Problem('rational', [x, y], [a, b],
                          [sp.Eq(x**2 / a + y**2, 1), sp.Matrix([x * y - b / (a + 1)])])
    """))
    solver = solvergen.load(spec, out_dir=tmp_path / "gen")
    import torch

    params = torch.tensor([[2.0, 0.3], [0.5, 0.1]], dtype=torch.float64)
    solutions, valid = solver(params)
    assert solver.num_solutions == 4
    x, y = solutions[..., 0], solutions[..., 1]
    a, b = params[:, :1], params[:, 1:]
    r1 = x**2 / a + y**2 - 1
    r2 = x * y - b / (a + 1)
    assert valid.all()
    assert r1.abs().max() < 1e-12 and r2.abs().max() < 1e-12


def test_load_generates_once_and_regenerates_when_stale(tmp_path):
    spec = tmp_path / "cubic.py"
    spec.write_text(HEADER + "x, a = sp.symbols('x a')\nproblem = Problem('cubic', [x], [a], [x**3 - a])\n")
    out = tmp_path / "gen"
    solver = solvergen.load(spec, out_dir=out, newton_steps=3)
    assert solver.newton_steps == 3
    target = out / "cubic.py"
    first = target.stat().st_mtime_ns
    solvergen.load(spec, out_dir=out)
    assert target.stat().st_mtime_ns == first  # fresh: not rewritten
    spec.write_text(HEADER + "x, a = sp.symbols('x a')\nproblem = Problem('cubic', [x], [a], [x**3 - 2*a])\n")
    solver = solvergen.load(spec, out_dir=out)  # the spec changed: regenerated
    import hashlib

    import torch

    assert hashlib.sha256(spec.read_bytes()).hexdigest() in target.read_text().splitlines()[2]
    solutions, valid = solver(torch.tensor([4.0], dtype=torch.float64))
    assert valid.sum() == 1 and abs(solutions[valid][0].item() - 2.0) < 1e-12


def test_load_reports_bad_spec(tmp_path):
    spec = tmp_path / "bad.py"
    spec.write_text("problem = (\n")
    with pytest.raises(solvergen.SpecError, match="syntax error"):
        solvergen.load(spec, out_dir=tmp_path)


@pytest.mark.parametrize("budget", [-1, 0, float("nan"), float("inf"), "large"])
def test_a_bad_search_budget_is_refused_before_anything_is_written(budget, tmp_path):
    """load() and generate() refuse what the command line refuses (`--budget -1` there), in one
    line, before generating: load(budget=-1) used to regenerate a committed module."""
    spec = tmp_path / "cubic.py"
    spec.write_text(HEADER + "x, a = sp.symbols('x a')\nproblem = Problem('cubic', [x], [a], [x**3 - a])\n")
    from solvergen.generate import generate

    for call in (lambda: solvergen.load(spec, out_dir=tmp_path / "gen", budget=budget),
                 lambda: generate(spec, tmp_path / "gen", budget=budget)):
        with pytest.raises(ValueError, match="budget must be a positive number"):
            call()
    assert not (tmp_path / "gen").exists()
    result = subprocess.run([sys.executable, "-m", "solvergen", "generate", "--budget", "abc", str(spec)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "--budget: must be a positive number, got 'abc'" in result.stderr


def test_problem_api_errors():
    import sympy as sp

    x, a = sp.symbols("x a")
    with pytest.raises(solvergen.SpecError, match="Python identifier"):
        solvergen.Problem("class", [x], [a], [x - a])
    with pytest.raises(solvergen.SpecError, match="declared twice"):
        solvergen.Problem("p", [x, x], [a], [x - a])
    with pytest.raises(solvergen.SpecError, match="Symbols or Matrices"):
        solvergen.Problem("p", ["x"], [a], [x - a])
