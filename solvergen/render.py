"""Render a compiled problem into a self-contained Python module with the Jinja templates."""
from __future__ import annotations

from pathlib import Path

import jinja2
import sympy as sp

from . import __version__
from .compiler import CompiledProblem
from .monomials import name as monomial_name
from .monomials import multiply, unit
from .printer import identifier, print_program, print_with_cse, wrap_assignment, wrap_expression

RESERVED = {"torch", "_a", "_x", "_w", "_ones", "_zeros"}


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
    if not names:
        return []
    target = ", ".join(names) + ("," if len(names) == 1 else "")
    line = f"{target} = {source}.unbind(-1)"
    if len(line) <= 96:
        return [line]
    out, current = ["("], ""
    for n in names:
        if len(current) + len(n) + 2 > 88:
            out.append("    " + current.rstrip())
            current = ""
        current += n + ", "
    out.append("    " + current.rstrip())
    out.append(f") = {source}.unbind(-1)")
    return out


def _code(outputs, names, prefix, constant_name, assignments=None):
    """Print straight-line code (CSE'd here unless `assignments` are given); constant outputs
    become `constant_name * value` so that every output is a tensor."""
    if assignments is None:
        lines, printed = print_with_cse(list(outputs), names, prefix)
    else:
        lines, printed = print_program(list(assignments), list(outputs), names)
    body = []
    for line in lines:
        lhs, rhs = line.split(" = ", 1)
        body.extend(l[4:] for l in wrap_assignment(lhs, rhs, 4))
    results = []
    for expr, text in zip(outputs, printed):
        if expr.is_Number:
            text = constant_name if expr == 1 else f"{constant_name} * {text}"
            if expr == 0:
                text = "_zeros"
        wrapped = wrap_expression(text, 12)
        results.append("\n".join([wrapped[0][12:]] + wrapped[1:]))
    return body, results


def render(compiled: CompiledProblem, spec: str, spec_hash: str) -> str:
    problem, system, template = compiled.problem, compiled.system, compiled.template
    derivatives = compiled.derivatives
    taken = set(RESERVED)
    names = {s: identifier(str(s), taken) for s in system.unknowns + system.parameters}
    names.update({w: identifier(str(w), taken) for w in derivatives.weights})
    unknown_ids = [names[s] for s in system.unknowns]
    parameter_ids = [names[s] for s in system.parameters]

    # Coefficients c_j(a).
    coefficient_exprs = [c.expr() for c in system.coefficients]
    coefficient_lines, coefficient_outputs = _code(coefficient_exprs, names, "_t", "_ones")
    coefficient_unpack = _unpack(parameter_ids, "_a")
    if any(e.is_Number for e in coefficient_exprs):
        coefficient_unpack.append("_ones = _a.new_ones(_a.shape[:-1])")

    # Parameter-side vector-Jacobian product.
    vjp_lines, vjp_outputs = _code(
        derivatives.parameter_vjp, names, "", "_ones", derivatives.vjp_assignments
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

    # Template layout: entry (row, column) <- coefficient j.
    columns = {m: i for i, m in enumerate(template.columns)}
    rows_, cols_ = template.shape
    entries = []
    for r, (k, multiplier) in enumerate(template.rows):
        for j, coef in system.equation_terms(k):
            col = columns.get(multiply(coef.exponent, multiplier))
            if col is not None:
                entries.append((r * cols_ + col, j))
    entries.sort()

    # Action matrix.
    n = len(system.unknowns)
    basis = list(template.basis)
    basis_index = {b: i for i, b in enumerate(basis)}
    reduced_index = {t: i for i, t in enumerate(template.reducible)}
    constant, action_rows, action_reduced, action_scale = [], [], [], []
    for j, b in enumerate(basis):
        for i, coef in enumerate(template.action):
            if not coef:
                continue
            m = multiply(b, unit(n, i))
            if m in basis_index:
                constant.append((j, basis_index[m], float(coef)))
            else:
                action_rows.append(j)
                action_reduced.append(reduced_index[m])
                action_scale.append(float(coef))

    readoff = []
    for i, s in enumerate(system.unknowns):
        e = unit(n, i)
        if template.action_variable == i:
            readoff.append(("eigenvalues", f"{s}: the eigenvalue of its action matrix"))
        elif e in basis_index:
            readoff.append((f"vectors[:, {basis_index[e]}, :]", f"{s}: basis monomial"))
        else:
            t = reduced_index[e]
            readoff.append(
                (f"-(reduced[:, {t}, :].unsqueeze(1) @ vectors).squeeze(1)", f"{s}: reduced monomial")
            )

    unknown_names = [str(s) for s in system.unknowns]
    action_name = " + ".join(
        (f"{c}*" if c != 1 else "") + str(s) for c, s in zip(template.action, system.unknowns) if c
    )
    context = dict(
        version=__version__,
        spec=spec,
        spec_hash=spec_hash,
        name=problem.name,
        class_name=class_name(problem.name),
        num_unknowns=n,
        num_parameters=len(system.parameters),
        num_equations=len(system.equations),
        num_solutions=compiled.num_solutions,
        num_coefficients=len(system.coefficients),
        rows=rows_,
        cols=cols_,
        square=len(template.excess) + len(template.reducible),
        num_excess=len(template.excess),
        num_reducible=len(template.reducible),
        action_name=action_name,
        unknown_names=unknown_names,
        parameter_names=[str(s) for s in system.parameters],
        basis_names=[monomial_name(b, unknown_names) for b in basis],
        coefficient_unpack=coefficient_unpack,
        coefficient_lines=coefficient_lines,
        coefficient_outputs=coefficient_outputs,
        template_positions=[p for p, _ in entries],
        template_sources=[j for _, j in entries],
        action_constant=constant,
        action_rows=action_rows,
        action_reduced=action_reduced,
        action_scale=action_scale,
        basis_one=basis_index[tuple([0] * n)],
        readoff=readoff,
        exponents=list(derivatives.monomials),
        max_degree=derivatives.max_degree,
        lower=list(derivatives.lower),
        equation_positions=list(derivatives.equation_positions),
        vjp_unpack=vjp_unpack,
        vjp_lines=vjp_lines,
        vjp_outputs=vjp_outputs,
    )
    return environment().get_template("solver.py.jinja").render(**context)
