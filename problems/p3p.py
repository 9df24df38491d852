"""P3P, depth formulation (MinBackProp, Example 1): 8 solutions.

Unknowns: the depths x1, x2, x3 of three 3D points A1, A2, A3 along their calibrated image
rays a1, a2, a3 (homogeneous, not necessarily unit). The distances between the points are
preserved: ||Ai - Aj||^2 = ||xi ai - xj aj||^2. Parameter layout [A1; A2; A3; a1; a2; a3].
"""
import sympy as sp

from solvergen import Problem

x = sp.Matrix(sp.symbols("x1:4"))
A = [sp.Matrix(sp.symbols(f"A{i}_x A{i}_y A{i}_z")) for i in (1, 2, 3)]
a = [sp.Matrix(sp.symbols(f"a{i}_x a{i}_y a{i}_z")) for i in (1, 2, 3)]


def squared_norm(v):
    return v.dot(v)


equations = [
    squared_norm(A[i] - A[j]) - squared_norm(x[i] * a[i] - x[j] * a[j])
    for i, j in ((0, 1), (1, 2), (2, 0))
]

problem = Problem("p3p", unknowns=x, parameters=A + a, equations=equations)
