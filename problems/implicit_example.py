"""Example 1 of "Implicit layers" (Zhang et al.): 2 solutions.

F1 = x^2 + y1^2 + y2^2 - 4 = 0, F2 = x y1 - 1 = 0 with unknowns y1, y2 and parameter x:
y1 = 1/x, y2 = +-sqrt(4 - x^2 - 1/x^2).
"""
import sympy as sp

from solvergen import Problem

x, y1, y2 = sp.symbols("x y1 y2")

problem = Problem(
    "implicit_example",
    unknowns=[y1, y2],
    parameters=[x],
    equations=[x**2 + y1**2 + y2**2 - 4, x * y1 - 1],
)
