"""Homography from four point correspondences (DLT), natural form: 1 solution.

Unknowns: the nine entries of H (row-major), p' ~ H p. Parameters: four correspondences
p_i <-> p'_i, [u, v] each: first the four p_i, then the four p'_i. Equations: the cross
product p'_i x (H p_i) = 0 (three per point, two of them independent) and the scale gauge
||H||^2 = 1. The system is linear but for the gauge: the compiler eliminates it with a QR
null space and needs no template. H is returned up to sign (SIGN_GAUGE).
"""
import sympy as sp

from solvergen import Problem

H = sp.Matrix(3, 3, sp.symbols("H0:9"))
p = sp.Matrix(4, 2, sp.symbols(" ".join(f"u{i} v{i}" for i in range(4))))
p2 = sp.Matrix(4, 2, sp.symbols(" ".join(f"u{i}p v{i}p" for i in range(4))))


def homogeneous(row):
    return sp.Matrix([row[0], row[1], 1])


cross = []
for i in range(4):
    cross += list(homogeneous(p2.row(i)).cross(H * homogeneous(p.row(i))))
equations = cross + [sum(h**2 for h in H) - 1]

problem = Problem("homography_4pt", unknowns=H, parameters=[p, p2], equations=equations)
