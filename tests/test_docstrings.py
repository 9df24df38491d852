"""Generated docstrings are written from data (solvergen/render.py `docstring`): for every kind of
plan, shipped or not, they are grammatical and say what the solver does."""
from __future__ import annotations

import re
import textwrap

import pytest
from conftest import PROBLEMS, ROOT
from test_plan_variants import HEADER, VARIANTS

from solvergen.compiler import compile_problem
from solvergen.render import docstring
from solvergen.spec import load_spec

# Variants with one of everything: one unknown, one parameter, one equation, one solution.
SINGULAR = {
    "cubic": "x, a = sp.symbols('x a')\nproblem = Problem('cubic', [x], [a], [x**3 - a])",
    "one_linear": "x, a = sp.symbols('x a')\nproblem = Problem('one_linear', [x], [a], [2*x - a])",
}
NOUNS = ("solution", "unknown", "parameter", "equation", "declared equation", "pair")


def compiled_variants(tmp_path):
    specs = [ROOT / "problems" / f"{name}.py" for name in PROBLEMS]
    for name, body in [(name, body) for name, (body, _, _) in VARIANTS.items()] + list(SINGULAR.items()):
        spec = tmp_path / f"{name}.py"
        spec.write_text(HEADER + textwrap.dedent(body) + "\n")
        specs.append(spec)
    return [compile_problem(load_spec(spec)) for spec in specs]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return compiled_variants(tmp_path_factory.mktemp("docstrings"))


def sentences(text):
    prose = " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("    "))
    return [s for s in re.split(r"(?<=[.])\s+", prose) if s]


def test_every_variant_is_covered(variants):
    kinds = {
        "even template": any(c.elimination and c.elimination.template.even for c in variants),
        "general action": any(c.elimination and c.elimination.template.action_variable is None for c in variants),
        "even gauge": any(c.linear and c.linear.chart and c.linear.gauge_degree % 2 == 0 for c in variants),
        "odd gauge": any(c.linear and c.linear.chart and c.linear.gauge_degree % 2 == 1 for c in variants),
        "linear only, homogeneous": any(c.linear and not c.elimination and c.linear.homogeneous for c in variants),
        "linear only, inhomogeneous": any(c.linear and not c.elimination and not c.linear.homogeneous
                                          for c in variants),
        "linear, affine, template": any(c.linear and c.elimination and not c.linear.chart for c in variants),
        "one equation": any(len(c.system.equations) == 1 for c in variants),
        "one solution": any(c.num_solutions == 1 for c in variants),
    }
    assert all(kinds.values()), kinds


def test_docstrings_are_grammatical(variants):
    for compiled in variants:
        text = docstring(compiled)
        name = compiled.problem.name
        for noun in NOUNS:
            assert not re.search(rf"\b1 {noun}s\b", text), (name, noun, text)
            assert not re.search(rf"\b(?:[02-9]|\d\d+) {noun}\b(?!s)", text.replace("1 x ", "")), (name, noun, text)
        prose = [line for line in text.splitlines() if not line.startswith("    ")]  # (not the example)
        assert not any("  " in line or " ," in line or ".." in line for line in prose), (name, text)
        for sentence in sentences(text.split("\n\n", 2)[-1]):
            assert sentence[0].isupper() or sentence[0] in "`(", (name, sentence)
            assert sentence.endswith((".", ":")), (name, sentence)


def test_docstrings_say_what_the_solver_does(variants):
    for compiled in variants:
        text = " ".join(docstring(compiled).split())
        linear, elimination = compiled.linear, compiled.elimination
        assert "float64" in text and "float32" in text
        assert ("linear in the unknowns" in text) == (linear is not None)
        assert ("elimination template" in text) == (elimination is not None)
        if elimination is not None and elimination.template.even:
            assert "negatives of the others" in text
        if linear is not None and linear.chart:
            parity = "even" if linear.gauge_degree % 2 == 0 else "odd"
            assert f"of {parity} degree {linear.gauge_degree}" in text
            assert ("up to sign" in text) == (parity == "even")
        k = len(compiled.system.equations)
        assert bool(re.search(r"the declared equation\b(?!s)", text)) == (k == 1)
        assert ("polished by Newton steps" in text) == (elimination is not None)  # linear-only: none
        assert f"({compiled.num_solutions} solution" in text
