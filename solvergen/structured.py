"""Coefficient programs that follow the equations as written, not their expansion.

The coefficients c_{k,alpha}(a) of h_k(x, a) = sum_alpha c_{k,alpha}(a) x^alpha can be printed
from their expanded form (sympy's cse over the expanded polynomials) or computed by walking the
expression tree of each equation with polynomial values: every node is a polynomial in the
unknowns whose coefficients are expressions in the parameters, a product node multiplies two
such polynomials, and each non-trivial coefficient of a node becomes one assignment. For
equations written with structure (the 5-point constraints 2 E E^T E - tr(E E^T) E with E linear
in the unknowns) the walk needs several times fewer operations than the expansion: the
products of sums stay products.

`coefficient_program` returns the assignments and the outputs; `render` prints whichever of the
two programs is shorter, after checking the walk against the expanded coefficients.
"""
from __future__ import annotations

import heapq
import random

import sympy as sp

from . import finite_field as ff
from .monomials import Exponent
from .polynomials import PolynomialSystem

# A polynomial in the unknowns: exponent -> coefficient (an expression in the parameters).
PolyDict = dict[Exponent, sp.Expr]


class _Unsupported(Exception):
    """A node the walk does not handle (the expanded program is used instead)."""


class _Walker:
    def __init__(self, unknowns: tuple[sp.Symbol, ...], prefix: str):
        self.unknowns = unknowns
        self.index = {u: i for i, u in enumerate(unknowns)}
        self.assignments: list[tuple[sp.Symbol, sp.Expr]] = []
        self.symbols = sp.numbered_symbols(prefix)
        self.memo: dict[sp.Expr, PolyDict] = {}

    def zero(self) -> Exponent:
        return (0,) * len(self.unknowns)

    def named(self, poly: PolyDict) -> PolyDict:
        """The polynomial with every compound coefficient assigned to a fresh symbol."""
        out = {}
        for exponent, coefficient in poly.items():
            if _simple(coefficient):
                out[exponent] = coefficient
            else:
                symbol = next(self.symbols)
                self.assignments.append((symbol, coefficient))
                out[exponent] = symbol
        return out

    def walk(self, expr: sp.Expr) -> PolyDict:
        cached = self.memo.get(expr)
        if cached is None:
            cached = self.memo[expr] = self._walk(expr)
        return cached

    def _walk(self, expr: sp.Expr) -> PolyDict:
        if not (expr.free_symbols & set(self.unknowns)):
            return {self.zero(): expr} if expr != 0 else {}
        if expr in self.index:
            exponent = [0] * len(self.unknowns)
            exponent[self.index[expr]] = 1
            return {tuple(exponent): sp.Integer(1)}
        if expr.is_Add:
            total: PolyDict = {}
            for arg in expr.args:
                for exponent, coefficient in self.walk(arg).items():
                    total[exponent] = total.get(exponent, 0) + coefficient
            return self.named({e: c for e, c in total.items() if c != 0})
        if expr.is_Mul:
            constant = [arg for arg in expr.args if not (arg.free_symbols & set(self.unknowns))]
            factors = [arg for arg in expr.args if arg.free_symbols & set(self.unknowns)]
            product = self.walk(factors[0])
            for factor in factors[1:]:
                product = self._multiply(product, self.walk(factor))
            if constant:
                scalar = sp.Mul(*constant)
                product = self.named({e: scalar * c for e, c in product.items()})
            return product
        if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
            base, power = self.walk(expr.base), int(expr.exp)
            result = None
            while power:  # square and multiply
                if power & 1:
                    result = base if result is None else self._multiply(result, base)
                power >>= 1
                if power:
                    base = self._multiply(base, base)
            return result
        raise _Unsupported(type(expr).__name__)

    def _multiply(self, p: PolyDict, q: PolyDict) -> PolyDict:
        out: PolyDict = {}
        for ep, cp in p.items():
            for eq, cq in q.items():
                exponent = tuple(a + b for a, b in zip(ep, eq))
                out[exponent] = out.get(exponent, 0) + cp * cq
        return self.named({e: c for e, c in out.items() if c != 0})


def _simple(expr: sp.Expr) -> bool:
    """A symbol, a number, or a number times a symbol: not worth a name of its own."""
    if expr.is_Atom:
        return True
    return expr.is_Mul and len(expr.args) == 2 and expr.args[0].is_Number and expr.args[1].is_Atom


def coefficient_program(
    system: PolynomialSystem, prefix: str = "_s"
) -> tuple[list[tuple[sp.Symbol, sp.Expr]], list[sp.Expr]] | None:
    """Assignments and one output per coefficient of `system` (in its order), computed along the
    equations as written; None where the walk does not apply or disagrees with the expansion."""
    walker = _Walker(system.unknowns, prefix)
    try:
        polys = [walker.walk(expr) for expr in system.equations]
    except _Unsupported:
        return None
    if not _agrees(system, walker.assignments, polys):
        return None
    outputs = [sp.sympify(polys[c.equation].get(c.exponent, 0)) for c in system.coefficients]
    return _shared(walker.assignments, outputs, prefix + "c")


def _shared(assignments, outputs, prefix):
    """The program after cse over all its expressions (products such as E1_0*E2_3 recur across
    nodes), its definitions in dependency order (stable: deterministic output)."""
    count = len(assignments)
    replacements, reduced = sp.cse([e for _, e in assignments] + outputs, symbols=sp.numbered_symbols(prefix))
    definitions = list(replacements) + [(s, e) for (s, _), e in zip(assignments, reduced[:count])]
    position = {symbol: i for i, (symbol, _) in enumerate(definitions)}
    needs = [{position[d] for d in e.free_symbols if d in position} for _, e in definitions]
    users: list[list[int]] = [[] for _ in definitions]
    for i, deps in enumerate(needs):
        for d in deps:
            users[d].append(i)
    ready = [i for i, deps in enumerate(needs) if not deps]
    heapq.heapify(ready)
    remaining = [len(deps) for deps in needs]
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(definitions[i])
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    return ordered, list(reduced[count:])


def _agrees(system, assignments, polys) -> bool:
    """The walked polynomials equal the system's at two random points of Z_p: every coefficient,
    and zero where the expansion cancelled a monomial."""
    rng = random.Random(0)
    for _ in range(2):
        point = [rng.randrange(1, ff.PRIME) for _ in system.parameters]
        expected = system.evaluate_mod(point, ff.PRIME)
        env = {a: sp.Integer(v) for a, v in zip(system.parameters, point)}
        try:
            for symbol, expr in assignments:
                env[symbol] = sp.Integer(ff.to_field(expr.xreplace(env)))
            for equation, poly in enumerate(polys):
                values = {e: ff.to_field(c.xreplace(env)) for e, c in poly.items()}
                values = {e: v for e, v in values.items() if v}
                if expected is None or values != expected[equation]:
                    return False
        except (ZeroDivisionError, TypeError):  # a vanishing denominator, or not a rational
            return False
    return True
