"""`Argmin` and `Implicit`: declarative layers, defined by a problem instead of a formula.

    Argmin(name, unknowns, parameters, objective, equalities=(), inequalities=(), init=None, sampler=None)
        y(a) = argmin_y f(y, a) subject to h(y, a) = 0 and g(y, a) <= 0
    Implicit(name, unknowns, parameters, equations, init=None)
        y(a) solving F(y, a) = 0

Expressions may be any smooth sympy expression: polynomials, rational functions, powers with
real exponents, exp, log, sqrt, trigonometric and hyperbolic functions and their inverses, erf.
The flattened order of `unknowns` and `parameters` (matrices row-major) is the tensor layout of
the generated layer, as for `Problem`. What the compiler derives from them: solvergen/kkt.py.
"""
from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from .errors import SpecError
from . import indexed
from .problem import Declared, check_name, flatten_equations, flatten_symbols

# Functions the generated code evaluates (torch has each, elementwise) and differentiates.
SMOOTH_FUNCTIONS = (
    sp.exp, sp.log, sp.sin, sp.cos, sp.tan, sp.asin, sp.acos, sp.atan,
    sp.sinh, sp.cosh, sp.tanh, sp.asinh, sp.acosh, sp.atanh, sp.erf,
)
NON_SMOOTH = (sp.Abs, sp.Max, sp.Min, sp.sign, sp.floor, sp.ceiling, sp.Piecewise, sp.Heaviside,
              sp.re, sp.im, sp.arg, sp.frac, sp.Mod)


def check_smooth(expr: sp.Expr, unknowns, what: str) -> None:
    """Refuse, in one line, what the compiler cannot differentiate or print: non-smooth functions
    of the unknowns, undefined functions, other unsupported functions, booleans."""
    if not isinstance(expr, sp.Expr):
        raise SpecError(f"{what} is not a sympy expression: {expr}")
    unknown_set = set(unknowns)
    for node in sp.preorder_traversal(expr):
        if isinstance(node, NON_SMOOTH) and node.free_symbols & unknown_set:
            name = type(node).__name__
            raise SpecError(f"{what} uses {name}(...) of an unknown, which is not smooth: "
                            f"write a smooth form (e.g. sqrt(x**2 + eps**2) for Abs)")
        if isinstance(node, (sp.Abs, sp.sign)):  # of parameters: sympy differentiates these
            # through re(a) and im(a) unless a is real
            complex_ = sorted(str(v) for v in node.free_symbols if not v.is_real)
            if complex_:
                raise SpecError(f"{what} uses {type(node).__name__}(...) of the parameter(s) {', '.join(complex_)}, "
                                f"whose derivative sympy gives for real symbols only: declare them with real=True "
                                f"(sp.Symbol(\"{complex_[0]}\", real=True))")
        if isinstance(node, (sp.Piecewise, sp.frac, sp.Mod, sp.re, sp.im, sp.arg)):
            raise SpecError(f"{what} uses {type(node).__name__}(...), which solvergen does not support (of "
                            "parameters: Abs, sign, Max, Min, floor, ceiling and Heaviside are)")
        if isinstance(node, sp.core.function.AppliedUndef):
            raise SpecError(f"{what} uses the undefined function {node.func}")
        if isinstance(node, sp.Function) and not isinstance(node, SMOOTH_FUNCTIONS + NON_SMOOTH):
            raise SpecError(f"{what} uses {type(node).__name__}, which solvergen does not support "
                            f"(supported: {', '.join(f.__name__ for f in SMOOTH_FUNCTIONS)}, powers)")


def _check_symbols(expressions, declared, unknowns, role: str, needs_unknown: bool) -> None:
    for k, expr in enumerate(expressions):
        what = f"{role} {k}" if role != "objective" else "the objective"
        undeclared = expr.free_symbols - declared
        if undeclared:
            raise SpecError(f"{what} uses undeclared symbol(s) {', '.join(sorted(map(str, undeclared)))}")
        if needs_unknown and not expr.free_symbols & set(unknowns):
            raise SpecError(f"{what} ({expr}) does not involve any unknown")
        check_smooth(expr, unknowns, what)


def _inequalities(value) -> tuple[sp.Expr, ...]:
    """Inequalities as expressions g with g <= 0: an expression is taken as `expr <= 0`, and
    `a <= b`, `a < b` as a - b <= 0, `a >= b`, `a > b` as b - a <= 0."""
    out: list[sp.Expr] = []

    def visit(item):
        if isinstance(item, (sp.MatrixBase, list, tuple)):
            for entry in item:
                visit(entry)
        elif isinstance(item, (sp.LessThan, sp.StrictLessThan)):
            out.append(item.lhs - item.rhs)
        elif isinstance(item, (sp.GreaterThan, sp.StrictGreaterThan)):
            out.append(item.rhs - item.lhs)
        elif isinstance(item, (sp.Equality, sp.Unequality)):
            raise SpecError(f"inequality {item} is not an inequality: put equalities in `equalities=`")
        elif isinstance(item, sp.logic.boolalg.Boolean):
            raise SpecError(f"inequality {item} is not a relation sympy keeps (it evaluated to {item})")
        else:
            out.append(flatten_equations([item])[0])

    visit(value)
    return tuple(out)


def _equalities(value, role: str) -> tuple[sp.Expr, ...]:
    def visit(item):
        if isinstance(item, (sp.MatrixBase, list, tuple)):
            for entry in item:
                visit(entry)
        elif isinstance(item, sp.Rel) and not isinstance(item, sp.Equality):
            raise SpecError(f"{role} {item} is an inequality: put it in `inequalities=`")
        elif isinstance(item, sp.logic.boolalg.BooleanAtom):
            raise SpecError(f"{role} {item} evaluated to {item}: it involves no unknown")

    visit(value)
    return tuple(e for e in flatten_equations(value) if e != 0)


def _init(value, unknowns, parameters) -> tuple[sp.Expr, ...] | None:
    """The default start point: one expression in the parameters per unknown, or one for all."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, sp.MatrixBase)):
        entries = flatten_equations(value)
        if len(entries) != len(unknowns):
            raise SpecError(f"init has {len(entries)} entries for {len(unknowns)} unknowns "
                            "(give one expression per unknown, or one for all)")
    else:
        entries = flatten_equations([value]) * len(unknowns)
    for k, expr in enumerate(entries):
        extra = expr.free_symbols - set(parameters)
        if extra:
            raise SpecError(f"init entry {k} uses {', '.join(sorted(map(str, extra)))}: "
                            "it may use the parameters only")
        check_smooth(expr, (), f"init entry {k}")
    return tuple(sp.sympify(e) for e in entries)


def _check_start(spec, expressions) -> None:
    """Refuse, in one line, a default start point outside the domain of the expressions (log(0),
    1/0, ... at zeros or at `init=`): the local forward could not take a single step from it."""
    start = spec.init if spec.init is not None else (sp.Integer(0),) * len(spec.unknowns)
    values = dict(zip(spec.unknowns, start))
    for expr, what in expressions:
        value = expr.xreplace(values)
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            where = "the default start point y = 0 (no init= given)" if spec.init is None else "the start point init="
            raise SpecError(f"{where} is outside the domain of {what}: it evaluates to {value} there; "
                            "give init= a point inside the domain")


def _indexed_init(value):
    """A size-generic spec's init: one entry per declared unknown (None: zeros)."""
    if value is None:
        return None
    entries = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(None if e is None else sp.sympify(e) for e in entries)


class _Declarative(Declared):
    """What `Argmin` and `Implicit` share: name, unknowns, parameters, start point. A spec that
    declares any array (sympy IndexedBase) is size-generic: solvergen/indexed.py."""

    is_indexed = False

    def _declare(self, name, unknowns, parameters):
        check_name(name)
        self.name = name
        if indexed.is_indexed_declaration(unknowns) or indexed.is_indexed_declaration(parameters):
            self.is_indexed = True
            self.unknown_arrays = indexed.declare_arrays(unknowns, "unknowns")
            self.parameter_arrays = indexed.declare_arrays(parameters, "parameters")
            both = {a.name for a in self.unknown_arrays} & {a.name for a in self.parameter_arrays}
            if both:
                raise SpecError(f"{', '.join(sorted(both))} is declared both as unknown and as parameter")
            self.unknowns = tuple(a.symbol for a in self.unknown_arrays)
            self.parameters = tuple(a.symbol for a in self.parameter_arrays)
            return
        self.unknowns = flatten_symbols(unknowns, "unknowns")
        self.parameters = flatten_symbols(parameters, "parameters")
        both = set(self.unknowns) & set(self.parameters)
        if both:
            raise SpecError(f"symbol {', '.join(sorted(map(str, both)))} is declared both as unknown and as parameter")


class Argmin(_Declarative):
    """A layer y(a) = argmin f(y, a) subject to equalities h(y, a) = 0 and inequalities
    g(y, a) <= 0 (module docstring).

    Args:
        objective: a scalar expression.
        equalities: expressions that must be 0, or `sp.Eq`s (lists or matrices of them).
        inequalities: expressions that must be <= 0, or relations `<=`, `>=` (`<`, `>` are
            taken as `<=`, `>=`).
        init: the default start point of the local forward: one expression in the parameters
            per unknown (a list in the layout of `unknowns`) or one for all; zeros without it.
        sampler: optional `sampler(rng) -> parameter values` for checks and benchmarks.
    """

    kind = "argmin"

    def __init__(self, name, unknowns, parameters, objective, equalities=(), inequalities=(), init=None,
                 sampler: Callable | None = None):
        self._declare(name, unknowns, parameters)
        if isinstance(objective, sp.MatrixBase):
            if objective.shape != (1, 1):
                raise SpecError(f"the objective must be a scalar expression, got a {objective.rows}x{objective.cols} Matrix")
            objective = objective[0, 0]
        if isinstance(objective, (list, tuple)):
            raise SpecError(f"the objective must be a scalar expression, got a {type(objective).__name__} of {len(objective)}")
        if isinstance(objective, sp.Rel):
            raise SpecError("the objective must be a scalar expression, got a relation")
        self.objective = flatten_equations([objective])[0]
        self.equalities = _equalities(equalities, "equality")
        self.inequalities = _inequalities(inequalities)
        if sampler is not None and not callable(sampler):
            raise SpecError("sampler must be callable: sampler(rng) -> parameter values")
        self.sampler = sampler
        if self.is_indexed:
            self.init = _indexed_init(init)
            indexed.validate(self)
            return
        declared = set(self.unknowns) | set(self.parameters)
        _check_symbols([self.objective], declared, self.unknowns, "objective", needs_unknown=True)
        _check_symbols(self.equalities, declared, self.unknowns, "equality", needs_unknown=True)
        _check_symbols(self.inequalities, declared, self.unknowns, "inequality", needs_unknown=True)
        self.init = _init(init, self.unknowns, self.parameters)
        _check_start(self, [(self.objective, "the objective")]
                     + [(e, f"equality {k}") for k, e in enumerate(self.equalities)]
                     + [(e, f"inequality {k}") for k, e in enumerate(self.inequalities)])

    def __repr__(self) -> str:
        return (f"Argmin({self.name!r}, {len(self.unknowns)} unknowns, {len(self.parameters)} parameters, "
                f"{len(self.equalities)} equalities, {len(self.inequalities)} inequalities)")


class Implicit(_Declarative):
    """A layer y(a) defined by F(y, a) = 0 (module docstring): as many equations as unknowns,
    or more for a consistent overdetermined system. `init` as for `Argmin`."""

    kind = "implicit"

    def __init__(self, name, unknowns, parameters, equations, init=None):
        self._declare(name, unknowns, parameters)
        self.equations = _equalities(equations, "equation")
        if self.is_indexed:
            self.init = _indexed_init(init)
            indexed.validate(self)
            return
        if len(self.equations) < len(self.unknowns):
            raise SpecError(f"{len(self.equations)} equation(s) for {len(self.unknowns)} unknowns: "
                            "an Implicit layer needs at least as many equations as unknowns")
        declared = set(self.unknowns) | set(self.parameters)
        _check_symbols(self.equations, declared, self.unknowns, "equation", needs_unknown=True)
        used = set().union(*(e.free_symbols for e in self.equations))
        missing = [s for s in self.unknowns if s not in used]
        if missing:
            raise SpecError(f"unknown {missing[0]} appears in no equation")
        self.init = _init(init, self.unknowns, self.parameters)
        _check_start(self, [(e, f"equation {k}") for k, e in enumerate(self.equations)])

    def __repr__(self) -> str:
        return (f"Implicit({self.name!r}, {len(self.unknowns)} unknowns, {len(self.parameters)} parameters, "
                f"{len(self.equations)} equations)")
