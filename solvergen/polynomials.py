"""The equations as polynomials in the unknowns whose coefficients are polynomials in the parameters.

Rational dependence on the parameters is removed by multiplying each equation by its
denominator (which does not change its zero set for generic parameters). Everything the
later passes need is derived from this one representation:

    h_k(x, a) = sum_alpha c_{k,alpha}(a) x^alpha

The pairs (k, alpha) are numbered once ("coefficients"); the generated code evaluates the
vector c(a) and scatters it into the elimination template and the equation matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import sympy as sp
from sympy.polys.polyerrors import CoercionFailed, PolynomialError

from .errors import SpecError
from .monomials import Exponent, grevlex_key
from .problem import Problem


@dataclass(frozen=True)
class Coefficient:
    """c_{k,alpha}: the coefficient of monomial `exponent` in equation `equation`."""

    equation: int
    exponent: Exponent
    poly: object  # a PolyElement of PolynomialSystem.param_ring

    def expr(self) -> sp.Expr:
        return self.poly.as_expr()


@dataclass(frozen=True)
class PolynomialSystem:
    unknowns: tuple[sp.Symbol, ...]
    parameters: tuple[sp.Symbol, ...]
    param_ring: object  # sympy PolyRing QQ[parameters]
    coefficients: tuple[Coefficient, ...]  # grouped by equation, grevlex-descending inside
    equations: tuple[sp.Expr, ...]  # h_k as the user wrote it, times the factor clearing it

    @property
    def num_equations(self) -> int:
        return 1 + max(c.equation for c in self.coefficients)

    def equation_terms(self, k: int) -> list[tuple[int, Coefficient]]:
        return [(j, c) for j, c in enumerate(self.coefficients) if c.equation == k]

    def degree(self, k: int) -> int:
        return max(sum(c.exponent) for c in self.coefficients if c.equation == k)

    def monomials(self) -> list[Exponent]:
        """Every monomial of every equation, grevlex-descending."""
        return sorted({c.exponent for c in self.coefficients}, key=grevlex_key, reverse=True)

    def evaluate_mod(self, values: list[int], prime: int) -> list[dict[Exponent, int]] | None:
        """The equations at integer parameter values over Z_p; None if a denominator vanishes."""
        out: list[dict[Exponent, int]] = [dict() for _ in range(self.num_equations)]
        for coef in self.coefficients:
            total = 0
            for monom, rational in coef.poly.terms():
                num, den = int(rational.numerator), int(rational.denominator)
                if den % prime == 0:
                    return None
                term = num * pow(den, -1, prime)
                for e, v in zip(monom, values):
                    if e:
                        term = term * pow(v, e, prime)
                total = (total + term) % prime
            if total:
                out[coef.equation][coef.exponent] = total
        return out


def _split_fraction(expr: sp.Expr, problem: Problem, k: int) -> sp.Expr:
    """Return the numerator of `expr` after checking its denominator is free of unknowns."""
    num, den = sp.fraction(sp.together(expr))
    bad = den.free_symbols & set(problem.unknowns)
    if bad:
        raise SpecError(
            f"equation {k} is not polynomial in the unknowns "
            f"(it divides by {sp.sstr(den)}, which depends on {sorted(map(str, bad))[0]})"
        )
    return num


def build_system(problem: Problem) -> PolynomialSystem:
    """Convert the problem's equations to polynomial form, clearing parameter denominators."""
    unknowns, parameters = problem.unknowns, problem.parameters
    n = len(unknowns)
    ring = sp.ring(list(unknowns) + list(parameters), sp.QQ)[0]
    param_ring = sp.ring(list(parameters), sp.QQ)[0]
    coefficients: list[Coefficient] = []
    equations: list[sp.Expr] = []
    k_out = 0
    for k, eq in enumerate(problem.equations):
        poly, expr = _to_ring(ring, eq, problem, k)
        if poly == 0:
            continue
        grouped: dict[Exponent, dict] = {}
        for monom, coef in poly.terms():
            grouped.setdefault(tuple(monom[:n]), {})[tuple(monom[n:])] = coef
        if all(sum(e) == 0 for e in grouped):
            raise SpecError(
                f"equation {k} does not involve the unknowns (it constrains the parameters alone)"
            )
        # Divide out the integer content so that printed coefficients stay small.
        content = _rational_content(grouped)
        for exponent in sorted(grouped, key=grevlex_key, reverse=True):
            terms = {m: c / content for m, c in grouped[exponent].items()}
            coefficients.append(Coefficient(k_out, exponent, param_ring.from_dict(terms)))
        equations.append(expr if content == 1 else expr / sp.Rational(content.numerator, content.denominator))
        k_out += 1
    if not equations:
        raise SpecError("all equations are identically zero")
    return PolynomialSystem(
        tuple(unknowns), tuple(parameters), param_ring, tuple(coefficients), tuple(equations)
    )


def _rational_content(grouped: dict) -> Fraction:
    import math

    nums = [abs(int(c.numerator)) for terms in grouped.values() for c in terms.values()]
    dens = [int(c.denominator) for terms in grouped.values() for c in terms.values()]
    g = 0
    for v in nums:
        g = math.gcd(g, v)
    lcm = 1
    for d in dens:
        lcm = lcm * d // math.gcd(lcm, d)
    return sp.QQ(g, lcm) if g else sp.QQ(1)


def _to_ring(ring, eq: sp.Expr, problem: Problem, k: int):
    """The equation as a ring element, and the expression (cleared of denominators) it equals."""
    try:
        return ring(eq), eq
    except (CoercionFailed, PolynomialError, TypeError, ValueError):
        pass
    num = _split_fraction(eq, problem, k)
    try:
        return ring(num), num
    except (CoercionFailed, PolynomialError, TypeError, ValueError):
        pass
    # Name the culprit: non-polynomial in an unknown, or non-rational in a parameter.
    try:
        poly = sp.Poly(num, *problem.unknowns)
    except PolynomialError:
        raise SpecError(f"equation {k} is not polynomial in the unknowns: {sp.sstr(eq)}") from None
    for coeff in poly.coeffs():
        if coeff.free_symbols & set(problem.unknowns):
            raise SpecError(f"equation {k} is not polynomial in the unknowns: {sp.sstr(eq)}")
        if not coeff.is_polynomial(*problem.parameters):
            raise SpecError(
                f"equation {k} has a coefficient that is not rational in the parameters: "
                f"{sp.sstr(coeff)}"
            )
    raise SpecError(f"equation {k} could not be read as a polynomial: {sp.sstr(eq)}")
