"""Entropic optimal transport between marginals r (m entries) and c (n entries) with cost M:

    P = argmin_P sum_ij M_ij P_ij + eps sum_ij P_ij (log P_ij - 1)
        subject to sum_j P_ij = r_i (m constraints) and sum_i P_ij = c_j (n constraints).

Inputs must satisfy sum r = sum c. Then the two constraint families are dependent: summing either
gives the same constraint. The compiler detects this and drops one constraint: the last entry of
the family that stays in the final dense system (c's when m >= n). Its multiplier is 0, and the
gradient with respect to that marginal entry is 0, as in the DDN paper. The gradient of r and c is
exact on the directions that keep sum r = sum c. The Hessian
eps / P_ij is diagonal, so the compiler eliminates P; then the larger family's diagonal block,
leaving a min(m, n) square system. Start: P = r c^T.
Training code often runs Sinkhorn and then calls `layer.attach(M, r, c, eps, P)` to get the
gradient (examples/size_generic_layers.py).
"""
import sympy as sp

from solvergen import Argmin

m = sp.Symbol("m", integer=True, positive=True)
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", m)
j = sp.Idx("j", n)
P = sp.IndexedBase("P", shape=(m, n))
M = sp.IndexedBase("M", shape=(m, n))
r = sp.IndexedBase("r", shape=(m,))
c = sp.IndexedBase("c", shape=(n,))
eps = sp.Symbol("eps")

problem = Argmin(
    "entropic_ot",
    unknowns=[P],
    parameters=[M, r, c, eps],
    objective=sp.Sum(M[i, j] * P[i, j] + eps * P[i, j] * (sp.log(P[i, j]) - 1), (i, 0, m - 1), (j, 0, n - 1)),
    equalities=[sp.Sum(P[i, j], (j, 0, n - 1)) - r[i], sp.Sum(P[i, j], (i, 0, m - 1)) - c[j]],
    init=[r[i] * c[j]],
)
