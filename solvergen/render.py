"""Render a compiled problem into a Python module: its printed functions and its plan.

The compiler's results become `solvergen.runtime` plan objects here (`build_plan_parts`); a
generated module writes them as Python literals (`literal`) next to its printed functions, and
the runtime does the rest. The docstring is written from the same data (`docstring`).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import replace
from pathlib import Path

import jinja2
import sympy as sp

from . import __version__
from .compiler import CompiledProblem, Elimination
from .jacobians import EvaluationTables, evaluation_tables
from .linear import LinearBlock
from .monomials import multiply
from .polynomials import PolynomialSystem
from .printer import identifier, print_program, print_with_cse, wrap_assignment, wrap_expression
from .runtime import plan as rt
from .sparse_lu import SparseLU
from .structured import coefficient_program
from .template import read_monomials, template_entries

RESERVED = {"torch", "runtime", "_a", "_p", "_x", "_w", "_ones", "_zeros"}
WIDTH = 100  # columns of generated code


def templates_dir() -> Path:
    """templates/ of a source checkout, or the copy installed inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "templates", here / "templates"):
        if (candidate / "solver.py.jinja").is_file():
            return candidate
    raise FileNotFoundError("solvergen templates not found")


# -- Python literals of plan data ------------------------------------------------------------


class Name(str):
    """A name defined in the generated module, written as is (a function, a constant)."""


def _tuple_literal(values, indent: int) -> str:
    """A tuple of plain values (or of tuples of them) at column `indent`, wrapped at WIDTH
    columns: numbers filled into lines, inner tuples too long for a line one per line."""
    items = [repr(tuple(v)) if isinstance(v, (tuple, list)) else repr(v) for v in values]
    one_line = "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if indent + len(one_line) <= WIDTH - 2:
        return one_line
    pad = " " * (indent + 4)
    if any(isinstance(v, (tuple, list)) and len(pad) + len(item) + 1 > WIDTH for v, item in zip(values, items)):
        inner = [_tuple_literal(v, indent + 4) if isinstance(v, (tuple, list)) else repr(v) for v in values]
        return "(\n" + "".join(f"{pad}{item},\n" for item in inner) + " " * indent + ")"
    lines, current = [], ""
    for item in items:
        if current and len(pad) + len(current) + len(item) + 1 > WIDTH:
            lines.append(pad + current.rstrip())
            current = ""
        current += item + ", "
    lines.append(pad + current.rstrip())
    return "(\n" + "\n".join(lines) + "\n" + " " * indent + ")"


def literal(value, indent: int = 0) -> str:
    """Python source for `value` at column `indent`: runtime plan objects as `runtime.Class(...)`
    calls (fields equal to their defaults left out), tuples wrapped, `Name`s bare."""
    if isinstance(value, Name):
        return str(value)
    if dataclasses.is_dataclass(value):
        fields = []
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            item = getattr(value, f.name)
            if f.default is not dataclasses.MISSING and item == f.default:
                continue
            fields.append(f"{f.name}={literal(item, indent + 4)}")
        one_line = f"runtime.{type(value).__name__}(" + ", ".join(fields) + ")"
        if indent + len(one_line) <= WIDTH - 2 and "\n" not in one_line:
            return one_line
        pad = " " * (indent + 4)
        body = "".join(f"{pad}{field},\n" for field in fields)
        return f"runtime.{type(value).__name__}(\n{body}{' ' * indent})"
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        pad = " " * (indent + 4)
        return "(\n" + "".join(f"{pad}{literal(v, indent + 4)},\n" for v in value) + " " * indent + ")"
    if isinstance(value, (tuple, list)):
        return _tuple_literal(value, indent)
    return repr(value)


# -- Printed functions -----------------------------------------------------------------------


def class_name(problem_name: str) -> str:
    parts = [p for p in problem_name.split("_") if p]
    return "".join(p[:1].upper() + p[1:] for p in parts) + "Solver"


def _unpack(names: list[str], source: str) -> list[str]:
    """Unpack the last axis of `source` into names, as contiguous tensors (elementwise torch ops
    on contiguous memory are about twice as fast as on strided columns)."""
    if not names:
        return []
    target = ", ".join(names) + ("," if len(names) == 1 else "")
    unbind = f"{source}.movedim(-1, 0).contiguous().unbind(0)"
    line = f"{target} = {unbind}"
    if len(line) <= 96:
        return [line]
    out, current = ["("], ""
    for n in names:
        if len(current) + len(n) + 2 > 88:
            out.append("    " + current.rstrip())
            current = ""
        current += n + ", "
    out.append("    " + current.rstrip())
    out.append(f") = {unbind}")
    return out


def _code(outputs, names, prefix, assignments=None):
    """Print straight-line code (CSE'd here unless `assignments` are given). Constant outputs
    become `_ones * value` (`_zeros` for 0) so that every output is a tensor."""
    if assignments is None:
        lines, printed = print_with_cse(list(outputs), names, prefix)
    else:
        lines, printed = print_program(list(assignments), list(outputs), names)
    body = []
    for line in lines:
        lhs, rhs = line.split(" = ", 1)
        body.extend(segment[4:] for segment in wrap_assignment(lhs, rhs, 4))
    results = []
    for expr, text in zip(outputs, printed):
        if expr.is_Number:
            text = "_zeros" if expr == 0 else "_ones" if expr == 1 else f"_ones * {text}"
        wrapped = wrap_expression(text, 12)
        results.append("\n".join([wrapped[0][12:]] + wrapped[1:]))
    return body, results


def _operations(assignments, outputs) -> int:
    return sum(sp.count_ops(e) for _, e in assignments) + sum(sp.count_ops(e) for e in outputs)


def _coefficient_code(system: PolynomialSystem, names, source: str):
    """The straight-line function c(params) of a system's coefficients: the expanded
    coefficients after cse, or the program along the equations as written
    (`structured.coefficient_program`), whichever has fewer operations. (The runtime derives
    its level-wise form for small batches from the printed function.)"""
    exprs = [c.expr() for c in system.coefficients]
    expanded = sp.cse(exprs, symbols=sp.numbered_symbols("_t"))
    structured = coefficient_program(system, "_t")
    assignments, outputs = (
        structured if structured is not None and _operations(*structured) < _operations(*expanded) else expanded
    )
    lines, printed = _code(outputs, names, "_t", assignments)
    unpack = _unpack([names[s] if any(e.has(s) for e in exprs) else "_" for s in system.parameters], source)
    if any(e.is_Number for e in exprs):
        unpack.append(f"_ones = {source}.new_ones({source}.shape[:-1])")
    return dict(unpack=unpack, lines=lines, outputs=printed, count=len(exprs))


def _vjp_code(compiled: CompiledProblem, names) -> dict:
    system, derivatives = compiled.system, compiled.derivatives
    lines, outputs = _code(derivatives.parameter_vjp, names, "", derivatives.vjp_assignments)
    used = set().union(
        *(e.free_symbols for e in derivatives.parameter_vjp),
        *(e.free_symbols for _, e in derivatives.vjp_assignments),
    )
    unpack = (
        _unpack([names[s] if s in used else "_" for s in system.unknowns], "_x")
        + _unpack([names[s] if s in used else "_" for s in system.parameters], "_a")
        + _unpack([names[w] if w in used else "_" for w in derivatives.weights], "_w")
    )
    if any(e == 0 for e in derivatives.parameter_vjp):
        unpack.append("_zeros = _w.new_zeros(torch.broadcast_shapes(_x.shape[:-1], _a.shape[:-1], _w.shape[:-1]))")
    return dict(unpack=unpack, lines=lines, outputs=outputs)


# -- Plan data -------------------------------------------------------------------------------


def _equations_plan(tables: EvaluationTables) -> rt.Equations:
    return rt.Equations(
        unknowns=tables.num_unknowns,
        equations=tables.num_equations,
        levels=tables.levels,
        term_equation=tables.term_equation,
        term_monomial=tables.term_monomial,
        derivative_position=tables.derivative_position,
        derivative_coefficient=tables.derivative_coefficient,
        derivative_factor=tables.derivative_factor,
        derivative_monomial=tables.derivative_monomial,
        constants=tables.constants,
    )


def _sparse_lu_plan(plan: SparseLU | None) -> rt.SparseLU | None:
    if plan is None:
        return None

    def levels(steps):
        return tuple(rt.SparseLevel(s.pivot, s.column, s.factor, s.source, s.target) for s in steps)

    return rt.SparseLU(
        plan.slots, plan.template_slots, levels(plan.forward), levels(plan.upward), plan.numerators, plan.denominators
    )


def _template_plan(elimination: Elimination, shape) -> rt.Template:
    system, template = elimination.system, elimination.template
    entries = template_entries(system, template)
    n = len(system.unknowns)
    basis = list(template.basis)
    basis_index = {b: i for i, b in enumerate(basis)}
    reduced_index = {t: i for i, t in enumerate(template.reducible)}
    constant, action_rows, action_reduced, action_scale = [], [], [], []
    for j, b in enumerate(basis):
        for m, coef in template.action_products(b):
            if m in basis_index:
                constant.append((j, basis_index[m], float(coef)))
            else:
                action_rows.append(j)
                action_reduced.append(reduced_index[m])
                action_scale.append(float(coef))

    # Read-off pairs (m, q * m) with m in the basis and q * m in the basis or reduced set, for each
    # read monomial q (the unknowns; x_i x_j for even templates).
    read = read_monomials(n, template.symmetric)
    read_monomial, read_basis, read_value = [], [], []
    for i, q in enumerate(read):
        for j, b in enumerate(basis):
            m = multiply(b, q)
            if m in basis_index:
                target = basis_index[m]
            elif m in reduced_index:
                target = len(basis) + reduced_index[m]
            else:
                continue
            read_monomial.append(i)
            read_basis.append(j)
            read_value.append(target)
    action_read = -1
    if template.action_variable is not None:
        action_read = read.index(template.action_products(tuple([0] * n))[0][0])
    return rt.Template(
        unknowns=n,
        shape=shape,
        square=len(template.excess) + len(template.reducible),
        num_reduced=len(template.reducible),
        basis=len(basis),
        positions=tuple(p for p, _ in entries),
        sources=tuple(j for _, j in entries),
        action_constant=tuple(constant),
        action_rows=tuple(action_rows),
        action_reduced=tuple(action_reduced),
        action_scale=tuple(action_scale),
        num_read=len(read),
        read_monomial=tuple(read_monomial),
        read_basis=tuple(read_basis),
        read_value=tuple(read_value),
        action_read=action_read,
        even=template.even,
        fixed=tuple(i for i in range(n) if i not in template.symmetric) if template.even else (),
        sparse_lu=_sparse_lu_plan(elimination.sparse_lu),
    )


def _gauge_plan(system: PolynomialSystem, linear: LinearBlock) -> rt.Gauge:
    """The gauge q(x) + c = 0: q alone (its terms but the constant one) as a one-equation system
    in the block's unknowns over its own coefficients, so that q(x) is evaluated without
    cancellation against c (the gauge involves no free unknown)."""
    terms = system.equation_terms(linear.gauge)
    q = [(j, coef) for j, coef in terms if sum(coef.exponent) > 0]
    only = PolynomialSystem(
        tuple(system.unknowns[i] for i in linear.block), system.parameters, system.param_ring,
        tuple(replace(coef, equation=0, exponent=tuple(coef.exponent[i] for i in linear.block)) for _, coef in q),
        (system.equations[linear.gauge],),
    )
    return rt.Gauge(
        equation=linear.gauge,
        degree=linear.gauge_degree,
        coefficients=tuple(j for j, _ in q),
        constant=next(j for j, coef in terms if sum(coef.exponent) == 0),
        equations=_equations_plan(evaluation_tables(only)),
    )


def _linear_plan(compiled: CompiledProblem, linear: LinearBlock, prefix: str = "") -> rt.LinearBlock:
    system = compiled.system
    n = len(linear.block)
    matrix_positions, matrix_sources, rhs_positions, rhs_sources = [], [], [], []
    for i, k in enumerate(linear.rows):
        for j, coef in system.equation_terms(k):
            if sum(coef.exponent) == 0:
                rhs_positions.append(i)
                rhs_sources.append(j)
            else:
                matrix_positions.append(i * n + linear.block.index(coef.exponent.index(1)))
                matrix_sources.append(j)
    rng = random.Random(0)  # fixed: completes [L^T | G] to a square matrix for the QR
    mix = tuple(tuple(round(rng.uniform(-1, 1), 6) for _ in range(linear.null_dim)) for _ in range(n))
    reduced = None
    if compiled.elimination is not None:
        reduced = _equations_plan(evaluation_tables(compiled.elimination.system))
    return rt.LinearBlock(
        rows=tuple(linear.rows),
        block=tuple(linear.block),
        null_dim=linear.null_dim,
        homogeneous=linear.homogeneous,
        matrix_positions=tuple(matrix_positions),
        matrix_sources=tuple(matrix_sources),
        rhs_positions=tuple(rhs_positions),
        rhs_sources=tuple(rhs_sources),
        null_mix=mix,
        used_parameters=tuple(linear.used_parameters),
        free=tuple(i for i in range(len(system.unknowns)) if i not in linear.block),
        gauge=_gauge_plan(system, linear) if linear.chart else None,
        reduced_coefficients=Name(prefix + "_reduced_coefficients") if reduced else None,
        reduced_equations=reduced,
    )


# -- The docstring ---------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _words(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def forward_description(compiled: CompiledProblem) -> list[str]:
    """What the forward does, in sentences, for every kind of plan."""
    system, linear, elimination = compiled.system, compiled.linear, compiled.elimination
    sentences = []
    if linear is not None:
        rank = len(linear.rows)
        subject = "The equation" if rank == 1 else f"The {rank} equations"
        subject += " linear in the unknowns"
        if linear.null_dim == 0:
            sentences.append(
                f"{subject} {'determines' if rank == 1 else 'determine'} them: the solution is the least-norm "
                "solution x_p of L x = b (batched QR)."
            )
        else:
            form = "x = N z" if linear.homogeneous else "x = x_p + N z"
            sentences.append(
                f"{subject} {'is' if rank == 1 else 'are'} eliminated with a batched QR null space: {form}, "
                f"with N a basis of the {linear.null_dim}-dimensional null space"
                + ("." if linear.homogeneous else " and x_p the least-norm solution.")
            )
    if elimination is not None:
        template = elimination.template
        rows, cols = template.shape
        action = template.action_name(elimination.system.unknowns)
        remaining = len(elimination.system.equations)
        where = "The equation is solved " if remaining == 1 else "The equations are solved "
        if linear is not None:
            coordinates = [str(s) for s in linear.reduced_unknowns]
            where = "The remaining equation is solved" if remaining == 1 else "The remaining equations are solved"
            where += f" in the null-space coordinate{'s' if len(coordinates) > 1 else ''} {_words(coordinates)} "
        sentences.append(
            f"{where}with an elimination template ({rows} x {cols}): the eigenvectors of its "
            f"{len(template.basis)} x {len(template.basis)} action matrix ({action}) give the solutions."
        )
        if template.even and len(template.symmetric) == len(elimination.system.unknowns):
            sentences.append(
                "Every equation is even or odd, so x and -x solve the system together: each eigenvector gives "
                f"such a pair, and half of the {compiled.num_solutions} solutions are the negatives of the others."
            )
        elif template.even:
            names = [str(elimination.system.unknowns[i]) for i in template.symmetric]
            sentences.append(
                f"Every equation is even or odd in {_words(names)}, so negating them gives another solution: "
                f"each eigenvector gives such a pair, and half of the {compiled.num_solutions} solutions are "
                "the others with those unknowns negated."
            )
    elif linear is not None and linear.null_dim == 1:
        sentences.append("The null space is one-dimensional, and its basis vector is the solution up to scale.")
    if linear is not None and linear.chart:
        parity = "even" if linear.gauge_degree % 2 == 0 else "odd"
        if elimination is not None:
            sentences.append("They are solved in the chart whose last coordinate is 1.")
        sentences.append(
            f"Every solution is rescaled to satisfy the gauge (declared equation {linear.gauge}, of {parity} "
            f"degree {linear.gauge_degree})"
            + (": solutions are defined up to sign, and one representative of each pair +-x is returned "
               "(compare up to sign)." if parity == "even" else ".")
        )
    k = len(system.equations)
    if elimination is None:
        sentences.append(f"Every solution is checked on {_declared(k)}.")
    elif linear is None:
        sentences.append(f"Every solution is polished by Newton steps on {_declared(k)} and checked on "
                         f"{'it' if k == 1 else 'them'}.")
    else:
        sentences.append(f"Every solution is polished by Newton steps on the remaining equations in the null-space "
                         f"coordinates and checked on all {k} declared equations.")
    return sentences


def _declared(k: int) -> str:
    return "the declared equation" if k == 1 else f"the {k} declared equations"


def docstring(compiled: CompiledProblem) -> str:
    problem, system = compiled.problem, compiled.system
    s, n, m, k = compiled.num_solutions, len(system.unknowns), len(system.parameters), len(system.equations)
    counted = _count(s, "solution")
    if compiled.linear is not None and compiled.linear.chart and compiled.linear.gauge_degree % 2 == 0:
        counted += " up to sign"
    lines = [
        f"Batched, differentiable solver for the problem `{problem.name}` ({counted}).",
        "",
        f"    solver = {class_name(problem.name)}()",
        f"    solutions, valid = solver(params)  # [..., {m}] -> [..., {s}, {n}], [..., {s}]",
        "",
    ]
    for label, names in (("Unknowns (last axis of `solutions`)", system.unknowns),
                         ("Parameters (last axis of `params`)", system.parameters)):
        text = f"{label}: " + ", ".join(str(v) for v in names)
        lines += wrap_words(text, 96, "    ")
    lines.append("")
    lines += wrap_words("Forward: " + " ".join(forward_description(compiled)), 96, "")
    lines += wrap_words(
        "The solve runs in float64 (float32 with precision=\"float32\") on the device of `params`. "
        f"Backward (default \"ift\"): the implicit function theorem on {_declared(k)}, per valid solution, "
        "in float64 (the solutions of a float32 solve are refined first); QR and the eigendecomposition are "
        "never differentiated. Options: solvergen.runtime.Solver.", 96, ""
    )
    return "\n".join(lines) + "\n"


def wrap_words(text: str, width: int, indent: str) -> list[str]:
    """Greedy word wrap; continuation lines start with `indent`."""
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = indent + word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return lines


# -- The module ------------------------------------------------------------------------------


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pytuple"] = lambda values: _tuple_literal(values, 0)
    env.filters["pyrepr"] = repr
    env.filters["literal"] = literal
    return env


def header_context(spec: str, spec_hash: str, compiler_hash: str, standalone: str | None, budget: str | None) -> dict:
    """The header fields every generated module has (see `render`)."""
    return dict(
        version=__version__,
        interface=rt.INTERFACE,
        standalone=standalone,
        spec=spec,
        regenerate=f"solvergen generate {spec}" + (f" --budget {budget}" if budget else ""),
        spec_hash=spec_hash,
        compiler_hash=compiler_hash,
    )


def problem_context(compiled: CompiledProblem, prefix: str = "", plan_name: str = "PLAN",
                    taken: set[str] | None = None) -> dict:
    """What templates/problem_body.jinja prints for a compiled problem: its functions, tables and
    Plan. In a Problem module (`prefix` "") the Plan refers to the module's constants; with a
    prefix (a Problem inside another module: the critical points of a declarative layer) its
    names start with the prefix and the Plan holds its constants as literals."""
    problem, system = compiled.problem, compiled.system
    taken = set(RESERVED) if taken is None else taken
    symbols = list(system.unknowns) + list(system.parameters) + list(compiled.derivatives.weights)
    if compiled.linear is not None and compiled.elimination is not None:
        symbols += list(compiled.elimination.system.parameters) + list(compiled.elimination.system.unknowns)
    names: dict[sp.Symbol, str] = {}
    for s in symbols:
        if s not in names:
            names[s] = identifier(str(s), taken)
    linear = compiled.linear
    reduced = None
    if linear is not None and compiled.elimination is not None:
        reduced = _coefficient_code(compiled.elimination.system, names, "_p")
    nested = prefix != ""
    return dict(
        name=problem.name,
        coefficients=_coefficient_code(system, names, "_a"),
        equations=_equations_plan(compiled.derivatives.evaluation),
        vjp=_vjp_code(compiled, names),
        linear=_linear_plan(compiled, linear, prefix) if linear is not None else None,
        linear_description=linear.describe() if linear is not None else None,
        reduced=reduced,
        reduced_unknowns=[str(s) for s in linear.reduced_unknowns] if linear is not None else [],
        template=(_template_plan(compiled.elimination, compiled.template_shape if nested else Name("TEMPLATE_SHAPE"))
                  if compiled.elimination else None),
        prefix=prefix,
        plan_name=plan_name,
        plan_unknown_names=_tuple_literal([str(v) for v in system.unknowns], 4) if nested else "UNKNOWN_NAMES",
        plan_parameter_names=_tuple_literal([str(v) for v in system.parameters], 4) if nested else "PARAMETER_NAMES",
        plan_num_solutions=str(compiled.num_solutions) if nested else "NUM_SOLUTIONS",
    )


def render(
    compiled: CompiledProblem, spec: str, spec_hash: str, compiler_hash: str, standalone: str | None = None,
    budget: str | None = None,
) -> str:
    """The generated module's text. `spec_hash`, `compiler_hash`: of the spec (with its helper
    modules) and of the compiler's sources, for the header. `standalone`: the name of the runtime
    copy next to it (`solvergen generate --standalone`), or None to import the installed
    `solvergen.runtime`. `budget`: the template search budget's option when not the default
    (`generate.budget_option`), shown in the regenerate command."""
    problem, system = compiled.problem, compiled.system
    linear = compiled.linear
    context = dict(
        **header_context(spec, spec_hash, compiler_hash, standalone, budget),
        class_name=class_name(problem.name),
        counts=", ".join(_count(len(v), w) for v, w in (
            (system.unknowns, "unknown"), (system.parameters, "parameter"), (system.equations, "equation"))),
        summary=compiled.describe(),
        docstring=docstring(compiled),
        num_solutions=compiled.num_solutions,
        unknown_names=[str(s) for s in system.unknowns],
        parameter_names=[str(s) for s in system.parameters],
        template_shape=compiled.template_shape,
        sign_gauge=linear is not None and linear.chart and linear.gauge_degree % 2 == 0,
        **problem_context(compiled),
    )
    return environment().get_template("solver.py.jinja").render(**context)
