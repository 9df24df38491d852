"""Render a size-generic layer (solvergen/indexed.py) into a Python module.

Indexed expressions print as broadcast torch code. Every index letter a function uses gets one
axis (after the batch axis), in name order; every array entry x[i, j] becomes a view of x with
its dimensions on the axes of i and j and size 1 on the others (`runtime.place`), so that
elementwise expressions are broadcast tensor expressions and a sum over a letter is
`.sum(axis, keepdim=True)`. After CSE any subexpression is a tensor over its own letters,
wherever it is used. Outputs are gathered onto their letters' axes (`runtime.take`).
"""
from __future__ import annotations

import sympy as sp

from .errors import SpecError
from .indexed import (Array, IndexedSystem, _nodes, diagonal_unknown, domain_conditions, entrywise_implicit, idx_size,
                      schur_solve)
from .printer import TorchPrinter, identifier, print_program, share_square_roots
from .render import environment, header_context, wrap_words
from .render_declarative import class_name


class ReduceSum(sp.Function):
    """sum over one letter (second argument) of the first argument: a CSE-safe form of Sum."""

    nargs = 2


def to_reductions(expr: sp.Expr) -> sp.Expr:
    if not expr.has(sp.Sum):
        return expr
    if isinstance(expr, sp.Sum):
        body = to_reductions(expr.function)
        for limit in expr.limits:
            body = ReduceSum(body, limit[0])
        return body
    if isinstance(expr, (sp.Indexed, sp.Idx)):
        return expr
    return expr.func(*[to_reductions(a) for a in expr.args])


def letters_of(expr, temps: dict) -> frozenset:
    """The letters an expression varies over (temps: CSE symbol -> its letters)."""
    if isinstance(expr, sp.Indexed):
        return frozenset(i for i in expr.indices if isinstance(i, sp.Idx))
    if isinstance(expr, sp.Symbol) and expr in temps:
        return temps[expr]
    if isinstance(expr, ReduceSum):
        return letters_of(expr.args[0], temps) - {expr.args[1]}
    if isinstance(expr, sp.Idx) or not expr.args:
        return frozenset()
    return frozenset().union(*(letters_of(a, temps) for a in expr.args))


class IndexedPrinter(TorchPrinter):
    def __init__(self, names, axes: dict, temps: dict, sizes: dict):
        super().__init__(names)
        self._axes, self._temps, self._sizes = axes, temps, sizes

    def _print_Indexed(self, expr):
        return self._names[expr]

    def _print_KroneckerDelta(self, expr):
        raise SpecError(f"internal error: the delta {expr} was not resolved; please report this spec")

    def _print_ReduceSum(self, expr):
        body, letter = expr.args
        if letter in letters_of(body, self._temps):
            return f"{self.parenthesize(body, sp.printing.precedence.PRECEDENCE['Atom'])}.sum({self._axes[letter] + 1}, keepdim=True)"
        return f"{self._sizes[letter]}*{self.parenthesize(body, sp.printing.precedence.PRECEDENCE['Mul'])}"


def size_code(size) -> str:
    return str(size) if isinstance(size, int) else f's["{size}"]'


def function_code(name: str, doc: str, outputs, inputs: dict, sizes) -> dict:
    """One generated function `name(v, s)`: outputs is a list of (expression, out letters);
    inputs: array name -> Array (read from v[name]); sizes: the size symbols (read from s)."""
    outputs = [(to_reductions(sp.sympify(e)), tuple(ls)) for e, ls in outputs]
    letters = set()
    for e, ls in outputs:
        letters |= set(ls)
        letters |= {a for a in sp.preorder_traversal(e) if isinstance(a, sp.Idx)}
    order = sorted(letters, key=lambda l: l.name)
    axes = {l: k for k, l in enumerate(order)}
    total = len(order)
    taken = {"v", "s", "torch", "runtime", "_like", "_B"}
    names: dict = {}
    prologue = []
    letter_sizes = {l: size_code(idx_size(l)) for l in order}
    used_sizes = set()
    for e, _ in outputs:
        for node in _nodes(e):
            if isinstance(node, sp.Symbol) and not isinstance(node, sp.Idx) and node in sizes:
                used_sizes.add(node)
    first = sorted(inputs)[0]
    prologue.append(f'_like = v["{first}"]')
    for size in sorted(used_sizes, key=str):  # a 0-dimensional tensor: torch functions take it
        names[size] = identifier(f"_{size}", taken)
        prologue.append(f'{names[size]} = _like.new_tensor(s["{size}"])')
    views = {}
    for e, _ in outputs:
        for node in sp.preorder_traversal(e):
            if isinstance(node, sp.Indexed) and node not in views:
                views[node] = None
            elif isinstance(node, sp.Symbol) and str(node) in inputs and inputs[str(node)].is_scalar and node not in views:
                views[node] = None
    for node in sorted(views, key=sp.default_sort_key):
        if isinstance(node, sp.Indexed):
            base = str(node.base.label)
            label = base.lstrip("_") + "_" + "_".join(str(i).lstrip("_") for i in node.indices)
            source = f'v["{base}"]'
            for dim in sorted((d for d, i in enumerate(node.indices) if not isinstance(i, sp.Idx)), reverse=True):
                source += f".select({dim + 1}, {int(node.indices[dim])})"
            placed = tuple(axes[i] for i in node.indices if isinstance(i, sp.Idx))
            names[node] = identifier(label, taken)
            prologue.append(f"{names[node]} = runtime.place({source}, {placed}, {total})")
        else:
            names[node] = identifier(str(node), taken)
            prologue.append(f'{names[node]} = runtime.place(v["{node}"], (), {total})')
    replacements, reduced = sp.cse([e for e, _ in outputs], symbols=sp.numbered_symbols("_t"))
    replacements, reduced = share_square_roots(replacements, reduced, "_t")
    temps: dict = {}
    for sym, value in replacements:
        temps[sym] = letters_of(value, temps)
    printer_names = dict(names)
    for sym, _ in replacements:
        printer_names[sym] = sym.name
    lines, texts = _print(replacements, reduced, printer_names, axes, temps, letter_sizes)
    results = []
    for text, (_, ls) in zip(texts, outputs):
        placed = tuple(axes[l] for l in ls)
        shape = "(" + "".join(f"{letter_sizes[l]}, " for l in ls) + ")"
        results.append(f"runtime.take({text}, {placed}, {shape}, _like)")
    return dict(signature=f"{name}(v, s)", doc=doc, unpack=prologue, lines=lines, results=results)


def _print(replacements, reduced, names, axes, temps, sizes):
    """print_program with the indexed printer."""
    return print_program(replacements, reduced, names, printer=IndexedPrinter(names, axes, temps, sizes))


def _shape_text(dims) -> str:
    return "(" + "".join(f'"{d}", ' if not isinstance(d, int) else f"{d}, " for d in dims) + ")"


def describe_structure(system: IndexedSystem) -> str:
    """How the runtime solves the Newton / IFT systems (the generation summary)."""
    if system.kind == "implicit":
        if entrywise_implicit(system):
            n = len(system.columns)
            return "Jacobian entry by entry: " + ("one equation per entry" if n == 1 else f"a {n} x {n} system per entry")
        return "dense Jacobian, batched"

    def shape(a):
        return " x ".join(map(str, a.dims)) if a.dims else "scalar"
    parts = []
    if system.auxiliary:
        parts.append("sums used nonlinearly made auxiliary unknowns with equality constraints (" + ", ".join(
            f"{array.name} = {node}" for array, _, node in system.auxiliary) + ")")
    for c, v in enumerate(system.columns):
        if v.kind != "unknown":
            continue
        if diagonal_unknown(system, c):
            parts.append(f"diagonal Hessian of {v.array.name} [{shape(v.array)}], eliminated entrywise")
        elif all(isinstance(d, int) for d in v.array.dims):
            size = 1
            for d in v.array.dims:
                size *= d
            parts.append(f"{size} x {size} Hessian of {v.array.name} accumulated over the sums")
        else:
            parts.append(f"dense Hessian of {v.array.name} [{shape(v.array)}]")
    families = [v for v in system.columns if v.kind == "multiplier"]
    inequalities = [v for v in system.columns if v.kind == "inequality"]
    if schur_solve(system) is not None:
        parts.append("one scalar equality: its 1 x 1 Schur complement and the solve in closed form")
    elif families or inequalities:
        parts.append("constraints as index patterns (" + ", ".join(
            [f"equality {k} [{shape(v.array)}]" for k, v in enumerate(families)]
            + [f"inequality {k} [{shape(v.array)}]" for k, v in enumerate(inequalities)])
            + "), their Schur complement formed from the patterns with diagonal blocks eliminated")
    if inequalities:
        parts.append("inequalities by a primal-dual interior point (their multiplier block is diagonal)")
    for _, text in system.redundant:
        parts.append(text)
    return "; ".join(parts)


def render_indexed(system: IndexedSystem, spec: str, spec_hash: str, compiler_hash: str,
                   standalone: str | None = None, budget: str | None = None) -> str:
    spec_object = system.spec
    inputs = {a.name: a for a in system.unknowns + system.parameters}
    for v in system.columns + system.rows:
        if v.kind in ("multiplier", "inequality"):
            inputs[v.array.name] = v.array
    sizes = set(system.sizes)
    functions = []
    residual_outputs = [(v.residual, v.row_letters) for v in system.rows]
    functions.append(function_code("_residuals", "The residual of each row block (Newton: r(z) = 0).",
                                   residual_outputs, inputs, sizes))
    term_list = []
    term_outputs = []
    for (r, c), terms in sorted(system.blocks.items()):
        for t in terms:
            term_list.append((r, c, t))
            letters = [sp.Idx(name, _letter_size(system, r, c, name)) for name in t.letters]
            term_outputs.append((t.coefficient, letters))
    functions.append(function_code("_jacobian_terms", "The coefficient array of each Jacobian term (PLAN.terms).",
                                   term_outputs, inputs, sizes))
    weights = dict(inputs)
    for r, v in enumerate(system.rows):
        weights[f"_w{r}"] = Array(f"_w{r}", None, v.array.dims)
    # the IFT's gradient itself, -(w . d residuals / d a): sympy folds the sign into the terms
    # (LML: -(-w) = w), where negating the VJP at run time would cost a pass over each array
    gradient_outputs = [(-expr, letters) for expr, letters in (system.vjp[a.name] for a in system.parameters)]
    functions.append(function_code("_parameter_gradient", "-(sum_r w_r . d residual_r / d a), for each parameter a.",
                                   gradient_outputs, weights, sizes))
    init_outputs = []
    for a in system.unknowns:
        entry = system.init.get(a.name)
        init_outputs.append(entry if entry is not None else (sp.Integer(0), _own_letters(a)))
    functions.append(function_code("_init", "The default start point of each unknown.",
                                   init_outputs, {p.name: p for p in system.parameters}, sizes))
    if system.primal is not None:
        functions.append(function_code(
            "_primal", "Each unknown from the multipliers: its stationarity solved entrywise (the dual Newton forward).",
            [(system.primal[c], system.columns[c].row_letters) for c in sorted(system.primal)], inputs, sizes))
    if system.auxiliary:
        functions.append(function_code("_auxiliary", "The sums the auxiliary unknowns stand for, at the point v.",
                                       [(node, letters) for _, letters, node in system.auxiliary], inputs, sizes))
    if system.objective is not None:
        functions.append(function_code("_objective", "The objective f.", [(system.objective, ())], inputs, sizes))
    domain = domain_conditions(system)
    if domain:
        functions.append(function_code(
            "_domain", "Where the expressions are defined: every entry of each output >= 0 (logs' and roots' "
            "arguments; solvergen/indexed.py, domain_conditions).", domain, inputs, sizes))
    closed_form = schur_solve(system)
    if closed_form is not None:
        rhs = dict(inputs)
        for c, v in enumerate(system.columns):
            if v.kind == "unknown":
                rhs[f"_g{c}"] = Array(f"_g{c}", None, v.array.dims)
        functions.append(function_code(
            "_schur_solve", "The IFT's KKT system K w = (g, 0) (g: `_g<column>` of the unknowns) in closed form: one "
            "scalar equality, diagonal Hessians (solvergen/indexed.py, schur_solve).", closed_form, rhs, sizes))
    context = dict(
        **header_context(spec, spec_hash, compiler_hash, standalone, budget),
        name=spec_object.name,
        class_name=class_name(spec_object.name),
        summary=summary(system),
        docstring=docstring(system),
        functions=functions,
        kind=system.kind,
        unknowns=[(a.name, _shape_text(a.dims)) for a in system.unknowns],
        parameters=[(a.name, _shape_text(a.dims)) for a in system.parameters],
        rows=[(v.array.name, _shape_text(v.array.dims)) for v in system.rows],
        columns=[(v.array.name, _shape_text(v.array.dims), v.kind) for v in system.columns],
        terms=[(r, c, t.letters, t.rows, t.cols) for r, c, t in term_list],
        letter_sizes=sorted(_all_letter_sizes(system).items()),
        eliminated=[c for c in range(len(system.columns)) if diagonal_unknown(system, c)],
        redundant=[r for r, _ in system.redundant],
        size_sources=sorted(system.size_sources.items()),
        has_objective=system.objective is not None,
        auxiliary=_auxiliary_columns(system),
        has_primal=system.primal is not None,
        has_schur_solve=closed_form is not None,
        has_domain=bool(domain),
    )
    return environment().get_template("indexed.py.jinja").render(**context)


def _auxiliary_columns(system) -> list:
    """(auxiliary unknown column, its equality family's column) per auxiliary sum."""
    names = [v.array.name for v in system.columns]
    out = []
    for k, (array, _, _) in enumerate(system.auxiliary):
        family = names.index(f"_mu{len(system.spec.equalities) + k}")
        out.append((names.index(array.name), family))
    return out


def _own_letters(a):
    return tuple(sp.Idx(f"_i{a.name}_{k}", d) for k, d in enumerate(a.dims))


def _letter_size(system, r, c, name):
    for v in (system.rows[r], system.columns[c]):
        for l in v.row_letters + v.col_letters:
            if l.name == name:
                return idx_size(l)
    raise KeyError(name)


def _all_letter_sizes(system) -> dict:
    out = {}
    for v in system.rows + system.columns:
        for l in v.row_letters + v.col_letters:
            size = idx_size(l)
            out[l.name] = size if isinstance(size, int) else str(size)
    return out


def summary(system: IndexedSystem) -> str:
    spec = system.spec
    if system.kind == "implicit":
        forward = "local: damped Newton on the equations"
    elif any(v.kind == "inequality" for v in system.columns):
        forward = "local: primal-dual interior point"
    elif system.primal is not None:
        forward = ("local: Newton on the multipliers (the dual), each unknown in closed form from them: "
                   + ", ".join(f"{system.columns[c].array.name} = {system.primal[c]}" for c in sorted(system.primal)))
    elif any(v.kind == "multiplier" for v in system.columns):
        forward = "local: Newton on the KKT system"
    else:
        forward = "local: Newton with a convexified Hessian, descent on f"
    return (f"size-generic {spec.kind} layer over {', '.join(a.name for a in system.unknowns)}; forward {forward}; "
            f"backward: IFT; structure: {describe_structure(system)}")


def docstring(system: IndexedSystem) -> str:
    spec = system.spec
    call = ", ".join(a.name for a in system.parameters)
    out = ", ".join(a.name for a in system.unknowns)
    lines = [f"Batched, differentiable size-generic {spec.kind} layer `{spec.name}`.", "",
             f"    layer = {class_name(spec.name)}()",
             f"    ({out}), ok = layer({call})" if len(system.unknowns) > 1 else f"    {out}, ok = layer({call})", ""]
    for label, arrays in (("Unknowns", system.unknowns), ("Parameters", system.parameters)):
        lines += wrap_words(f"{label}: " + ", ".join(
            f"{a.name} [..., {', '.join(map(str, a.dims))}]" if a.dims else f"{a.name} [...]" for a in arrays), 96, "    ")
    lines.append("")
    lines += wrap_words(f"Structure of the Newton and IFT systems: {describe_structure(system)}. "
                        "Options: solvergen.runtime.IndexedLayer.", 96, "")
    return "\n".join(lines) + "\n"
