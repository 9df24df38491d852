"""Weighted rotation fit (Wahba's problem) as Horn's quaternion eigenproblem: 8 solutions.

The rotation R minimising sum_i w_i ||R p_i - q_i||^2 is R(q) for the unit quaternion q that
maximises q^T N(M) q, M = sum_i w_i p_i q_i^T (Horn, "Closed-form solution of absolute
orientation using unit quaternions", JOSA A 1987): the eigenvector of N's largest eigenvalue.
Unknowns: q (4) and the eigenvalue lam; parameters: M (3 x 3, row-major). Equations:
N q = lam q and |q|^2 = 1. Its solutions are N's four eigenpairs, each with +-q (the
equations are odd or even in q: an even template). Used by examples/registration_toy.py.
"""
import sympy as sp
from solvergen import Problem

q = sp.Matrix(sp.symbols("q0:4"))
lam = sp.Symbol("lam")
M = sp.Matrix(3, 3, sp.symbols("M0:9"))  # sum_i w_i p_i q_i^T
Sxx, Sxy, Sxz, Syx, Syy, Syz, Szx, Szy, Szz = M
N = sp.Matrix([
    [Sxx + Syy + Szz, Syz - Szy, Szx - Sxz, Sxy - Syx],
    [Syz - Szy, Sxx - Syy - Szz, Sxy + Syx, Szx + Sxz],
    [Szx - Sxz, Sxy + Syx, -Sxx + Syy - Szz, Syz + Szy],
    [Sxy - Syx, Szx + Sxz, Syz + Szy, -Sxx - Syy + Szz],
])
equations = list(N * q - lam * q) + [q.dot(q) - 1]
problem = Problem("horn_rotation", unknowns=[q, lam], parameters=M, equations=equations)
