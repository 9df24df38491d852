"""Size-generic declarative layers: `Argmin` / `Implicit` over sympy arrays (`IndexedBase`).

A spec declares sizes (`n = sp.Symbol("n", integer=True, positive=True)`), arrays
(`x = sp.IndexedBase("x", shape=(n,))`), indices (`i = sp.Idx("i", n)`) and sums
(`sp.Sum(expr, (i, 0, n - 1))`). A constraint or equation with a free index stands for one
constraint per index value: a *family*.

What this module derives (the generated module prints it; runtime/indexed.py runs it):

- The KKT variables: the unknown arrays, then one multiplier array per equality family (an
  `Argmin`); the unknown arrays alone (an `Implicit`). Each variable V has row letters (fresh
  indices naming the entries of its residual) and column letters (naming its entries as an
  unknown of the Newton step).
- The residual of each variable: dL/dV for an unknown of an Argmin (L = f + sum mu . c), the
  family's expression for a multiplier, the equations for an Implicit.
- The Jacobian of the residuals, block by block, each block a sum of *terms*. sympy
  differentiates sums of array entries into KroneckerDeltas; a term is one product of deltas
  times a coefficient. The deltas identify letters (a row entry with a column entry: "the same
  element"), so that a term is a coefficient array over its own few letters plus the pattern
  that places it in the block: the whole structure is in the pattern (a diagonal Hessian is
  one term whose row and column letters are all identified; OT's row-sum constraints are one
  term whose row letter is identified with the plan's first column letter).
- The parameter vector-Jacobian product of all residuals, one array per parameter.
- Redundant equality families: two families whose sums over all their entries have the same
  derivative (OT: sum r = sum c), of which one entry of the second is dropped.

The runtime solves the Newton and IFT systems by eliminating the unknowns whose Hessian is
diagonal, then every family whose block of the remaining Schur complement is diagonal, and
solving what is left densely: O(n) for LML, O(m n^2 + n^3) for an m x n transport plan
(m >= n), d x d for pooling in R^d, dense for a spectral layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from .errors import SpecError

INDEX_SEPARATOR = "_"


# -- Declarations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Array:
    """A declared array (or scalar: `dims == ()`): its name, sympy object and sizes."""

    name: str
    symbol: sp.Basic  # IndexedBase, or Symbol for a scalar
    dims: tuple  # per dimension: a size Symbol or an int

    def element(self, letters) -> sp.Expr:
        return self.symbol[tuple(letters)] if self.dims else self.symbol

    @property
    def is_scalar(self) -> bool:
        return not self.dims


def is_indexed_declaration(value) -> bool:
    """Whether `unknowns` or `parameters` declare any array (the size-generic kind)."""
    if isinstance(value, sp.IndexedBase):
        return True
    if isinstance(value, (list, tuple)):
        return any(is_indexed_declaration(v) for v in value)
    return False


def declare_arrays(value, role: str) -> tuple[Array, ...]:
    """IndexedBases and Symbols -> Arrays (in declaration order)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[Array] = []
    for item in items:
        if isinstance(item, sp.IndexedBase):
            if item.shape is None:
                raise SpecError(f"array {item} in {role} has no shape: declare it as "
                                f"sp.IndexedBase({str(item.label)!r}, shape=(n,))")
            dims = []
            for d in item.shape:
                if d.is_Integer and int(d) > 0:
                    dims.append(int(d))
                elif isinstance(d, sp.Symbol) and d.is_integer and d.is_positive:
                    dims.append(d)
                else:
                    raise SpecError(f"array {item} in {role} has dimension {d}: each must be a positive integer "
                                    "or a size symbol declared with integer=True, positive=True")
            out.append(Array(str(item.label), item, tuple(dims)))
        elif isinstance(item, sp.Symbol):
            out.append(Array(str(item), item, ()))
        elif isinstance(item, sp.MatrixBase):
            raise SpecError(f"{role} mixes a Matrix with arrays: declare a fixed-size array as "
                            "sp.IndexedBase(name, shape=(3,)) instead")
        else:
            raise SpecError(f"{role} must be sympy IndexedBases or Symbols, got {item!r}")
    seen = set()
    for a in out:
        if a.name in seen:
            raise SpecError(f"{role[:-1]} {a.name} is declared twice")
        seen.add(a.name)
    if not out:
        raise SpecError(f"no {role} declared")
    return tuple(out)


def idx_size(index: sp.Idx):
    """The size an index runs over: its range must be (0, size - 1)."""
    if index.lower is None or index.upper is None:
        raise SpecError(f"index {index} has no range: declare it as sp.Idx({str(index.label)!r}, n)")
    if index.lower != 0:
        raise SpecError(f"index {index} starts at {index.lower}: indices must run from 0")
    size = sp.simplify(index.upper + 1)
    return int(size) if size.is_Integer else size


def free_letters(expr: sp.Expr) -> set[sp.Idx]:
    return {s for s in expr.free_symbols if isinstance(s, sp.Idx)}


def _nodes(expr):
    """Preorder nodes, not descending into indices and array names (whose labels are Symbols)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (sp.Idx, sp.IndexedBase)):
            stack.extend(reversed(node.args))


def _check_expression(expr, arrays: dict, sizes: set, what: str, unknown_names: set, needs_unknown: bool):
    """Refuse in one line: undeclared names, wrong index ranges or counts, sums whose range is
    not an index's whole range, indices used as values, non-smooth functions of the unknowns."""
    from .declarative import check_smooth

    if not isinstance(expr, sp.Expr):
        raise SpecError(f"{what} is not a sympy expression: {expr}")
    if expr.has(sp.oo, -sp.oo, sp.zoo, sp.nan):
        raise SpecError(f"{what} contains an infinite or undefined number: {expr}")
    uses_unknown = False
    for node in _nodes(expr):
        if isinstance(node, sp.Indexed):
            name = str(node.base.label)
            if name not in arrays:
                raise SpecError(f"{what} uses the undeclared array {name}")
            array = arrays[name]
            if len(node.indices) != len(array.dims):
                raise SpecError(f"{what}: {node} has {len(node.indices)} indices, {name} has {len(array.dims)} dimensions")
            for k, (index, dim) in enumerate(zip(node.indices, array.dims)):
                if isinstance(index, sp.Idx):
                    if idx_size(index) != dim:
                        raise SpecError(f"{what}: index {index} of {node} runs over {idx_size(index)} but dimension {k} "
                                        f"of {name} has size {dim}")
                elif index.is_Integer:
                    if not isinstance(dim, int) or not 0 <= int(index) < dim:
                        raise SpecError(f"{what}: {node} indexes dimension {k} of {name} (size {dim}) with {index}")
                else:
                    raise SpecError(f"{what}: {node} is indexed by {index}: indices must be sp.Idx symbols or integers")
            if len(set(i for i in node.indices if isinstance(i, sp.Idx))) < sum(isinstance(i, sp.Idx) for i in node.indices):
                raise SpecError(f"{what}: {node} repeats an index (diagonals are not supported)")
            uses_unknown |= name in unknown_names
        elif isinstance(node, sp.Sum):
            for limit in node.limits:
                index, low, high = limit if len(limit) == 3 else (limit[0], None, None)
                if not isinstance(index, sp.Idx):
                    raise SpecError(f"{what}: the sum over {index} must run over an sp.Idx")
                if low != 0 or sp.simplify(high - index.upper) != 0:
                    raise SpecError(f"{what}: the sum over {index} runs from {low} to {high}; sums must run over "
                                    f"the index's whole range, (0, {index.upper})")
        elif isinstance(node, sp.Symbol) and not isinstance(node, (sp.Idx, sp.Dummy)):
            if node.name in arrays:
                uses_unknown |= node.name in unknown_names
            elif node not in sizes:
                raise SpecError(f"{what} uses the undeclared symbol {node}")
    for node in _nodes(expr):  # an index is a position, not a value
        if isinstance(node, (sp.Add, sp.Mul, sp.Pow, sp.Function)):
            for arg in node.args:
                if isinstance(arg, sp.Idx):
                    raise SpecError(f"{what} uses the index {arg} as a value ({node})")
    if needs_unknown and not uses_unknown:
        raise SpecError(f"{what} ({expr}) does not involve any unknown")
    unknown_symbols = [arrays[n].symbol for n in unknown_names if arrays[n].is_scalar]
    plain = expr.replace(lambda e: isinstance(e, sp.Indexed) and str(e.base.label) in unknown_names,
                         lambda e: sp.Symbol("_u"))
    check_smooth(plain, unknown_symbols + [sp.Symbol("_u")], what)


# -- The derived system ----------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One term of a Jacobian block: coefficient(letters) times the deltas that identify letters.
    `letters`: the coefficient array's dimensions (representative letter names, sorted);
    `rows` / `cols`: for each row / column letter of the block, its representative's name."""

    coefficient: sp.Expr
    letters: tuple[str, ...]
    rows: tuple[str, ...]
    cols: tuple[str, ...]

    @property
    def diagonal(self) -> bool:
        """All row letters identified with the column letters, in order, and nothing else."""
        return self.rows == self.cols and len(set(self.rows)) == len(self.rows) and set(self.letters) <= set(self.rows)


@dataclass(frozen=True)
class Variable:
    """A KKT variable: an unknown array or a family's multiplier array."""

    array: Array
    kind: str  # "unknown", "multiplier" (an equality family), "inequality" (g <= 0) or "equation" (Implicit)
    row_letters: tuple[sp.Idx, ...]
    col_letters: tuple[sp.Idx, ...]
    residual: sp.Expr  # over row_letters


@dataclass
class IndexedSystem:
    """What the generated module of a size-generic layer prints and the runtime needs."""

    spec: object
    sizes: tuple[sp.Symbol, ...]
    unknowns: tuple[Array, ...]
    parameters: tuple[Array, ...]
    rows: tuple[Variable, ...]  # the residual blocks (an Argmin: the same as `columns`)
    columns: tuple[Variable, ...]  # the Newton variables: unknowns, then multipliers
    blocks: dict  # (row index, column index) -> tuple[Term, ...]
    vjp: dict  # parameter name -> (expression, letters)
    objective: sp.Expr | None
    init: dict  # unknown name -> (expression, letters) or None
    redundant: tuple = ()  # ((variable a, variable b), description): one entry of a or b is dropped
    size_sources: dict = field(default_factory=dict)  # size name -> (parameter name, dimension)
    # auxiliary unknowns (auxiliary_sums): (Array, its letters, the sum it stands for); they are
    # Newton columns after the declared unknowns, with their equality families after the spec's
    auxiliary: tuple = ()
    primal: dict | None = None  # closed_form_primal: unknown column -> its entry from the multipliers

    @property
    def kind(self) -> str:
        return self.spec.kind


def _letters(prefix: str, dims) -> tuple[sp.Idx, ...]:
    return tuple(sp.Idx(f"{prefix}{k}", d) for k, d in enumerate(dims))


def strip_ranges(expr: sp.Expr) -> sp.Expr:
    """sympy's sums of deltas come back as Piecewise((value, index in range), (0, True)): the
    letters are in range by construction, so keep the value."""
    def keep(p):
        value, condition = p.args[0]
        if not all(isinstance(s, sp.Idx) or s.is_integer for s in condition.free_symbols):
            raise SpecError(f"unexpected condition in a derivative: {condition}")
        return value
    while expr.has(sp.Piecewise):
        expr = expr.replace(lambda e: isinstance(e, sp.Piecewise), keep)
    return expr


def normalize_sums(expr: sp.Expr) -> sp.Expr:
    """Sums as a derivative leaves them, simplified: sum_k delta(k, l) f(k) -> f(l); factors
    that do not involve k move out of the sum; a sum of what does not involve k is a product
    with the size. Nested limits are taken innermost first."""
    if not expr.has(sp.Sum):
        return expr
    if isinstance(expr, sp.Sum):
        body = normalize_sums(expr.function)
        for limit in expr.limits:
            body = _sum_once(body, limit[0])
        return body
    if isinstance(expr, (sp.Indexed, sp.Idx)):
        return expr
    return expr.func(*[normalize_sums(a) for a in expr.args])


def _terms(expr: sp.Expr) -> list[sp.Expr]:
    """The additive terms of expr, products distributed over sums (not inside functions) where
    a term has a Kronecker delta: the deltas end up as factors of terms of their own. Terms
    without a delta stay as they are (distributing (x_i - y)(x_i - y) w_i over a sum would trade
    one reduction for four, and a difference of nearly equal sums for the difference itself)."""
    out = []
    for term in sp.Add.make_args(expr):
        if isinstance(term, sp.Mul) and term.has(sp.KroneckerDelta) and any(isinstance(f, sp.Add) for f in term.args):
            expanded = sp.expand_mul(term, deep=False)
            if expanded != term:
                out.extend(_terms(expanded))
                continue
        out.append(term)
    return out


def _sum_once(body: sp.Expr, k: sp.Idx) -> sp.Expr:
    out = sp.Integer(0)
    kept = []  # terms that stay inside the sum, collected so that the sum stays one node
    for term in _terms(body):
        factors = sp.Mul.make_args(term)
        delta = next((f for f in factors if isinstance(f, sp.KroneckerDelta) and k in f.args), None)
        if delta is not None:
            other = delta.args[0] if delta.args[1] == k else delta.args[1]
            rest = sp.Mul(*[f for f in factors if f is not delta])
            out += rest.xreplace({k: other}) if other != k else rest
            continue
        inside = [f for f in factors if k in f.free_symbols]
        outside = sp.Mul(*[f for f in factors if k not in f.free_symbols])
        if not inside:
            out += outside * idx_size(k)
        else:
            kept.append((outside, sp.Mul(*inside)))
    groups: dict = {}
    for outside, inside in kept:  # sum_k (a f(k) + b f(k)) stays one sum per distinct f
        groups[inside] = groups.get(inside, sp.Integer(0)) + outside
    for inside, outside in groups.items():
        out += outside * sp.Sum(inside, (k, 0, k.upper))
    return out


def derivative(expr: sp.Expr, element: sp.Expr) -> sp.Expr:
    return tidy(strip_ranges(normalize_sums(sp.diff(expr, element))))


def tidy(expr: sp.Expr, limit: int = 60) -> sp.Expr:
    """sympy's simplify on each small term outside sums (e.g. (y - 1)/(1 - y) + 1 -> 0); large
    expressions are left as they are (CSE takes care of repetition)."""
    if expr.count_ops() > 4 * limit:
        return expr
    terms = [t if t.has(sp.Sum) or t.count_ops() > limit else sp.simplify(t) for t in sp.Add.make_args(expr)]
    out = sp.Add(*terms)
    if not out.has(sp.Sum) and out.count_ops() <= limit:
        simpler = sp.simplify(out)
        out = simpler if simpler.count_ops() <= out.count_ops() else out
    return out


def _sum_over(expr: sp.Expr, letters) -> sp.Expr:
    return sp.Sum(expr, *[(l, 0, l.upper) for l in letters]) if letters else expr


def terms_of(expr: sp.Expr, rows: tuple[sp.Idx, ...], cols: tuple[sp.Idx, ...]) -> tuple[Term, ...]:
    """Split a Jacobian block into terms (module docstring)."""
    deltas = sorted({d for d in expr.atoms(sp.KroneckerDelta)}, key=sp.default_sort_key)
    marks = sp.symbols(f"_delta0:{len(deltas)}")
    parts = []  # (the deltas' marks of one term, its coefficient), the coefficient not expanded
    for term in _terms(expr):
        powers, rest = {}, []
        for factor in sp.Mul.make_args(term):
            base, exponent = factor.as_base_exp()
            if isinstance(base, sp.KroneckerDelta) and exponent.is_Integer and exponent > 0:
                mark = marks[deltas.index(base)]
                powers[mark] = powers.get(mark, 0) + int(exponent)
            else:
                rest.append(factor)
        coefficient = sp.Mul(*rest)
        if coefficient.has(sp.KroneckerDelta):
            raise SpecError(f"a derivative has a Kronecker delta inside {coefficient}: only products of deltas are "
                            "supported")
        parts.append((powers, coefficient))
    by_pattern: dict = {}
    for powers, coefficient in parts:
        parent: dict = {}

        def find(a):
            while parent.get(a, a) != a:
                a = parent[a]
            return a
        for mark in powers:
            a, b = deltas[marks.index(mark)].args
            if not (isinstance(a, sp.Idx) and isinstance(b, sp.Idx)):
                raise SpecError(f"a derivative has the delta {deltas[marks.index(mark)]}: only plain indices are supported")
            ra, rb = find(a), find(b)
            if ra != rb:
                keep, drop = sorted((ra, rb), key=lambda s: s.name)
                parent[drop] = keep
        letters_all = list(rows) + list(cols) + sorted(free_letters(coefficient) - set(rows) - set(cols), key=str)
        substitution = {l: find(l) for l in letters_all if find(l) != l}
        coefficient = coefficient.xreplace(substitution) if substitution else coefficient
        extra = free_letters(coefficient) - {find(l) for l in list(rows) + list(cols)}
        if extra:
            raise SpecError(f"a derivative has the free index {sorted(map(str, extra))[0]} that is neither a row nor "
                            "a column of its block")
        key = (tuple(find(l).name for l in rows), tuple(find(l).name for l in cols))
        by_pattern[key] = by_pattern.get(key, sp.Integer(0)) + coefficient
    out = []
    for (row_reps, col_reps), coefficient in sorted(by_pattern.items()):
        coefficient = sp.factor_terms(coefficient)
        if coefficient == 0:
            continue
        letters = tuple(sorted(str(l) for l in free_letters(coefficient)))
        out.append(Term(coefficient, letters, row_reps, col_reps))
    return tuple(out)


def _match_init(expr, array: Array, what: str):
    """An init entry's free indices -> the array's dimensions, by range (then by name)."""
    letters = sorted(free_letters(expr), key=str)
    if len(letters) > len(array.dims):
        raise SpecError(f"{what} has {len(letters)} free indices for an array of {len(array.dims)} dimensions")
    assigned: list = [None] * len(array.dims)
    for letter in letters:
        size = idx_size(letter)
        slots = [k for k, d in enumerate(array.dims) if d == size and assigned[k] is None]
        if not slots:
            raise SpecError(f"{what}: index {letter} runs over {size}, which is no free dimension of {array.name}")
        assigned[slots[0]] = letter
    own = _letters(f"_i{array.name}{INDEX_SEPARATOR}", array.dims)
    substitution = {l: own[k] for k, l in enumerate(assigned) if l is not None}
    return expr.xreplace(substitution), own


def size_sources(parameters) -> dict:
    """size name -> (parameter name, dimension) where the layer reads it at call time."""
    sources = {}
    for a in parameters:
        for k, d in enumerate(a.dims):
            if isinstance(d, sp.Symbol) and str(d) not in sources:
                sources[str(d)] = (a.name, k)
    return sources


def validate(spec) -> None:
    """Refuse a malformed size-generic spec in one line (see _check_expression)."""
    unknowns, parameters = spec.unknown_arrays, spec.parameter_arrays
    arrays = {a.name: a for a in unknowns + parameters}
    sizes = {d for a in arrays.values() for d in a.dims if isinstance(d, sp.Symbol)}
    sources = size_sources(parameters)
    for s in sorted(sizes, key=str):
        if str(s) not in sources:
            raise SpecError(f"size {s} appears in no parameter's shape: the layer could not read it from its inputs")
    unknown_names = {a.name for a in unknowns}
    if spec.kind == "argmin":
        families = spec.equalities
        _check_expression(spec.objective, arrays, sizes, "the objective", unknown_names, True)
        if free_letters(spec.objective):
            raise SpecError(f"the objective has the free index {sorted(map(str, free_letters(spec.objective)))[0]}: "
                            "it must be a scalar (sum over every index)")
        for k, g in enumerate(spec.inequalities):
            _check_expression(g, arrays, sizes, f"inequality {k}", unknown_names, True)
    else:
        families = spec.equations
    role = "equality" if spec.kind == "argmin" else "equation"
    for k, c in enumerate(families):
        _check_expression(c, arrays, sizes, f"{role} {k}", unknown_names, True)
    used = set()
    for expr in ((spec.objective,) + spec.equalities + spec.inequalities if spec.kind == "argmin" else spec.equations):
        used |= {str(e.base.label) for e in sp.preorder_traversal(expr) if isinstance(e, sp.Indexed)}
        used |= {str(e) for e in expr.free_symbols}
    for a in unknowns:
        if a.name not in used:
            raise SpecError(f"unknown {a.name} appears in no objective term, constraint or equation")
    if spec.init is not None:
        if len(spec.init) != len(unknowns):
            raise SpecError(f"init has {len(spec.init)} entries for {len(unknowns)} declared unknowns "
                            "(give one expression per declared unknown)")
        for k, (entry, a) in enumerate(zip(spec.init, unknowns)):
            if entry is None:
                continue
            _check_expression(sp.sympify(entry), {p.name: p for p in parameters}, sizes, f"init entry {k}", set(), False)
            _match_init(sp.sympify(entry), a, f"init entry {k}")


def _is_large(array: Array) -> bool:
    return any(not isinstance(d, int) for d in array.dims)


def auxiliary_sums(objective: sp.Expr, unknowns) -> tuple[sp.Expr, list]:
    """Sums of a large unknown array that the objective uses nonlinearly (unbalanced OT's row
    sums inside a KL term, log sum exp) couple every entry they sum over: the Hessian would be
    dense. Each becomes an auxiliary unknown s[free indices] with the equality family
    s - sum = 0, so that the Hessian stays diagonal (the coupling moves to constraint patterns).
    -> (objective with the sums replaced, [(auxiliary Array, its letters, the sum)])."""
    large = {a.name for a in unknowns if _is_large(a)}
    out = []
    candidates = sorted({node for node in sp.preorder_traversal(objective) if isinstance(node, sp.Sum)},
                        key=lambda e: (sp.count_ops(e), sp.default_sort_key(e)))
    for node in candidates:  # innermost (smallest) first
        if not any(isinstance(e, sp.Indexed) and str(e.base.label) in large for e in sp.preorder_traversal(node)):
            continue
        if node not in set(sp.preorder_traversal(objective)):
            continue  # inside a sum already replaced
        probe = sp.Symbol("_probe")
        if sp.simplify(sp.diff(objective.xreplace({node: probe}), probe, 2)) == 0:
            continue  # linear in the sum: no coupling
        letters = tuple(sorted(free_letters(node), key=str))
        dims = tuple(idx_size(l) for l in letters)
        name = f"_aux{len(out)}"
        array = Array(name, sp.IndexedBase(name, shape=dims) if dims else sp.Symbol(name), dims)
        objective = objective.xreplace({node: array.element(letters)})
        out.append((array, letters, node))
    return objective, out


def derive_indexed(spec) -> IndexedSystem:
    """The KKT system of a size-generic Argmin, or the equations of an Implicit (module docstring)."""
    unknowns, parameters = spec.unknown_arrays, spec.parameter_arrays
    declared = unknowns
    arrays = {a.name: a for a in unknowns + parameters}
    sizes = sorted({d for a in arrays.values() for d in a.dims if isinstance(d, sp.Symbol)}, key=str)
    sources = size_sources(parameters)
    auxiliary = []
    if spec.kind == "argmin":  # (expression, multiplier name, column kind)
        objective, auxiliary = auxiliary_sums(spec.objective, unknowns)
        unknowns = unknowns + tuple(array for array, _, _ in auxiliary)
        families = ([(c, f"_mu{k}", "multiplier") for k, c in enumerate(spec.equalities)]
                    + [(array.element(letters) - node, f"_mu{len(spec.equalities) + k}", "multiplier")
                       for k, (array, letters, node) in enumerate(auxiliary)]
                    + [(g, f"_lam{k}", "inequality") for k, g in enumerate(spec.inequalities)])
    else:
        families = [(c, f"_eq{k}", "equation") for k, c in enumerate(spec.equations)]
    variables: list[Variable] = []
    multipliers = []
    for c, name, kind in families:
        letters = tuple(sorted(free_letters(c), key=str))
        dims = tuple(idx_size(l) for l in letters)
        symbol = sp.IndexedBase(name, shape=dims) if dims else sp.Symbol(name)
        multipliers.append((Array(name, symbol, dims), letters, c, kind))
    if spec.kind == "argmin":
        lagrangian = objective + sum((_sum_over(mu.element(ls) * c, ls) for mu, ls, c, _ in multipliers),
                                     sp.Integer(0))
        for v, a in enumerate(unknowns):
            rows = _letters(f"_r{v}{INDEX_SEPARATOR}", a.dims)
            variables.append(Variable(a, "unknown", rows, _letters(f"_c{v}{INDEX_SEPARATOR}", a.dims),
                                      derivative(lagrangian, a.element(rows))))
        for mu, ls, c, kind in multipliers:
            v = len(variables)
            rows = _letters(f"_r{v}{INDEX_SEPARATOR}", mu.dims)
            variables.append(Variable(mu, kind, rows, _letters(f"_c{v}{INDEX_SEPARATOR}", mu.dims),
                                      c.xreplace(dict(zip(ls, rows)))))
        rows_, columns = variables, variables
    else:  # rows: the equation families; columns: the unknowns
        for v, a in enumerate(unknowns):
            variables.append(Variable(a, "unknown", (), _letters(f"_c{v}{INDEX_SEPARATOR}", a.dims), sp.Integer(0)))
        equations = []
        for k, (eq, ls, c, _) in enumerate(multipliers):
            rows = _letters(f"_r{k}{INDEX_SEPARATOR}", eq.dims)
            equations.append(Variable(eq, "equation", rows, (), c.xreplace(dict(zip(ls, rows)))))
        rows_, columns = equations, variables
        if len(equations) != len(unknowns) or any(e.array.dims != u.dims for e, u in zip(equations, unknowns)):
            # Square by shape: equation family k gives unknown k's Newton step (its shape must match).
            raise SpecError(f"an Implicit size-generic layer needs one equation family per unknown, of the same "
                            f"shape, in the same order (got {len(equations)} families for {len(unknowns)} unknowns)")
    blocks = {}
    for r, row in enumerate(rows_):
        for c, col in enumerate(columns):
            terms = terms_of(derivative(row.residual, col.array.element(col.col_letters)), row.row_letters,
                             col.col_letters)
            if terms:
                blocks[(r, c)] = terms
    # The parameter VJP: d/da of sum_V w_V . residual_V.
    weighted = sp.Integer(0)
    for r, row in enumerate(rows_):
        w = Array(f"_w{r}", sp.IndexedBase(f"_w{r}", shape=row.array.dims) if row.array.dims else sp.Symbol(f"_w{r}"),
                  row.array.dims)
        weighted += _sum_over(w.element(row.row_letters) * row.residual, row.row_letters)
    vjp = {}
    for a in parameters:
        letters = _letters(f"_p{a.name}{INDEX_SEPARATOR}", a.dims)
        vjp[a.name] = (derivative(weighted, a.element(letters)), letters)
    init = {}
    for k, a in enumerate(declared):
        entry = spec.init[k] if spec.init is not None else None
        init[a.name] = None if entry is None else _match_init(sp.sympify(entry), a, f"init entry {k}")
    redundant = _redundant_families(spec, rows_, unknowns)
    system = IndexedSystem(spec, tuple(sizes), declared, parameters, tuple(rows_), tuple(columns), blocks, vjp,
                           spec.objective if spec.kind == "argmin" else None, init, redundant, sources,
                           tuple((array, letters, node) for array, letters, node in auxiliary))
    system.primal = closed_form_primal(system)
    return system


def entrywise_implicit(system: IndexedSystem) -> bool:
    """An Implicit whose equations and unknowns are arrays of one shape, every Jacobian term
    entry by entry (equation entry e involves the unknowns' entries e only): its Newton and IFT
    systems are one small system per entry (runtime: StructuredSystem._entrywise_solve)."""
    if system.kind != "implicit" or len(system.rows) != len(system.columns):
        return False
    dims = {tuple(v.array.dims) for v in system.rows + system.columns}
    if len(dims) != 1 or not next(iter(dims)):
        return False
    return all(t.diagonal for terms in system.blocks.values() for t in terms)


def diagonal_unknown(system: IndexedSystem, c: int) -> bool:
    """An unknown array with a size symbol among its dimensions whose Hessian block is diagonal
    and that no other unknown's Hessian couples to: eliminated first (runtime/indexed.py)."""
    v = system.columns[c]
    if v.kind != "unknown" or v.array.is_scalar or all(isinstance(d, int) for d in v.array.dims):
        return False
    terms = system.blocks.get((c, c), ())
    if not terms or not all(t.diagonal for t in terms):
        return False
    return all((c, o) not in system.blocks for o, w in enumerate(system.columns) if o != c and w.kind == "unknown")


def _never_negative(expr: sp.Expr) -> bool:
    """Whether expr >= 0 for every real value of its arrays and symbols (sympy's assumptions; a
    sum of terms that are never negative is never negative): robust pooling's sqrt(1 + |d|^2)
    needs no check at run time."""
    def real(node):
        if isinstance(node, sp.Sum):
            body = node.function.xreplace(_real_values(node.function))
            return sp.Dummy(nonnegative=True) if body.is_nonnegative else sp.Dummy(real=True)
        return node
    reduced = expr.replace(lambda e: isinstance(e, sp.Sum), real)
    return bool(reduced.xreplace(_real_values(reduced)).is_nonnegative)


def _real_values(expr: sp.Expr) -> dict:
    """Every array entry and symbol of expr (not an index) -> a real, nonzero dummy."""
    nodes = [a for a in expr.atoms(sp.Indexed)] + [a for a in expr.free_symbols if isinstance(a, sp.Symbol)
                                                   and not isinstance(a, (sp.Idx, sp.Dummy))]
    return {a: sp.Dummy(real=True, nonzero=True) for a in nodes}


def domain_conditions(system: IndexedSystem) -> list:
    """Where the layer's expressions are defined, as [(u, letters)] with every entry u >= 0
    required: the argument of each log and of each non-integer power (a square root) that
    involves an unknown, in the objective, the constraints or the equations. The runtime's line
    searches keep the iterates there and `ok` requires it: a log-barrier's residual -c/y stays
    finite at y < 0, where the objective is not defined, so finiteness alone does not tell."""
    spec = system.spec
    unknown_names = {a.name for a in system.unknowns}
    sources = ([spec.objective] + list(spec.equalities) + list(spec.inequalities) if spec.kind == "argmin"
               else list(spec.equations))
    out, seen = [], set()
    for expr in sources:
        for node in _nodes(sp.sympify(expr)):
            if isinstance(node, sp.log):
                argument = node.args[0]
            elif isinstance(node, sp.Pow) and node.exp.is_number and not node.exp.is_integer:
                argument = node.base
            else:
                continue
            if not any(isinstance(a, sp.Indexed) and str(a.base.label) in unknown_names or
                       isinstance(a, sp.Symbol) and a.name in unknown_names for a in _nodes(argument)):
                continue
            if argument in seen or _never_negative(argument):
                continue
            seen.add(argument)
            out.append((argument, tuple(sorted(free_letters(argument), key=str))))
    return out


def schur_solve(system: IndexedSystem) -> list | None:
    """The KKT solve of an Argmin whose unknowns all have a diagonal Hessian D and whose only
    constraint is one scalar equality (LML's sum y = k), in closed form: with A the constraint's
    Jacobian row and the IFT's right-hand side (g_y per unknown: the loss's gradient; 0 for the
    multiplier, which the loss does not see),

        w_mu = (sum A D^-1 g_y) / (sum A^2 D^-1),    w_y = D^-1 (g_y - A w_mu),

    D^-1 simplified by sympy (LML: D = 1 / (y (1 - y)), so D^-1 = y (1 - y): the paper's eq. 19).
    The right-hand sides are the arrays `_g<column>` of the unknown columns. -> [(expression,
    letters)] per column, in column order, or None where the structure is not this one (the
    runtime's structured solve)."""
    if system.kind != "argmin" or system.redundant or system.auxiliary:
        return None
    unknown = [c for c, v in enumerate(system.columns) if v.kind == "unknown"]
    others = [c for c, v in enumerate(system.columns) if v.kind != "unknown"]
    if len(others) != 1 or system.columns[others[0]].kind != "multiplier" or system.columns[others[0]].array.dims:
        return None
    m = others[0]
    if (m, m) in system.blocks or not all(diagonal_unknown(system, c) for c in unknown):
        return None
    parts = {}
    for c in unknown:
        v = system.columns[c]
        letters = v.col_letters
        by_name = {}
        for t in system.blocks[(c, c)]:
            by_name.update({name: letters[k] for k, name in enumerate(t.rows)})
        diagonal = sum((t.coefficient.xreplace({sp.Idx(n, idx_size(l)): l for n, l in by_name.items()})
                        for t in system.blocks[(c, c)]), sp.Integer(0))
        row = sp.Integer(0)
        for t in system.blocks.get((m, c), ()):
            names = {name: letters[k] for k, name in enumerate(t.cols)}
            row += t.coefficient.xreplace({sp.Idx(n, idx_size(l)): l for n, l in names.items()})
        g = sp.IndexedBase(f"_g{c}", shape=v.array.dims)[letters] if letters else sp.Symbol(f"_g{c}")
        parts[c] = (sp.cancel(1 / diagonal), row, g, letters)
    numerator, schur = sp.Integer(0), sp.Integer(0)
    for c, (inverse, row, g, letters) in parts.items():
        numerator += _sum_over(row * inverse * g, letters)
        schur += _sum_over(row * row * inverse, letters)
    w_mu = numerator / schur
    out = [None] * len(system.columns)
    for c, (inverse, row, g, letters) in parts.items():
        out[c] = (inverse * (g - row * w_mu), letters)
    out[m] = (w_mu, ())
    return out


def closed_form_primal(system: IndexedSystem) -> dict | None:
    """An Argmin with equality constraints only, whose unknowns all have a diagonal Hessian:
    given the multipliers, each unknown's stationarity is one equation per entry in that entry
    alone. Where sympy solves it uniquely (LML: y = 1 / (exp(mu - x) + 1); OT: P = exp(-(M + mu
    + nu) / eps)), the forward is Newton on the multipliers alone (the dual), with every unknown
    in closed form and so always inside its domain: what the LML paper's bracketing and
    Sinkhorn-Newton do by hand. -> column -> expression over its row letters, or None."""
    if system.kind != "argmin" or any(v.kind == "inequality" for v in system.columns):
        return None
    if not any(v.kind == "multiplier" for v in system.columns):
        return None
    out = {}
    for c, v in enumerate(system.columns):
        if v.kind != "unknown":
            continue
        if not diagonal_unknown(system, c):
            return None
        entry = sp.Dummy("entry")
        equation = v.residual.xreplace({v.array.element(v.row_letters): entry})
        if any(isinstance(e, sp.Indexed) and str(e.base.label) == v.array.name for e in sp.preorder_traversal(equation)):
            return None
        try:
            solutions = sp.solve(equation, entry)
        except (NotImplementedError, ValueError, TypeError):
            return None
        real = [e for e in solutions if not e.has(sp.I) and not e.has(entry)]
        if len(real) != 1:
            return None
        out[c] = real[0]
    return out


def _redundant_families(spec, rows, unknowns) -> tuple:
    """Pairs of equality families whose sums over all their entries have the same derivative in
    every unknown (OT: sum_i (sum_j P_ij - r_i) and sum_j (sum_i P_ij - c_j)): the Jacobian
    rows are linearly dependent, and the second family's last entry is dropped."""
    if spec.kind != "argmin":
        return ()
    families = [(k, v) for k, v in enumerate(rows) if v.kind == "multiplier" and v.array.dims]
    out = []
    dropped = set()
    for a in range(len(families)):
        for b in range(a + 1, len(families)):
            ka, va = families[a]
            kb, vb = families[b]
            if kb in dropped:
                continue
            difference = _sum_over(va.residual, va.row_letters) - _sum_over(vb.residual, vb.row_letters)
            dependent = True
            for u in unknowns:
                probe = _letters(f"_q{u.name}{INDEX_SEPARATOR}", u.dims)
                if sp.simplify(derivative(difference, u.element(probe))) != 0:
                    dependent = False
                    break
            if dependent:
                dropped.add(kb)
                out.append(((ka, kb), f"the sums of equality families {ka - len(unknowns)} and {kb - len(unknowns)} "
                                f"agree: one constraint is dependent and dropped"))
    return tuple(out)
