"""Seven-point fundamental matrix in null-space form: 3 solutions.

Seven epipolar constraints leave a 2-dimensional null space spanned by F1, F2. With
F = x F1 + F2 the rank constraint det(F) = 0 is a cubic in x.
Parameters: the 18 entries of F1 and F2, each row-major.
"""
import sympy as sp

from solvergen import Problem

x = sp.Symbol("x")
basis = [sp.Matrix(3, 3, sp.symbols(f"F{k}_0:9")) for k in (1, 2)]
F = x * basis[0] + basis[1]

# det(F) as the triple product of its rows: sympy's F.det() returns the expanded polynomial,
# and the generated backward follows the structure of the equations as written.
det = F.row(0).dot(F.row(1).cross(F.row(2)))
problem = Problem("fundamental_7pt_nullspace", unknowns=[x], parameters=basis, equations=[det])
