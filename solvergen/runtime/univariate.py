"""Roots of univariate polynomials, batched: all complex roots by Aberth-Ehrlich iteration, and
the real roots of degrees 1 to 4 in closed form (as PoseLib keeps its univariate solvers in one
place)."""
from __future__ import annotations

import torch


def polynomial_roots(coefficients, iterations=None):
    """All complex roots of monic polynomials [B, S + 1] (ascending) by Aberth-Ehrlich iteration:
    a fixed iteration count, no host synchronization. The default, 20 + S, is where every shipped
    problem's accuracy stops changing (measured: 25 to 30 for S = 8 to 15); roots that have not
    converged fail the residual check and are dropped, never returned wrong."""
    n = coefficients.shape[-1] - 1
    iterations = 20 + n if iterations is None else iterations
    complex_dtype = (coefficients[:1, :1] * 1j).dtype
    c = coefficients.to(complex_dtype)
    z = _initial_roots(coefficients).to(complex_dtype)
    eye = torch.eye(n, dtype=complex_dtype, device=coefficients.device)
    for _ in range(iterations):
        p = c[:, n : n + 1].expand_as(z)
        dp = torch.zeros_like(z)
        for k in range(n - 1, -1, -1):
            dp = dp * z + p
            p = p * z + c[:, k : k + 1]
        ratio = p / dp
        repulsion = (1 / (z.unsqueeze(-1) - z.unsqueeze(-2) + eye)).sum(-1) - 1
        step = ratio / (1 - ratio * repulsion)
        z = z - torch.where(torch.isfinite(step), step, torch.zeros_like(step))
    return z


def _initial_roots(coefficients):
    """Starting points of the Aberth-Ehrlich iteration, after Bini (Numer. Algorithms 13, 1996):
    on circles whose radii come from the Newton polygon of the coefficients' moduli, so that
    roots of very different sizes each start near their own circle. The slope of the upper
    hull of (k, log|c_k|) on [j, j + 1] is min over a <= j of max over b > j of
    (log|c_b| - log|c_a|) / (b - a); root j starts at radius exp(-slope)."""
    n = coefficients.shape[-1] - 1
    logs = coefficients.abs().clamp_min(torch.finfo(coefficients.dtype).tiny).log()
    k = torch.arange(n + 1, dtype=coefficients.dtype, device=coefficients.device)
    gaps = (k.unsqueeze(0) - k.unsqueeze(1)).clamp_min(1)  # [a, b]: b - a where b > a
    slopes = (logs.unsqueeze(-2) - logs.unsqueeze(-1)) / gaps  # [B, a, b]
    radii = torch.stack([slopes[:, : j + 1, j + 1 :].amax(dim=-1).amin(dim=-1) for j in range(n)], dim=-1).neg().exp()
    angles = torch.arange(n, dtype=coefficients.dtype, device=coefficients.device) * (2 * torch.pi / n) + 0.4
    return radii * torch.exp(1j * angles)


def real_roots(c):
    """Real roots of the monic polynomial sum_k c[k] x^k (c: [B] tensors, degree 1 to 4) in
    closed form: roots [n, B] and which of them are real [n, B] (the others hold 0)."""
    n = len(c) - 1
    if n == 1:
        return -c[0].unsqueeze(0), torch.ones_like(c[0], dtype=torch.bool).unsqueeze(0)
    if n == 2:
        return quadratic_roots(c[1], c[0])
    if n == 3:
        return cubic_roots(c[2], c[1], c[0])
    return quartic_roots(c[3], c[2], c[1], c[0])


def quadratic_roots(b, c):
    """x^2 + b x + c = 0: roots [2, B] (the stable formula) and which are real."""
    discriminant = b * b - 4 * c
    root = discriminant.clamp_min(0).sqrt()
    q = -0.5 * (b + torch.where(b >= 0, root, -root))
    other = c / torch.where(q != 0, q, torch.ones_like(q))
    real = (discriminant >= 0).expand(2, *b.shape)
    return torch.where(real, torch.stack([q, torch.where(q != 0, other, q)]), torch.zeros_like(q)), real


def cubic_roots(a, b, c):
    """x^3 + a x^2 + b x + c = 0 (Cardano, or Viete's cosines for three real roots): roots
    [3, B], the largest real one first, and which are real."""
    p = b - a * a / 3
    q = 2 * a * a * a / 27 - a * b / 3 + c
    discriminant = (q / 2) ** 2 + (p / 3) ** 3
    # One real root: t = u - p / (3 u), u^3 = -q/2 - sign(q) sqrt(discriminant) (no cancellation).
    root = discriminant.clamp_min(0).sqrt()
    cube = -q / 2 - torch.where(q >= 0, root, -root)
    u = cube.sign() * cube.abs().pow(1.0 / 3)
    single = u - p / (3 * torch.where(u != 0, u, torch.ones_like(u)))
    single = torch.where(u != 0, single, u)
    # Three real roots: t_k = 2 r cos((phi - 2 pi k) / 3), r = sqrt(-p / 3), t_0 the largest.
    r = (-p / 3).clamp_min(0).sqrt()
    cosine = (-q / 2) / (r * r * r).clamp_min(torch.finfo(p.dtype).tiny)
    phi = torch.acos(cosine.clamp(-1, 1))
    k = torch.arange(3, dtype=p.dtype, device=p.device).unsqueeze(-1)
    three = 2 * r * torch.cos((phi - 2 * torch.pi * k) / 3)
    one = discriminant > 0
    zero = torch.zeros_like(single)
    t = torch.where(one, torch.stack([single, zero, zero]), three)
    real = torch.stack([torch.ones_like(one), ~one, ~one])
    return torch.where(real, t - a / 3, zero), real


def quartic_roots(b, c, d, e):
    """x^4 + b x^3 + c x^2 + d x + e = 0: roots [4, B] and which are real. Ferrari splits it into
    two quadratics x^2 + a1 x + b1 and x^2 + a2 x + b2; Newton steps on that factorization
    (`refine_factors`) then restore the digits the closed form loses to cancellation (real
    roots close together, or far smaller than a complex pair), and each quadratic is solved
    by the stable formula. Ferrari: with x = y - b/4, y^4 + p y^2 + q y + r =
    (y^2 + p/2 + m)^2 - 2m (y - q / 4m)^2 for the largest root m >= 0 of the resolvent cubic
    (m = 0: y^4 + p y^2 + r = (y^2 - z1)(y^2 - z2), z1 and z2 real)."""
    p = c - 3 * b * b / 8
    q = d - b * c / 2 + b * b * b / 8
    r = e - b * d / 4 + b * b * c / 16 - 3 * b * b * b * b / 256
    resolvent, _ = cubic_roots(p, p * p / 4 - r, -q * q / 8)
    m = resolvent[0].clamp_min(0)
    s = (2 * m).sqrt()
    split = s > 0
    half = q / (2 * torch.where(split, s, torch.ones_like(s)))
    z, _ = quadratic_roots(p, r)
    # The two factors y^2 + A y + B, then in x (y = x + b/4).
    zero = torch.zeros_like(s)
    a1, a2 = torch.where(split, -s, zero), torch.where(split, s, zero)
    b1 = torch.where(split, p / 2 + m + half, -z[0])
    b2 = torch.where(split, p / 2 + m - half, -z[1])
    shift = b * b / 16
    b1, b2 = shift + a1 * b / 4 + b1, shift + a2 * b / 4 + b2
    a1, a2 = a1 + b / 2, a2 + b / 2
    a1, b1, a2, b2 = refine_factors(a1, b1, a2, b2, b, c, d, e)
    first, first_real = quadratic_roots(a1, b1)
    second, second_real = quadratic_roots(a2, b2)
    return torch.cat([first, second]), torch.cat([first_real, second_real])


def refine_factors(a1, b1, a2, b2, b, c, d, e, steps=2):
    """Newton steps on (x^2 + a1 x + b1)(x^2 + a2 x + b2) = x^4 + b x^3 + c x^2 + d x + e, each
    kept where it lowers the residual (the Jacobian is singular where the factors share a
    root). After Orellana and De Michele (ACM TOMS 46(2), 2020), unscaled."""
    size = b.abs() + c.abs() + d.abs() + e.abs()

    def residual(a1, b1, a2, b2):
        f = (a1 + a2 - b, b1 + b2 + a1 * a2 - c, a1 * b2 + a2 * b1 - d, b1 * b2 - e)
        return f, sum(v.abs() for v in f) / size

    f, error = residual(a1, b1, a2, b2)
    for _ in range(steps):
        # da2 = -f0 - da1 leaves [[a2 - a1, 1, 1], [b2 - b1, a2, a1], [0, b2, b1]] (da1, db1, db2)
        # = (a1 f0 - f1, b1 f0 - f2, -f3), solved by Cramer's rule.
        m00, m10, r0, r1, r2 = a2 - a1, b2 - b1, a1 * f[0] - f[1], b1 * f[0] - f[2], -f[3]
        minor = a2 * b1 - a1 * b2
        det = m00 * minor - m10 * (b1 - b2)
        da1 = (r0 * minor - r1 * (b1 - b2) + r2 * (a1 - a2)) / det
        db1 = (m00 * (r1 * b1 - a1 * r2) - m10 * (r0 * b1 - r2)) / det
        db2 = (m00 * (a2 * r2 - b2 * r1) - m10 * (r2 - b2 * r0)) / det
        candidate = (a1 + da1, b1 + db1, a2 - f[0] - da1, b2 + db2)
        f1, error1 = residual(*candidate)
        better = error1 < error  # False where NaN
        a1, b1, a2, b2 = (torch.where(better, new, old) for new, old in zip(candidate, (a1, b1, a2, b2)))
        f = tuple(torch.where(better, new, old) for new, old in zip(f1, f))
        error = torch.where(better, error1, error)
    return a1, b1, a2, b2
