"""The compile pipeline: Problem -> polynomial system -> algebra over Z_p -> template -> derivatives."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import SpecError
from .groebner import analyze, random_instance
from .jacobians import Derivatives, derive
from .polynomials import PolynomialSystem, build_system
from .problem import Problem
from .template import Template, choose_template, variable_orders, verify_template


@dataclass(frozen=True)
class CompiledProblem:
    problem: Problem
    system: PolynomialSystem
    num_solutions: int
    template: Template
    variable_order: tuple[int, ...]  # the grevlex variable order whose basis the template uses
    derivatives: Derivatives


def compile_problem(problem: Problem, seed: int = 0) -> CompiledProblem:
    """Run every symbolic pass. Deterministic for a given problem and seed."""
    system = build_system(problem)
    rng = random.Random(seed)
    instance = random_instance(problem, system, rng)
    n = len(system.unknowns)
    quotients = [analyze(system, instance, order) for order in variable_orders(n)]
    degrees = [system.degree(k) for k in range(system.num_equations)]
    template, quotient = choose_template(instance, degrees, quotients, rng)

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
    return CompiledProblem(
        problem, system, quotient.num_solutions, template, quotient.order, derive(system)
    )
