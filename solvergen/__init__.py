"""solvergen: compile polynomial systems into batched, differentiable PyTorch solvers.

    problem = solvergen.Problem(name, unknowns, parameters, equations)   # in a spec file
    $ solvergen generate problems/p3p.py                                  # -> generated/p3p.py
    solver = solvergen.load("problems/p3p.py")                            # in training code

The compiler (sympy, jinja2) is imported on first use of these names, so that generated
solvers, which import `solvergen.runtime`, load torch and the standard library only.
"""
import importlib

__version__ = "0.2.0"

_LAZY = {
    "Argmin": ".declarative",
    "Implicit": ".declarative",
    "Problem": ".problem",
    "SpecError": ".errors",
    "blackbox": ".blackbox_layer",
    "generate": ".generate",
    "load": ".generate",
}

__all__ = ["Argmin", "Implicit", "Problem", "SpecError", "generate", "load", "blackbox", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        # Bind every lazy name of that submodule here: importing .generate bound the package
        # attribute `generate` to the submodule, which would shadow the function from now on.
        globals().update({lazy: getattr(module, lazy) for lazy, where in _LAZY.items() if where == _LAZY[name]})
        return globals()[name]
    raise AttributeError(f"module 'solvergen' has no attribute {name!r}")
