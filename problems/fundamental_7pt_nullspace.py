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

problem = Problem("fundamental_7pt_nullspace", unknowns=[x], parameters=basis, equations=[F.det()])
