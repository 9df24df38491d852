"""The compile pipeline: Problem -> polynomial system -> (linear elimination) -> algebra over Z_p
-> elimination template (and its sparse elimination plan) -> derivatives."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import SpecError
from .groebner import analyze, random_instance
from .jacobians import Derivatives, derive
from .linear import LinearBlock, find_linear_block
from .polynomials import PolynomialSystem, build_system
from .problem import Problem
from .sparse_lu import SparseLU, template_sparse_lu
from .template import Template, choose_template, sign_parities, variable_orders, verify_template


@dataclass(frozen=True)
class Elimination:
    """The template stage: the system whose coefficients fill the template, and the template."""

    problem: Problem
    system: PolynomialSystem
    num_solutions: int
    template: Template
    variable_order: tuple[int, ...]  # the grevlex variable order of the Groebner basis used
    sparse_lu: SparseLU | None  # the template's fixed-pivot elimination, where it pays (CPU forward)


@dataclass(frozen=True)
class CompiledProblem:
    problem: Problem
    system: PolynomialSystem  # the declared equations: Newton, validity and the IFT use them
    derivatives: Derivatives
    num_solutions: int
    linear: LinearBlock | None  # the linear-elimination pass, when the system has linear equations
    elimination: Elimination | None  # None when the linear pass leaves no unknowns

    @property
    def template_shape(self) -> tuple[int, int]:
        return self.elimination.template.shape if self.elimination else (0, 0)

    def describe(self) -> str:
        parts = [f"{self.num_solutions} solution{'s' if self.num_solutions != 1 else ''}"]
        if self.linear is not None:
            parts.append(self.linear.describe())
        if self.elimination is not None:
            template = self.elimination.template
            rows, cols = template.shape
            parts.append(f"template {rows}x{cols} (action {template.action_name(self.elimination.system.unknowns)})")
        return ", ".join(parts)


def eliminate(problem: Problem, system: PolynomialSystem, seed: int = 0) -> Elimination:
    """Groebner basis, solution count and the smallest template found, checked twice."""
    rng = random.Random(seed)
    instance = random_instance(problem, system, rng)
    n = len(system.unknowns)
    quotients = [analyze(system, instance, order) for order in variable_orders(n)]
    degrees = [system.degree(k) for k in range(system.num_equations)]
    template, quotient = choose_template(instance, degrees, quotients, rng, sign_parities(system))

    # A second random instance must have the same algebra, and the template must reduce it too.
    check = random_instance(problem, system, rng)
    other = analyze(system, check, quotient.order)
    if other.num_solutions != quotient.num_solutions or other.basis != quotient.basis:
        raise SpecError(
            "two random instances have different numbers of solutions "
            f"({quotient.num_solutions} and {other.num_solutions}); the parameters are not generic "
            "(give the problem a sampler of consistent instances)"
        )
    if not (verify_template(template, instance, quotient) and verify_template(template, check, other)):
        raise AssertionError("internal error: the template disagrees with Groebner normal forms")
    sparse_lu = template_sparse_lu(system, template, seed)
    return Elimination(problem, system, quotient.num_solutions, template, quotient.order, sparse_lu)


def compile_problem(problem: Problem, seed: int = 0) -> CompiledProblem:
    """Run every symbolic pass. Deterministic for a given problem and seed."""
    system = build_system(problem)
    linear = find_linear_block(problem, system, seed)
    if linear is None:
        elimination = eliminate(problem, system, seed)
    elif linear.reduced_problem is None:
        elimination = None
    else:
        elimination = eliminate(linear.reduced_problem, build_system(linear.reduced_problem), seed)
    num_solutions = elimination.num_solutions if elimination else 1
    return CompiledProblem(problem, system, derive(system), num_solutions, linear, elimination)
