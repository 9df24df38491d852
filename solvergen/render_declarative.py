"""Render a declarative layer (solvergen/kkt.py) into a Python module: its printed functions
and a `runtime.DeclarativePlan` that hands them to the runtime (runtime/declarative.py)."""
from __future__ import annotations

import sympy as sp

from .compiler import CompiledProblem
from .kkt import DeclarativeSystem, Function
from .lanes import lane_slice
from .printer import identifier
from .render import RESERVED, _code, _count, _unpack, environment, header_context, problem_context, wrap_words


def function_code(function: Function, names: dict[sp.Symbol, str]) -> dict:
    """The printed body of one function: unpacking of its inputs, CSE'd lines, the result."""
    outputs, lane_lines, lane_sums, lane_values = _lanes(function, names)
    lines, printed = _code(list(outputs) + [e for row in lane_sums for e in row if e is not None]
                           + [e for row in lane_values for e in row], names, "_t")
    printed_outputs, rest = printed[:len(outputs)], printed[len(outputs):]
    for i, row in enumerate(lane_sums):  # + sum over the lanes of each group's term
        for e in row:
            if e is not None:
                text, rest = rest[0], rest[1:]
                total = f"({text}).sum(-1)"
                printed_outputs[i] = total if outputs[i] == 0 else f"{printed_outputs[i]} + {total}"
    used = set().union(*(e.free_symbols for e in outputs))
    unpack = []
    for argument, symbols in function.inputs:
        if used & set(symbols):
            unpack += _unpack([names[s] if s in used else "_" for s in symbols], argument)
    unpack += lane_lines
    placed = bool(lane_values) and all(e == 0 for e in outputs)  # the VJP's values all in lanes
    constants = [e for e, text in zip(outputs, printed_outputs) if e.is_Number and text.startswith("_") and not placed]
    if constants:
        shapes = ", ".join(f"{argument}.shape[:-1]" for argument, _ in function.inputs)
        first = function.inputs[0][0]
        unpack.append(f"_shape = torch.broadcast_shapes({shapes})")
        if any(e != 0 for e in constants):
            unpack.append(f"_ones = {first}.new_ones(_shape)")
        if any(e == 0 for e in constants):
            unpack.append(f"_zeros = {first}.new_zeros(_shape)")
    if not function.outputs or placed:  # no constraints (an empty last axis), or all in lanes
        shapes = ", ".join(f"{argument}.shape[:-1]" for argument, _ in function.inputs)
        result = f"{function.inputs[0][0]}.new_zeros(torch.broadcast_shapes({shapes}) + {function.shape})"
    elif function.shape == ():  # printed for a list item (column 12): back to a return (column 4)
        result = "\n".join(line[8:] if line.startswith(" " * 12) else line for line in printed_outputs[0].split("\n"))
    else:
        result = "torch.stack(\n        [\n" + "".join(f"            {out},\n" for out in printed_outputs) + "        ],\n        dim=-1,\n    )"
        if len(function.shape) == 2:
            result += f".unflatten(-1, {function.shape})"
    if lane_values:  # the parameter VJP: each lane's value at its parameter
        lines = lines + [f"_out = {result}"] + [
            f"_out[..., {lane_slice(group.indices[p])}] = {repr(float(e)) if e.is_Number else text}"
            for group, exprs, texts in zip(function.lanes, lane_values, _chunks(rest, lane_values))
            for p, (e, text) in enumerate(zip(exprs, texts))]
        result = "_out"
    signature = f"{function.name}({', '.join(argument for argument, _ in function.inputs)})"
    return dict(signature=signature, doc=function.doc, unpack=unpack, lines=lines, result=result)


def _chunks(texts, rows):
    """texts cut into pieces as long as the rows."""
    out = []
    for row in rows:
        out.append(texts[:len(row)])
        texts = texts[len(row):]
    return out


def _lanes(function: Function, names: dict[sp.Symbol, str]):
    """A lane function's parts (solvergen/lanes.py), with names added to `names`: its outputs
    (each with the lane terms that do not depend on the lane added, times the lane count), the
    lines that gather the lanes, the lane terms per output and group (None where absent), and
    the VJP's lane values per group and placeholder. In the lane terms, every other input
    symbol is replaced by its lane version: the slice `_y[..., n:n+1]` of its argument, which
    broadcasts against the lanes [..., K]."""
    if not function.lanes:
        return function.outputs, [], [], []
    taken = set(names.values())
    lane_names: dict[sp.Symbol, sp.Symbol] = {}
    terms = [e for row in function.lane_sums for e in row] + [e for row in function.lane_values for e in row]
    used = set().union(*(e.free_symbols for e in terms))
    lines = []
    for argument, symbols in function.inputs:
        for position, symbol in enumerate(symbols):
            if symbol in used:
                lane_names[symbol] = sp.Symbol(f"_lane_{names[symbol]}")
                if lane_names[symbol] not in names:  # the same name in every function
                    names[lane_names[symbol]] = identifier(f"{names[symbol].lstrip('_')}_lane", taken)
                lines.append(f"{names[lane_names[symbol]]} = {argument}[..., {position}:{position + 1}]")
    parameters = dict(function.inputs)["_a"]
    for g, group in enumerate(function.lanes):
        for p, placeholder in enumerate(group.placeholders):
            first, last = (names[parameters[group.indices[p][i]]] for i in (0, -1))
            if placeholder not in names:
                stem = first.rstrip("0123456789_")
                names[placeholder] = identifier(f"{stem}_lanes" if stem else f"lanes{g}_{p}", taken)
            lines.append(f"{names[placeholder]} = _a[..., {lane_slice(group.indices[p])}]  # {first} .. {last}")
    outputs, lane_sums = list(function.outputs), []
    for i, row in enumerate(function.lane_sums):
        sums = []
        for group, term in zip(function.lanes, row):
            if term == 0:
                sums.append(None)
            elif not term.free_symbols & set(group.placeholders):  # the same in every lane
                outputs[i] = outputs[i] + group.lanes * term
                sums.append(None)
            else:
                sums.append(term.xreplace(lane_names))
        lane_sums.append(sums)
    values = [[e.xreplace(lane_names) for e in row] for row in function.lane_values]
    return tuple(outputs), lines, lane_sums, values


def class_name(name: str) -> str:
    """CamelCase of the spec's name, ending in "Layer" (once: `qp_layer` -> `QpLayer`)."""
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return camel if camel.endswith("Layer") else camel + "Layer"


def forward_name(system: DeclarativeSystem, critical: CompiledProblem | None = None, refused: str | None = None) -> str:
    """The forward the runtime runs for this layer (named in the generation summary)."""
    if critical is not None:
        what = "critical points" if system.kind == "argmin" else "solutions"
        return f"global: all {critical.num_solutions} {what} ({critical.describe()})"
    if system.kind == "implicit":
        name = "local: damped Newton (Gauss-Newton when overdetermined)"
    elif system.num_inequalities:
        name = "local: primal-dual interior point"
    elif system.num_equalities:
        name = "local: Newton on the KKT system"
    else:
        name = "local: Newton with a regularized Hessian"
    return name + (f" (the global path was refused: {refused})" if refused else "")


def describe(system: DeclarativeSystem, critical: CompiledProblem | None = None, refused: str | None = None) -> str:
    spec = system.spec
    if system.kind == "implicit":
        shape = f"{_count(system.num_equations, 'equation')} in {_count(system.num_unknowns, 'unknown')}"
    else:
        shape = ", ".join([_count(system.num_unknowns, "unknown"), _count(system.num_equalities, "equality"),
                           _count(system.num_inequalities, "inequality")]).replace("inequalitys", "inequalities").replace(
                               "equalitys", "equalities")
    return f"{spec.kind} layer, {shape}; forward {forward_name(system, critical, refused)}; backward: IFT on the " + (
        "equations" if system.kind == "implicit" else "KKT system")


def docstring(system: DeclarativeSystem, forward: str) -> str:
    spec = system.spec
    n, m = system.num_unknowns, system.num_parameters
    what = ("the solution y of F(y, a) = 0" if system.kind == "implicit"
            else "y = argmin f(y, a)" + (" subject to its constraints" if system.num_equalities + system.num_inequalities else ""))
    lines = [
        f"Batched, differentiable {spec.kind} layer `{spec.name}`: {what}.",
        "",
        f"    layer = {class_name(spec.name)}()",
        f"    y, ok = layer(params)  # [..., {m}] -> [..., {n}], [...]",
        "",
    ]
    for label, names in (("Unknowns (last axis of `y`)", spec.unknowns), ("Parameters (last axis of `params`)", spec.parameters)):
        lines += wrap_words(f"{label}: " + ", ".join(str(v) for v in names), 96, "    ")
    lines.append("")
    lines += wrap_words(f"Forward: {forward}. Backward: the implicit function theorem on the "
                        + ("equations" if system.kind == "implicit" else "KKT system (active inequalities as equalities)")
                        + ", with the generated vector-Jacobian product. Options: solvergen.runtime.DeclarativeLayer.",
                        96, "")
    return "\n".join(lines) + "\n"


def render_declarative(system: DeclarativeSystem, spec: str, spec_hash: str, compiler_hash: str,
                       standalone: str | None = None, critical: CompiledProblem | None = None,
                       refused: str | None = None, budget: str | None = None) -> str:
    """The generated module's text (see render.render for the header fields). `critical`: the
    compiled system of the global forward (its functions and Plan are printed with the prefix
    `_critical`); `refused`: why a polynomial spec has no global forward."""
    taken = set(RESERVED) | {"_y", "_m", "_shape"}
    names: dict[sp.Symbol, str] = {}
    for function in system.functions:
        for _, symbols in function.inputs:
            for s in symbols:
                if s not in names:
                    names[s] = identifier(str(s), taken) if not str(s).startswith("_") else str(s)
    spec_object = system.spec
    context = dict(
        **header_context(spec, spec_hash, compiler_hash, standalone, budget),
        name=spec_object.name,
        class_name=class_name(spec_object.name),
        summary=describe(system, critical, refused),
        docstring=docstring(system, forward_name(system, critical, refused)),
        unknown_names=list(spec_object.unknown_names),
        parameter_names=list(spec_object.parameter_names),
        functions=[function_code(f, names) for f in system.functions],
        kind=system.kind,
        num_equations=system.num_equations,
        num_equalities=system.num_equalities,
        num_inequalities=system.num_inequalities,
        default_init=spec_object.init is not None,
        plan_fields=[(f.name[1:], f.name) for f in system.functions],
        critical=(problem_context(critical, prefix="_critical", plan_name="_CRITICAL_POINTS", taken=set(taken))
                  if critical is not None else None),
    )
    return environment().get_template("declarative.py.jinja").render(**context)
