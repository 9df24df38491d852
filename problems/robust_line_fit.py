"""A line y = k x + b fitted to 20 points under the pseudo-Huber penalty (an `Argmin`: smooth,
not polynomial, unconstrained; the local forward).

Unknowns: the slope k and intercept b. Parameters: the points' x coordinates x0..x19, then
their y coordinates y0..y19. Objective: sum_i delta^2 (sqrt(1 + (r_i / delta)^2) - 1) with
r_i = y_i - k x_i - b and delta = 1: quadratic for small residuals, linear for outliers. The
start point is the ordinary least-squares line (closed form in the parameters).
"""
import random

import sympy as sp

from solvergen import Argmin

POINTS = 20
DELTA = 1

k, b = sp.symbols("k b")
x = sp.symbols(f"x0:{POINTS}")
y = sp.symbols(f"y0:{POINTS}")

residuals = [y[i] - k * x[i] - b for i in range(POINTS)]
objective = sum(DELTA**2 * (sp.sqrt(1 + (r / DELTA) ** 2) - 1) for r in residuals)

# Ordinary least squares: k = cov(x, y) / var(x), b = mean(y) - k mean(x).
sx, sy = sum(x), sum(y)
sxx, sxy = sum(v * v for v in x), sum(u * v for u, v in zip(x, y))
slope = (POINTS * sxy - sx * sy) / (POINTS * sxx - sx**2)
init = [slope, (sy - slope * sx) / POINTS]


def sampler(rng: random.Random):
    """Points near a random line, with gaussian noise and three gross outliers."""
    k_true, b_true = rng.uniform(-2, 2), rng.uniform(-1, 1)
    xs = [rng.uniform(-3, 3) for _ in range(POINTS)]
    ys = [k_true * u + b_true + rng.gauss(0, 0.1) for u in xs]
    for i in rng.sample(range(POINTS), 3):
        ys[i] += rng.choice([-1, 1]) * rng.uniform(3, 8)
    return xs + ys


problem = Argmin("robust_line_fit", unknowns=[k, b], parameters=[x, y], objective=objective, init=init,
                 sampler=sampler)
