"""A deep-equilibrium cell: the fixed point y = tanh(W y + x) with n = 6 (an `Implicit` layer;
the local forward: damped Newton).

Unknowns: y0..y5. Parameters: W (6 x 6, row-major), then x (6). For ||W|| < 1 the map is a
contraction and the fixed point is unique; a plain fixed-point iteration finds it too, and
`layer.attach(params, y_hat)` gives such a y_hat the implicit-function-theorem gradient.
"""
import sympy as sp

from solvergen import Implicit

N = 6

y = sp.Matrix(sp.symbols(f"y0:{N}"))
W = sp.Matrix(N, N, sp.symbols(f"W0:{N * N}"))
x = sp.Matrix(sp.symbols(f"x0:{N}"))

equations = [y[i] - sp.tanh((W * y + x)[i]) for i in range(N)]

problem = Implicit("tanh_fixed_point", unknowns=y, parameters=[W, x], equations=equations)
