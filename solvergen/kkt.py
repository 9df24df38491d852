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
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .declarative import Argmin, Implicit
from .problem import Problem


@dataclass(frozen=True)
class Function:
    """Outputs (flattened row-major when a matrix: `shape`) of inputs; `inputs` lists
    (argument name, its symbols) in call order."""

    name: str
    inputs: tuple[tuple[str, tuple[sp.Symbol, ...]], ...]
    outputs: tuple[sp.Expr, ...]
    shape: tuple[int, ...]
    doc: str


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

    f = spec.objective
    c = spec.equalities + spec.inequalities
    multipliers = _symbols("_m", len(c))
    gradient = tuple(sp.diff(f, v) for v in y)
    lagrangian_gradient = tuple(g + sum((mu * sp.diff(cj, v) for mu, cj in zip(multipliers, c)), sp.Integer(0))
                                for g, v in zip(gradient, y))
    hessian = tuple(sp.diff(lg, v) for lg in lagrangian_gradient for v in y)
    w = _symbols("_w", n + len(c))
    vjp = _vjp(lagrangian_gradient + c, w, a)
    functions = (
        Function("_objective", (("_y", y), ("_a", a)), (f,), (), "f(y, a): [..., N], [..., M] -> [...]."),
        Function("_gradient", (("_y", y), ("_a", a)), gradient, (n,), "df/dy: [..., N], [..., M] -> [..., N]."),
        Function("_constraints", (("_y", y), ("_a", a)), c, (len(c),),
                 "The equalities h, then the inequalities g (<= 0): [..., N], [..., M] -> [..., E + I]."),
        Function("_constraint_jacobian", (("_y", y), ("_a", a)), tuple(sp.diff(cj, v) for cj in c for v in y),
                 (len(c), n), "dc/dy: [..., N], [..., M] -> [..., E + I, N]."),
        Function("_lagrangian_hessian", (("_y", y), ("_a", a), ("_m", multipliers)), hessian, (n, n),
                 "d2L/dy2 of L = f + m . c: [..., N], [..., M], [..., E + I] -> [..., N, N]."),
        Function("_parameter_vjp", (("_y", y), ("_a", a), ("_m", multipliers), ("_w", w)), vjp, (m,),
                 "sum_n w_n d2L/dy_n da + sum_j w_(N+j) dc_j/da: [..., N], [..., M], [..., E + I], "
                 "[..., N + E + I] -> [..., M]."),
        init,
    )
    return DeclarativeSystem(spec, n, m, 0, len(spec.equalities), len(spec.inequalities), functions,
                             critical_points_problem(spec))
