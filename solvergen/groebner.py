"""Algebra of a random instance over Z_p: Groebner basis, solution count, standard monomials.

A random instance of the parameters (uniform over Z_p, or from the problem's sampler when
generic parameters are inconsistent) stands in for generic data: with p ~ 2^31 the chance
that it is special is negligible, and two instances are compared as a check.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from . import finite_field as ff
from .errors import SpecError
from .monomials import Exponent, divides, grevlex_key, multiply, unit
from .polynomials import PolynomialSystem
from .problem import Problem

ZpPoly = dict  # Exponent -> int in [0, p)


@dataclass(frozen=True)
class Instance:
    """Parameter values and the equations they give, over Z_p."""

    values: tuple[int, ...]
    equations: tuple[ZpPoly, ...]


@dataclass(frozen=True)
class Quotient:
    """The quotient ring C[x]/I of one instance: its standard monomial basis and normal forms.

    The Groebner basis is computed in grevlex for the variable order `order` (a permutation
    of the unknowns); every exponent stored here is in the problem's own variable order.
    """

    unknowns: tuple[sp.Symbol, ...]
    order: tuple[int, ...]  # order[i] = index of the i-th variable of the monomial order
    basis: tuple[Exponent, ...]  # standard monomials, grevlex-descending (problem order)
    leading: tuple[Exponent, ...]  # leading monomials of the reduced Groebner basis
    groebner: object  # sympy GroebnerBasis over GF(p), in the permuted variables
    _monomial_forms: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_solutions(self) -> int:
        return len(self.basis)

    def normal_form(self, poly: ZpPoly) -> np.ndarray:
        """Coordinates of poly mod I in `basis` (the standard monomials)."""
        if len(poly) == 1:
            (monomial, coef), = poly.items()
            return (coef * self._monomial_normal_form(monomial)) % ff.PRIME
        return self._normal_form(poly)

    def _monomial_normal_form(self, monomial: Exponent) -> np.ndarray:
        if monomial not in self._monomial_forms:
            self._monomial_forms[monomial] = self._normal_form({monomial: 1})
        return self._monomial_forms[monomial]

    def _normal_form(self, poly: ZpPoly) -> np.ndarray:
        gens = [self.unknowns[i] for i in self.order]
        permuted = {_permute(e, self.order): c for e, c in poly.items()}
        _, remainder = self.groebner.reduce(sp.Poly.from_dict(permuted, *gens, modulus=ff.PRIME))
        index = {b: i for i, b in enumerate(self.basis)}
        out = np.zeros(len(self.basis), dtype=np.int64)
        for monom, coef in remainder.terms():
            out[index[_unpermute(tuple(monom), self.order)]] = int(coef) % ff.PRIME
        return out


def _permute(exponent: Exponent, order: tuple[int, ...]) -> Exponent:
    return tuple(exponent[i] for i in order)


def _unpermute(exponent: Exponent, order: tuple[int, ...]) -> Exponent:
    out = [0] * len(order)
    for position, i in enumerate(order):
        out[i] = exponent[position]
    return tuple(out)


def random_instance(problem: Problem, system: PolynomialSystem, rng: random.Random) -> Instance:
    """A random instance over Z_p, from the problem's sampler if it has one."""
    for _ in range(20):
        if problem.sampler is None:
            values = [rng.randrange(1, ff.PRIME) for _ in system.parameters]
        else:
            raw = list(problem.sampler(rng))
            if len(raw) != len(system.parameters):
                raise SpecError(
                    f"sampler returned {len(raw)} values for {len(system.parameters)} parameters"
                )
            try:
                values = [ff.to_field(v) for v in raw]
            except (TypeError, ValueError):
                raise SpecError(
                    "sampler must return exact numbers (ints, Fractions or sympy Rationals)"
                ) from None
            except ZeroDivisionError:
                continue
        equations = system.evaluate_mod(values, ff.PRIME)
        if equations is not None:
            return Instance(tuple(values), tuple(equations))
    raise SpecError("could not draw a random instance whose denominators do not vanish")


def analyze(system: PolynomialSystem, instance: Instance, order: tuple[int, ...] | None = None) -> Quotient:
    """Groebner basis (grevlex, variables in `order`) of one instance.

    Refuses systems without solutions and systems that are not zero-dimensional.
    """
    n = len(system.unknowns)
    order = tuple(range(n)) if order is None else tuple(order)
    gens = [system.unknowns[i] for i in order]
    polys = [
        sp.Poly.from_dict({_permute(e, order): c for e, c in eq.items()}, *gens, modulus=ff.PRIME)
        for eq in instance.equations
        if eq
    ]
    if not polys:
        raise SpecError("the equations vanish identically for random parameters")
    basis_polys = sp.groebner(polys, *gens, order="grevlex", modulus=ff.PRIME)
    leading = []
    for g in basis_polys.polys:
        leading.append(max((tuple(m) for m in g.monoms()), key=grevlex_key))
    if any(sum(lm) == 0 for lm in leading):
        raise SpecError(
            "the system has no solutions for generic parameters"
            + ("" if len(polys) <= len(gens) else
               " (more equations than unknowns: if the parameters are constrained, "
               "give the problem a sampler of consistent instances)")
        )
    free = [
        str(gens[i]) for i in range(n)
        if not any(lm[i] > 0 and sum(lm) == lm[i] for lm in leading)
    ]
    if free:
        raise SpecError(
            "the system has infinitely many solutions (it is not zero-dimensional; "
            f"not determined: {', '.join(free)})"
        )
    basis = [_unpermute(b, order) for b in _standard_monomials(leading, n)]
    basis.sort(key=grevlex_key, reverse=True)
    leading = [_unpermute(lm, order) for lm in leading]
    return Quotient(tuple(system.unknowns), order, tuple(basis), tuple(leading), basis_polys)


def _standard_monomials(leading: list[Exponent], n: int) -> list[Exponent]:
    zero = tuple([0] * n)
    seen = {zero}
    stack = [zero]
    basis = []
    while stack:
        m = stack.pop()
        if any(divides(lm, m) for lm in leading):
            continue
        basis.append(m)
        for i in range(n):
            nxt = multiply(m, unit(n, i))
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return basis


def action_matrix(quotient: Quotient, action: tuple[int, ...]) -> np.ndarray:
    """M with row j = coordinates of (action . x) * b_j mod I, for the linear form `action`."""
    n = len(quotient.unknowns)
    rows = []
    for b in quotient.basis:
        poly: ZpPoly = {}
        for i, coef in enumerate(action):
            if coef:
                m = multiply(b, unit(n, i))
                poly[m] = (poly.get(m, 0) + coef) % ff.PRIME
        rows.append(quotient.normal_form(poly))
    return np.array(rows, dtype=np.int64)


def is_separating(matrix: np.ndarray, rng: random.Random) -> bool:
    """True if the action matrix is cyclic (a Krylov space of a random vector is everything).

    For a radical ideal the action matrix is diagonalisable, so cyclic means its eigenvalues,
    the values of the action form at the solutions, are distinct: eigenvectors then identify
    the solutions.
    """
    s = matrix.shape[0]
    m = matrix.astype(object)
    v = np.array([rng.randrange(ff.PRIME) for _ in range(s)], dtype=object)
    krylov = []
    for _ in range(s):
        krylov.append(v.copy())
        v = (m.T.dot(v)) % ff.PRIME  # any fixed side works for the rank test
    return len(ff.pivot_columns(np.array(krylov, dtype=np.int64))) == s
