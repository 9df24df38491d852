"""Render a compiled problem into a self-contained Python module with the Jinja templates."""
from __future__ import annotations

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
from .monomials import name as monomial_name
from .polynomials import PolynomialSystem
from .printer import identifier, print_program, print_with_cse, wrap_assignment, wrap_expression
from .levelwise import level_program
from .structured import coefficient_program
from .template import read_monomials, template_entries

RESERVED = {"torch", "_a", "_p", "_x", "_w", "_ones", "_zeros"}


def templates_dir() -> Path:
    """templates/ of a source checkout, or the copy installed inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "templates", here / "templates"):
        if (candidate / "solver.py.jinja").is_file():
            return candidate
    raise FileNotFoundError("solvergen templates not found")


def pytuple(values, width: int = 100) -> str:
    """A Python tuple literal, wrapped at `width` columns."""
    items = [repr(tuple(v)) if isinstance(v, (tuple, list)) else repr(v) for v in values]
    if not items:
        return "()"
    one_line = "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if len(one_line) <= width - 30:
        return one_line
    lines, current = [], ""
    for item in items:
        if current and len(current) + len(item) + 1 > width - 4:
            lines.append("    " + current.rstrip())
            current = ""
        current += item + ", "
    lines.append("    " + current.rstrip())
    return "(\n" + "\n".join(lines) + "\n)"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pytuple"] = pytuple
    env.filters["pyrepr"] = repr
    return env


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


def _coefficient_code(system: PolynomialSystem, names, source: str):
    """The straight-line function c(params) of a system's coefficients: the expanded
    coefficients after cse, or the program along the equations as written
    (`structured.coefficient_program`), whichever has fewer operations."""
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
    program = level_program(system.parameters, assignments, outputs)
    if program is not None and not program.worthwhile:
        program = None
    return dict(unpack=unpack, lines=lines, outputs=printed, count=len(exprs), program=program)


def _operations(assignments, outputs) -> int:
    return sum(sp.count_ops(e) for _, e in assignments) + sum(sp.count_ops(e) for e in outputs)


def _declared_context(compiled: CompiledProblem, names) -> dict:
    system, derivatives = compiled.system, compiled.derivatives
    vjp_lines, vjp_outputs = _code(
        derivatives.parameter_vjp, names, "", derivatives.vjp_assignments
    )
    used = set().union(
        *(e.free_symbols for e in derivatives.parameter_vjp),
        *(e.free_symbols for _, e in derivatives.vjp_assignments),
    )
    vjp_unpack = (
        _unpack([names[s] if s in used else "_" for s in system.unknowns], "_x")
        + _unpack([names[s] if s in used else "_" for s in system.parameters], "_a")
        + _unpack([names[w] if w in used else "_" for w in derivatives.weights], "_w")
    )
    if any(e == 0 for e in derivatives.parameter_vjp):
        vjp_unpack.append(
            "_zeros = _w.new_zeros(torch.broadcast_shapes(_x.shape[:-1], _a.shape[:-1], _w.shape[:-1]))"
        )
    return dict(
        coefficients=_coefficient_code(system, names, "_a"),
        evaluation=_evaluation_context(derivatives.evaluation),
        vjp_unpack=vjp_unpack,
        vjp_lines=vjp_lines,
        vjp_outputs=vjp_outputs,
    )


def _evaluation_context(tables: EvaluationTables) -> dict:
    return dict(
        unknowns=tables.num_unknowns,
        equations=tables.num_equations,
        levels=[list(level) for level in tables.levels],
        fields=[
            ("term_equation", tables.term_equation, "equation of each term (one term per coefficient)"),
            ("term_monomial", tables.term_monomial, "monomial of each term"),
            ("derivative_position", tables.derivative_position, "dh/dx terms: flat (equation * N + unknown)"),
            ("derivative_coefficient", tables.derivative_coefficient, "dh/dx terms: coefficient"),
            ("derivative_factor", tables.derivative_factor, "dh/dx terms: exponent of the unknown"),
            ("derivative_monomial", tables.derivative_monomial, "dh/dx terms: monomial x^(alpha - e_n)"),
            ("constants", tables.constants, "(coefficient, value) of the coefficients that are numbers"),
        ],
    )


def _template_context(elimination: Elimination) -> dict:
    system, template = elimination.system, elimination.template
    rows, cols = template.shape
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
    # read monomial q (the unknowns; x_i x_j for even templates):
    # q = sum conj(v_m) v_(q m) / sum |v_m|^2 over the pairs of q.
    read = read_monomials(n, template.even)
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
    unknown_names = [str(s) for s in system.unknowns]
    return dict(
        rows=rows,
        cols=cols,
        square=len(template.excess) + len(template.reducible),
        num_excess=len(template.excess),
        num_reducible=len(template.reducible),
        action_name=template.action_name(system.unknowns),
        template_unknowns=unknown_names,
        basis_names=[monomial_name(b, unknown_names) for b in basis],
        sparse_lu=elimination.sparse_lu,
        template_positions=[p for p, _ in entries],
        template_sources=[j for _, j in entries],
        action_constant=constant,
        action_rows=action_rows,
        action_reduced=action_reduced,
        action_scale=action_scale,
        read_monomial=read_monomial,
        read_basis=read_basis,
        read_value=read_value,
        # the read monomial that is the eigenvalue (the action variable, or its square), or -1
        action_read=-1 if template.action_variable is None else read.index(
            template.action_products(tuple([0] * n))[0][0]),
        even=template.even,
        read_names=[monomial_name(q, unknown_names) for q in read],
        num_basis=len(basis),
        template_num_unknowns=n,
    )


def _linear_context(compiled: CompiledProblem, linear: LinearBlock, names) -> dict:
    system = compiled.system
    n = len(system.unknowns)
    matrix_positions, matrix_sources, rhs_positions, rhs_sources = [], [], [], []
    for i, k in enumerate(linear.rows):
        for j, coef in system.equation_terms(k):
            if sum(coef.exponent) == 0:
                rhs_positions.append(i)
                rhs_sources.append(j)
            else:
                matrix_positions.append(i * n + coef.exponent.index(1))
                matrix_sources.append(j)
    rng = random.Random(0)  # fixed: completes [L^T | G] to a square matrix for the QR
    mix = [[round(rng.uniform(-1, 1), 6) for _ in range(linear.null_dim)] for _ in range(n)]
    reduced = reduced_evaluation = None
    if linear.reduced_problem is not None:
        reduced = _coefficient_code(compiled.elimination.system, names, "_p")
        reduced_evaluation = _evaluation_context(evaluation_tables(compiled.elimination.system))
    gauge = None
    if linear.chart:
        # The gauge equation alone, as a one-equation system over its own coefficients.
        terms = system.equation_terms(linear.gauge)
        only = PolynomialSystem(
            system.unknowns, system.parameters, system.param_ring,
            tuple(replace(coef, equation=0) for _, coef in terms), (system.equations[linear.gauge],),
        )
        gauge = dict(
            coefficients=[j for j, _ in terms],
            constant=next(i for i, (_, coef) in enumerate(terms) if sum(coef.exponent) == 0),
            evaluation=_evaluation_context(evaluation_tables(only)),
        )
    return dict(
        gauge_system=gauge,
        rank=len(linear.rows),
        null_dim=linear.null_dim,
        homogeneous=linear.homogeneous,
        chart=linear.chart,
        gauge=linear.gauge,
        gauge_degree=linear.gauge_degree,
        description=linear.describe(),
        rows=list(linear.rows),
        matrix_positions=matrix_positions,
        matrix_sources=matrix_sources,
        rhs_positions=rhs_positions,
        rhs_sources=rhs_sources,
        mix=mix,
        used_parameters=list(linear.used_parameters),
        num_reduced_unknowns=len(linear.reduced_unknowns),
        reduced_unknowns=[str(s) for s in linear.reduced_unknowns],
        reduced=reduced,
        reduced_evaluation=reduced_evaluation,
    )


def render(compiled: CompiledProblem, spec: str, spec_hash: str) -> str:
    problem, system = compiled.problem, compiled.system
    taken = set(RESERVED)
    symbols = list(system.unknowns) + list(system.parameters) + list(compiled.derivatives.weights)
    if compiled.linear is not None and compiled.elimination is not None:
        symbols += list(compiled.elimination.system.parameters) + list(compiled.elimination.system.unknowns)
    names: dict[sp.Symbol, str] = {}
    for s in symbols:
        if s not in names:
            names[s] = identifier(str(s), taken)

    context = dict(
        version=__version__,
        spec=spec,
        spec_hash=spec_hash,
        name=problem.name,
        class_name=class_name(problem.name),
        num_unknowns=len(system.unknowns),
        num_parameters=len(system.parameters),
        num_equations=len(system.equations),
        num_solutions=compiled.num_solutions,
        unknown_names=[str(s) for s in system.unknowns],
        parameter_names=[str(s) for s in system.parameters],
        summary=compiled.describe(),
        template_shape=compiled.template_shape,
        declared=_declared_context(compiled, names),
        template=_template_context(compiled.elimination) if compiled.elimination else None,
        linear=_linear_context(compiled, compiled.linear, names) if compiled.linear else None,
    )
    return environment().get_template("solver.py.jinja").render(**context)
