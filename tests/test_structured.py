"""Coefficient programs along the equations as written (solvergen/structured.py)."""
from __future__ import annotations

import dataclasses
import random

import pytest
import sympy as sp
import torch
from conftest import ROOT, generated_module

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


@pytest.mark.parametrize(
    "name, straight, program",
    [
        ("relpose_5pt_nullspace", "_coefficients", "declared_program"),
        ("relpose_6pt_shared_focal", "_coefficients", "declared_program"),
        ("relpose_5pt", "_reduced_coefficients", "reduced_program"),
    ],
)
def test_level_wise_program_equals_straight_line(name, straight, program):
    """Small batches evaluate the coefficient program level by level (solvergen/levelwise.py):
    the same values as the printed straight-line code. Under autograd the straight-line code
    runs (its backward is cheaper)."""
    module = generated_module(name)
    function = getattr(module, straight)
    tables = module._tables(torch.device("cpu"), torch.float64)[program]
    width = tables["steps"][0][1] - 1  # rows: the inputs, a row of ones, then the operations
    parameters = torch.randn(64, width, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert len(parameters) <= module._LEVELWISE_BATCH

    def unused(_):
        raise AssertionError("the straight-line code ran")

    level_wise = module._coefficients_by_size(parameters, unused, tables)
    torch.testing.assert_close(level_wise, function(parameters), rtol=1e-13, atol=1e-13)
    with pytest.raises(AssertionError, match="straight-line code ran"):
        module._coefficients_by_size(parameters.clone().requires_grad_(True), unused, tables)


def test_level_wise_program_only_for_polynomials():
    from solvergen.levelwise import level_program

    a, b, t = sp.symbols("a b t")
    program = level_program([a, b], [(t, a * b + 2 * a)], [t**2 - b, sp.Integer(0)])
    assert program is not None and program.outputs[1] == 2  # the row of ones, scaled by 0
    assert program.output_scale[1] == 0.0
    assert level_program([a, b], [], [a / b]) is None  # a division: straight-line code only
