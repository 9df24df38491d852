"""The template stage's algebra and search: FLINT linear algebra, FGLM bases, the work budget
(anytime, deterministic), progress displays, and `solvergen check`."""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from conftest import ROOT

from solvergen import finite_field as ff
from solvergen.cli import main
from solvergen.errors import SpecError
from solvergen.compiler import compile_problem
from solvergen.generate import generate
from solvergen.groebner import algebra, random_instance
from solvergen.polynomials import build_system
from solvergen.progress import PlainProgress, Progress, RichProgress, progress_for
from solvergen.spec import read_spec
from solvergen.template import SearchBudget, variable_orders

P = ff.PRIME


def _random_matrix(rng, rows, cols, rank):
    """rows x cols over Z_p of the given rank (product of random factors)."""
    a = rng.integers(0, P, (rows, rank)).astype(object)
    b = rng.integers(0, P, (rank, cols)).astype(object)
    return (a.dot(b) % P).astype(np.int64)


def test_finite_field_against_exact_arithmetic():
    rng = np.random.default_rng(0)
    for rows, cols, rank in ((6, 9, 4), (9, 6, 6), (12, 12, 7), (1, 5, 1)):
        m = _random_matrix(rng, rows, cols, rank)
        pivots = ff.pivot_columns(m)
        assert len(pivots) == rank
        # Pivot columns are the first independent ones: each one raises the rank of the columns before it.
        for c in range(cols):
            assert (c in pivots) == (len(ff.pivot_columns(m[:, : c + 1])) > len(ff.pivot_columns(m[:, :c])) if c else m[:, 0].any())
        null = ff.null_space(m)
        assert null.shape == (cols, cols - rank)
        assert not (m.astype(object).dot(null.astype(object)) % P).any()
        reduced, pivots2 = ff.row_reduce(m)
        assert pivots2 == pivots and reduced.shape == (rank, cols)
        assert len(ff.independent_rows(m)) == rank
    a = _random_matrix(rng, 7, 7, 7)
    b = rng.integers(0, P, (7, 3))
    x = ff.solve(a, b)
    assert np.array_equal(a.astype(object).dot(x.astype(object)) % P, b % P)
    assert ff.solve(_random_matrix(rng, 5, 5, 4), b[:5]) is None


def _system(name):
    problem = read_spec(ROOT / "problems" / f"{name}.py").problem
    system = build_system(problem)
    return problem, system


@pytest.mark.parametrize("name", ["p3p", "relpose_5pt_nullspace"])
def test_fglm_bases_are_the_groebner_bases_of_each_order(name):
    """The FGLM change of order gives each variable order's grevlex standard monomials and the
    same normal forms as a Groebner basis computed in that order (sympy, independent)."""
    problem, system = _system(name)
    instance = random_instance(problem, system, random.Random(1))
    ring = algebra(system, instance)
    n = len(system.unknowns)
    for order in variable_orders(n)[:3]:
        quotient = ring.quotient(order)
        gens = [system.unknowns[i] for i in order]

        def permuted(e):
            return tuple(e[i] for i in order)

        polys = [sp.Poly.from_dict({permuted(e): c for e, c in eq.items()}, *gens, modulus=P)
                 for eq in instance.equations if eq]
        groebner = sp.groebner(polys, *gens, order="grevlex", modulus=P)
        leading = {max(g.monoms(), key=lambda m: (sum(m), tuple(-v for v in reversed(m)))) for g in groebner.polys}
        standard = {permuted(b) for b in quotient.basis}
        assert not any(all(l <= s for l, s in zip(lm, b)) for lm in leading for b in standard)
        assert len(standard) == ring.num_solutions
        # Normal form of a degree-4 monomial against sympy's reduction in that order.
        monomial = tuple([1] * n)
        monomial = tuple(v + (i == 0) for i, v in enumerate(monomial))
        _, remainder = groebner.reduce(sp.Poly.from_dict({permuted(monomial): 1}, *gens, modulus=P))
        expected = np.zeros(len(quotient.basis), dtype=np.int64)
        index = {permuted(b): j for j, b in enumerate(quotient.basis)}
        for monom, coef in remainder.terms():
            expected[index[tuple(monom)]] = int(coef) % P
        assert np.array_equal(quotient.normal_form({monomial: 1}), expected)


def test_budget_stops_early_with_a_verified_template_and_is_deterministic(tmp_path):
    """A tiny work budget ends the search after the first template (it is still checked against
    Groebner normal forms by `eliminate`); the same budget gives the same bytes twice, and the
    default budget gives the committed file."""
    spec = ROOT / "problems" / "relpose_6pt_shared_focal.py"
    small = generate(spec, tmp_path / "a", budget=0.01)
    assert small.search.stopped_by == "work" and "stopped by the work budget" in small.summary()
    again = generate(spec, tmp_path / "b", budget=0.01)
    assert small.path.read_bytes() == again.path.read_bytes()
    assert "--budget 0.01" in small.path.read_text().splitlines()[1]
    full = compile_problem(read_spec(spec).problem)
    assert full.elimination.search.stopped_by is None
    assert full.elimination.template.size <= compile_problem(
        read_spec(spec).problem, budget=SearchBudget(work=0.01)).elimination.template.size


def test_time_limit_is_reported(tmp_path):
    """The time limit ends the search after a template was found (reported as machine-dependent),
    and refuses the problem, in one line, when none was found by then."""
    problem = read_spec(ROOT / "problems" / "relpose_6pt_shared_focal.py").problem
    budget = SearchBudget(work=1e9, seconds=3600)

    class ExpireAfterFirstTemplate(Progress):
        def search(self, status):
            if status.best != "none yet":
                budget.seconds = 1e-9

    compiled = compile_problem(problem, budget=budget, progress=ExpireAfterFirstTemplate())
    assert compiled.elimination.search.stopped_by == "time"
    assert "may differ on another machine" in compiled.elimination.search.describe()
    with pytest.raises(SpecError, match="no elimination template found within the time limit"):
        compile_problem(problem, budget=SearchBudget(work=1e9, seconds=1e-9))


def test_progress_displays():
    quiet = Progress("spec")
    with quiet.stage("a"):
        pass
    assert set(quiet.times) == {"a"}
    stream = io.StringIO()
    plain = PlainProgress("spec", stream, interval=0.0)
    with plain.stage("template search"):
        pass
    assert "spec: template search" in stream.getvalue()
    stream = io.StringIO()
    slow = PlainProgress("spec", stream)  # nothing for a generation shorter than the interval
    with slow.stage("template search"):
        pass
    assert stream.getvalue() == ""
    assert type(progress_for("spec", quiet=True)) is Progress
    assert type(progress_for("spec", stream=io.StringIO())) is PlainProgress
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True)
    rich = RichProgress("spec", console)
    with rich.stage("template search"):
        pass
    rich.close()


def test_generate_command_quiet_prints_only_the_summary(tmp_path, capsys):
    assert main(["generate", str(ROOT / "problems" / "p3p.py"), "--out", str(tmp_path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("p3p: 8 solutions") and "template search:" in out and err == ""


def test_check_against_the_samplers_ground_truth(tmp_path, capsys):
    """gp3p's sampler returns the true depths: the truth is found and errors are small."""
    plot = tmp_path / "hist.png"
    assert main(["check", str(ROOT / "problems" / "gp3p.py"), "--n", "300", "--out", str(tmp_path),
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "300 instances from the spec's sampler" in out
    failures = float(out.split("failures: ")[1].split("%")[0])
    median = float(out.split("error to ground truth: median ")[1].split(",")[0])
    assert failures <= 1.0 and median <= -11, out
    assert plot.stat().st_size > 1000


def test_check_without_sampler_reports_residuals(tmp_path):
    from solvergen.check import check

    result = check(ROOT / "problems" / "p3p.py", n=200, out_dir=tmp_path)
    assert result.log10_error is None and result.log10_residual.size > 0
    assert np.median(result.log10_residual) <= -12
    assert "no ground truth" in result.describe()


def test_check_rejects_bad_n(tmp_path, capsys):
    assert main(["check", str(ROOT / "problems" / "p3p.py"), "--n", "0", "--out", str(tmp_path)]) == 1
    assert "at least 1" in capsys.readouterr().err
