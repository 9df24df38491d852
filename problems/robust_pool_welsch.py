"""Robust vector pooling with the Welsch penalty (Gould et al., "Exploiting Problem Structure in
Deep Declarative Networks", Table 1):

    y = argmin_y sum_i 1 - exp(-|x_i - y|^2 / (2 alpha^2)),  y in R^3, n points x_i.

The penalty is not convex, so the forward finds the local minimum reached from the mean of the
points. `ok` is false where that is not a strict local minimum, i.e. where the Hessian is not
positive definite. Structure: as robust_pool.py.
"""
import sympy as sp

from solvergen import Argmin

n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
k = sp.Idx("k", 3)
x = sp.IndexedBase("x", shape=(n, 3))
y = sp.IndexedBase("y", shape=(3,))
alpha = sp.Symbol("alpha")

squared_distance = sp.Sum((x[i, k] - y[k]) ** 2, (k, 0, 2))

problem = Argmin(
    "robust_pool_welsch",
    unknowns=[y],
    parameters=[x, alpha],
    objective=sp.Sum(1 - sp.exp(-squared_distance / (2 * alpha**2)), (i, 0, n - 1)),
    init=[sp.Sum(x[i, k], (i, 0, n - 1)) / n],
)
