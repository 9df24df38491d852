"""Shared fixtures: the committed generated modules, and paths."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import geometry`

PROBLEMS = sorted(p.stem for p in (ROOT / "problems").glob("*.py"))

# Known limitations, measured and kept visible: strict xfails, so that a fix makes them fail.
FLOAT32_SOLVE_LIMITATIONS = {
    "p35pf": "precision='float32' on its 97 x 113 template finds the truth (1e-3) on 93% of "
             "instances, under the 95% bar (float64: 100%)",
}


def float32_solve_cases():
    """PROBLEMS for the precision='float32' accuracy tests, known limitations as strict xfails."""
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=FLOAT32_SOLVE_LIMITATIONS[name]))
            if name in FLOAT32_SOLVE_LIMITATIONS else name for name in PROBLEMS]


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite generated/ from problems/ instead of comparing with it",
    )


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


_modules = {}


def generated_module(name: str):
    """The committed generated module for problem `name` (imported once per session)."""
    from solvergen.generate import import_generated

    if name not in _modules:
        _modules[name] = import_generated(ROOT / "generated" / f"{name}.py")
    return _modules[name]
