"""`solvergen.load` regenerates a module whenever what shaped it changed: the spec, a helper
module the spec imports, the compiler's sources, the runtime interface; and only then."""
from __future__ import annotations

import shutil
import textwrap

import pytest
import torch

import solvergen
from solvergen import generate as generation
from solvergen.render import templates_dir
from solvergen.spec import read_spec

SPEC = textwrap.dedent("""
    import sympy as sp
    from solvergen import Problem
    from helper import offset

    x, y, a = sp.symbols("x y a")
    problem = Problem("with_helper", [x, y], [a], [x**2 + y**2 - a, x - y - offset()])
""")


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "helper.py").write_text("def offset():\n    return 1\n")
    path = tmp_path / "with_helper.py"
    path.write_text(SPEC)
    return path


def load(spec, capsys):
    """Solver of `spec` through load, and what load said."""
    solver = solvergen.load(spec, out_dir=spec.parent / "generated")
    return solver, capsys.readouterr().err.strip()


def offset_of(solver) -> float:
    """x - y at the solutions for a = 10: the helper's offset as the generated solver has it."""
    solutions, valid = solver(torch.tensor([[10.0]], dtype=torch.float64))
    differences = (solutions[..., 0] - solutions[..., 1])[valid]
    assert len(differences) == 2
    return float(differences.mean())


def test_helper_modules_are_part_of_the_spec(spec):
    read = read_spec(spec)
    assert [p.name for p in read.helpers] == ["helper.py"]
    before = read.sha256()
    (spec.parent / "helper.py").write_text("def offset():\n    return 2\n")
    assert read_spec(spec).sha256() != before


def test_load_regenerates_only_when_something_changed(spec, capsys, monkeypatch):
    target = spec.parent / "generated" / "with_helper.py"
    solver, said = load(spec, capsys)
    assert "(not generated yet)" in said and target.is_file() and offset_of(solver) == pytest.approx(1, abs=1e-12)
    written = target.stat().st_mtime_ns
    _, said = load(spec, capsys)  # nothing changed: nothing said, nothing written
    assert said == "" and target.stat().st_mtime_ns == written

    # A helper module the spec imports.
    (spec.parent / "helper.py").write_text("def offset():\n    return 2\n")
    solver, said = load(spec, capsys)
    assert said.count("\n") == 0 and "the spec or a module it imports changed" in said
    assert offset_of(solver) == pytest.approx(2, abs=1e-12)  # the new helper, not a cached one

    # The compiler: a copy of its sources, then with one file changed.
    sources = []
    for i, source in enumerate(generation.compiler_sources()):
        sources.append(spec.parent / "compiler" / f"{i}_{source.name}")
        sources[-1].parent.mkdir(exist_ok=True)
        shutil.copy(source, sources[-1])
    monkeypatch.setattr(generation, "compiler_sources", lambda: sources)
    _, said = load(spec, capsys)
    assert "the compiler changed" in said  # (the copies' names differ from the originals')
    _, said = load(spec, capsys)
    assert said == ""
    sources[0].write_text(sources[0].read_text() + "\n# an edit\n")
    _, said = load(spec, capsys)
    assert "the compiler changed" in said


def test_compiler_sources_cover_the_compiler_and_templates():
    names = {p.relative_to(p.parent.parent).as_posix() for p in generation.compiler_sources()}
    package = {f"solvergen/{p.name}" for p in generation.Path(generation.__file__).parent.glob("*.py")}
    assert package <= names and "runtime/plan.py" in names
    assert {f"{templates_dir().name}/{p.name}" for p in templates_dir().glob("*.jinja")} <= names
