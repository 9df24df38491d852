"""Print sympy expressions as batched torch code, after common-subexpression elimination.

Every symbol is a tensor of the batch shape; numbers stay Python numbers so that dtype and
device follow the inputs. sympy's Python printer is reused; what it prints badly for tensors
is fixed here: small integer powers become products (torch.pow is slower and less exact),
integers and rationals become float literals.
"""
from __future__ import annotations

import keyword
import re

import sympy as sp
from sympy.printing.precedence import precedence
from sympy.printing.pycode import PythonCodePrinter


INLINE = 80  # characters: single-use assignments up to this length are written into their reader
_NAME = re.compile(r"[A-Za-z_]\w*")


# sympy function -> torch function (elementwise), for the declarative layers' expressions
# (the non-smooth ones apply to parameters only: the compiler refuses them of an unknown).
TORCH_FUNCTIONS = {
    name: name for name in ("exp", "log", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
                            "tanh", "asinh", "acosh", "atanh", "erf")
} | {"Abs": "abs", "sign": "sign", "floor": "floor", "ceiling": "ceil"}


class TorchPrinter(PythonCodePrinter):
    def __init__(self, names: dict[sp.Symbol, str]):
        super().__init__({"fully_qualified_modules": False, "standard": "python3"})
        self._names = names
        self._denominators: frozenset = frozenset()

    def _print_Symbol(self, expr):
        return self._names.get(expr, expr.name)

    def _print_Max(self, expr, keep=">="):
        # torch.where takes a Python number on either side; torch.maximum does not
        first, *rest = expr.args
        other = self._print(type(expr)(*rest)) if len(rest) > 1 else self._print(rest[0])
        a = self._print(first)
        return f"torch.where({a} {keep} {other}, {a}, {other})"

    def _print_Min(self, expr):
        return self._print_Max(expr, keep="<=")

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        at_zero = self._print(expr.args[1]) if len(expr.args) > 1 else "0.5"
        return f"torch.where({x} > 0, 1.0, torch.where({x} < 0, 0.0, {at_zero}))"

    def _print_Derivative(self, expr):
        if isinstance(expr.expr, (sp.floor, sp.ceiling)):  # sympy leaves these unevaluated
            return "0.0"
        return super()._print_Derivative(expr)

    def _print_DiracDelta(self, expr):
        # the derivative of sign(a) or Heaviside(a) (and of floor, ceiling) of a parameter: zero
        # wherever it is defined (torch's autograd gives the same); at the jumps it has none
        return "0.0"

    def _print_Mul(self, expr):
        # sympy prints a denominator x**2 of a product as "/" + its text without parentheses
        # (a power binds tighter than "/"), which for our "x*x" would read a/x*x: mark them.
        saved = self._denominators
        self._denominators = saved | {sp.Pow(f.base, -f.exp, evaluate=False) for f in expr.args
                                      if f.is_Pow and f.exp.is_Integer and -4 <= f.exp <= -2}
        try:
            return super()._print_Mul(expr)
        finally:
            self._denominators = saved

    def _print_Add(self, expr, order=None):
        # "b - a" rather than sympy's "-a + b": one tensor operation fewer (no negation), the same
        # value to the bit (-a + b and b - a round alike). Longer sums keep sympy's order: moving
        # a term would change how they round.
        terms = self._as_ordered_terms(expr, order=order)
        if len(terms) == 2:
            first, second = (self._print(term) for term in terms)
            if first.startswith("-") and not second.startswith("-") and not terms[0].is_Add:
                if precedence(terms[1]) < precedence(expr):
                    second = f"({second})"
                rest = first[1:]
                if precedence(terms[0]) < precedence(expr) or precedence(-terms[0]) <= precedence(expr):
                    rest = f"({rest})" if not (rest.startswith("(") and rest.endswith(")")) else rest
                return f"{second} - {rest}"
        return super()._print_Add(expr, order=order)

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.as_base_exp()
        if exp.is_Integer and 2 <= exp <= 4:
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"], strict=True)
            text = "*".join([b] * int(exp))
            return f"({text})" if expr in self._denominators else text
        if exp.is_Integer and exp == -1:
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"], strict=True)
            return f"1.0/{b}"
        if exp.is_Integer and -4 <= exp <= -2:
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"], strict=True)
            return f"1.0/({'*'.join([b] * -int(exp))})"
        if exp == sp.S.Half:
            return f"torch.sqrt({self._print(base)})"
        if exp == -sp.S.Half:
            return f"1.0/torch.sqrt({self._print(base)})"
        if exp.is_Integer:  # an integer exponent stays an int
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Pow"], strict=True)
            return f"{b}**{int(exp)}"
        return super()._print_Pow(expr, rational=rational)

    def _print_NumberSymbol(self, expr):  # pi, E, ...: float literals
        return repr(float(expr))

    _print_Pi = _print_Exp1 = _print_EulerGamma = _print_GoldenRatio = _print_NumberSymbol

    def _print_torch_function(self, expr):
        return f"torch.{TORCH_FUNCTIONS[type(expr).__name__]}({', '.join(self._print(arg) for arg in expr.args)})"

    def _print_Rational(self, expr):
        return repr(float(expr))

    def _print_Half(self, expr):
        return "0.5"

    def _print_Integer(self, expr):
        # A float literal: torch converts a Python int operand to the tensor's dtype on every
        # operation (about 1.5 us per operation on the CPU).
        return f"{int(expr)}.0"


for _name in TORCH_FUNCTIONS:  # sympy's printer dispatches on _print_<class name>
    setattr(TorchPrinter, f"_print_{_name}", TorchPrinter._print_torch_function)


def identifier(name: str, taken: set[str]) -> str:
    """A readable Python identifier for a symbol name, unique within `taken`."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    if not out or out[0].isdigit() or out[0] == "_":  # leading "_" is kept for generated names
        out = "s_" + out.lstrip("_")
    if keyword.iskeyword(out) or out in {"torch", "math"}:
        out += "_"
    base, i = out, 1
    while out in taken:
        out = f"{base}_{i}"
        i += 1
    taken.add(out)
    return out


def print_with_cse(
    outputs: list[sp.Expr], names: dict[sp.Symbol, str], temp_prefix: str
) -> tuple[list[str], list[str]]:
    """CSE the outputs; return assignment lines `t = ...` and the printed outputs."""
    replacements, reduced = sp.cse(outputs, symbols=sp.numbered_symbols(temp_prefix))
    replacements, reduced = name_power_bases(replacements, reduced, temp_prefix)
    replacements, reduced = share_square_roots(replacements, reduced, temp_prefix)
    return print_program(replacements, reduced, names)


def _repeated_base(node) -> bool:
    """A power that is printed with its base written more than once (b*b, 1.0/(b*b*b)), or
    that `share_square_roots` turns into products of sqrt(b), with a base that is not a name."""
    if not node.is_Pow or node.base.is_Atom:
        return False
    exp = node.exp
    return (exp.is_Integer and 2 <= abs(exp) <= 4) or (exp.is_Rational and exp.q == 2 and exp != sp.S.Half
                                                        and exp != -sp.S.Half)


def name_power_bases(replacements, reduced, temp_prefix: str):
    """After CSE: the base of every `_repeated_base` power gets a name of its own, assigned
    just before its first reader, so that (x k - y + b)**2 is computed once and squared, not
    written out twice, and (1 + r^2)**-1.5 becomes products of one square root."""
    names: dict[sp.Expr, sp.Symbol] = {}
    out: list[tuple[sp.Symbol, sp.Expr]] = []

    def rewrite(e, own=None):  # own: the base being assigned, which keeps its expression
        for node in sorted({n for n in sp.preorder_traversal(e) if _repeated_base(n)}, key=sp.default_sort_key):
            if node.base not in names and node.base != own:
                value = rewrite(node.base, own=node.base)  # names its own bases first
                names[node.base] = sp.Symbol(f"{temp_prefix}base{len(names)}")
                out.append((names[node.base], value))
        return e.xreplace({b: s for b, s in names.items() if b != own})

    for sym, value in replacements:
        value = rewrite(value)
        out.append((sym, value))
    return out, [rewrite(e) for e in reduced]


def _half_power(node) -> bool:
    return node.is_Pow and node.base.is_Symbol and node.exp.is_Rational and node.exp.q == 2


def share_square_roots(replacements, reduced, temp_prefix: str):
    """After CSE: every power b**(k/2) of a symbol b becomes r**k with r = sqrt(b) assigned once,
    right after b (or first, for an input). torch's pow is slow (b**-1.5 costs about three square
    roots on the CPU), and the pseudo-Huber and similar derivatives use sqrt(b), 1/sqrt(b) and
    b**-1.5 of the same b: one sqrt and a few products instead."""
    exprs = [e for _, e in replacements] + list(reduced)
    bases = sorted({node.base for e in exprs for node in sp.preorder_traversal(e) if _half_power(node)}, key=str)
    if not bases:
        return replacements, reduced
    roots = {b: sp.Symbol(f"{temp_prefix}sqrt{i}") for i, b in enumerate(bases)}

    def rewrite(e):
        return e.replace(_half_power, lambda node: roots[node.base] ** int(2 * node.exp))

    assigned = {sym for sym, _ in replacements}
    out = [(roots[b], sp.sqrt(b)) for b in bases if b not in assigned]
    for sym, value in replacements:
        out.append((sym, rewrite(value)))
        if sym in roots:
            out.append((roots[sym], sp.sqrt(sym)))
    return out, [rewrite(e) for e in reduced]


def print_program(
    assignments: list[tuple[sp.Symbol, sp.Expr]],
    outputs: list[sp.Expr],
    names: dict[sp.Symbol, str],
    inline: int = INLINE,
    printer: TorchPrinter | None = None,
) -> tuple[list[str], list[str]]:
    """Print straight-line code: assignment lines `t = ...` and the outputs. An assignment read
    exactly once is written into its reader, parenthesized, where its text has at most
    `inline` characters: the same operations in the same order, with fewer names. `printer`:
    one built on `names` (plus the assignments' names), instead of a TorchPrinter."""
    names = names if printer is not None else dict(names)
    for sym, _ in assignments:
        names.setdefault(sym, sym.name)
    printer = printer if printer is not None else TorchPrinter(names)
    targets = [printer.doprint(sym) for sym, _ in assignments]
    texts = [printer.doprint(expr) for _, expr in assignments] + [printer.doprint(expr) for expr in outputs]
    reader: dict[str, list[int]] = {}  # assigned name -> indices of the texts that read it
    for i, text in enumerate(texts):
        for name in _NAME.findall(text):
            reader.setdefault(name, []).append(i)
    kept = []
    for i, target in enumerate(targets):
        readers = reader.get(target, [])
        if len(readers) == 1 and readers[0] > i and len(texts[i]) <= inline:
            j, bare = readers[0], texts[i]
            wrapped = bare if _NAME.fullmatch(bare) else f"({bare})"

            def value(match, text=texts[j], bare=bare, wrapped=wrapped):  # f(t) -> f(...), not f((...))
                start, end = match.span()
                alone = start > 0 and text[start - 1] == "(" and text[end:end + 1] == ")"
                return bare if alone else wrapped
            texts[j] = re.sub(rf"\b{re.escape(target)}\b", value, texts[j])
        else:
            kept.append(i)
    lines = [f"{targets[i]} = {texts[i]}" for i in kept]
    return lines, texts[len(targets):]


def _split_top_level(rhs: str) -> list[str]:
    """Split an expression at its top-level ' + ' / ' - ' operators (keeping the signs)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(rhs):
        ch = rhs[i]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and rhs.startswith((" + ", " - "), i):
            parts.append(rhs[start:i])
            start = i + 1  # keep the sign with the next term
            i += 3
            continue
        i += 1
    parts.append(rhs[start:])
    return parts


def wrap_expression(text: str, indent: int, width: int = 100) -> list[str]:
    """Lines for `text` (an expression) at `indent`, wrapped at top-level +/- inside parentheses."""
    pad = " " * indent
    if indent + len(text) <= width:
        return [pad + text]
    terms = _split_top_level(text)
    if len(terms) == 1:
        return [pad + text]
    inner = " " * (indent + 4)
    lines, current = [pad + "("], terms[0]
    for term in terms[1:]:
        if len(inner) + len(current) + 1 + len(term) > width:
            lines.append(inner + current)
            current = term
        else:
            current = f"{current} {term}"
    lines.append(inner + current)
    lines.append(pad + ")")
    return lines


def wrap_assignment(name: str, text: str, indent: int, width: int = 100) -> list[str]:
    lines = wrap_expression(text, indent + len(name) + 3, width)
    if len(lines) == 1:
        return [" " * indent + f"{name} = {text}"]
    body = wrap_expression(text, indent, width)
    return [" " * indent + f"{name} = " + body[0].lstrip()] + body[1:]
