"""Five-point relative pose in its natural form (MinBackProp, Section 6.2): 10 solutions.

Unknowns: the nine entries of the essential matrix E (row-major). Parameters: five
correspondences q_i <-> q'_i in calibrated (normalised) image coordinates, [u, v] each:
first the five q_i, then the five q'_i. Equations: the epipolar constraints
q'_i^T E q_i = 0 (homogeneous coordinates [u, v, 1]), the trace constraints
2 E E^T E - tr(E E^T) E = 0, det(E) = 0, and the scale gauge ||E||^2 = 1. E is returned up to
sign (SIGN_GAUGE); compare with a reference up to sign, e.g. with `Solver.select`.
"""
import sympy as sp

from solvergen import Problem

E = sp.Matrix(3, 3, sp.symbols("E0:9"))
q = sp.Matrix(5, 2, sp.symbols("u0 v0 u1 v1 u2 v2 u3 v3 u4 v4"))
q2 = sp.Matrix(5, 2, sp.symbols("u0p v0p u1p v1p u2p v2p u3p v3p u4p v4p"))


def homogeneous(row):
    return sp.Matrix([row[0], row[1], 1])


epipolar = [(homogeneous(q2.row(i)).T * E * homogeneous(q.row(i)))[0] for i in range(5)]
trace = list(2 * E * E.T * E - (E * E.T).trace() * E)
equations = epipolar + trace + [E.det(), sum(e**2 for e in E) - 1]

problem = Problem("relpose_5pt", unknowns=E, parameters=[q, q2], equations=equations)
