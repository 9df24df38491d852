"""solvergen: compile polynomial systems into batched, differentiable PyTorch solvers.

    problem = solvergen.Problem(name, unknowns, parameters, equations)   # in a spec file
    $ solvergen generate problems/p3p.py                                  # -> generated/p3p.py
    solver = solvergen.load("problems/p3p.py")                            # in training code

The compiler (sympy, jinja2) is imported on first use of these names, so that generated
solvers, which import `solvergen.runtime`, load torch and the standard library only.
"""
import importlib

__version__ = "0.2.0"

_LAZY = {"Problem": ".problem", "SpecError": ".errors", "generate": ".generate", "load": ".generate"}

__all__ = ["Problem", "SpecError", "generate", "load", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'solvergen' has no attribute {name!r}")
