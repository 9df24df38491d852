"""An OptNet-style quadratic program with 8 variables, 2 equalities and 6 inequalities (an
`Argmin` with inequalities: the local forward, primal-dual interior point).

    y = argmin 1/2 y^T Q y + p^T y  subject to  A y = b,  G y <= h

Parameters, each matrix row-major: Q (8 x 8, symmetric positive definite), p (8), A (2 x 8),
b (2), G (6 x 8), h (6). The references are qpth and cvxpy on the same instances
(tests/test_declarative.py, benchmarks/declarative.py).
"""
import random

import sympy as sp

from solvergen import Argmin

N, E, I = 8, 2, 6

y = sp.Matrix(sp.symbols(f"y0:{N}"))
Q = sp.Matrix(N, N, sp.symbols(f"Q0:{N * N}"))
p = sp.Matrix(sp.symbols(f"p0:{N}"))
A = sp.Matrix(E, N, sp.symbols(f"A0:{E * N}"))
b = sp.Matrix(sp.symbols(f"b0:{E}"))
G = sp.Matrix(I, N, sp.symbols(f"G0:{I * N}"))
h = sp.Matrix(sp.symbols(f"h0:{I}"))


def sampler(rng: random.Random):
    """Q = L L^T + I / 10; a point y0 that satisfies A y0 = b and G y0 < h (a feasible QP)."""
    L = [[rng.gauss(0, 1) if j <= i else 0.0 for j in range(N)] for i in range(N)]
    Qv = [[sum(L[i][k] * L[j][k] for k in range(N)) + (0.1 if i == j else 0.0) for j in range(N)] for i in range(N)]
    pv = [rng.gauss(0, 1) for _ in range(N)]
    Av = [[rng.gauss(0, 1) for _ in range(N)] for _ in range(E)]
    Gv = [[rng.gauss(0, 1) for _ in range(N)] for _ in range(I)]
    y0 = [rng.gauss(0, 1) for _ in range(N)]
    bv = [sum(a * v for a, v in zip(row, y0)) for row in Av]
    hv = [sum(g * v for g, v in zip(row, y0)) + rng.uniform(0.1, 1.0) for row in Gv]
    return [v for row in Qv for v in row] + pv + [v for row in Av for v in row] + bv + [v for row in Gv for v in row] + hv


problem = Argmin("qp_layer", unknowns=y, parameters=[Q, p, A, b, G, h],
                 objective=(y.T * Q * y)[0, 0] / 2 + (p.T * y)[0, 0],
                 equalities=list(A * y - b), inequalities=list(G * y - h), sampler=sampler)
