"""Algebra of a random instance over Z_p: Groebner basis, solution count, standard monomials.

A random instance of the parameters (uniform over Z_p, or from the problem's sampler when
generic parameters are inconsistent) stands in for generic data: with p ~ 2^31 the chance
that it is special is negligible, and two instances are compared as a check.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import flint
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
    """The quotient ring C[x]/I of one instance in the grevlex standard monomials of one variable
    order: its basis, the leading monomials of the Groebner basis, and normal forms.

    `order[i]` is the index of the i-th variable of the monomial order; every exponent stored
    here is in the problem's own variable order. The arithmetic is the instance's `Algebra`'s:
    normal forms are its coordinates, changed to this basis.
    """

    unknowns: tuple[sp.Symbol, ...]
    order: tuple[int, ...]
    basis: tuple[Exponent, ...]  # standard monomials, grevlex-descending (problem order)
    leading: tuple[Exponent, ...]  # minimal generators of the leading-monomial ideal
    algebra: "Algebra" = field(compare=False, repr=False)
    to_basis: flint.nmod_mat = field(compare=False, repr=False)  # algebra coordinates -> basis

    @property
    def num_solutions(self) -> int:
        return len(self.basis)

    def normal_form(self, poly: ZpPoly) -> np.ndarray:
        """Coordinates of poly mod I in `basis` (the standard monomials)."""
        return ff.from_nmod(self.algebra.form(poly) * self.to_basis)[0]


class Algebra:
    """The quotient ring of one instance, from one Groebner basis (sympy, grevlex, the problem's
    variable order): its standard monomials B and the multiplication matrices M_i
    (row j = x_i * b_j mod I, in B), on FLINT. Other variable orders' bases come from these by
    FGLM (Faugere, Gianni, Lazard, Mora, J. Symbolic Comput. 1993) instead of further Groebner
    bases: one Groebner basis per instance, whatever the number of orders tried."""

    def __init__(self, unknowns, basis: list[Exponent], multiplication: list[flint.nmod_mat]):
        self.unknowns = tuple(unknowns)
        self.basis = tuple(basis)
        self.multiplication = multiplication
        one = flint.nmod_mat(1, len(basis), ff.PRIME)
        one[0, self.basis.index(tuple([0] * len(unknowns)))] = 1
        self._forms: dict[Exponent, flint.nmod_mat] = {tuple([0] * len(unknowns)): one}
        self._quotients: dict[tuple[int, ...], Quotient] = {}

    @property
    def num_solutions(self) -> int:
        return len(self.basis)

    def monomial_form(self, monomial: Exponent) -> flint.nmod_mat:
        """The monomial mod I as a 1 x S row in B: x_i * m is (m's row) * M_i."""
        form = self._forms.get(monomial)
        if form is None:
            i = next(i for i, e in enumerate(monomial) if e)
            lower = tuple(e - (j == i) for j, e in enumerate(monomial))
            form = self.monomial_form(lower) * self.multiplication[i]
            self._forms[monomial] = form
        return form

    def form(self, poly: ZpPoly) -> flint.nmod_mat:
        out = flint.nmod_mat(1, len(self.basis), ff.PRIME)
        for monomial, coef in poly.items():
            out += self.monomial_form(monomial) * coef
        return out

    def distinct_solutions(self, rng: random.Random) -> int:
        """The number of distinct solutions: distinct eigenvalues of a random linear form's
        multiplication matrix (the values of the form at the solutions), i.e. the degree of the
        square-free part of its characteristic polynomial."""
        s = len(self.basis)
        combination = flint.nmod_mat(s, s, ff.PRIME)
        for m in self.multiplication:
            combination += m * rng.randrange(1, ff.PRIME)
        charpoly = combination.charpoly()
        return charpoly.degree() - charpoly.gcd(charpoly.derivative()).degree()

    def quotient(self, order: tuple[int, ...]) -> Quotient:
        """The grevlex standard monomials for variable order `order`, by FGLM: monomials in
        increasing order whose normal form is independent of the smaller ones'."""
        order = tuple(order)
        if order in self._quotients:
            return self._quotients[order]
        n, s = len(self.unknowns), len(self.basis)

        def key(m):
            return grevlex_key(_permute(m, order))

        zero = tuple([0] * n)
        queue = [(key(zero), zero)]
        queued = {zero}
        basis, leading, echelon = [], [], []  # echelon: (pivot column, row scaled to pivot 1)
        while queue:
            _, m = heapq.heappop(queue)
            if any(divides(lm, m) for lm in leading):
                continue
            v = ff.from_nmod(self.monomial_form(m))[0]
            for pivot, row in echelon:
                if v[pivot]:
                    v = (v - v[pivot] * row) % ff.PRIME
            nonzero = np.flatnonzero(v)
            if nonzero.size == 0:
                leading.append(m)
                continue
            pivot = int(nonzero[0])
            echelon.append((pivot, (v * pow(int(v[pivot]), -1, ff.PRIME)) % ff.PRIME))
            basis.append(m)
            for i in range(n):
                nxt = multiply(m, unit(n, i))
                if nxt not in queued:
                    queued.add(nxt)
                    heapq.heappush(queue, (key(nxt), nxt))
        if len(basis) != s:
            raise AssertionError("internal error: FGLM found a basis of the wrong size")
        basis.sort(key=grevlex_key, reverse=True)
        change = flint.nmod_mat([[int(x) for x in self.monomial_form(b).entries()] for b in basis], ff.PRIME)
        quotient = Quotient(self.unknowns, order, tuple(basis), tuple(leading), self, change.inv())
        self._quotients[order] = quotient
        return quotient


def _permute(exponent: Exponent, order: tuple[int, ...]) -> Exponent:
    return tuple(exponent[i] for i in order)


def random_instance(problem: Problem, system: PolynomialSystem, rng: random.Random) -> Instance:
    """A random instance over Z_p, from the problem's sampler if it has one."""
    for _ in range(20):
        if problem.sampler is None:
            values = [rng.randrange(1, ff.PRIME) for _ in system.parameters]
        else:
            raw = list(problem.sampled_parameters(rng))
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


def algebra(system: PolynomialSystem, instance: Instance) -> Algebra:
    """The quotient ring of one instance: one Groebner basis (grevlex, the problem's variable
    order) and its multiplication matrices.

    Refuses systems without solutions, systems that are not zero-dimensional and systems with
    multiple roots (a non-radical ideal: every solution of a template would come twice).
    """
    n = len(system.unknowns)
    gens = list(system.unknowns)
    polys = [sp.Poly.from_dict(eq, *gens, modulus=ff.PRIME) for eq in instance.equations if eq]
    if not polys:
        raise SpecError("the equations vanish identically for random parameters")
    groebner = sp.groebner(polys, *gens, order="grevlex", modulus=ff.PRIME)
    leading = [max((tuple(m) for m in g.monoms()), key=grevlex_key) for g in groebner.polys]
    if any(sum(lm) == 0 for lm in leading):
        raise SpecError(
            "the system has no solutions for generic parameters"
            + ("" if len(polys) <= len(gens) else
               " (more equations than unknowns: if the parameters are constrained, "
               "give the problem a sampler of consistent instances)")
        )
    free = [str(gens[i]) for i in range(n) if not any(lm[i] > 0 and sum(lm) == lm[i] for lm in leading)]
    if free:
        raise SpecError(
            "the system has infinitely many solutions (it is not zero-dimensional; "
            f"not determined: {', '.join(free)})" + _spurious_component_hint(gens, polys)
        )
    basis = sorted(_standard_monomials(leading, n), key=grevlex_key, reverse=True)
    index = {b: j for j, b in enumerate(basis)}
    multiplication = []
    for i in range(n):
        m = flint.nmod_mat(len(basis), len(basis), ff.PRIME)
        for j, b in enumerate(basis):
            product = multiply(b, unit(n, i))
            if product in index:
                m[j, index[product]] = 1
                continue
            _, remainder = groebner.reduce(sp.Poly.from_dict({product: 1}, *gens, modulus=ff.PRIME))
            for monom, coef in remainder.terms():
                m[j, index[tuple(monom)]] = int(coef) % ff.PRIME
        multiplication.append(m)
    return Algebra(system.unknowns, basis, multiplication)


def check_radical(ring: Algebra, rng: random.Random) -> None:
    """One-line error when the solutions are not simple (the ideal is not radical)."""
    distinct = ring.distinct_solutions(rng)
    if distinct != ring.num_solutions:
        raise SpecError(
            f"the system has multiple roots for generic parameters ({ring.num_solutions} solutions "
            f"counted with multiplicity, {distinct} distinct): the ideal is not radical; look for "
            "an equation that is a power or a product with a repeated factor, or for equations "
            "that touch (two that are tangent at every solution)"
        )


def _spurious_component_hint(gens, polys) -> str:
    """Where a positive-dimensional component of the instance's equations `polys` lies on a
    coordinate hyperplane x_i = 0 (what clearing a denominator x_i by hand introduces), name it:
    the system restricted to x_i != 0 (saturated by x_i, with an extra unknown t and
    t x_i - 1 = 0) is then zero-dimensional."""
    t = sp.Dummy("t")
    culprits = []
    for i, x in enumerate(gens):
        saturated = [p.as_expr() for p in polys] + [t * x - 1]
        g = sp.groebner(saturated, *gens, t, order="grevlex", modulus=ff.PRIME)
        if g.is_zero_dimensional:
            culprits.append(str(x))
    if not culprits:
        return ""
    names = " or ".join(c + " = 0" for c in culprits)
    return (f"; the extra solutions lie on {names} (without them it is zero-dimensional): if an "
            f"equation was multiplied by {culprits[0]} (a cleared denominator), divide it out, or "
            f"exclude them with an extra unknown t and the equation t*{culprits[0]} - 1 = 0")


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
