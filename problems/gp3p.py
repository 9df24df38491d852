"""Generalized P3P (gP3P), depth formulation: 8 solutions.

A generalized camera (a multi-camera rig) sees three 3D points along rays that need not share
a centre: ray i starts at c_i and has direction d_i (rig frame, d_i not necessarily unit).
Unknowns: the depths l1, l2, l3 with the points at c_i + l_i d_i. The distances between the
points are those of the world points X_i:
||(c_i + l_i d_i) - (c_j + l_j d_j)||^2 = ||X_i - X_j||^2. The rig pose then follows from the
three point pairs. Parameter layout [X1; X2; X3; c1; c2; c3; d1; d2; d3].

PoseLib's `gp3p` (Kukelova, Heller, Pajdla: a minimal solution to the generalized 3-point pose
problem, CVPR 2016 / JMIV) solves the same problem; tests/test_poselib.py compares them.
"""
from fractions import Fraction

import sympy as sp

from solvergen import Problem

depths = sp.Matrix(sp.symbols("l1:4"))
X = [sp.Matrix(sp.symbols(f"X{i}_x X{i}_y X{i}_z")) for i in (1, 2, 3)]
c = [sp.Matrix(sp.symbols(f"c{i}_x c{i}_y c{i}_z")) for i in (1, 2, 3)]
d = [sp.Matrix(sp.symbols(f"d{i}_x d{i}_y d{i}_z")) for i in (1, 2, 3)]


def squared_norm(v):
    return v.dot(v)


points = [c[i] + depths[i] * d[i] for i in range(3)]
equations = [
    squared_norm(points[i] - points[j]) - squared_norm(X[i] - X[j])
    for i, j in ((0, 1), (1, 2), (2, 0))
]


def sampler(rng):
    """A random rig pose (rotation from a rational Cayley vector) and three rays: exact
    rational parameters and the true depths."""

    def rational(lo, hi):
        return Fraction(rng.randint(lo * 64, hi * 64), 64)

    q = [rational(-1, 1) for _ in range(3)]
    s = 1 + sum(v * v for v in q)
    a, b, e = q
    rotation = [  # Cayley: R = ((1 - q.q) I + 2 q q^T + 2 [q]x) / (1 + q.q)
        [(1 + a * a - b * b - e * e) / s, 2 * (a * b - e) / s, 2 * (a * e + b) / s],
        [2 * (a * b + e) / s, (1 - a * a + b * b - e * e) / s, 2 * (b * e - a) / s],
        [2 * (a * e - b) / s, 2 * (b * e + a) / s, (1 - a * a - b * b + e * e) / s],
    ]
    t = [rational(-2, 2) for _ in range(3)]
    centres = [[rational(-1, 1) for _ in range(3)] for _ in range(3)]
    directions = [[rational(-1, 1), rational(-1, 1), Fraction(1)] for _ in range(3)]
    truth = [rational(2, 6) for _ in range(3)]
    rig = [[centres[i][k] + truth[i] * directions[i][k] for k in range(3)] for i in range(3)]
    # World points X = R^T (Y - t) for rig-frame points Y: then Y = R X + t.
    world = [[sum(rotation[k][j] * (y[k] - t[k]) for k in range(3)) for j in range(3)] for y in rig]
    params = [v for p in world for v in p] + [v for p in centres for v in p] + [v for p in directions for v in p]
    return params, truth


problem = Problem("gp3p", unknowns=depths, parameters=X + c + d, equations=equations, sampler=sampler)
