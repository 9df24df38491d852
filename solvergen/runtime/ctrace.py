"""A generated coefficient function traced into straight-line C, for the native kernels.

The generated module holds each formula once, as printed torch code (`_coefficients(_a)`). The
native backend (runtime/native.py) needs the same function in C; rather than a second printer
in the compiler, the printed function is run once on traced values that write one C statement
per operation, as levelwise.py traces it into a vectorised program. The C compiler then
schedules and allocates registers. Supported: +, -, *, / with numbers and values, powers, and
the elementwise torch functions in FUNCTIONS; anything else (`Unsupported`) leaves the problem
with its coefficients computed in torch.

    text = coefficient_source(plan.coefficients, plan.num_parameters, "coefficients")
    # SG_FN void coefficients(const double *a, double *c) { ... }
"""
from __future__ import annotations

import numbers

import torch

FUNCTIONS = {torch.sqrt: "sqrt", torch.exp: "exp", torch.log: "log", torch.sin: "sin", torch.cos: "cos",
             torch.tan: "tan", torch.atan: "atan", torch.tanh: "tanh", torch.abs: "fabs"}


class Unsupported(Exception):
    """The traced function does something that has no straight-line C form here."""


class _Program:
    def __init__(self):
        self.lines: list[str] = []
        self.shared: dict[str, str] = {}  # right-hand side -> its temporary: computed once

    def value(self, text: str) -> "_Value":
        name = self.shared.get(text)
        if name is None:
            name = f"t{len(self.shared)}"
            self.shared[text] = name
            self.lines.append(f"    const double {name} = {text};")
        return _Value(self, name)

    def operand(self, other) -> str:
        if isinstance(other, _Value):
            return other.name
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return repr(float(other))
        raise Unsupported(type(other).__name__)


class _Value:
    """A traced scalar: the name of the C variable that holds it."""

    __slots__ = ("program", "name")

    def __init__(self, program: _Program, name: str):
        self.program, self.name = program, name

    def _binary(self, left, op, right):
        p = self.program
        return p.value(f"{p.operand(left)} {op} {p.operand(right)}")

    def __add__(self, other):
        return self._binary(self, "+", other)

    def __radd__(self, other):
        return self._binary(other, "+", self)

    def __sub__(self, other):
        return self._binary(self, "-", other)

    def __rsub__(self, other):
        return self._binary(other, "-", self)

    def __mul__(self, other):
        return self._binary(self, "*", other)

    def __rmul__(self, other):
        return self._binary(other, "*", self)

    def __truediv__(self, other):
        return self._binary(self, "/", other)

    def __rtruediv__(self, other):
        return self._binary(other, "/", self)

    def __neg__(self):
        return self.program.value(f"-{self.name}")

    def __pos__(self):
        return self

    def __pow__(self, exponent):
        if isinstance(exponent, numbers.Integral) and 1 <= exponent <= 16:
            result = self
            for _ in range(int(exponent) - 1):  # as the torch printer writes small powers: products
                result = result * self
            return result
        if isinstance(exponent, numbers.Real):
            return self.program.value(f"pow({self.name}, {float(exponent)!r})")
        raise Unsupported(f"power {exponent!r}")

    def __rpow__(self, base):
        return self.program.value(f"pow({self.program.operand(base)}, {self.name})")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.stack and len(args) == 1 and not kwargs:
            return _Outputs(list(args[0]))
        if func in FUNCTIONS and len(args) == 1 and not kwargs:
            value = args[0]
            return value.program.value(f"{FUNCTIONS[func]}({value.name})")
        raise Unsupported(getattr(func, "__name__", str(func)))


class _Inputs:
    """Stands for the input tensor [..., inputs]: unpacked into a[0], a[1], ... (names: the
    format of input i's C expression)."""

    def __init__(self, program: _Program, count: int, names: str = "a[{}]"):
        self.program, self.count, self.names = program, count, names
        self.shape = (1, count)  # a batch of one

    def movedim(self, source, destination):
        return self

    def contiguous(self):
        return self

    def unbind(self, dim):
        return tuple(_Value(self.program, self.names.format(i)) for i in range(self.count))

    def new_ones(self, shape):
        return _Value(self.program, "1.0")  # a traced value: torch.stack then sees only traced values


class _Outputs:
    def __init__(self, values):
        self.values = values

    def movedim(self, source, destination):
        return self


def coefficient_source(function, num_inputs: int, name: str, lanes: str | None = None) -> str:
    """`SG_FN void name(const double *a, double *c)` (native/portable.h): c = function(a) for one instance, as C.
    With `lanes` (a macro's name, L): for L instances at once, a [inputs x L] and c [outputs x L]
    lane-minor, each instance's statements those of one instance, in a loop over the lanes that
    the compiler vectorises. Raises Unsupported where the function has no such form."""
    program = _Program()
    try:
        outputs = function(_Inputs(program, num_inputs, f"a[{{}} * {lanes} + r]" if lanes else "a[{}]"))
    except Unsupported:
        raise
    except Exception as error:  # an operation the tracer does not stand for (a tensor method, ...)
        raise Unsupported(f"{type(error).__name__}: {error}") from None
    if not isinstance(outputs, _Outputs):
        raise Unsupported("the function does not return torch.stack(...).movedim(0, -1)")
    if lanes is None:
        lines = [f"SG_FN void {name}(const double *a, double *c) {{", *program.lines]
        lines += [f"    c[{k}] = {program.operand(value)};" for k, value in enumerate(outputs.values)]
        return "\n".join(lines + ["}"]) + "\n"
    lines = [f"SG_FN void {name}(const double *SG_RESTRICT a, double *SG_RESTRICT c) {{",
             f"    for (int r = 0; r < {lanes}; r++) {{", *("    " + line for line in program.lines)]
    lines += [f"        c[{k} * {lanes} + r] = {program.operand(value)};" for k, value in enumerate(outputs.values)]
    return "\n".join(lines + ["    }", "}"]) + "\n"
