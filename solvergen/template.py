"""Elimination templates: which monomial multiples of the equations reduce the action to a basis.

For an action form a = sum_i l_i x_i and a monomial basis B of the quotient ring C[x]/I, the
products a * b (b in B) that fall outside B, and the unknowns outside B, form the set T of
monomials that must be reduced to combinations of B. A template is a set of rows m * h_k
(m a monomial) whose span contains, for every t in T, a polynomial t - sum_b c_b b. Columns
are ordered [E | T | B], E being the other monomials.

Search, all exact over Z_p:
1. Expand: every equation times every monomial up to a total degree d, for the first d where
   the expansion reduces T and the two degrees after it.
2. Prune: drop rows that depend on rows kept in preference (largest multipliers are dropped
   first); the remaining rows are independent, so the certificate Y with Y C_E = 0, Y C_T = I is
   unique and the rows it uses form a minimal template. Only a column basis of E is kept, so
   the online matrix [E' T] is square.
3. Choose the basis: the grevlex standard monomials for every variable order, then a local
   search that swaps a basis monomial b for a * (top of another a-chain of B) while that keeps
   B a basis. Such a swap makes |T| one smaller and often the template much smaller (6-point
   focal: 31 x 46 with standard monomials, 21 x 36 after one swap).
The smallest template over all actions and bases wins; ties go to fewer rows.

Sign symmetry (Larsson and Astrom, "Uncovering symmetries in polynomial systems", ECCV 2016):
when every equation has only even-degree or only odd-degree terms in some unknowns S, negating
them maps solutions to solutions (all unknowns: x and -x; P3P). The quotient ring then splits
into a part even and a part odd in S, and multiplication by x_a^2 (a in S) maps the even part
to itself: an "even" template reduces x_a^2 * b (b in the S/2 even standard monomials), the
quadratic monomials x_i x_j of S and the other unknowns, and the eigenproblem is S/2 x S/2.
Its eigenvectors give those at each pair of solutions (see the runtime's `read_off`). Such a
template is used whenever the system has the symmetry, for the largest such S (P3P: 4 x 4
instead of 8 x 8; P4Pf in depths and w = f^2: S = the depths, 10 x 10 instead of 20 x 20).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from itertools import combinations, permutations

import numpy as np

from . import finite_field as ff
from .errors import SpecError
from .groebner import Instance, Quotient, action_matrix, is_separating
from .progress import Progress, SearchStatus
from .monomials import Exponent, degree, grevlex_key, multiply, unit, up_to_degree

MAX_ROWS = 4000
MAX_EXTRA_DEGREE = 8
EXTRA_DEGREES_TRIED = 2  # after the first degree that works
BASIS_SEARCH_STARTS = 2  # local basis search from this many of the best standard templates
DEFAULT_WORK = 150.0  # template search budget, in elimination work units (`elimination_work`)
DEFAULT_TIME_LIMIT = 600.0  # seconds: a safety limit; the work budget is what bounds a search


@dataclass(frozen=True)
class Template:
    action: tuple[int, ...]  # the action form's coefficients over the unknowns
    rows: tuple[tuple[int, Exponent], ...]  # (equation index, monomial multiplier)
    excess: tuple[Exponent, ...]  # E': eliminated monomials whose columns are kept
    reducible: tuple[Exponent, ...]  # T: monomials reduced to the basis
    basis: tuple[Exponent, ...]  # B
    # Unknowns negated together by the system's sign symmetry, when the template is "even": the
    # action is x_a^2 on the part of the ring even in them (empty: an ordinary template).
    symmetric: tuple[int, ...] = ()

    @property
    def even(self) -> bool:
        return bool(self.symmetric)

    @property
    def columns(self) -> tuple[Exponent, ...]:
        return self.excess + self.reducible + self.basis

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.columns)

    @property
    def size(self) -> tuple[int, int]:
        """Sort key: area, then rows."""
        rows, cols = self.shape
        return rows * cols, rows

    def action_name(self, unknowns) -> str:
        """The action form written with the given unknowns, e.g. "x", "2*x + y" or "x^2"."""
        if self.even:
            return f"{unknowns[self.action_variable]}^2"
        return " + ".join((f"{c}*" if c != 1 else "") + str(s) for c, s in zip(self.action, unknowns) if c)

    @property
    def action_variable(self) -> int | None:
        """Index of the unknown used as action, or None for a general linear form."""
        nonzero = [i for i, c in enumerate(self.action) if c]
        return nonzero[0] if len(nonzero) == 1 and self.action[nonzero[0]] == 1 else None

    def action_products(self, b: Exponent) -> list[tuple[Exponent, int]]:
        """The action times the basis monomial b, as (monomial, coefficient) terms."""
        return action_products(b, self.action, self.symmetric)


def action_products(b: Exponent, action, symmetric=()) -> list[tuple[Exponent, int]]:
    n = len(action)
    if symmetric:
        (a,) = [i for i, c in enumerate(action) if c]
        return [(multiply(b, square(n, a)), 1)]
    return [(multiply(b, unit(n, i)), c) for i, c in enumerate(action) if c]


def square(n: int, i: int) -> Exponent:
    return multiply(unit(n, i), unit(n, i))


def read_monomials(n: int, symmetric=()) -> list[Exponent]:
    """What the eigenvectors are read off as: the unknowns, or (even templates) the quadratic
    monomials x_i x_j, i <= j, of the `symmetric` unknowns, then the other unknowns, in that
    order (all of them even in the symmetric unknowns)."""
    if symmetric:
        quadratic = [multiply(unit(n, i), unit(n, j)) for i in symmetric for j in symmetric if i <= j]
        return quadratic + [unit(n, i) for i in range(n) if i not in symmetric]
    return [unit(n, i) for i in range(n)]


def reducible_monomials(basis, action, n: int, symmetric=()) -> list[Exponent]:
    in_basis = set(basis)
    out = {m for b in basis for m, _ in action_products(b, action, symmetric) if m not in in_basis}
    out.update(m for m in read_monomials(n, symmetric) if m not in in_basis)
    return sorted(out, key=grevlex_key, reverse=True)


def partial_degree(exponent: Exponent, symmetric) -> int:
    """The degree in the unknowns `symmetric`."""
    return sum(exponent[i] for i in symmetric)


@dataclass(frozen=True)
class SignSymmetry:
    """Negating the unknowns `symmetric` maps solutions to solutions: every equation has terms
    of one parity (`parities`) of degree in them (Larsson and Astrom, ECCV 2016)."""

    symmetric: tuple[int, ...]
    parities: tuple[int, ...]


MAX_SYMMETRY_SEARCH = 12  # unknowns up to which every subset is tried (else only all of them)


def sign_symmetry(system) -> SignSymmetry | None:
    """The largest set of unknowns (the first in subset order among equals) whose negation is a
    symmetry of the system, or None. All unknowns first: x and -x solving together."""
    n = len(system.unknowns)
    terms = [[coef.exponent for _, coef in system.equation_terms(k)] for k in range(system.num_equations)]
    sizes = range(n, 0, -1) if n <= MAX_SYMMETRY_SEARCH else [n]
    for size in sizes:
        for subset in combinations(range(n), size):
            parities = []
            for exponents in terms:
                found = {partial_degree(e, subset) % 2 for e in exponents}
                if len(found) != 1:
                    break
                parities.append(found.pop())
            else:
                return SignSymmetry(subset, tuple(parities))
    return None


def _row_matrix(instance: Instance, rows, columns) -> np.ndarray:
    index = {m: j for j, m in enumerate(columns)}
    mat = np.zeros((len(rows), len(columns)), dtype=np.int64)
    for r, (k, mult) in enumerate(rows):
        for exponent, coef in instance.equations[k].items():
            j = index.get(multiply(exponent, mult))
            if j is not None:
                mat[r, j] = coef
    return mat


class Expansion:
    """All rows m * h_k up to total degree d, over all monomials up to degree d (cached). With
    a `symmetry` (SignSymmetry) only the rows and monomials even in its unknowns: the odd ones
    never meet the even part of the ring."""

    def __init__(self, instance: Instance, degrees: list[int], n: int, d: int, symmetry=None):
        self.rows = [(k, m) for k, dk in enumerate(degrees) if dk <= d for m in up_to_degree(n, d - dk)]
        self.monomials = up_to_degree(n, d)
        if symmetry is not None:
            s, parities = symmetry.symmetric, symmetry.parities
            self.rows = [(k, m) for k, m in self.rows if (partial_degree(m, s) + parities[k]) % 2 == 0]
            self.monomials = [m for m in self.monomials if partial_degree(m, s) % 2 == 0]
        self.column = {m: j for j, m in enumerate(self.monomials)}
        self.matrix = _row_matrix(instance, self.rows, self.monomials) if len(self.rows) <= MAX_ROWS else None
        self.degrees = degrees

    def split(self, basis, reducible) -> tuple[np.ndarray, list[Exponent]] | None:
        """[E | T] columns of the expansion for this basis and T, or None if T does not fit."""
        if any(t not in self.column for t in reducible):
            return None
        fixed = set(basis) | set(reducible)
        excess = [m for m in self.monomials if m not in fixed]
        cols = [self.column[m] for m in excess] + [self.column[t] for t in reducible]
        return self.matrix[:, cols], excess


def _reducing_pivots(mat: np.ndarray, num_excess: int, num_reducible: int) -> list[int] | None:
    """The pivot columns of [E | T] when all T columns are pivots (the rows reduce T), else None."""
    pivots = ff.pivot_columns(mat[:, : num_excess + num_reducible])
    return pivots if sum(1 for c in pivots if c >= num_excess) == num_reducible else None


def _minimal_rows(mat: np.ndarray, keep_order: list[int], num_excess: int, num_reducible: int, pivots):
    """A minimal set of rows that still reduces T (see the module docstring, step 2). `pivots`:
    the pivot columns of [E | T], which its independent rows share (same row space)."""
    independent = [keep_order[i] for i in ff.independent_rows(mat[keep_order])]
    sub = mat[independent]
    support = ff.left_solution_support(sub, num_excess, num_reducible, columns=pivots)
    return sorted(independent[i] for i in support) if support is not None else None


def elimination_work(rows: int, cols: int) -> float:
    """Work of one elimination of a rows x cols matrix, in budget units: rows * cols * rank
    (at most min(rows, cols)) / 10^9, so a 1000 x 1000 elimination is 1."""
    return rows * cols * min(rows, cols) / 1e9


def _certificate_rows(mat: np.ndarray, num_excess: int) -> np.ndarray:
    """Rows that a certificate (Y with Y E = 0) can use: a row holding the only nonzero of an E
    column among the rows left must have Y = 0 there, so it is dropped, and again until no E
    column is lonely. The same certificates remain, on (much) fewer rows at high degrees."""
    nonzero = mat[:, :num_excess] != 0
    alive = np.ones(len(mat), dtype=bool)
    while True:
        lonely = nonzero[alive].sum(axis=0) == 1
        dropped = alive & nonzero[:, lonely].any(axis=1)
        if not dropped.any():
            return np.flatnonzero(alive)
        alive &= ~dropped


def _prune(expansion: Expansion, basis, action, reducible, symmetric=(), budget=None) -> Template | None:
    split = expansion.split(basis, reducible)
    if split is None:
        return None
    mat, excess = split
    rows = _certificate_rows(mat, len(excess))  # expansion rows in play
    mat = mat[rows]
    work = elimination_work(*mat.shape)
    if budget is not None:
        budget.spend(work)
    pivots = _reducing_pivots(mat, len(excess), len(reducible))
    if pivots is None:
        return None
    best = None
    for removal_key in REMOVAL_ORDERS:
        if budget is not None:
            if best is not None and budget.exhausted:
                break
            budget.spend(work)  # the independent rows; the certificate's solve is smaller
        keep_order = sorted(
            range(len(rows)),
            key=lambda r: removal_key(*expansion.rows[rows[r]], expansion.degrees),
        )
        keep = _minimal_rows(mat, keep_order, len(excess), len(reducible), pivots)
        if keep is None:
            continue
        sub = mat[keep]
        used = [j for j in range(len(excess)) if sub[:, j].any()]
        excess_kept = [excess[used[j]] for j in ff.pivot_columns(sub[:, used])]
        if len(keep) != len(excess_kept) + len(reducible):
            raise AssertionError("template block is not square after pruning")
        template = Template(
            tuple(action),
            tuple(expansion.rows[rows[r]] for r in keep),
            tuple(excess_kept),
            tuple(reducible),
            tuple(sorted(basis, key=grevlex_key, reverse=True)),
            tuple(symmetric),
        )
        if best is None or template.size < best.size:
            best = template
    return best


# Orders in which rows are dropped first (ascending key = kept first): largest row degree
# first, or largest multiplier first; ties broken by the multiplier in grevlex.
REMOVAL_ORDERS = (
    lambda k, m, degrees: (degree(m) + degrees[k], grevlex_key(m), k),
    lambda k, m, degrees: (degree(m), grevlex_key(m), k),
)


@dataclass
class SearchBudget:
    """How much template search to do: `work` in elimination units (`elimination_work`; the
    search is deterministic for a given work budget) and a wall-clock safety limit `seconds`
    (None: none). The search stops starting new candidates once either is spent and keeps the
    best template verified so far; only the first template is searched for past the work
    budget, and a search without any template by `seconds` is refused (SpecError). Hitting
    `seconds` rather than `work` makes the result depend on the machine: the report says so."""

    work: float = DEFAULT_WORK
    seconds: float | None = DEFAULT_TIME_LIMIT
    spent: float = 0.0
    _started: float | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the clock (the first template search that uses this budget does)."""
        if self._started is None:
            self._started = time.perf_counter()

    def spend(self, work: float) -> None:
        self.spent += work

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started is None else time.perf_counter() - self._started

    @property
    def out_of_work(self) -> bool:
        return self.spent >= self.work

    @property
    def out_of_time(self) -> bool:
        return self.seconds is not None and self.elapsed >= self.seconds

    @property
    def exhausted(self) -> bool:
        return self.out_of_work or self.out_of_time


@dataclass(frozen=True)
class SearchReport:
    """What the template search tried, for the generation summary."""

    candidates: int  # (basis, action) pairs whose templates were computed
    bases: int  # distinct monomial bases tried
    actions: int  # distinct action forms tried
    work: float  # elimination work spent (budget units)
    budget: float
    stopped_by: str | None  # "work" or "time" when the budget ended the search early

    def describe(self) -> str:
        text = (f"{self.candidates} candidate templates ({self.bases} bases, {self.actions} actions), "
                f"work {self.work:.1f} of {self.budget:g}")
        if self.stopped_by == "work":
            text += ", stopped by the work budget (raise --budget to search further)"
        elif self.stopped_by == "time":
            text += (", stopped by the time limit: the result may differ on another machine "
                     "(raise --time-limit, or lower --budget for a deterministic search)")
        return text


class TemplateSearch:
    """Template search over actions and bases for one random instance (even templates of a
    sign-symmetric system when `symmetry` is given), within a budget, reporting each candidate
    to `progress` (a `progress.Progress`)."""

    def __init__(self, instance: Instance, degrees: list[int], n: int, symmetry: SignSymmetry | None = None,
                 budget: SearchBudget | None = None, progress=None):
        self.instance, self.degrees, self.n, self.symmetry = instance, degrees, n, symmetry
        self.budget = SearchBudget() if budget is None else budget
        self.budget.start()
        self.progress = Progress() if progress is None else progress
        self.best: Template | None = None
        self.tried: set = set()  # (basis, action) pairs
        self.stopped_by: str | None = None
        self._expansions: dict[int, Expansion] = {}
        self._pruned: dict = {}

    @property
    def symmetric(self) -> tuple[int, ...]:
        """The unknowns of the sign symmetry, for even templates (empty: ordinary ones)."""
        return self.symmetry.symmetric if self.symmetry is not None else ()

    def expansion(self, d: int) -> Expansion:
        if d not in self._expansions:
            self._expansions[d] = Expansion(self.instance, self.degrees, self.n, d, self.symmetry)
        return self._expansions[d]

    @property
    def exhausted(self) -> bool:
        """True once the budget is spent and a template has been found (then recorded in
        `stopped_by`); a search without any template yet goes on."""
        if self.best is None or not self.budget.exhausted:
            return False
        if self.stopped_by is None:
            self.stopped_by = "work" if self.budget.out_of_work else "time"
        return True

    def _prune(self, d: int, basis, action, reducible) -> Template | None:
        key = (d, frozenset(basis), tuple(action))
        if self.best is None and self.budget.out_of_time:
            raise SpecError(
                f"no elimination template found within the time limit ({self.budget.seconds:g} s, "
                f"{len(self.tried)} candidates tried); raise --time-limit"
            )
        if key not in self._pruned:
            self._pruned[key] = _prune(self.expansion(d), basis, action, reducible, self.symmetric, self.budget)
        return self._pruned[key]

    def find(self, basis, action, quick: bool = False) -> Template | None:
        """Smallest template for this basis and action, or None within the limits. `quick`
        tries only the first degree that works (to screen candidates)."""
        reducible = reducible_monomials(basis, action, self.n, self.symmetric)
        start = max(degree(t) for t in reducible)
        best, first = None, None
        extra = 0 if quick else EXTRA_DEGREES_TRIED
        for d in range(start, start + MAX_EXTRA_DEGREE + 1):
            if first is not None and (d > first + extra or self.exhausted):
                break
            if self.expansion(d).matrix is None:
                break
            template = self._prune(d, basis, action, reducible)
            if template is None:
                continue
            first = d if first is None else first
            if best is None or template.size < best.size:
                best = template
        self._record(basis, action, best)
        return best

    def _record(self, basis, action, template: Template | None) -> None:
        self.tried.add((frozenset(basis), tuple(action)))
        if template is not None and (self.best is None or template.size < self.best.size):
            self.best = template
        best = "none yet" if self.best is None else "x".join(map(str, self.best.shape))
        self.progress.search(SearchStatus(len(self.tried), best, self.budget.spent, self.budget.work))

    def report(self) -> SearchReport:
        return SearchReport(len(self.tried), len({b for b, _ in self.tried}),
                            len({a for _, a in self.tried}), self.budget.spent, self.budget.work, self.stopped_by)


def _is_basis(quotient: Quotient, basis) -> bool:
    """Are these monomials linearly independent modulo I (hence a basis, given the count)?"""
    if len(basis) != quotient.num_solutions:
        return False
    forms = np.array([quotient.normal_form({b: 1}) for b in basis])
    return len(ff.pivot_columns(forms)) == len(basis)


def _chain_swaps(basis, action_variable: int, n: int):
    """Bases with one a-chain fewer: drop a singleton chain b, add a * (top of another chain)."""
    step = unit(n, action_variable)
    members = set(basis)
    tops = [b for b in basis if multiply(b, step) not in members]
    has_below = {multiply(b, step) for b in basis}
    one = tuple([0] * n)
    for single in tops:
        if single in has_below or single == one:
            continue
        for top in tops:
            if top != single:
                yield [b for b in basis if b != single] + [multiply(top, step)]


def _local_basis_search(search: TemplateSearch, quotient: Quotient, start: Template) -> Template:
    """Greedy: move to the best basis one chain swap away while the template shrinks."""
    current = start
    variable = start.action_variable
    if variable is None or start.even:
        return current
    seen = {frozenset(start.basis)}
    while True:
        best = None
        for basis in _chain_swaps(list(current.basis), variable, search.n):
            if search.exhausted:
                return current if best is None or best.size >= current.size else best
            key = frozenset(basis)
            if key in seen:
                continue
            seen.add(key)
            if not _is_basis(quotient, basis):
                continue
            template = search.find(basis, current.action, quick=True)
            if template is not None and (best is None or template.size < best.size):
                best = template
        if best is None:
            return current
        best = search.find(best.basis, best.action) or best  # the full search on the winner
        if best.size >= current.size:
            return current
        current = best


def template_entries(system, template: Template) -> list[tuple[int, int]]:
    """The template's nonzeros: (flat position row * cols + column, coefficient index in
    `system`), sorted by position."""
    columns = {m: i for i, m in enumerate(template.columns)}
    cols = len(columns)
    entries = []
    for r, (k, multiplier) in enumerate(template.rows):
        for j, coef in system.equation_terms(k):
            col = columns.get(multiply(coef.exponent, multiplier))
            if col is not None:
                entries.append((r * cols + col, j))
    return sorted(entries)


def reduce_with_template(template: Template, instance: Instance) -> np.ndarray | None:
    """X with rows of T: t = -X[t] . B modulo I, computed from the template over Z_p."""
    mat = _row_matrix(instance, template.rows, template.columns)
    square = len(template.rows)
    solution = ff.solve(mat[:, :square], mat[:, square:])
    if solution is None:
        return None
    return solution[square - len(template.reducible) :]


def verify_template(template: Template, instance: Instance, quotient: Quotient) -> bool:
    """Check the template's reductions against Groebner normal forms on an instance."""
    x = reduce_with_template(template, instance)
    if x is None:
        return False
    basis_forms = np.array([quotient.normal_form({b: 1}) for b in template.basis], dtype=object)
    for t, row in zip(template.reducible, x):
        expected = quotient.normal_form({t: 1}).astype(object) % ff.PRIME
        got = (-(row.astype(object)).dot(basis_forms)) % ff.PRIME
        if not np.array_equal(got, expected):
            return False
    return True


def variable_orders(n: int) -> list[tuple[int, ...]]:
    """Variable orders whose grevlex standard monomials are tried as bases."""
    if n <= 3:
        return list(permutations(range(n)))
    return [tuple(range(i, n)) + tuple(range(i)) for i in range(n)]


def choose_template(
    instance: Instance, degrees: list[int], quotients: list[Quotient], rng: random.Random,
    symmetry: SignSymmetry | None = None,
    budget: SearchBudget | None = None, progress=None,
) -> tuple[Template, Quotient, SearchReport]:
    """The smallest template over actions (each unknown, else random linear forms) and bases
    (standard monomials of each variable order, then a local search), within `budget`. For a
    sign-symmetric system (`symmetry`, see sign_symmetry) the smallest even template, when there
    is one.

    Anytime: every (basis, action) pair is first screened at the first degree that works, so
    that a template exists early; then each pair, best screened first, gets its full search
    (more degrees); then the local basis search. Once the budget is spent, the best template
    so far is returned. Within the budget the result is that of the full search."""
    n = len(quotients[0].unknowns)
    budget = SearchBudget() if budget is None else budget
    distinct = {}
    for quotient in quotients:
        distinct.setdefault(quotient.basis, quotient)
    if symmetry is not None:
        search = TemplateSearch(instance, degrees, n, symmetry, budget, progress)
        found = _even_templates(search, distinct.values(), rng)
        if found:
            template, quotient = min(found, key=lambda pair: pair[0].size)
            return template, quotient, search.report()
    search = TemplateSearch(instance, degrees, n, None, budget, progress)
    actions = [unit(n, i) for i in range(n)]
    screened: list[tuple[Template, Quotient]] = []
    for _ in range(5):
        for quotient in distinct.values():
            for action in actions:
                if search.exhausted:
                    break
                if not is_separating(action_matrix(quotient, action), rng):
                    continue
                template = search.find(quotient.basis, action, quick=True)
                if template is not None:
                    screened.append((template, quotient))
        if screened:
            break
        # No unknown separates the solutions: try random linear forms.
        actions = [tuple(rng.randrange(1, 6) for _ in range(n))]
    if not screened:
        raise SpecError(
            "no elimination template found within the size limits "
            f"({MAX_ROWS} rows, degree + {MAX_EXTRA_DEGREE})"
        )
    # Full searches, the best screened first; `found` keeps the screening order for ties.
    found = list(screened)
    for i in sorted(range(len(screened)), key=lambda i: screened[i][0].size):
        if search.exhausted:
            break
        quick, quotient = screened[i]
        found[i] = (search.find(quotient.basis, quick.action) or quick, quotient)
    found.sort(key=lambda pair: pair[0].size)
    best = found[0]
    for template, quotient in found[:BASIS_SEARCH_STARTS]:
        if search.exhausted:
            break
        improved = _local_basis_search(search, quotient, template)
        if improved.size < best[0].size:
            best = (improved, quotient)
    return best[0], best[1], search.report()


def _even_templates(search: TemplateSearch, quotients, rng: random.Random) -> list[tuple[Template, Quotient]]:
    """Even templates (action x_a^2, a a symmetric unknown, on the standard monomials even in
    the symmetric unknowns) for each quotient whose even part has half the solutions (no
    solution with the symmetric unknowns all zero) and each x_a^2 separating the pairs."""
    n, symmetric = search.n, search.symmetric
    found = []
    for quotient in quotients:
        even = [j for j, b in enumerate(quotient.basis) if partial_degree(b, symmetric) % 2 == 0]
        if 2 * len(even) != quotient.num_solutions:
            continue
        basis = [quotient.basis[j] for j in even]
        for a in symmetric:
            if search.exhausted:
                return found
            # x_a^2 * b in the even coordinates (the odd ones vanish for an even monomial).
            action = np.array([quotient.normal_form({multiply(b, square(n, a)): 1})[even] for b in basis])
            if not is_separating(action, rng):
                continue
            template = search.find(basis, unit(n, a))
            if template is not None:
                found.append((template, quotient))
    return found
