"""Example 1 of "Implicit layers" (Zhang et al.) as an `Implicit` layer: the same system as
problems/implicit_example.py (a `Problem`), solved from a start point instead of for all its
solutions.

F1 = x^2 + y1^2 + y2^2 - 4 = 0, F2 = x y1 - 1 = 0 with unknowns y1, y2 and parameter x; from the
default start (1, 1) Newton reaches the solution y1 = 1/x, y2 = +sqrt(4 - x^2 - 1/x^2).
"""
import sympy as sp

from solvergen import Implicit

x, y1, y2 = sp.symbols("x y1 y2")

problem = Implicit(
    "implicit_example_layer",
    unknowns=[y1, y2],
    parameters=[x],
    equations=[x**2 + y1**2 + y2**2 - 4, x * y1 - 1],
    init=[1, 1],
)
