"""P3.5Pf: absolute pose with unknown focal length from 3.5 points, natural form.

Unknowns: the 3 x 4 camera matrix P (row-major) with P ~ diag(f, f, 1) [R | t] (square pixels,
principal point at the origin, unknown focal length f), scaled to ||P|| = 1 and returned up
to sign. Parameters: four world points X_1..X_4 and the image points (u_j, v_j) of the first
three but only u_4 of the fourth (the ".5": seven constraints for the seven degrees of
freedom). Equations:
- the projections, linear in P: u_j (p3 . X_j) - p1 . X_j = 0 and v_j (p3 . X_j) - p2 . X_j = 0
  (the linear pass leaves a 5-dimensional null space: four unknowns in a chart);
- with m1, m2, m3 the rows of P's left 3 x 3 block M = s diag(f, f, 1) R: m1 . m2 = 0,
  m1 . m3 = 0, m2 . m3 = 0 and |m1|^2 = |m2|^2;
- the scale gauge ||P||^2 = 1.
Then f = |m1| / |m3|, R = diag(1, 1, f) M / |m1| (times the sign of det M), t likewise.

16 solutions: the 10 of the problem (Wu, "P3.5P: pose estimation with unknown focal length",
CVPR 2015) and 6 spurious ones where m3 is a nonzero isotropic vector (m3 . m3 = 0): those are
never real, so only the problem's solutions are returned. A formulation with exactly 10
(m3 = g (m1 x m2) with an extra unknown g) is measured in the README: its template is larger
and its solver 8 times slower.
"""
from fractions import Fraction

import sympy as sp

from solvergen import Problem

P = sp.Matrix(3, 4, sp.symbols("P0:12"))
X = sp.Matrix(4, 3, sp.symbols("X1_x X1_y X1_z X2_x X2_y X2_z X3_x X3_y X3_z X4_x X4_y X4_z"))
uv = sp.symbols("u1 v1 u2 v2 u3 v3 u4")


def homogeneous(j):
    return sp.Matrix([X[j, 0], X[j, 1], X[j, 2], 1])


projection = []
for j in range(4):
    depth = (P.row(2) * homogeneous(j))[0]
    projection.append(uv[2 * j] * depth - (P.row(0) * homogeneous(j))[0])
    if j < 3:
        projection.append(uv[2 * j + 1] * depth - (P.row(1) * homogeneous(j))[0])
m = [P[i, :3] for i in range(3)]
rotation = [m[0].dot(m[1]), m[0].dot(m[2]), m[1].dot(m[2]), m[0].dot(m[0]) - m[1].dot(m[1])]
equations = projection + rotation + [sum(p**2 for p in P) - 1]


def sampler(rng):
    """A random camera (rotation from a rational Cayley vector, focal length, translation) and
    four points in front of it: exact rational parameters, and the true P / ||P|| (floats)."""

    def rational(lo, hi):
        return Fraction(rng.randint(lo * 64, hi * 64), 64)

    a, b, e = (rational(-1, 1) for _ in range(3))
    s = 1 + a * a + b * b + e * e
    R = [
        [(1 + a * a - b * b - e * e) / s, 2 * (a * b - e) / s, 2 * (a * e + b) / s],
        [2 * (a * b + e) / s, (1 - a * a + b * b - e * e) / s, 2 * (b * e - a) / s],
        [2 * (a * e - b) / s, 2 * (b * e + a) / s, (1 - a * a - b * b + e * e) / s],
    ]
    f = rational(1, 3)
    t = [rational(-1, 1), rational(-1, 1), rational(4, 8)]
    camera = [[f * v for v in R[0]] + [f * t[0]], [f * v for v in R[1]] + [f * t[1]], R[2] + [t[2]]]
    points, image = [], []
    for _ in range(4):
        x = [rational(-2, 2) for _ in range(3)]
        h = [sum(row[k] * x[k] for k in range(3)) + row[3] for row in camera]
        points += x
        image += [h[0] / h[2], h[1] / h[2]]
    truth = [float(v) for row in camera for v in row]
    norm = sum(v * v for v in truth) ** 0.5
    return points + image[:7], [v / norm for v in truth]


problem = Problem("p35pf", unknowns=P, parameters=[X, uv], equations=equations, sampler=sampler)
