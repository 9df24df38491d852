"""Wahba's problem for 4 weighted vector pairs as an `Argmin` over a unit quaternion (the global
forward: all critical points through the elimination template).

The rotation R minimising sum_i w_i |R a_i - b_i|^2 is R(q) for the unit quaternion q that
maximises q^T N q, where N (4 x 4, symmetric) is built from M = sum_i w_i a_i b_i^T (Horn,
"Closed-form solution of absolute orientation using unit quaternions", JOSA A 1987).
Unknowns: q = (q0, q1, q2, q3) (scalar part first). Parameters: the weights w0..w3, the points
a_i (4 x 3, row-major), then b_i (4 x 3). Objective: -q^T N q subject to |q|^2 = 1. The critical
points are N's four eigenvectors, each as +-q (8, an even template); the minimum is the
eigenvector of N's largest eigenvalue, returned with its largest entry positive. R(q) =
the rotation of `rotation(q)` in tests/test_declarative.py.
"""
import random

import sympy as sp

from solvergen import Argmin

PAIRS = 4

q = sp.Matrix(sp.symbols("q0:4"))
w = sp.Matrix(sp.symbols(f"w0:{PAIRS}"))
a = sp.Matrix(PAIRS, 3, sp.symbols(f"a0:{3 * PAIRS}"))
b = sp.Matrix(PAIRS, 3, sp.symbols(f"b0:{3 * PAIRS}"))

M = sum((w[i] * a.row(i).T * b.row(i) for i in range(PAIRS)), sp.zeros(3, 3))
Sxx, Sxy, Sxz, Syx, Syy, Syz, Szx, Szy, Szz = M
N = sp.Matrix([
    [Sxx + Syy + Szz, Syz - Szy, Szx - Sxz, Sxy - Syx],
    [Syz - Szy, Sxx - Syy - Szz, Sxy + Syx, Szx + Sxz],
    [Szx - Sxz, Sxy + Syx, -Sxx + Syy - Szz, Syz + Szy],
    [Sxy - Syx, Szx + Sxz, Syz + Szy, -Sxx - Syy + Szz],
])


def sampler(rng: random.Random):
    """Positive weights, random points and their rotated, noisy images."""
    axis = [rng.gauss(0, 1) for _ in range(3)]
    norm = sum(v * v for v in axis) ** 0.5
    angle = rng.uniform(0, 3.0)
    x, y, z = (v / norm for v in axis)
    c, s = sp.cos(angle).evalf(), sp.sin(angle).evalf()
    R = sp.Matrix([[c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
                   [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
                   [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)]])
    weights = [rng.uniform(0.2, 1.0) for _ in range(PAIRS)]
    points = [sp.Matrix([rng.gauss(0, 1) for _ in range(3)]) for _ in range(PAIRS)]
    images = [R * p + sp.Matrix([rng.gauss(0, 0.05) for _ in range(3)]) for p in points]
    return weights + [float(v) for p in points for v in p] + [float(v) for p in images for v in p]


problem = Argmin("kabsch_quaternion", unknowns=q, parameters=[w, a, b], objective=-(q.T * N * q)[0, 0],
                 equalities=[q.dot(q) - 1], sampler=sampler)
