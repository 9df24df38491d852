"""Elimination templates: which monomial multiples of the equations reduce the action to the basis.

For an action form a = sum_i l_i x_i and the standard monomial basis B of the quotient ring,
the products a * b (b in B) that fall outside B, and the unknowns outside B, form the set T of
monomials that must be reduced to combinations of B. A template is a set of rows m * h_k
(m a monomial) whose span contains, for every t in T, a polynomial t - sum_b c_b b. Its
columns are ordered [E | T | B] with E the other monomials.

The search multiplies the equations by all monomials up to a total degree that grows until
the condition holds (checked exactly over Z_p), then removes rows greedily (largest
multipliers first, in halving chunks) while the condition still holds, and finally keeps
only a column basis of E: the online matrix [E' T] is then square and invertible.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from . import finite_field as ff
from .errors import SpecError
from .groebner import Instance, Quotient, action_matrix, is_separating
from .monomials import Exponent, degree, grevlex_key, multiply, unit, up_to_degree

MAX_ROWS = 4000
MAX_EXTRA_DEGREE = 8


@dataclass(frozen=True)
class Template:
    action: tuple[int, ...]  # the action form's coefficients over the unknowns
    rows: tuple[tuple[int, Exponent], ...]  # (equation index, monomial multiplier)
    excess: tuple[Exponent, ...]  # E': eliminated monomials whose columns are kept
    reducible: tuple[Exponent, ...]  # T: monomials reduced to the basis
    basis: tuple[Exponent, ...]  # B: standard monomials

    @property
    def columns(self) -> tuple[Exponent, ...]:
        return self.excess + self.reducible + self.basis

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.columns)

    @property
    def action_variable(self) -> int | None:
        """Index of the unknown used as action, or None for a general linear form."""
        nonzero = [i for i, c in enumerate(self.action) if c]
        return nonzero[0] if len(nonzero) == 1 and self.action[nonzero[0]] == 1 else None


def reducible_monomials(basis, action, n: int) -> list[Exponent]:
    in_basis = set(basis)
    out = set()
    for b in basis:
        for i, coef in enumerate(action):
            if coef:
                m = multiply(b, unit(n, i))
                if m not in in_basis:
                    out.add(m)
    for i in range(n):
        if unit(n, i) not in in_basis:
            out.add(unit(n, i))
    return sorted(out, key=grevlex_key, reverse=True)


def _row_matrix(instance: Instance, rows, columns) -> np.ndarray:
    index = {m: j for j, m in enumerate(columns)}
    mat = np.zeros((len(rows), len(columns)), dtype=np.int64)
    for r, (k, mult) in enumerate(rows):
        for exponent, coef in instance.equations[k].items():
            j = index.get(multiply(exponent, mult))
            if j is not None:
                mat[r, j] = coef
    return mat


def _reduces(mat: np.ndarray, num_excess: int, num_reducible: int) -> bool:
    """Are all T columns pivots when eliminating in column order [E | T]?"""
    pivots = ff.pivot_columns(mat[:, : num_excess + num_reducible])
    return sum(1 for c in pivots if c >= num_excess) == num_reducible


def _prune_rows(order: list[int], ok) -> list[int]:
    """Greedy removal: try dropping chunks of rows (halving the chunk size down to 1)."""
    keep = list(order)
    chunk = max(1, len(keep) // 2)
    while True:
        i = 0
        while i < len(keep):
            candidate = keep[:i] + keep[i + chunk :]
            if candidate and ok(candidate):
                keep = candidate
            else:
                i += chunk
        if chunk == 1:
            return keep
        chunk = max(1, chunk // 2)


# Orders in which the greedy pass tries to drop rows (first tried, first dropped): largest row
# degree first, or largest multiplier first; ties broken by the multiplier in grevlex.
REMOVAL_ORDERS = (
    lambda k, m, degrees: (degree(m) + degrees[k], grevlex_key(m), k),
    lambda k, m, degrees: (degree(m), grevlex_key(m), k),
)


def _size(template: Template) -> tuple[int, int]:
    rows, cols = template.shape
    return rows * cols, rows


def find_template(
    instance: Instance, degrees: list[int], quotient: Quotient, action: tuple[int, ...]
) -> Template | None:
    """Smallest template found for this action, or None if the search exceeds its limits."""
    n = len(quotient.unknowns)
    basis = list(quotient.basis)
    reducible = reducible_monomials(basis, action, n)
    fixed = set(basis) | set(reducible)
    start = max(degree(t) for t in reducible)
    best: Template | None = None
    tries_left = 2  # the first degree that works, and one more
    for d in range(start, start + MAX_EXTRA_DEGREE + 1):
        rows = [(k, m) for k, dk in enumerate(degrees) if dk <= d for m in up_to_degree(n, d - dk)]
        if len(rows) > MAX_ROWS:
            break
        excess = [m for m in up_to_degree(n, d) if m not in fixed]
        mat = _row_matrix(instance, rows, excess + reducible)

        def reduces(selection):
            return _reduces(mat[sorted(selection)], len(excess), len(reducible))

        if not reduces(range(len(rows))):
            continue
        for removal_key in REMOVAL_ORDERS:
            order = sorted(
                range(len(rows)), key=lambda r: removal_key(*rows[r], degrees), reverse=True
            )
            keep = sorted(_prune_rows(order, reduces))
            sub = mat[keep]
            used = [j for j in range(len(excess)) if sub[:, j].any()]
            excess_kept = [excess[used[j]] for j in ff.pivot_columns(sub[:, used])]
            if len(keep) != len(excess_kept) + len(reducible):
                raise AssertionError("template block is not square after pruning")
            template = Template(
                tuple(action),
                tuple(rows[r] for r in keep),
                tuple(excess_kept),
                tuple(reducible),
                tuple(basis),
            )
            if best is None or _size(template) < _size(best):
                best = template
        tries_left -= 1
        if tries_left == 0:
            break
    return best


def reduce_with_template(template: Template, instance: Instance) -> np.ndarray | None:
    """X with rows of T: t = -X[t] . B modulo I, computed from the template over Z_p."""
    mat = _row_matrix(instance, template.rows, template.columns)
    square = len(template.rows)
    solution = ff.solve(mat[:, :square], mat[:, square:])
    if solution is None:
        return None
    return solution[square - len(template.reducible) :]


def verify_template(template: Template, instance: Instance, quotient: Quotient) -> bool:
    """Check the template against Groebner normal forms on an instance."""
    x = reduce_with_template(template, instance)
    if x is None:
        return False
    for t, row in zip(template.reducible, x):
        expected = quotient.normal_form({t: 1})
        if not np.array_equal((-row) % ff.PRIME, expected % ff.PRIME):
            return False
    return True


def variable_orders(n: int) -> list[tuple[int, ...]]:
    """Variable orders whose grevlex standard monomials are tried as bases."""
    if n <= 3:
        return list(permutations(range(n)))
    return [tuple(range(i, n)) + tuple(range(i)) for i in range(n)]


def choose_template(
    instance: Instance, degrees: list[int], quotients: list[Quotient], rng: random.Random
) -> tuple[Template, Quotient]:
    """Try every basis (one per variable order) and every unknown as the action (then random
    linear forms); keep the smallest template."""
    n = len(quotients[0].unknowns)
    best: tuple[Template, Quotient] | None = None
    actions = [unit(n, i) for i in range(n)]
    for attempt in range(5):
        for quotient in quotients:
            for action in actions:
                if not is_separating(action_matrix(quotient, action), rng):
                    continue
                template = find_template(instance, degrees, quotient, action)
                if template is not None and (best is None or _size(template) < _size(best[0])):
                    best = (template, quotient)
        if best is not None:
            return best
        # No unknown separates the solutions: try random linear forms.
        actions = [tuple(rng.randrange(1, 6) for _ in range(n))]
    raise SpecError(
        "no elimination template found within the size limits "
        f"({MAX_ROWS} rows, degree + {MAX_EXTRA_DEGREE})"
    )
