"""Exact derivatives for Newton polishing and for the implicit-function-theorem backward.

With h_k(x, a) = sum_alpha c_{k,alpha}(a) x^alpha:

* dh/dx = sum_alpha alpha_n c_{k,alpha} x^(alpha - e_n) is kept as tables over one list of
  monomials (those of the equations and their one-step lowerings): h and dh/dx at a batch of
  solutions are then two batched matrix products with the coefficient matrix
  C[k, alpha] = c_{k,alpha}(a), which the forward has already computed.
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
class Derivatives:
    monomials: tuple[Exponent, ...]  # evaluation list, grevlex-descending
    equation_positions: tuple[int, ...]  # coefficient j -> k * len(monomials) + index(alpha)
    lower: tuple[tuple[int, ...], ...]  # [monomial][n] -> index of alpha - e_n (0 if alpha_n = 0)
    weights: tuple[sp.Symbol, ...]  # w_k, one per equation
    vjp_assignments: tuple[tuple[sp.Symbol, sp.Expr], ...]  # straight-line code ...
    parameter_vjp: tuple[sp.Expr, ...]  # ... then per parameter: d/da_m sum_k w_k h_k

    @property
    def max_degree(self) -> int:
        return max(max(m) for m in self.monomials)


def _lowered(m: Exponent, i: int) -> Exponent:
    return tuple(e - u for e, u in zip(m, unit(len(m), i)))


def derive(system: PolynomialSystem) -> Derivatives:
    n = len(system.unknowns)
    closure = set()
    for coef in system.coefficients:
        closure.add(coef.exponent)
        closure.update(_lowered(coef.exponent, i) for i in range(n) if coef.exponent[i])
    monomials = tuple(sorted(closure, key=grevlex_key, reverse=True))
    index = {m: i for i, m in enumerate(monomials)}
    positions = tuple(c.equation * len(monomials) + index[c.exponent] for c in system.coefficients)
    # Lowerings are only needed for monomials of the equations (the others have coefficient 0).
    lower = tuple(
        tuple(index.get(_lowered(m, i), 0) if m[i] else 0 for i in range(n)) for m in monomials
    )

    weights = tuple(sp.Symbol(f"w{k}") for k in range(len(system.equations)))
    assignments, outputs = reverse_mode_vjp(system.equations, weights, system.parameters)
    return Derivatives(monomials, positions, lower, weights, assignments, outputs)


def reverse_mode_vjp(equations, weights, parameters):
    """Straight-line code for d/da (sum_k w_k h_k): assignments and one output per parameter."""
    forward, reduced = sp.cse(list(equations), symbols=sp.numbered_symbols("_f"))
    definition = dict(forward)
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

    # Keep the forward assignments that the backward pass reads.
    needed = set().union(*(e.free_symbols for _, e in backward), *(e.free_symbols for e in outputs))
    kept = []
    for symbol, expr in reversed(forward):
        if symbol in needed:
            kept.append((symbol, expr))
            needed |= expr.free_symbols
    return tuple(reversed(kept)) + tuple(backward), tuple(outputs)
