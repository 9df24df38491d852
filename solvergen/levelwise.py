"""Level-wise tables of a straight-line program, for small batches.

Printed straight-line code runs one PyTorch operation per arithmetic operation: about 2 us each
on the CPU whatever the batch, so the 5-point coefficients (about 3,700 operations) take 7 ms
even for one instance. Here every binary operation gets a row of a value table [rows, batch];
operations of the same depth and kind run as one vectorized step (gather two sets of rows,
multiply or add, write a block of rows). The 5-point program has 14 such steps: 0.3 ms for one
instance instead of 11. For large batches the straight-line code is faster (each operation's
vectors stay in cache), so the generated solver chooses by batch size (`_LEVELWISE_BATCH`).

Rows: the parameters, then a row of ones, then one row per operation in execution order.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class Step:
    kind: str  # "mul": left * right; "add": left_scale * left + right_scale * right
    start: int  # the step writes rows start, start + 1, ...
    left: tuple[int, ...]
    right: tuple[int, ...]
    left_scale: tuple[float, ...] | None  # None: all ones
    right_scale: tuple[float, ...] | None


@dataclass(frozen=True)
class LevelProgram:
    rows: int
    steps: tuple[Step, ...]
    outputs: tuple[int, ...]  # output i = output_scale[i] * row outputs[i]
    output_scale: tuple[float, ...]
    operations: int

    @property
    def worthwhile(self) -> bool:
        """Whether the level-wise form beats straight-line code on small batches: each step costs
        about five tensor operations, so it needs many operations per step (measured: the
        5-point's 3,700 operations in 14 steps run 4x faster at batch 1; P3P's 66 in 6 do not)."""
        return self.operations >= 256 and self.operations >= 32 * len(self.steps)


class _Unsupported(Exception):
    pass


def level_program(parameters, assignments, outputs) -> LevelProgram | None:
    """The level-wise form of `assignments` (symbol, expression) and `outputs` (expressions in
    the parameters and the assigned symbols); None if an expression is not a polynomial."""
    builder = _Builder(len(parameters))
    value = {p: (i, 1.0) for i, p in enumerate(parameters)}
    try:
        for symbol, expr in assignments:
            value[symbol] = builder.emit(expr, value)
        results = [builder.emit(sp.sympify(expr), value) for expr in outputs]
    except _Unsupported:
        return None
    return builder.finish(results)


class _Builder:
    def __init__(self, num_parameters: int):
        self.one = num_parameters  # the row of ones
        self.ops: list[tuple[str, int, int, float, float]] = []
        self.depth = [0] * (num_parameters + 1)
        self.memo: dict = {}

    def _new(self, kind, a, b, ka=1.0, kb=1.0) -> int:
        self.ops.append((kind, a, b, ka, kb))
        self.depth.append(1 + max(self.depth[a], self.depth[b]))
        return len(self.depth) - 1

    def _product(self, rows: list[int]) -> int:
        while len(rows) > 1:  # a balanced tree: depth log2(n)
            paired = [self._new("mul", rows[i], rows[i + 1]) for i in range(0, len(rows) - 1, 2)]
            rows = paired + rows[len(paired) * 2 :]
        return rows[0]

    def emit(self, expr, value) -> tuple[int, float]:
        """(row, scale) with expr = scale * row."""
        if expr in value:
            return value[expr]
        if expr in self.memo:
            return self.memo[expr]
        if expr.is_Number:
            if not expr.is_Rational:
                raise _Unsupported(expr)
            result = (self.one, float(expr))
        elif expr.is_Mul:
            scale, rows = 1.0, []
            for factor in expr.args:
                row, k = self.emit(factor, value)
                scale *= k
                if row != self.one:
                    rows.append(row)
            result = (self._product(rows), scale) if rows else (self.one, scale)
        elif expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
            row, k = self.emit(expr.base, value)
            result = (self._product([row] * int(expr.exp)), k ** int(expr.exp))
        elif expr.is_Add:
            terms = [self.emit(term, value) for term in expr.args]
            while len(terms) > 1:
                paired = [
                    (self._new("add", a, b, ka, kb), 1.0)
                    for (a, ka), (b, kb) in zip(terms[0:-1:2], terms[1::2])
                ]
                terms = paired + terms[len(paired) * 2 :]
            result = terms[0]
        else:
            raise _Unsupported(type(expr).__name__)
        self.memo[expr] = result
        return result

    def finish(self, results) -> LevelProgram:
        first = self.one + 1
        # Execution order: by depth, then kind; each (depth, kind) group becomes one step.
        order = sorted(range(len(self.ops)), key=lambda i: (self.depth[first + i], self.ops[i][0]))
        renamed = list(range(first)) + [0] * len(self.ops)
        for position, i in enumerate(order):
            renamed[first + i] = first + position
        steps: list[dict] = []
        for position, i in enumerate(order):
            kind, a, b, ka, kb = self.ops[i]
            key = (self.depth[first + i], kind)
            if not steps or steps[-1]["key"] != key:
                steps.append(dict(key=key, kind=kind, start=first + position, left=[], right=[], ka=[], kb=[]))
            step = steps[-1]
            step["left"].append(renamed[a])
            step["right"].append(renamed[b])
            step["ka"].append(ka)
            step["kb"].append(kb)
        return LevelProgram(
            rows=first + len(self.ops),
            steps=tuple(
                Step(
                    s["kind"], s["start"], tuple(s["left"]), tuple(s["right"]),
                    None if all(k == 1.0 for k in s["ka"]) else tuple(s["ka"]),
                    None if all(k == 1.0 for k in s["kb"]) else tuple(s["kb"]),
                )
                for s in steps
            ),
            outputs=tuple(renamed[row] for row, _ in results),
            output_scale=tuple(scale for _, scale in results),
            operations=len(self.ops),
        )
