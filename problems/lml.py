"""The LML projection (Amos et al., "The Limited Multi-Label Projection Layer"): the point of the
polytope {0 <= y <= 1, sum y = k} nearest to sigmoid(x) in the binary-entropy sense,

    y = argmin_y -x^T y - sum_i H_b(y_i)  subject to  sum_i y_i = k,

with H_b(p) = -p log p - (1 - p) log(1 - p). Size-generic: x and y have n entries, read from x's
shape at call time. The entropy keeps y inside (0, 1), so there are no inequalities. The Hessian is
diagonal, so the compiler eliminates y and the KKT system reduces to one scalar. The cost is O(n),
as in the paper's closed form. Start: y = k / n.
"""
import sympy as sp

from solvergen import Argmin

n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
x = sp.IndexedBase("x", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
k = sp.Symbol("k")

binary_entropy = -y[i] * sp.log(y[i]) - (1 - y[i]) * sp.log(1 - y[i])

problem = Argmin(
    "lml",
    unknowns=[y],
    parameters=[x, k],
    objective=-sp.Sum(x[i] * y[i] + binary_entropy, (i, 0, n - 1)),
    equalities=[sp.Sum(y[i], (i, 0, n - 1)) - k],
    init=[k / n],
)
