"""The symbolic derivatives of a declarative layer (solvergen/declarative.py).

For `Implicit` (F(y, a) = 0, K equations in N unknowns):
    residual F, its Jacobian dF/dy (K x N), and the parameter VJP sum_k w_k dF_k/da_m.
For `Argmin` (min f s.t. h = 0, g <= 0), with the constraints c = (h, g) (E + I of them) and
their multipliers m, the Lagrangian L = f + m . c:
    objective f, gradient df/dy, constraints c and their Jacobian dc/dy ((E + I) x N), the
    Hessian of the Lagrangian d2L/dy2 (N x N), and the parameter VJP of the KKT equations
    (stationarity dL/dy = 0 and c = 0) with weights w = (w_y, w_c):
    sum_n w_y,n d2L/dy_n da_m + sum_j w_c,j dc_j/da_m.
The VJPs are symbolic: the generated code computes them directly, and no dense d(.)/da matrix
is ever formed. Everything is a `Function`: outputs over named inputs, printed after CSE.
Repeated terms of an Argmin's objective (a sum over data points) are derived once, as lanes
(solvergen/lanes.py): the objective, gradient, Hessian and VJP then evaluate them vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .declarative import Argmin, Implicit
from .lanes import LaneGroup, find_lanes
from .problem import Problem


@dataclass(frozen=True)
class Function:
    """Outputs (flattened row-major when a matrix: `shape`) of inputs; `inputs` lists
    (argument name, its symbols) in call order.

    With lane groups (solvergen/lanes.py), output i is `outputs[i]` plus, for each group g, the
    sum over its lanes of `lane_sums[i][g]`; and where `lane_values` is given (the parameter
    VJP), `lane_values[g][p]` is, lane by lane, the output at the parameters of placeholder p
    (those outputs are 0 in `outputs`)."""

    name: str
    inputs: tuple[tuple[str, tuple[sp.Symbol, ...]], ...]
    outputs: tuple[sp.Expr, ...]
    shape: tuple[int, ...]
    doc: str
    lanes: tuple[LaneGroup, ...] = ()
    lane_sums: tuple[tuple[sp.Expr, ...], ...] = ()
    lane_values: tuple[tuple[sp.Expr, ...], ...] = ()


@dataclass(frozen=True)
class DeclarativeSystem:
    """What the generated module of a declarative layer prints: its functions and sizes."""

    spec: Argmin | Implicit
    num_unknowns: int
    num_parameters: int
    num_equations: int  # Implicit: K; Argmin: 0
    num_equalities: int  # Argmin: E
    num_inequalities: int  # Argmin: I
    functions: tuple[Function, ...]
    # The global forward's system (module docstring of runtime/declarative.py): an Argmin's
    # critical points (unknowns y, then the equality multipliers) or an Implicit's solutions,
    # for a polynomial spec without inequalities; None otherwise.
    critical_points: Problem | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind


def _symbols(prefix: str, count: int) -> tuple[sp.Symbol, ...]:
    return tuple(sp.Symbol(f"{prefix}{k}") for k in range(count))


TIDY_FACTOR_MAX_OPS = 400  # larger lane derivatives skip cancel/factor (polynomial expansion)


def _inner_sums(expression: sp.Expr):
    """The innermost sums of `expression` (the residuals r = y - k x - b of a lane term),
    replaced by fresh symbols up to sign: -> (expression in the symbols, symbol -> sum).
    sympy writes a derivative's r and -r as two different sums (-b - k x + y and b + k x - y),
    so r (-r) + r^2 never cancels; over the symbols it does."""
    inner = sorted({node for node in sp.preorder_traversal(expression) if isinstance(node, sp.Add)
                    and not any(isinstance(sub, sp.Add) for arg in node.args for sub in sp.preorder_traversal(arg))},
                   key=sp.default_sort_key)
    taken = {str(symbol) for symbol in expression.free_symbols}
    mapping, back = {}, {}
    for node in inner:
        key = -node if node.could_extract_minus_sign() else node
        if key in mapping:
            continue
        name = f"_inner{len(back)}"
        while name in taken:
            name = "_" + name
        symbol = sp.Symbol(name)
        mapping[key], mapping[-key], back[symbol] = symbol, -symbol, key
    return expression.xreplace(mapping), back


def _tidy(expression: sp.Expr) -> sp.Expr:
    """A lane term's derivative with its innermost sums as symbols (`_inner_sums`), over one
    denominator with common factors pulled out, or cancelled, or factored: whichever has the
    fewest operations, if no more than the derivative as sympy gives it (each sum then has
    one sign throughout, which the printer's CSE shares). robust_line_fit's Hessian
    entry x^2/s - x^2 r^2/s^3 becomes x^2/s^3 (s = sqrt(1 + r^2)); its parameter VJP entries
    go from 29 to 14 operations. Lane terms are one data point's expression, so this stays
    cheap."""
    over_symbols, back = _inner_sums(expression)
    candidates = [sp.factor_terms(sp.together(over_symbols))]
    if sp.count_ops(over_symbols) <= TIDY_FACTOR_MAX_OPS:
        candidates += [sp.factor_terms(sp.cancel(over_symbols)), sp.factor(over_symbols)]
    best = min(candidates, key=sp.count_ops).xreplace(back)
    return best if sp.count_ops(best) <= sp.count_ops(expression) else expression


def _vjp(expressions, weights, parameters) -> tuple[sp.Expr, ...]:
    """sum_k w_k d e_k / d a_m for every parameter a_m."""
    return tuple(sum((w * sp.diff(e, p) for w, e in zip(weights, expressions)), sp.Integer(0)) for p in parameters)


def is_polynomial(expressions, unknowns) -> bool:
    return all(e.is_polynomial(*unknowns) for e in expressions)


def critical_points_problem(spec: Argmin | Implicit) -> Problem | None:
    """The polynomial system of the global forward, or None when the spec is not polynomial in
    its unknowns or has inequalities: for an Argmin, stationarity df/dy + sum_j m_j dh_j/dy = 0
    and h = 0 in (y, m); for an Implicit, its equations."""
    y = spec.unknowns
    if isinstance(spec, Implicit):
        if not is_polynomial(spec.equations, y):
            return None
        return Problem(f"{spec.name}_solutions", y, spec.parameters, spec.equations)
    if spec.inequalities or not is_polynomial((spec.objective,) + spec.equalities, y):
        return None
    multipliers = _symbols("_m", len(spec.equalities))
    stationarity = [sp.diff(spec.objective, v) + sum((m * sp.diff(h, v) for m, h in zip(multipliers, spec.equalities)),
                                                     sp.Integer(0)) for v in y]
    return Problem(f"{spec.name}_critical_points", list(y) + list(multipliers), spec.parameters,
                   stationarity + list(spec.equalities))


def derive(spec: Argmin | Implicit) -> DeclarativeSystem:
    y, a = spec.unknowns, spec.parameters
    n, m = len(y), len(a)
    start = spec.init if spec.init is not None else (sp.Integer(0),) * n
    init = Function("_init", (("_a", a),), start, (n,), "The default start point: [..., M] -> [..., N].")
    if isinstance(spec, Implicit):
        F = spec.equations
        k = len(F)
        w = _symbols("_w", k)
        functions = (
            Function("_residual", (("_y", y), ("_a", a)), F, (k,), "F(y, a): [..., N], [..., M] -> [..., K]."),
            Function("_jacobian", (("_y", y), ("_a", a)), tuple(sp.diff(f, v) for f in F for v in y), (k, n),
                     "dF/dy: [..., N], [..., M] -> [..., K, N]."),
            Function("_parameter_vjp", (("_y", y), ("_a", a), ("_w", w)), _vjp(F, w, a), (m,),
                     "sum_k w_k dF_k/da_m: [..., N], [..., M], [..., K] -> [..., M]."),
            init,
        )
        return DeclarativeSystem(spec, n, m, k, 0, 0, functions, critical_points_problem(spec))

    c = spec.equalities + spec.inequalities
    f, lanes = find_lanes(spec.objective, a, elsewhere=c)  # f: the objective without its lane terms
    multipliers = _symbols("_m", len(c))
    gradient = tuple(sp.diff(f, v) for v in y)
    lagrangian_gradient = tuple(g + sum((mu * sp.diff(cj, v) for mu, cj in zip(multipliers, c)), sp.Integer(0))
                                for g, v in zip(gradient, y))
    hessian = tuple(sp.diff(lg, v) for lg in lagrangian_gradient for v in y)
    w = _symbols("_w", n + len(c))
    vjp = _vjp(lagrangian_gradient + c, w, a)
    # The lane terms' parts: the derivatives of one term, per group.
    lane_gradients = [tuple(_tidy(sp.diff(group.term, v)) for v in y) for group in lanes]
    lane_stationarity_vjp = [sum((wn * gn for wn, gn in zip(w, grads)), sp.Integer(0)) for grads in lane_gradients]

    def per_output(values):  # [group][output] -> [output][group]
        return tuple(zip(*values)) if lanes else ()

    lane_vjp = per_output([tuple(_tidy(sp.diff(e, p)) for p in a) for e in lane_stationarity_vjp])
    functions = (
        Function("_objective", (("_y", y), ("_a", a)), (f,), (), "f(y, a): [..., N], [..., M] -> [...].",
                 lanes, per_output([(group.term,) for group in lanes])),
        Function("_gradient", (("_y", y), ("_a", a)), gradient, (n,), "df/dy: [..., N], [..., M] -> [..., N].",
                 lanes, per_output(lane_gradients)),
        Function("_constraints", (("_y", y), ("_a", a)), c, (len(c),),
                 "The equalities h, then the inequalities g (<= 0): [..., N], [..., M] -> [..., E + I]."),
        Function("_constraint_jacobian", (("_y", y), ("_a", a)), tuple(sp.diff(cj, v) for cj in c for v in y),
                 (len(c), n), "dc/dy: [..., N], [..., M] -> [..., E + I, N]."),
        Function("_lagrangian_hessian", (("_y", y), ("_a", a), ("_m", multipliers)), hessian, (n, n),
                 "d2L/dy2 of L = f + m . c: [..., N], [..., M], [..., E + I] -> [..., N, N].",
                 lanes, per_output([tuple(_tidy(sp.diff(g, v)) for g in grads for v in y) for grads in lane_gradients])),
        Function("_parameter_vjp", (("_y", y), ("_a", a), ("_m", multipliers), ("_w", w)), vjp, (m,),
                 "sum_n w_n d2L/dy_n da + sum_j w_(N+j) dc_j/da: [..., N], [..., M], [..., E + I], "
                 "[..., N + E + I] -> [..., M].",
                 lanes, lane_vjp, tuple(tuple(_tidy(sp.diff(e, p)) for p in group.placeholders)
                                        for group, e in zip(lanes, lane_stationarity_vjp))),
        init,
    )
    return DeclarativeSystem(spec, n, m, 0, len(spec.equalities), len(spec.inequalities), functions,
                             critical_points_problem(spec))
