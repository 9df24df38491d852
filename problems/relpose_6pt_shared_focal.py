"""Six-point relative pose with an unknown focal length shared by both cameras: 15 solutions.

Pixel coordinates with K = diag(f, f, 1). Six epipolar constraints leave a 3-dimensional
null space of F spanned by F1, F2, F3; F = x F1 + y F2 + F3. E = K F K is essential iff
det(F) = 0 and 2 F Q F^T Q F - tr(F Q F^T Q) F = 0 with Q = diag(1, 1, w), w = 1 / f^2.
Parameters: the 27 entries of F1, F2, F3, each row-major.
"""
import sympy as sp

from solvergen import Problem

x, y, w = sp.symbols("x y w")
basis = [sp.Matrix(3, 3, sp.symbols(f"F{k}_0:9")) for k in (1, 2, 3)]
F = x * basis[0] + y * basis[1] + basis[2]
Q = sp.diag(1, 1, w)

# det(F) as the triple product of its rows: sympy's F.det() returns the expanded polynomial,
# and the generated backward follows the structure of the equations as written.
det = F.row(0).dot(F.row(1).cross(F.row(2)))
equations = [det] + list(2 * F * Q * F.T * Q * F - (F * Q * F.T * Q).trace() * F)

problem = Problem("relpose_6pt_shared_focal", unknowns=[x, y, w], parameters=basis, equations=equations)
