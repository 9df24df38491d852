"""Robust vector pooling (Gould et al., "Exploiting Problem Structure in Deep Declarative
Networks", section 4): the point y in R^3 that minimises the pseudo-Huber penalty of its distances
to n points x_i,

    y = argmin_y sum_i alpha^2 (sqrt(1 + |x_i - y|^2 / alpha^2) - 1).

The number of points n is read from x's shape. The unknown is small and fixed in size, so the
3 x 3 Hessian is summed over the points, and the parameter gradient is computed per point: O(n).
Start: the mean of the points.
The Welsch penalty is in robust_pool_welsch.py.
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
    "robust_pool",
    unknowns=[y],
    parameters=[x, alpha],
    objective=sp.Sum(alpha**2 * (sp.sqrt(1 + squared_distance / alpha**2) - 1), (i, 0, n - 1)),
    init=[sp.Sum(x[i, k], (i, 0, n - 1)) / n],
)
