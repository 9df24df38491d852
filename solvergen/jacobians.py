"""Exact derivatives for Newton polishing and for the implicit-function-theorem backward.

With h_k(x, a) = sum_alpha c_{k,alpha}(a) x^alpha (one coefficient c_j per term):

* Evaluation tables (`EvaluationTables`) say how the generated code computes h and dh/dx at a
  batch of points from the coefficient vector c that the forward has already computed:
  monomials are built degree by degree (each one a monomial of the previous degree times one
  unknown), h_k sums its terms c_j x^alpha_j, and dh_k/dx_n sums alpha_jn c_j x^(alpha_j - e_n).
  Only non-zero terms are touched; nothing is dense in the monomials.
* The backward needs, per solution, the vector-Jacobian product sum_k w_k dh_k/da_m. The
  equations as the user wrote them (unexpanded, so structure such as E = x E1 + y E2 + ...
  is kept) are reduced by CSE to straight-line code; sympy differentiates each of its small
  assignments, and the adjoints are accumulated in reverse order (symbolic reverse mode), so
  the VJP program is about as long as the program for h itself. Only non-zero terms appear
  and the dense dh/da is never formed.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .monomials import Exponent, grevlex_key, unit
from .polynomials import PolynomialSystem


@dataclass(frozen=True)
class EvaluationTables:
    """Index tables for evaluating one system's h and dh/dx in the generated code."""

    num_unknowns: int
    num_equations: int
    # Monomials in degree order; level d (d >= 1) lists (index of the parent in level d-1,
    # unknown multiplied in) for each of its monomials. Level 0 is the monomial 1.
    levels: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    term_equation: tuple[int, ...]  # per coefficient j: its equation k
    term_monomial: tuple[int, ...]  # per coefficient j: flat index of x^alpha_j
    derivative_position: tuple[int, ...]  # per derivative term: k * N + n
    derivative_coefficient: tuple[int, ...]  # per derivative term: j
    derivative_factor: tuple[float, ...]  # per derivative term: alpha_jn
    derivative_monomial: tuple[int, ...]  # per derivative term: flat index of x^(alpha_j - e_n)
    constants: tuple[tuple[int, float], ...]  # (j, c_j) for the coefficients that are numbers


@dataclass(frozen=True)
class Derivatives:
    evaluation: EvaluationTables
    weights: tuple[sp.Symbol, ...]  # w_k, one per equation
    vjp_assignments: tuple[tuple[sp.Symbol, sp.Expr], ...]  # straight-line code ...
    parameter_vjp: tuple[sp.Expr, ...]  # ... then per parameter: d/da_m sum_k w_k h_k


def _lowered(m: Exponent, i: int) -> Exponent:
    return tuple(e - u for e, u in zip(m, unit(len(m), i)))


def _parent(m: Exponent) -> tuple[Exponent, int]:
    """The monomial of one degree less (dropping the last unknown present) and that unknown."""
    i = max(j for j, e in enumerate(m) if e)
    return _lowered(m, i), i


def evaluation_tables(system: PolynomialSystem) -> EvaluationTables:
    n = len(system.unknowns)
    needed = set()
    for coef in system.coefficients:
        needed.add(coef.exponent)
        needed.update(_lowered(coef.exponent, i) for i in range(n) if coef.exponent[i])
    closed = set()
    for m in needed:  # every parent chain down to 1
        while m not in closed:
            closed.add(m)
            if sum(m) == 0:
                break
            m = _parent(m)[0]
    degree = max(sum(m) for m in closed)
    by_level = [sorted((m for m in closed if sum(m) == d), key=grevlex_key, reverse=True) for d in range(degree + 1)]
    flat, offset = {}, 0
    for level in by_level:
        flat.update({m: offset + i for i, m in enumerate(level)})
        offset += len(level)
    levels = []
    for d in range(1, degree + 1):
        previous = {m: i for i, m in enumerate(by_level[d - 1])}
        parents = [_parent(m) for m in by_level[d]]
        levels.append((tuple(previous[p] for p, _ in parents), tuple(i for _, i in parents)))

    position, source, factor, monomial = [], [], [], []
    for j, coef in enumerate(system.coefficients):
        for i in range(n):
            if coef.exponent[i]:
                position.append(coef.equation * n + i)
                source.append(j)
                factor.append(float(coef.exponent[i]))
                monomial.append(flat[_lowered(coef.exponent, i)])
    return EvaluationTables(
        n,
        system.num_equations,
        tuple(levels),
        tuple(c.equation for c in system.coefficients),
        tuple(flat[c.exponent] for c in system.coefficients),
        tuple(position),
        tuple(source),
        tuple(factor),
        tuple(monomial),
        tuple((j, float(c.poly.LC)) for j, c in enumerate(system.coefficients) if c.poly.is_ground),
    )


def derive(system: PolynomialSystem) -> Derivatives:
    weights = tuple(sp.Symbol(f"w{k}") for k in range(len(system.equations)))
    assignments, outputs = reverse_mode_vjp(system.equations, weights, system.parameters)
    return Derivatives(evaluation_tables(system), weights, assignments, outputs)


def reverse_mode_vjp(equations, weights, parameters):
    """Straight-line code for d/da (sum_k w_k h_k): assignments and one output per parameter."""
    # sympy distributes numbers over sums (2 (a + b) becomes 2 a + 2 b), which hides shared
    # sums from CSE; factor_terms pulls them out again (a third fewer operations for the
    # trace constraints of the essential matrix).
    equations = [sp.factor_terms(h) for h in equations]
    forward, reduced = sp.cse(equations, symbols=sp.numbered_symbols("_f"))
    varying = set(parameters)  # symbols that depend on the parameters
    for symbol, expr in forward:
        if expr.free_symbols & varying:
            varying.add(symbol)

    terms: dict[sp.Symbol, list[sp.Expr]] = {}

    def accumulate(expr, adjoint):
        for symbol in sorted(expr.free_symbols & varying, key=sp.default_sort_key):
            terms.setdefault(symbol, []).append(adjoint * sp.diff(expr, symbol))

    for w, h in zip(weights, reduced):
        accumulate(h, w)
    adjoint_symbols = sp.numbered_symbols("_g")
    backward = []
    for symbol, expr in reversed(forward):
        if symbol in terms:
            adjoint = next(adjoint_symbols)
            backward.append((adjoint, sp.Add(*terms.pop(symbol))))
            accumulate(expr, adjoint)
    outputs = [sp.Add(*terms.get(a, [])) for a in parameters]
    backward = [(symbol, sp.factor_terms(expr)) for symbol, expr in backward]  # 2 a - 2 b -> 2 (a - b)
    outputs = [sp.factor_terms(expr) for expr in outputs]

    # Keep the forward assignments that the backward pass reads.
    needed = set().union(*(e.free_symbols for _, e in backward), *(e.free_symbols for e in outputs))
    kept = []
    for symbol, expr in reversed(forward):
        if symbol in needed:
            kept.append((symbol, expr))
            needed |= expr.free_symbols
    return tuple(reversed(kept)) + tuple(backward), tuple(outputs)
