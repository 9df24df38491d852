"""Six-point relative pose with an unknown focal length shared by both cameras, in natural form:
15 solutions (up to the sign of F).

Unknowns: the nine entries of F (row-major) and w = 1 / f^2, for pixel coordinates with
K = diag(f, f, 1). Parameters: six correspondences p_i <-> p'_i in pixels, [u, v] each: first
the six p_i, then the six p'_i. Equations: the epipolar constraints p'_i^T F p_i = 0, det(F) = 0,
the trace constraints 2 F Q F^T Q F - tr(F Q F^T Q) F = 0 with Q = diag(1, 1, w) (E = K F K is
then essential), and the scale gauge ||F||^2 = 1.

The epipolar constraints are a homogeneous linear block in F alone; w is a free unknown beside
it. The compiler solves the other equations in the chart F = N (z0, z1, 1), whose equations are
homogeneous in F for every w, keeps w as it is, and rescales F to the gauge. The result is the
null-space form of `relpose_6pt_shared_focal` with the null space computed for you. F is
returned up to sign, and w is not flipped (`PLAN.sign_flip`).
"""
import sympy as sp

from solvergen import Problem

F = sp.Matrix(3, 3, sp.symbols("F0:9"))
w = sp.Symbol("w")
p = sp.Matrix(6, 2, sp.symbols(" ".join(f"u{i} v{i}" for i in range(6))))
p2 = sp.Matrix(6, 2, sp.symbols(" ".join(f"u{i}p v{i}p" for i in range(6))))
Q = sp.diag(1, 1, w)


def homogeneous(row):
    return sp.Matrix([row[0], row[1], 1])


epipolar = [(homogeneous(p2.row(i)).T * F * homogeneous(p.row(i)))[0] for i in range(6)]
# det(F) as the triple product of its rows (keeps the structure for the generated backward).
det = F.row(0).dot(F.row(1).cross(F.row(2)))
trace = list(2 * F * Q * F.T * Q * F - (F * Q * F.T * Q).trace() * F)
equations = epipolar + [det] + trace + [sum(f**2 for f in F) - 1]

problem = Problem("relpose_6pt_shared_focal_natural", unknowns=[F, w], parameters=[p, p2], equations=equations)
