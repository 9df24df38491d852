"""Coefficient programs along the equations as written (solvergen/structured.py)."""
from __future__ import annotations

import dataclasses
import random

import sympy as sp
from conftest import ROOT

from solvergen.polynomials import build_system
from solvergen.spec import load_spec
from solvergen.structured import coefficient_program


def _values(system, assignments, outputs, seed):
    """The program's outputs and the expanded coefficients at random rational parameters."""
    rng = random.Random(seed)
    env = {a: sp.Rational(rng.randint(-50, 50), rng.randint(1, 9)) for a in system.parameters}
    expected = [c.expr().xreplace(env) for c in system.coefficients]
    for symbol, expr in assignments:
        env[symbol] = expr.xreplace(env)
    return [e.xreplace(env) for e in outputs], expected


def test_structured_program_equals_expansion_and_is_shorter():
    system = build_system(load_spec(ROOT / "problems" / "relpose_5pt_nullspace.py"))
    assignments, outputs = coefficient_program(system)
    got, expected = _values(system, assignments, outputs, seed=1)
    assert got == expected  # exact rational arithmetic
    structured = sum(sp.count_ops(e) for _, e in assignments) + sum(sp.count_ops(e) for e in outputs)
    replacements, reduced = sp.cse([c.expr() for c in system.coefficients])
    expanded = sum(sp.count_ops(e) for _, e in replacements) + sum(sp.count_ops(e) for e in reduced)
    assert structured * 2 < expanded, (structured, expanded)


def test_structured_program_refused_when_it_disagrees():
    """The walk is checked against the expanded coefficients; a mismatch falls back (None)."""
    system = build_system(load_spec(ROOT / "problems" / "p3p.py"))
    assert coefficient_program(system) is not None
    wrong = dataclasses.replace(system, equations=(system.equations[0] + 1,) + system.equations[1:])
    assert coefficient_program(wrong) is None
