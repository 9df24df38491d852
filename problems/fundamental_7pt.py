"""Seven-point fundamental matrix in its natural form: 3 solutions.

Unknowns: the nine entries of F (row-major). Parameters: seven correspondences p_i <-> p'_i
in image coordinates, [u, v] each: first the seven p_i, then the seven p'_i. Equations:
p'_i^T F p_i = 0, rank two (det F = 0) and the scale gauge ||F||^2 = 1. F is returned up to
sign (SIGN_GAUGE).
"""
import sympy as sp

from solvergen import Problem

F = sp.Matrix(3, 3, sp.symbols("F0:9"))
p = sp.Matrix(7, 2, sp.symbols(" ".join(f"u{i} v{i}" for i in range(7))))
p2 = sp.Matrix(7, 2, sp.symbols(" ".join(f"u{i}p v{i}p" for i in range(7))))


def homogeneous(row):
    return sp.Matrix([row[0], row[1], 1])


epipolar = [(homogeneous(p2.row(i)).T * F * homogeneous(p.row(i)))[0] for i in range(7)]
equations = epipolar + [F.det(), sum(f**2 for f in F) - 1]

problem = Problem("fundamental_7pt", unknowns=F, parameters=[p, p2], equations=equations)
