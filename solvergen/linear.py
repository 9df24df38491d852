"""The linear-elimination pass: equations linear in the unknowns are eliminated numerically.

Natural formulations (E as nine unknowns with five epipolar constraints, H with point
correspondences) contain a block of equations L(a) x = b(a). The generated forward computes a
batched null-space basis N of that block (QR) and a particular solution x_p, writes
x = x_p + N z, and solves the remaining equations for z with an elimination template compiled
from the substituted equations. Two modes:

* affine: x = x_p + N z, all remaining equations in the k = dim(null space) coordinates z;
* chart: when the linear block is homogeneous, every remaining equation but one is
  homogeneous, and that one is a gauge q(x) = c with q homogeneous of degree m (e.g.
  ||E||^2 = 1): the homogeneous equations are solved in the chart z = (z_1..z_{k-1}, 1) and
  every solution is rescaled by (c / q(x))^(1/m). For even m the sign is a gauge: one
  representative per pair +-x is returned (the positive rescaling of the chart point), and
  `num_solutions` counts pairs.

The block is made of the unknowns that the linear equations involve; the others (a focal
length w beside the fundamental matrix F, say) are free: they stay unknowns of the reduced
problem as they are. Homogeneity is graded by the block alone: an equation is homogeneous if
its terms have one degree in the block's unknowns, whatever their degree in the free ones (the
trace constraints of F with w = 1/f^2 are homogeneous of degree 3 in F), and the gauge must not
involve a free unknown (rescaling the block then leaves every other equation satisfied).

Newton polishing, the validity check and the implicit-function-theorem backward always use
all declared equations in the declared unknowns, so nothing is differentiated through QR or
eig. The reduced problem's random instances over Z_p are exact null spaces (in a random basis)
of random instances of the declared problem, so that the algebra sees consistent data.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import sympy as sp

from . import finite_field as ff
from .errors import SpecError
from .groebner import Instance, random_instance
from .polynomials import PolynomialSystem
from .problem import Problem


@dataclass(frozen=True)
class LinearBlock:
    rows: tuple[int, ...]  # declared equations used for the null space (independent)
    equations: tuple[int, ...]  # all declared equations of degree <= 1 in the unknowns
    block: tuple[int, ...]  # the unknowns the linear equations involve (x = x_p + N z); the others are free
    homogeneous: bool
    null_dim: int  # k
    chart: bool
    gauge: int | None  # declared equation rescaled to in chart mode
    gauge_degree: int
    null_symbols: tuple[tuple[sp.Symbol, ...], ...]  # N (block x k)
    particular_symbols: tuple[sp.Symbol, ...]  # x_p (block), empty if homogeneous
    reduced_unknowns: tuple[sp.Symbol, ...]  # the null-space coordinates z, then the free unknowns
    used_parameters: tuple[int, ...]  # declared parameters that the reduced equations use
    reduced_problem: Problem | None  # None when no unknowns remain

    @property
    def reduced_parameter_count(self) -> int:
        n = len(self.null_symbols)
        return n * self.null_dim + len(self.particular_symbols) + len(self.used_parameters)

    @property
    def free(self) -> int:
        """How many unknowns are outside the block (the last reduced unknowns)."""
        return len(self.reduced_unknowns) - (self.null_dim - 1 if self.chart else self.null_dim)

    def describe(self) -> str:
        k = self.null_dim
        mode = f"chart + gauge of degree {self.gauge_degree}" if self.chart else "affine"
        count = len(self.rows)
        free = f", {self.free} free unknown{'s' if self.free > 1 else ''}" if self.free else ""
        return f"linear elimination of {count} equation{'s' if count > 1 else ''} ({k}-dim null space, {mode}{free})"


def _degrees_in_unknowns(system: PolynomialSystem, k: int, unknowns=None) -> set[int]:
    """The total degrees of equation k's terms in `unknowns` (indices; default: all)."""
    if unknowns is None:
        return {sum(c.exponent) for c in system.coefficients if c.equation == k}
    return {sum(c.exponent[i] for i in unknowns) for c in system.coefficients if c.equation == k}


def _involves(system: PolynomialSystem, k: int, unknowns) -> bool:
    return any(c.exponent[i] for c in system.coefficients if c.equation == k for i in unknowns)


def _linear_matrix(system: PolynomialSystem, instance: Instance, rows, block=None) -> tuple[np.ndarray, np.ndarray]:
    """L and b with L x = b for the given linear equations of a Z_p instance (L's columns: the
    unknowns of `block`, default all)."""
    block = list(range(len(system.unknowns))) if block is None else list(block)
    L = np.zeros((len(rows), len(block)), dtype=np.int64)
    b = np.zeros(len(rows), dtype=np.int64)
    for i, k in enumerate(rows):
        for exponent, coef in instance.equations[k].items():
            if sum(exponent) == 0:
                b[i] = (-coef) % ff.PRIME
            else:
                L[i, block.index(exponent.index(1))] = coef
    return L, b


def _fresh(name: str, taken: set[str]) -> sp.Symbol:
    out, i = name, 1
    while out in taken:
        out = f"{name}_{i}"
        i += 1
    taken.add(out)
    return sp.Symbol(out)


def find_linear_block(problem: Problem, system: PolynomialSystem, seed: int = 0) -> LinearBlock | None:
    """The linear block of the system and the reduced problem, or None if there is none."""
    linear = [k for k in range(system.num_equations) if max(_degrees_in_unknowns(system, k)) <= 1]
    if not linear:
        return None
    if all(len(_degrees_in_unknowns(system, k)) == 1 for k in range(system.num_equations)):
        raise SpecError(
            "the system is homogeneous in the unknowns: add a scale gauge such as ||x||^2 = 1 or x_i = 1"
        )
    rng = random.Random(seed)
    n = len(system.unknowns)
    block = [i for i in range(n) if any(_involves(system, k, [i]) for k in linear)]
    free = [i for i in range(n) if i not in block]
    # Generic rank and independent rows, from two random instances (the larger rank wins).
    best_rows: list[int] = []
    for _ in range(2):
        L, _ = _linear_matrix(system, random_instance(problem, system, rng), linear, block)
        rows = [linear[i] for i in ff.independent_rows(L)]
        if len(rows) > len(best_rows):
            best_rows = rows
    rows = best_rows
    homogeneous = all(_degrees_in_unknowns(system, k) == {1} for k in linear)
    if not homogeneous:
        L, b = _linear_matrix(system, random_instance(problem, system, rng), linear, block)
        if len(ff.pivot_columns(np.concatenate([L, b[:, None]], axis=1))) > len(ff.pivot_columns(L)):
            raise SpecError("the system has no solutions for generic parameters (its linear equations are inconsistent)")
    k = len(block) - len(rows)
    if homogeneous and k == 0:
        raise SpecError("the linear equations force their unknowns to zero")

    nonlinear = [q for q in range(system.num_equations) if q not in linear]
    gauge, gauge_degree = None, 0
    if homogeneous:  # graded by the block's unknowns; a gauge must not involve a free unknown
        inhomogeneous = [q for q in nonlinear if len(_degrees_in_unknowns(system, q, block)) > 1]
        if len(inhomogeneous) == 1:
            degrees = _degrees_in_unknowns(system, inhomogeneous[0], block)
            if len(degrees) == 2 and 0 in degrees and not _involves(system, inhomogeneous[0], free):
                gauge, gauge_degree = inhomogeneous[0], max(degrees)
        elif not inhomogeneous:
            names = ", ".join(str(system.unknowns[i]) for i in block)
            raise SpecError(
                f"the system is homogeneous in the unknowns {names}: add a scale gauge such as "
                "||x||^2 = 1 or x_i = 1"
            )
    chart = gauge is not None

    taken = {str(s) for s in problem.unknowns + problem.parameters}
    null = tuple(tuple(_fresh(f"null{i}_{j}", taken) for j in range(k)) for i in range(len(block)))
    particular = () if homogeneous else tuple(_fresh(f"particular{i}", taken) for i in range(len(block)))
    count = k - 1 if chart else k
    z = tuple(_fresh(f"z{j}", taken) for j in range(count))
    coords = list(z) + ([sp.Integer(1)] if chart else [])
    substitution = {
        system.unknowns[i]: sum(null[r][j] * coords[j] for j in range(k)) + (particular[r] if particular else 0)
        for r, i in enumerate(block)
    }
    remaining = [q for q in nonlinear if q != gauge]
    equations = [system.equations[q].xreplace(substitution) for q in remaining]
    used = sorted(
        {i for i, a in enumerate(system.parameters) if any(e.has(a) for e in equations)}
    )
    unknowns = z + tuple(system.unknowns[i] for i in free)

    result = LinearBlock(
        tuple(rows), tuple(linear), tuple(block), homogeneous, k, chart, gauge, gauge_degree, null, particular,
        unknowns, tuple(used), None,
    )
    if not unknowns:
        return result
    if not equations:
        raise SpecError(
            "the system has infinitely many solutions (the linear equations leave "
            f"{k} free coordinate{'s' if k > 1 else ''} that no other equation constrains)"
        )
    parameters = [s for row in null for s in row] + list(particular) + [system.parameters[i] for i in used]
    sampler = _reduced_sampler(problem, system, result)
    reduced = Problem(f"{problem.name}_reduced", list(unknowns), parameters, equations, sampler=sampler)
    return replace(result, reduced_problem=reduced)


def _reduced_sampler(problem: Problem, system: PolynomialSystem, block: LinearBlock):
    """Random reduced parameters over Z_p: the exact null space (random basis) of a random
    instance of the declared problem, its particular solution and the used parameters."""
    n, k = len(block.block), block.null_dim

    def sample(rng: random.Random):
        for _ in range(20):
            instance = random_instance(problem, system, rng)
            L, b = _linear_matrix(system, instance, block.rows, block.block)
            basis = ff.null_space(L)
            if basis.shape[1] != k:
                continue
            values = []
            if k:  # the null space in a random basis
                mix = np.array([[rng.randrange(ff.PRIME) for _ in range(k)] for _ in range(k)], dtype=np.int64)
                if ff.solve(mix, np.eye(k, dtype=np.int64)) is None:
                    continue
                null = (basis.astype(object).dot(mix.astype(object))) % ff.PRIME
                values = [int(v) for v in null.reshape(-1)]
            if not block.homogeneous:
                reduced, pivots = ff.row_reduce(np.concatenate([L, b[:, None]], axis=1))
                if n in pivots:
                    continue  # inconsistent instance
                xp = [0] * n
                for i, p in enumerate(pivots):
                    xp[p] = int(reduced[i, n])
                values += xp
            values += [instance.values[i] for i in block.used_parameters]
            return values
        raise SpecError("could not draw random instances for the linear elimination")

    return sample
