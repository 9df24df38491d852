"""The compile pipeline: Problem -> polynomial system -> (linear elimination) -> algebra over Z_p
-> elimination template (and its sparse elimination plan) -> derivatives."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import SpecError
from .groebner import algebra, check_radical, random_instance
from .jacobians import Derivatives, derive
from .linear import LinearBlock, find_linear_block
from .polynomials import PolynomialSystem, build_system
from .problem import Problem
from .sparse_lu import SparseLU, template_sparse_lu
from .progress import Progress
from .template import (SearchBudget, SearchReport, Template, choose_template, sign_symmetry,
                       variable_orders, verify_template)


@dataclass(frozen=True)
class Elimination:
    """The template stage: the system whose coefficients fill the template, and the template."""

    problem: Problem
    system: PolynomialSystem
    num_solutions: int
    template: Template
    variable_order: tuple[int, ...]  # the grevlex variable order of the Groebner basis used
    sparse_lu: SparseLU | None  # the template's fixed-pivot elimination, where it pays (CPU forward)
    search: SearchReport  # what the template search tried


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


def eliminate(problem: Problem, system: PolynomialSystem, seed: int = 0,
              budget: SearchBudget | None = None, progress: Progress | None = None) -> Elimination:
    """Groebner basis, solution count and the smallest template found, checked twice."""
    progress = Progress() if progress is None else progress
    rng = random.Random(seed)
    with progress.stage("Groebner basis"):
        instance = random_instance(problem, system, rng)
        n = len(system.unknowns)
        ring = algebra(system, instance)
        check_radical(ring, rng)
        quotients = [ring.quotient(order) for order in variable_orders(n)]
    degrees = [system.degree(k) for k in range(system.num_equations)]
    with progress.stage("template search"):
        template, quotient, report = choose_template(
            instance, degrees, quotients, rng, sign_symmetry(system), budget, progress)

    # A second random instance must have the same algebra, and the template must reduce it too.
    with progress.stage("template check"):
        check = random_instance(problem, system, rng)
        other = algebra(system, check).quotient(quotient.order)
        if other.num_solutions != quotient.num_solutions or other.basis != quotient.basis:
            raise SpecError(
                "two random instances have different numbers of solutions "
                f"({quotient.num_solutions} and {other.num_solutions}); the parameters are not "
                "generic (give the problem a sampler of consistent instances)"
            )
        if not (verify_template(template, instance, quotient) and verify_template(template, check, other)):
            raise AssertionError("internal error: the template disagrees with Groebner normal forms")
        sparse_lu = template_sparse_lu(system, template, seed)
    return Elimination(problem, system, quotient.num_solutions, template, quotient.order, sparse_lu, report)


def compile_problem(problem: Problem, seed: int = 0, budget: SearchBudget | None = None,
                    progress: Progress | None = None) -> CompiledProblem:
    """Run every symbolic pass. Deterministic for a given problem, seed and work budget (see
    `SearchBudget`); `progress` (silent by default) is told each stage and search step."""
    progress = Progress() if progress is None else progress
    with progress.stage("polynomial system"):
        system = build_system(problem)
    with progress.stage("linear elimination"):
        linear = find_linear_block(problem, system, seed)
    if linear is None:
        elimination = eliminate(problem, system, seed, budget, progress)
    elif linear.reduced_problem is None:
        elimination = None
    else:
        reduced = linear.reduced_problem
        elimination = eliminate(reduced, build_system(reduced), seed, budget, progress)
    num_solutions = elimination.num_solutions if elimination else 1
    with progress.stage("derivatives"):
        derivatives = derive(system)
    return CompiledProblem(problem, system, derivatives, num_solutions, linear, elimination)
