"""The printer (sympy -> torch code): printed expressions evaluate to sympy's value."""
from __future__ import annotations

import math

import pytest
import sympy as sp

from solvergen.printer import TorchPrinter

x, a, b = sp.symbols("x alpha b")
VALUES = {x: 2.0, a: 3.0, b: 5.0}
CASES = [
    x / a**2, x * a**2, x / (a**2 * b**3), (x + 1) / a**2, x**2 / a**3, 1 / a**2, x / a,
    x / (a + b) ** 2, -x / a**4, (x / a**2) ** 2, x**3 * b / (a**2 + 1), sp.sqrt(x) / a**2,
]


@pytest.mark.parametrize("expr", CASES, ids=str)
def test_printed_expression_evaluates_to_sympys_value(expr):
    """A power printed as a product (x*x) stays grouped in a denominator: x/alpha**2 is
    x/(alpha*alpha), not x/alpha*alpha."""
    text = TorchPrinter({}).doprint(expr)
    namespace = {str(s): v for s, v in VALUES.items()}
    namespace["torch"] = type("torch", (), {"sqrt": staticmethod(math.sqrt)})
    assert math.isclose(eval(text, namespace), float(expr.subs(VALUES)), rel_tol=1e-14), text


def test_half_powers_share_one_square_root():
    """b**(k/2) of a symbol b (after CSE: an input, or a subexpression used more than once)
    becomes r**k with r = sqrt(b) assigned once: no torch.pow, the same values; a negative
    power is 1.0/(r*r*r). A compound base gets a name first (`name_power_bases`), then its
    own square root."""
    from solvergen.printer import print_with_cse

    outputs = [x**sp.Rational(-3, 2) * a, 1 / sp.sqrt(x) + a, sp.sqrt(x) * b, (x + a) ** sp.Rational(-3, 2)]
    lines, printed = print_with_cse(outputs, {}, "_t")
    code = "\n".join(lines + printed)
    assert code.count("torch.sqrt(") == 2 and "**" not in code and code.count("alpha + x") == 1, code
    namespace = {str(s): v for s, v in VALUES.items()}
    namespace["torch"] = type("torch", (), {"sqrt": staticmethod(math.sqrt)})
    for line in lines:
        target, value = line.split(" = ", 1)
        namespace[target] = eval(value, namespace)
    for expr, text in zip(outputs, printed):
        assert math.isclose(eval(text, namespace), float(expr.subs(VALUES)), rel_tol=1e-14), text


def test_compound_base_of_a_power_is_computed_once():
    """(x + alpha)**2 is printed as a product of one named base, not with the sum written out
    twice; nested bases are named innermost first; the values are sympy's."""
    from solvergen.printer import print_with_cse

    outputs = [(x + a) ** 2 * b, ((x + a) ** 2 + b) ** 3 / a, (x - b) ** -2]
    lines, printed = print_with_cse(outputs, {}, "_t")
    code = "\n".join(lines + printed)
    assert code.count("alpha + x") == 1 and code.count("x - b") == 1, code
    namespace = {str(s): v for s, v in VALUES.items()}
    for line in lines:
        target, value = line.split(" = ", 1)
        namespace[target] = eval(value, namespace)
    for expr, text in zip(outputs, printed):
        assert math.isclose(eval(text, namespace), float(expr.subs(VALUES)), rel_tol=1e-14), text
