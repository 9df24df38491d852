"""The level-wise form of a generated coefficient function, for small batches.

Printed straight-line code runs one PyTorch operation per arithmetic operation: about 2 us each
on the CPU whatever the batch, so the 5-point coefficients (about 3,700 operations) take 7 ms
even for one instance. Here every binary operation gets a row of a value table [rows, batch];
operations of the same depth and kind run as one vectorized step (gather two sets of rows,
multiply or add, write a block of rows). The 5-point program has about 15 such steps: 0.3 ms
for one instance instead of 11. For large batches the straight-line code is faster (each
operation's vectors stay in cache), so `coefficients.by_size` chooses by batch size.

The program is derived from the generated function itself, once per plan, by running it on
traced values (`trace`): the generated module holds the formula once, and the runtime decides
how to run it. Sums and products are kept n-ary while tracing and evaluated as balanced trees
(depth log2(n)); numeric factors become scales of the rows, and identical operations are
shared. Anything but +, -, * and integer powers (a division, say) leaves the function without
a level-wise form.

Rows: the inputs, then a row of ones, then one row per operation in execution order.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class ProgramStep:
    """One vectorized step: rows start, start + 1, ... get left * right ("mul") or
    left_scale * left + right_scale * right ("add"; None: ones)."""

    kind: str
    start: int
    left: tuple[int, ...]
    right: tuple[int, ...]
    left_scale: Optional[tuple[float, ...]] = None
    right_scale: Optional[tuple[float, ...]] = None


@dataclass(frozen=True)
class LevelProgram:
    """Rows: the inputs, a row of ones, then one row per operation. Output i is
    output_scale[i] * row outputs[i]."""

    rows: int
    steps: tuple[ProgramStep, ...]
    outputs: tuple[int, ...]
    output_scale: tuple[float, ...]

    @property
    def operations(self) -> int:
        return sum(len(step.left) for step in self.steps)


class Unsupported(Exception):
    """The traced function does something that has no level-wise form."""


def trace(function, num_inputs: int) -> LevelProgram:
    """The level-wise program of a generated coefficient function of `num_inputs` inputs.
    Raises Unsupported where it has none."""
    builder = _Builder(num_inputs)
    outputs = function(_Inputs(builder))
    if not isinstance(outputs, _Outputs):
        raise Unsupported("the function does not return torch.stack(...).movedim(0, -1)")
    return builder.finish([builder.row(value) for value in outputs.values])


def level_program(function, num_inputs: int) -> LevelProgram | None:
    """`trace(function, num_inputs)` where it exists and pays (`worthwhile`), else None."""
    try:
        program = trace(function, num_inputs)
    except Unsupported:
        return None
    return program if worthwhile(program) else None


def worthwhile(program: LevelProgram) -> bool:
    """Whether the level-wise form beats straight-line code on small batches: each step costs
    about five tensor operations, so it needs many operations per step (measured: the
    5-point's 3,700 operations in 14 steps run 4x faster at batch 1; P3P's 66 in 6 do not)."""
    return program.operations >= 256 and program.operations >= 32 * len(program.steps)


# -- Tracing ---------------------------------------------------------------------------------


class _Value:
    """A traced value: `scale * row`, or a sum or product not yet written to rows (kept n-ary
    so that it is evaluated as a balanced tree)."""

    __slots__ = ("builder", "kind", "parts", "scale", "_row")

    def __init__(self, builder, kind, parts, scale=1.0):
        self.builder, self.kind, self.parts, self.scale = builder, kind, parts, scale
        self._row = None  # (row, scale), once written

    # Operators of the printed code: +, -, * with numbers or values, integer powers.
    def __add__(self, other):
        return self.builder.add(self, other, 1.0)

    def __radd__(self, other):
        return self.builder.add(other, self, 1.0)

    def __sub__(self, other):
        return self.builder.add(self, other, -1.0)

    def __rsub__(self, other):
        return self.builder.add(other, self, -1.0)

    def __neg__(self):
        return self.builder.scaled(self, -1.0)

    def __pos__(self):
        return self

    def __mul__(self, other):
        return self.builder.multiply(self, other)

    __rmul__ = __mul__

    def __pow__(self, exponent):
        if not isinstance(exponent, numbers.Integral) or exponent < 1:
            raise Unsupported(f"power {exponent!r}")
        result = self
        for _ in range(int(exponent) - 1):
            result = self.builder.multiply(result, self)
        return result

    def __truediv__(self, other):
        raise Unsupported("division")

    __rtruediv__ = __truediv__

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.stack and not kwargs and len(args) == 1:
            return _Outputs(list(args[0]))
        raise Unsupported(getattr(func, "__name__", str(func)))


class _Inputs:
    """Stands for the function's input tensor [..., inputs]: unpacked into one traced row each."""

    shape = (None, None)

    def __init__(self, builder):
        self.builder = builder

    def movedim(self, source, destination):
        return self

    def contiguous(self):
        return self

    def unbind(self, dim):
        return tuple(_Value(self.builder, "row", i) for i in range(self.builder.one))

    def new_ones(self, shape):
        return _Value(self.builder, "row", self.builder.one)


class _Outputs:
    """What torch.stack of the outputs returns while tracing."""

    def __init__(self, values):
        self.values = values

    def movedim(self, source, destination):
        return self


class _Builder:
    """Collects the operations (kind, left row, right row, left scale, right scale)."""

    def __init__(self, num_inputs: int):
        self.one = num_inputs  # the row of ones
        self.ops: list[tuple[str, int, int, float, float]] = []
        self.depth = [0] * (num_inputs + 1)
        self.shared: dict = {}  # operation -> its row: identical operations are computed once

    def _value(self, other):
        if isinstance(other, _Value):
            return other
        if isinstance(other, numbers.Real):
            return _Value(self, "row", self.one, float(other))
        raise Unsupported(type(other).__name__)

    def scaled(self, value, scale):
        if value.kind == "row":
            return _Value(self, "row", value.parts, value.scale * scale)
        return _Value(self, value.kind, value.parts, value.scale * scale)

    def add(self, left, right, sign):
        terms = []
        for value, s in ((self._value(left), 1.0), (self._value(right), sign)):
            if value.kind == "sum" and value._row is None:
                terms.extend(self.scaled(term, value.scale * s) for term in value.parts)
            else:
                terms.append(self.scaled(value, s))
        return _Value(self, "sum", terms)

    def multiply(self, left, right):
        factors, scale = [], 1.0
        for value in (self._value(left), self._value(right)):
            if value.kind == "row" and value.parts == self.one:
                scale *= value.scale  # a number
            elif value.kind == "product" and value._row is None:
                scale *= value.scale
                factors.extend(value.parts)
            else:
                factors.append(value)  # (its scale is applied when the product is written)
        if not factors:
            return _Value(self, "row", self.one, scale)
        return _Value(self, "product", factors, scale)

    def _new(self, kind, a, b, ka=1.0, kb=1.0) -> int:
        key = (kind, a, b, ka, kb)
        if key not in self.shared:
            self.ops.append(key)
            self.depth.append(1 + max(self.depth[a], self.depth[b]))
            self.shared[key] = len(self.depth) - 1
        return self.shared[key]

    def row(self, value) -> tuple[int, float]:
        """(row, scale) with value = scale * row, writing pending sums and products to rows."""
        value = self._value(value)
        if value.kind == "row":
            return value.parts, value.scale
        if value._row is None:
            if value.kind == "product":
                rows, scale = [], 1.0
                for factor in value.parts:
                    row, k = self.row(factor)
                    scale *= k
                    if row != self.one:
                        rows.append(row)
                while len(rows) > 1:  # a balanced tree: depth log2(n)
                    paired = [self._new("mul", rows[i], rows[i + 1]) for i in range(0, len(rows) - 1, 2)]
                    rows = paired + rows[len(paired) * 2 :]
                value._row = (rows[0] if rows else self.one, scale)
            else:
                terms = [self.row(term) for term in value.parts]
                while len(terms) > 1:
                    paired = [
                        (self._new("add", a, b, ka, kb), 1.0) for (a, ka), (b, kb) in zip(terms[0:-1:2], terms[1::2])
                    ]
                    terms = paired + terms[len(paired) * 2 :]
                value._row = terms[0]
        row, scale = value._row
        return row, scale * value.scale

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
                ProgramStep(
                    s["kind"], s["start"], tuple(s["left"]), tuple(s["right"]),
                    None if all(k == 1.0 for k in s["ka"]) else tuple(s["ka"]),
                    None if all(k == 1.0 for k in s["kb"]) else tuple(s["kb"]),
                )
                for s in steps
            ),
            outputs=tuple(renamed[row] for row, _ in results),
            output_scale=tuple(scale for _, scale in results),
        )
