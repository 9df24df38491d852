"""solvergen: compile polynomial systems into batched, differentiable PyTorch solvers.

    problem = solvergen.Problem(name, unknowns, parameters, equations)   # in a spec file
    $ solvergen generate problems/p3p.py                                  # -> generated/p3p.py
    solver = solvergen.load("problems/p3p.py")                            # in training code
"""
__version__ = "0.1.0"

from .errors import SpecError  # noqa: E402
from .generate import generate, load  # noqa: E402
from .problem import Problem  # noqa: E402

__all__ = ["Problem", "SpecError", "generate", "load", "__version__"]
