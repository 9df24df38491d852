"""`Problem`: what a spec file declares, checked for the mistakes a user can make.

A problem is a list of polynomial equations h_k(x, a) = 0 in unknowns x, with coefficients
polynomial or rational in parameters a. The flattened order of `unknowns` and `parameters`
(matrices row-major) is the tensor layout of the generated solver.
"""
from __future__ import annotations

import keyword
from collections.abc import Callable

import sympy as sp

from .errors import SpecError


def flatten_symbols(value, role: str) -> tuple[sp.Symbol, ...]:
    """Flatten a Symbol, a sympy Matrix of Symbols, or a (nested) list mixing both."""
    out: list[sp.Symbol] = []

    def visit(item):
        if isinstance(item, sp.Symbol):
            out.append(item)
        elif isinstance(item, sp.MatrixBase):
            for entry in item:  # row-major
                visit(entry)
        elif isinstance(item, (list, tuple)):
            for entry in item:
                visit(entry)
        else:
            raise SpecError(f"{role} must be sympy Symbols or Matrices of Symbols, got {item!r}")

    visit(value)
    if not out:
        raise SpecError(f"no {role} declared")
    seen: set[sp.Symbol] = set()
    for symbol in out:
        if symbol in seen:
            raise SpecError(f"{role[:-1]} {symbol} is declared twice")
        seen.add(symbol)
    return tuple(out)


def flatten_equations(value) -> tuple[sp.Expr, ...]:
    """Flatten expressions, `Eq`s and matrices of them into a tuple of expressions `lhs - rhs`."""
    out: list[sp.Expr] = []

    def visit(item):
        if isinstance(item, sp.MatrixBase):
            for entry in item:
                visit(entry)
        elif isinstance(item, (list, tuple)):
            for entry in item:
                visit(entry)
        elif isinstance(item, sp.Equality):
            out.append(sp.sympify(item.lhs - item.rhs))
        else:
            try:
                expr = sp.sympify(item, strict=True)
            except (sp.SympifyError, TypeError):
                raise SpecError(f"equation {item!r} is not a sympy expression") from None
            if not isinstance(expr, sp.Expr):
                raise SpecError(f"equation {item!r} is not a sympy expression")
            out.append(expr)

    visit(value)
    return tuple(out)


class Declared:
    """What every spec kind (Problem, Argmin, Implicit) has: its unknowns and parameters, flattened."""

    unknowns: tuple[sp.Symbol, ...]
    parameters: tuple[sp.Symbol, ...]

    @property
    def unknown_names(self) -> tuple[str, ...]:
        return tuple(str(s) for s in self.unknowns)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(str(s) for s in self.parameters)


def check_name(name) -> None:
    """A spec's name names the generated file and class: a Python identifier."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise SpecError(f"problem name {name!r} is not a Python identifier")


class Problem(Declared):
    """A system of polynomial equations to compile into a batched, differentiable solver.

    Args:
        name: a Python identifier; names the generated file and class.
        unknowns: Symbols / Matrices of Symbols (or lists mixing them) solved for.
        parameters: Symbols / Matrices of Symbols given at run time, one tensor column each.
        equations: expressions (or `Eq`s, or matrices of them) that vanish at the solutions;
            polynomial in the unknowns, polynomial or rational in the parameters. More
            equations than unknowns is fine when they are consistent for generic parameters.
        sampler: optional `sampler(rng) -> parameter values`, or `-> (parameter values,
            unknown values)`: random parameters for which the system has solutions, with one
            solution when it returns a pair (the ground truth that `solvergen check` measures
            errors against). Needed when generic parameters make the system inconsistent (e.g.
            all six distances of P4Pf): the compiler then draws its random instances from it.
            `rng` is a `random.Random`; values may be ints, Fractions or sympy Rationals (the
            compiler uses them exactly, over a prime field).
    """

    def __init__(
        self,
        name: str,
        unknowns,
        parameters,
        equations,
        sampler: Callable | None = None,
    ):
        check_name(name)
        self.name = name
        self.unknowns = flatten_symbols(unknowns, "unknowns")
        self.parameters = flatten_symbols(parameters, "parameters")
        both = set(self.unknowns) & set(self.parameters)
        if both:
            names = ", ".join(sorted(str(s) for s in both))
            raise SpecError(f"symbol {names} is declared both as unknown and as parameter")
        eqs = flatten_equations(equations)
        eqs = tuple(sp.nsimplify(e, rational=True) if e.has(sp.Float) else e for e in eqs)
        self.equations = tuple(e for e in eqs if e != 0)
        if not self.equations:
            raise SpecError("no equations")
        if sampler is not None and not callable(sampler):
            raise SpecError("sampler must be callable: sampler(rng) -> parameter values")
        self.sampler = sampler
        self._check_symbols()

    def _check_symbols(self) -> None:
        declared = set(self.unknowns) | set(self.parameters)
        used: set[sp.Symbol] = set()
        for k, eq in enumerate(self.equations):
            free = eq.free_symbols
            undeclared = free - declared
            if undeclared:
                names = ", ".join(sorted(str(s) for s in undeclared))
                raise SpecError(f"equation {k} uses undeclared symbol(s) {names}")
            used |= free
        missing = [s for s in self.unknowns if s not in used]
        if missing:
            raise SpecError(f"unknown {missing[0]} appears in no equation")

    def sample(self, rng) -> tuple[list, list | None]:
        """One draw of the sampler: (parameter values, unknown values or None)."""
        drawn = self.sampler(rng)
        if (isinstance(drawn, tuple) and len(drawn) == 2 and all(hasattr(part, "__len__") for part in drawn)
                and len(drawn[0]) == len(self.parameters) and len(drawn[1]) == len(self.unknowns)):
            return list(drawn[0]), list(drawn[1])
        return list(drawn), None

    def sampled_parameters(self, rng) -> list:
        return self.sample(rng)[0]

    def __repr__(self) -> str:
        return (
            f"Problem({self.name!r}, {len(self.unknowns)} unknowns, "
            f"{len(self.parameters)} parameters, {len(self.equations)} equations)"
        )
