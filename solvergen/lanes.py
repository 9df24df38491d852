"""Lanes: repeated terms of a flat declarative layer's objective, evaluated as one vectorised term.

An objective such as robust_line_fit's sum_i rho(y_i - k x_i - b) over 20 points is, after
sympy, an Add of 20 terms that are one expression of their own parameters (x_i, y_i). Printed
term by term, each derivative is hundreds of torch operations on [B] tensors. Here such terms
are found and replaced by one *lane term* in placeholder parameters: the generated code gathers
each placeholder's parameters into a [B, K] tensor (K lanes), evaluates the term and its
derivatives once on them, and sums over the lanes (or, for the parameter VJP, places each lane's
value at its parameter). The derivatives are taken of the single term, so generation is faster too.

A term's parameters are split into *shared* ones (appearing in more than one term of the
objective, e.g. a robust penalty's scale) and its own. Terms are grouped by their expression
with their own parameters replaced, in parameter order, by placeholders. A group is used when it
has at least MIN_LANES terms and its own parameters appear nowhere else in the layer (the rest of
the objective, the constraints): each such parameter's derivative is then its lane's alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

MIN_LANES = 4  # fewer repeated terms are printed one by one


@dataclass(frozen=True)
class LaneGroup:
    """K terms of the objective that are `term` with the placeholders set to the parameters
    `indices[p][k]` (placeholder p, lane k; indices into the layer's flat parameters)."""

    placeholders: tuple[sp.Symbol, ...]
    indices: tuple[tuple[int, ...], ...]
    term: sp.Expr

    @property
    def lanes(self) -> int:
        return len(self.indices[0]) if self.indices else 0


def find_lanes(objective: sp.Expr, parameters, elsewhere=()) -> tuple[sp.Expr, tuple[LaneGroup, ...]]:
    """Split `objective` into (the rest, lane groups) with objective = rest + sum over groups of
    the sum of `term` over their lanes. `elsewhere`: the layer's other expressions (constraints),
    whose parameters may not be lane parameters."""
    terms = sp.Add.make_args(objective)
    position = {p: i for i, p in enumerate(parameters)}
    own = [sorted(t.free_symbols & position.keys(), key=position.get) for t in terms]
    counts: dict[sp.Symbol, int] = {}
    for symbols in own:
        for s in symbols:
            counts[s] = counts.get(s, 0) + 1
    reserved = set().union(*(e.free_symbols for e in elsewhere)) if elsewhere else set()
    groups: dict[tuple[int, sp.Expr], list[int]] = {}
    for t, (term, symbols) in enumerate(zip(terms, own)):
        lane = [s for s in symbols if counts[s] == 1]
        if not lane or reserved & set(lane):
            continue
        placeholders = _placeholders(len(lane))
        key = (len(lane), term.xreplace(dict(zip(lane, placeholders))))
        groups.setdefault(key, []).append(t)
    used: set[int] = set()
    result = []
    for (width, term), members in sorted(groups.items(), key=lambda item: item[1][0]):
        if len(members) < MIN_LANES:
            continue
        placeholders = _placeholders(width, len(result))
        lane_symbols = sorted(([s for s in own[t] if counts[s] == 1] for t in members),
                              key=lambda symbols: [position[s] for s in symbols])
        indices = tuple(tuple(position[symbols[p]] for symbols in lane_symbols) for p in range(width))
        result.append(LaneGroup(placeholders, indices, term.xreplace(dict(zip(_placeholders(width), placeholders)))))
        used.update(members)
    rest = sp.Add(*(t for i, t in enumerate(terms) if i not in used))
    return rest, tuple(result)


def _placeholders(count: int, group: int | None = None) -> tuple[sp.Symbol, ...]:
    """Placeholder symbols: `_lane_p` while grouping, `_g{group}_p` in the result."""
    prefix = "_lane" if group is None else f"_g{group}"
    return tuple(sp.Symbol(f"{prefix}_{p}") for p in range(count))


def lane_slice(indices: tuple[int, ...]) -> str:
    """How the generated code gathers one placeholder's parameters from the last axis: a slice
    `a:b` or `a:b:s` when the indices are an arithmetic progression, else a list."""
    if len(indices) > 1:
        step = indices[1] - indices[0]
        if step > 0 and all(j - i == step for i, j in zip(indices, indices[1:])):
            stop = indices[-1] + 1
            return f"{indices[0]}:{stop}" + (f":{step}" if step != 1 else "")
    return "[" + ", ".join(str(i) for i in indices) + "]"
