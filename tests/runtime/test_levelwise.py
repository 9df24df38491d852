"""The level-wise form of generated coefficient functions (solvergen/runtime/levelwise.py)."""
from __future__ import annotations

import pytest
import torch
from conftest import generated_module

from solvergen.runtime import coefficients, levelwise

# (problem, its coefficient function with a level-wise form, the number of its inputs)
FUNCTIONS = [
    ("relpose_5pt_nullspace", lambda plan: (plan.coefficients, plan.num_parameters)),
    ("relpose_6pt_shared_focal", lambda plan: (plan.coefficients, plan.num_parameters)),
    ("relpose_5pt", lambda plan: (plan.linear.reduced_coefficients, plan.linear.num_reduced_inputs)),
]


@pytest.mark.parametrize("name, pick", FUNCTIONS, ids=[name for name, _ in FUNCTIONS])
def test_level_wise_program_equals_straight_line(name, pick):
    """Small batches evaluate the coefficient program level by level: the same values as the
    printed straight-line code. Under autograd the straight-line code runs (its backward is
    cheaper)."""
    plan = generated_module(name).PLAN
    function, inputs = pick(plan)
    tables = coefficients.program_tensors(function, inputs, {}, torch.device("cpu"), torch.float64)
    assert tables is not None
    parameters = torch.randn(64, inputs, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert len(parameters) <= coefficients.LEVELWISE_BATCH

    def unused(_):
        raise AssertionError("the straight-line code ran")

    level_wise = coefficients.by_size(parameters, unused, tables)
    torch.testing.assert_close(level_wise, function(parameters), rtol=1e-13, atol=1e-13)
    with pytest.raises(AssertionError, match="straight-line code ran"):
        coefficients.by_size(parameters.clone().requires_grad_(True), unused, tables)
    program = levelwise.trace(function, inputs)
    assert program.operations >= 32 * len(program.steps) >= 32 * 8  # many operations per step


def test_small_programs_keep_the_straight_line_code():
    """P3P's 66 operations: the level-wise form does not pay."""
    plan = generated_module("p3p").PLAN
    assert levelwise.trace(plan.coefficients, plan.num_parameters).operations < 256
    assert levelwise.level_program(plan.coefficients, plan.num_parameters) is None


def example(_a):
    """Written as solvergen prints coefficient functions."""
    a, b = _a.movedim(-1, 0).contiguous().unbind(0)
    _ones = _a.new_ones(_a.shape[:-1])
    _t0 = a*b + 2.0*a
    return torch.stack([_t0*_t0 - b, -(a - 3.0*b) * (a + b + _t0), _ones * 5.0, a**3]).movedim(0, -1)


def test_trace_of_a_small_function():
    """Scales fold into the rows, the row of ones serves constants, and the values agree."""
    program = levelwise.trace(example, 2)
    assert program.outputs[2] == 2 and program.output_scale[2] == 5.0  # the row of ones, times 5
    tables = coefficients.program_tensors(example, 2, {}, torch.device("cpu"), torch.float64)
    assert tables is None  # (too short to pay)
    values = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    traced = coefficients.by_size(values, None, _tensors(program))
    torch.testing.assert_close(traced, example(values), rtol=1e-14, atol=1e-14)


def _tensors(program):
    cache = {"level_programs": {example: program}}
    return coefficients.program_tensors(example, 2, cache, torch.device("cpu"), torch.float64)


@pytest.mark.parametrize("body", ["a / b", "a ** 0.5", "torch.sqrt(a)", "a ** -2"])
def test_non_polynomial_functions_have_no_level_wise_form(body):
    namespace = {"torch": torch}
    exec(
        "def f(_a):\n    a, b = _a.movedim(-1, 0).contiguous().unbind(0)\n"
        f"    return torch.stack([{body}, a * b]).movedim(0, -1)\n",
        namespace,
    )
    with pytest.raises(levelwise.Unsupported):
        levelwise.trace(namespace["f"], 2)
    assert levelwise.level_program(namespace["f"], 2) is None


def test_functions_that_do_not_stack_their_outputs_have_no_level_wise_form():
    def returns_a_list(_a):
        a, b = _a.movedim(-1, 0).contiguous().unbind(0)
        return [a * b, +a]

    def uses_a_string(_a):
        a, b = _a.movedim(-1, 0).contiguous().unbind(0)
        return torch.stack([a * "b", b]).movedim(0, -1)

    for function in (returns_a_list, uses_a_string):
        with pytest.raises(levelwise.Unsupported):
            levelwise.trace(function, 2)
