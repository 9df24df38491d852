"""Five-point relative pose in null-space form (Nister / Stewenius): 10 solutions.

The five epipolar constraints q'_i^T E q_i = 0 leave a 4-dimensional null space spanned by
E1..E4 (computed outside, e.g. by SVD). With E = x E1 + y E2 + z E3 + E4, the essential
matrix constraints det(E) = 0 and 2 E E^T E - tr(E E^T) E = 0 give 10 equations in x, y, z.
Parameters: the 36 entries of E1, E2, E3, E4, each row-major.
"""
import sympy as sp

from solvergen import Problem

x, y, z = sp.symbols("x y z")
basis = [sp.Matrix(3, 3, sp.symbols(f"E{k}_0:9")) for k in (1, 2, 3, 4)]
E = x * basis[0] + y * basis[1] + z * basis[2] + basis[3]

# det(E) as the triple product of its rows: sympy's E.det() returns the expanded polynomial,
# and the generated backward follows the structure of the equations as written.
det = E.row(0).dot(E.row(1).cross(E.row(2)))
equations = [det] + list(2 * E * E.T * E - (E * E.T).trace() * E)

problem = Problem("relpose_5pt_nullspace", unknowns=[x, y, z], parameters=basis, equations=equations)
