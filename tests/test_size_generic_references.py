"""Checks of tests/size_generic_references.py against independent references: closed forms,
dense KKT solves, autograd through unrolled solvers, cvxpylayers, and central finite
differences, all in float64.

Comparisons are norm-wise: ||a - b|| <= rtol * ||b|| (elementwise relative errors are
meaningless on entries near zero). Finite differences are central, of a scalar <G, output> for
a random G, along coordinate or random directions; their own error is ~h^2 + 1e-16/h ~ 1e-10.
"""
from __future__ import annotations

import pytest
import torch

from size_generic_references import (
    dense_ift_backward, leading_eigenvector, lml, lml_autograd, lml_backward, lml_cvxpy_layer,
    lml_forward, lml_kkt_jacobian, lml_objective, ot_backward_ddn, ot_objective,
    ot_project_marginal_grads, robust_pool_backward, robust_pool_forward, robust_pool_kappa,
    robust_pool_objective, sinkhorn,
)

D = torch.float64


def _close(a, b, rtol=1e-6):
    err = (a - b).norm().item()
    ref = b.norm().item()
    assert err <= rtol * max(ref, 1e-300), f"relative error {err / max(ref, 1e-300):.3e} > {rtol}"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _fd_directional(fun, x, direction, h=1e-5):
    """Central difference of the scalar fun at x along direction."""
    return (fun(x + h * direction) - fun(x - h * direction)) / (2 * h)


def _fd_grad(fun, x, h=1e-5):
    """Central-difference gradient of the scalar fun, coordinate by coordinate."""
    g = torch.zeros_like(x)
    flat = g.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = 1.0
        flat[i] = _fd_directional(fun, x, e.view_as(x), h)
    return g


# ------------------------------------------------------------------------------------------------
# LML
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,scale", [(6, 2, 3.0), (10, 1, 1.0), (10, 9, 5.0), (7, 2.5, 2.0),
                                       (3000, 5, 1.0), (3000, 1, 1e-3), (50, 3, 40.0)])
def test_lml_forward_closed_form(n, k, scale):
    """y = sigmoid(x + nu) with 1^T y = k ([LML] eqs. 15-16). (3000, 1, 1e-3): nearly equal
    entries with (n - k + 1) sigmoid(-7) > 1, where the paper's Delta = 7 lower bracket has
    g(nu_l) > 0 (checked below) and lml_forward falls back to the guaranteed bound."""
    x = scale * torch.randn(4, n, dtype=D, generator=_gen(n))
    if scale == 1e-3:
        nu_l = -x.sort(-1, descending=True).values[:, k - 1] - 7.0
        assert (torch.sigmoid(x + nu_l.unsqueeze(-1)).sum(-1) > k).all()
    y, nu = lml_forward(x, k)
    assert y.dtype == D and nu.shape == (4,)
    _close(y, torch.sigmoid(x + nu.unsqueeze(-1)), 1e-15)
    assert (y.sum(-1) - k).abs().max() <= 1e-13 * n
    assert ((y >= 0) & (y <= 1)).all()  # strictly inside, except where float64 saturates
    # Stationarity of the Lagrangian: logit(y) - x = nu for every coordinate (where y is not
    # saturated in float64).
    ok = (y > 1e-8) & (y < 1 - 1e-8)
    resid = (torch.log(y) - torch.log1p(-y) - x - nu.unsqueeze(-1))[ok]
    assert resid.abs().max() <= 1e-6
    # Plain bisection (samples = 3) gives the same root.
    y3, nu3 = lml_forward(x, k, samples=3)
    assert (nu3 - nu).abs().max() <= 1e-12 * (1 + nu.abs().max())


def test_lml_forward_batch_k_and_dtype():
    x = torch.randn(3, 8, dtype=torch.float32, generator=_gen(1))
    k = torch.tensor([1.0, 2.5, 7.0])
    y, nu = lml_forward(x, k)
    assert y.dtype == torch.float32
    assert (y.sum(-1) - k).abs().max() <= 1e-5
    with pytest.raises(ValueError):
        lml_forward(x, 8)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # cvxpylayers' numpy-2 copy= warnings
def test_lml_forward_vs_cvxpylayers():
    pytest.importorskip("cvxpylayers")
    n, k = 6, 2.0
    layer = lml_cvxpy_layer(n, k)
    if layer is None:
        pytest.skip("cvxpylayers unavailable")
    x = 2 * torch.randn(3, n, dtype=D, generator=_gen(2))
    xr = x.clone().requires_grad_(True)
    (yc,) = layer(xr, solver_args={"eps": 1e-12})
    y, _ = lml_forward(x, k)
    _close(yc.detach(), y, 1e-9)
    G = torch.randn(3, n, dtype=D, generator=_gen(3))
    (gc,) = torch.autograd.grad((yc * G).sum(), xr)
    # diffcp's derivative of the conic solution: accurate to the solver's ~1e-8.
    _close(lml_backward(y, G), gc, 1e-6)


@pytest.mark.parametrize("n,k", [(5, 2), (9, 3.5), (40, 7)])
def test_lml_backward(n, k):
    x = 2 * torch.randn(3, n, dtype=D, generator=_gen(10 + n))
    G = torch.randn(3, n, dtype=D, generator=_gen(20 + n))
    y, _ = lml_forward(x, k)
    dx = lml_backward(y, G)
    # (a) autograd through the solution map (Newton step re-attached at the bracketed root).
    xr = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad((lml_autograd(xr, k) * G).sum(), xr)
    _close(dx, ga, 1e-12)
    # (b) the dense KKT system of eq. (17).
    J = lml_kkt_jacobian(y)
    _close(dx, torch.einsum("bij,bi->bj", J, G), 1e-12)
    # (c) central finite differences of the bracketing forward.
    fd = _fd_grad(lambda z: (lml_forward(z, k)[0] * G).sum(), x)
    _close(dx, fd, 1e-6)
    # Rows of the Jacobian sum to zero (1^T y = k is preserved): <1, dx> for G = 1 is 0.
    assert lml_backward(y, torch.ones_like(y)).abs().max() <= 1e-15


def test_lml_function_and_k_gradient():
    x = torch.randn(2, 6, dtype=D, generator=_gen(30))
    k = torch.tensor([2.0, 3.5], dtype=D)
    G = torch.randn(2, 6, dtype=D, generator=_gen(31))
    xr, kr = x.clone().requires_grad_(True), k.clone().requires_grad_(True)
    gx, gk = torch.autograd.grad((lml(xr, kr) * G).sum(), (xr, kr))
    _close(gx, _fd_grad(lambda z: (lml_forward(z, k)[0] * G).sum(), x), 1e-6)
    _close(gk, _fd_grad(lambda kk: (lml_forward(x, kk)[0] * G).sum(), k), 1e-6)


# ------------------------------------------------------------------------------------------------
# Optimal transport
# ------------------------------------------------------------------------------------------------

def _ot_instance(B, m, n, seed):
    g = _gen(seed)
    M = torch.rand(B, m, n, dtype=D, generator=g)
    r = torch.rand(B, m, dtype=D, generator=g) + 0.5
    c = torch.rand(B, n, dtype=D, generator=g) + 0.5
    r = r / r.sum(-1, keepdim=True)
    c = c / c.sum(-1, keepdim=True)
    return M, r, c


def test_sinkhorn_solution():
    M, r, c = _ot_instance(2, 4, 5, 40)
    eps = 0.3
    P = sinkhorn(M, r, c, eps, 500)
    _close(P.sum(-1), r, 1e-13)
    _close(P.sum(-2), c, 1e-13)
    _close(sinkhorn(M, r, c, eps, 500, log_domain=False), P, 1e-12)
    # Optimality: M + eps log P = f 1^T + 1 g^T (the multipliers), i.e. its double-centred
    # part vanishes.
    S = M + eps * torch.log(P)
    Sc = S - S.mean(-1, keepdim=True) - S.mean(-2, keepdim=True) + S.mean((-2, -1), keepdim=True)
    assert Sc.abs().max() <= 1e-12
    # Small eps: the log domain stays finite where exp(-M/eps) underflows.
    Ps = sinkhorn(100 * M, r, c, 0.05, 50)
    assert torch.isfinite(Ps).all()
    # P is the minimiser: a feasible perturbation does not decrease the objective.
    dP = torch.randn(2, 4, 5, dtype=D, generator=_gen(41))
    dP = dP - dP.mean(-1, keepdim=True) - dP.mean(-2, keepdim=True) + dP.mean((-2, -1), keepdim=True)
    f0 = ot_objective(P, M, eps)
    for t in (1e-3, -1e-3):
        assert (ot_objective(P + t * dP, M, eps) >= f0).all()


@pytest.mark.parametrize("m,n", [(3, 5), (6, 3), (4, 4), (1, 3)])
def test_ot_backward_vs_autograd_sinkhorn(m, n):
    M, r, c = _ot_instance(3, m, n, 50 + m * n)
    eps = 0.5
    G = torch.randn(3, m, n, dtype=D, generator=_gen(60))
    Mr, rr, cr = (t.clone().requires_grad_(True) for t in (M, r, c))
    P = sinkhorn(Mr, rr, cr, eps, 300)
    gM, gr, gc = torch.autograd.grad((P * G).sum(), (Mr, rr, cr))
    dM, dr, dc = ot_backward_ddn(P.detach(), r, c, eps, G)
    _close(dM, gM, 1e-9)
    # Marginal gradients are defined up to (1_m, -1_n): compare on the tangent space.
    pr, pc = ot_project_marginal_grads(dr, dc)
    ar, ac = ot_project_marginal_grads(gr, gc)
    _close(torch.cat([pr, pc], -1), torch.cat([ar, ac], -1), 1e-9)
    # The paper's convention (first row constraint removed): dJ/dr_1 = 0.
    assert dr[:, 0].abs().max() == 0
    tr, tc = ot_backward_ddn(P.detach(), r, c, eps, G, marginal_grads="tangent")[1:]
    _close(torch.cat([tr, tc], -1), torch.cat([pr, pc], -1), 1e-14)


def test_ot_backward_vs_finite_differences():
    B, m, n, eps, iters = 2, 3, 4, 0.4, 400
    M, r, c = _ot_instance(B, m, n, 70)
    G = torch.randn(B, m, n, dtype=D, generator=_gen(71))
    P = sinkhorn(M, r, c, eps, iters)
    dM, dr, dc = ot_backward_ddn(P, r, c, eps, G)
    g = _gen(72)
    for _ in range(3):
        DM = torch.randn(B, m, n, dtype=D, generator=g)
        fd = _fd_directional(lambda Z: (sinkhorn(Z, r, c, eps, iters) * G).sum(), M, DM)
        assert abs(fd - (dM * DM).sum()) <= 1e-7 * dM.norm() * DM.norm()
        # Feasible marginal directions: 1^T dr = 1^T dc (here both zero-sum plus a common shift).
        Dr = torch.randn(B, m, dtype=D, generator=g)
        Dc = torch.randn(B, n, dtype=D, generator=g)
        Dc = Dc - Dc.mean(-1, keepdim=True) + Dr.sum(-1, keepdim=True) / n
        fd = (lambda t: (sinkhorn(M, r + t * Dr, c + t * Dc, eps, iters) * G).sum())
        h = 1e-5
        fdv = (fd(h) - fd(-h)) / (2 * h)
        lin = (dr * Dr).sum() + (dc * Dc).sum()
        assert abs(fdv - lin) <= 1e-7 * (dr.norm() + dc.norm()) * (Dr.norm() + Dc.norm())


def test_ot_backward_sanity_and_dense_ift():
    """G = 1 (J = total mass = 1^T c in the paper's convention): dJ/dM = 0, dJ/dr = 0,
    dJ/dc = 1. Then the dense DDN-style IFT on the same problem with the first row constraint
    removed (as [DDN] requires: A must have full row rank) reproduces ot_backward_ddn."""
    B, m, n, eps = 2, 3, 4, 0.5
    M, r, c = _ot_instance(B, m, n, 80)
    P = sinkhorn(M, r, c, eps, 400)
    dM, dr, dc = ot_backward_ddn(P, r, c, eps, torch.ones_like(P))
    assert dM.abs().max() <= 1e-13 and dr.abs().max() <= 1e-13
    _close(dc, torch.ones_like(dc), 1e-13)

    def objective(y, M_, r_, c_):
        return ot_objective(y.view(B, m, n), M_, eps)

    def equalities(y, M_, r_, c_):
        Y = y.view(B, m, n)
        return torch.cat([Y[:, 1:, :].sum(-1) - r_[:, 1:], Y.sum(-2) - c_], dim=-1)

    G = torch.randn(B, m, n, dtype=D, generator=_gen(81))
    gM, gr, gc = dense_ift_backward(objective, equalities, P.reshape(B, -1), (M, r, c),
                                    G.reshape(B, -1))
    dM, dr, dc = ot_backward_ddn(P, r, c, eps, G)
    _close(dM, gM, 1e-10)
    _close(torch.cat([dr, dc], -1), torch.cat([gr, gc], -1), 1e-10)


# ------------------------------------------------------------------------------------------------
# Robust vector pooling
# ------------------------------------------------------------------------------------------------

def _points(B, n, d, seed, outliers=2):
    g = _gen(seed)
    x = torch.randn(B, n, d, dtype=D, generator=g)
    x[:, :outliers] += 8.0 * torch.randn(B, outliers, d, dtype=D, generator=g)
    return x


@pytest.mark.parametrize("penalty,alpha", [("pseudo_huber", 1.0), ("pseudo_huber", 0.3),
                                           ("welsch", 1.5)])
def test_robust_pool_forward(penalty, alpha):
    x = _points(3, 12, 4, 90)
    y = robust_pool_forward(x, penalty, alpha)
    yr = y.clone().requires_grad_(True)
    (gf,) = torch.autograd.grad(robust_pool_objective(yr, x, penalty, alpha).sum(), yr)
    assert gf.abs().max() <= 1e-12
    H = torch.autograd.functional.hessian(
        lambda z: robust_pool_objective(z, x, penalty, alpha).sum(), y)
    H = torch.stack([H[b, :, b, :] for b in range(3)])
    assert (torch.linalg.eigvalsh(H)[:, 0] > 0).all()
    # The outliers pull the quadratic (mean) more than the robust estimate.
    mean = robust_pool_forward(x, "quadratic", alpha)
    inl = x[:, 2:].mean(-2)
    assert ((y - inl).norm(dim=-1) < (mean - inl).norm(dim=-1)).all()


def test_robust_pool_kappa_matches_autograd():
    """kappa_1, kappa_2 of [DDN] Table 1 against autograd derivatives of phi(z)."""
    z = torch.linspace(0.05, 4.0, 9, dtype=D).requires_grad_(True)
    for penalty, alpha in [("pseudo_huber", 0.7), ("welsch", 1.3)]:
        phi = robust_pool_objective(z.unsqueeze(-1), torch.zeros(9, 1, 1, dtype=D), penalty, alpha)
        (d1,) = torch.autograd.grad(phi.sum(), z, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), z)
        k1, k2 = robust_pool_kappa(z.detach() ** 2, penalty, alpha)
        _close(k1, d1.detach() / z.detach(), 1e-13)
        _close(k2, (d2 - d1.detach() / z.detach()) / z.detach() ** 2, 1e-12)


@pytest.mark.parametrize("penalty,alpha", [("pseudo_huber", 1.0), ("welsch", 1.5), ("quadratic", 1.0)])
def test_robust_pool_backward(penalty, alpha):
    B, n, d = 2, 7, 3
    x = _points(B, n, d, 100)
    G = torch.randn(B, d, dtype=D, generator=_gen(101))
    y = robust_pool_forward(x, penalty, alpha)
    dx = robust_pool_backward(x, y, penalty, alpha, G)
    fd = _fd_grad(lambda z: (robust_pool_forward(z, penalty, alpha) * G).sum(), x)
    _close(dx, fd, 1e-6)
    # Dense DDN-style IFT on the unconstrained problem.
    (gd,) = dense_ift_backward(lambda yy, xx: robust_pool_objective(yy, xx, penalty, alpha), None,
                               y, (x,), G)
    _close(dx, gd, 1e-12)
    # Translation equivariance: y(x + t) = y(x) + t, so sum_i dJ/dx_i = G.
    _close(dx.sum(-2), G, 1e-12)


# ------------------------------------------------------------------------------------------------
# Spectral
# ------------------------------------------------------------------------------------------------

def _affinity(B, n, seed):
    g = _gen(seed)
    A = torch.rand(B, n, n, dtype=D, generator=g)
    return A + A.transpose(-1, -2)


def test_leading_eigenvector_values_and_sign():
    W = _affinity(3, 6, 110)
    v, lam = leading_eigenvector(W)
    _close(W @ v.unsqueeze(-1), lam[:, None, None] * v.unsqueeze(-1), 1e-13)
    _close(v.norm(dim=-1), torch.ones(3, dtype=D), 1e-14)
    assert (v > 0).all()  # Perron vector of a positive matrix, with sum(v) >= 0
    assert (lam >= torch.linalg.eigvalsh(W)[:, -1] - 1e-12).all()
    # A symmetric matrix with mixed signs: the two conventions.
    S = torch.randn(4, 5, 5, dtype=D, generator=_gen(111))
    S = S + S.transpose(-1, -2)
    vs, _ = leading_eigenvector(S, sign="sum")
    vm, _ = leading_eigenvector(S, sign="max_abs")
    assert (vs.sum(-1) >= 0).all()
    idx = vm.abs().argmax(-1, keepdim=True)
    assert (vm.gather(-1, idx) > 0).all()
    _close(vs.abs(), vm.abs(), 1e-14)


def test_leading_eigenvector_gradient():
    B, n = 2, 5
    W = _affinity(B, n, 120)  # positive matrix: gap lam_1 - lam_2 large
    evals = torch.linalg.eigvalsh(W)
    assert ((evals[:, -1] - evals[:, -2]) > 1.0).all()
    Gv = torch.randn(B, n, dtype=D, generator=_gen(121))
    Gl = torch.randn(B, dtype=D, generator=_gen(122))
    Wr = W.clone().requires_grad_(True)
    v, lam = leading_eigenvector(Wr)
    (gW,) = torch.autograd.grad((v * Gv).sum() + (lam * Gl).sum(), Wr)

    def J(Z):
        vv, ll = leading_eigenvector(Z)
        return (vv * Gv).sum() + (ll * Gl).sum()

    _close(gW, _fd_grad(J, W), 1e-6)
    # Closed forms: dlam/dW = v v^T; dv/dW from (lam I - W)^+ (first-order perturbation theory).
    vd = v.detach()
    R = torch.linalg.pinv(lam.detach()[:, None, None] * torch.eye(n, dtype=D) - W, hermitian=True)
    ref = Gl[:, None, None] * vd.unsqueeze(-1) * vd.unsqueeze(-2)
    ref = ref + 0.5 * ((R @ Gv.unsqueeze(-1)) * vd.unsqueeze(-2)
                       + vd.unsqueeze(-1) * (R @ Gv.unsqueeze(-1)).transpose(-1, -2))
    _close(gW, ref, 1e-10)


# ------------------------------------------------------------------------------------------------
# Dense DDN-style IFT
# ------------------------------------------------------------------------------------------------

def test_dense_ift_lml_with_equality():
    """LML with n = 5 through the generic dense IFT: params x and k (k enters the constraint,
    so C = dh/dk = -1 is exercised), against finite differences and the closed form."""
    B, n = 3, 5
    x = 2 * torch.randn(B, n, dtype=D, generator=_gen(130))
    k = torch.tensor([[2.0], [1.5], [3.0]], dtype=D)
    G = torch.randn(B, n, dtype=D, generator=_gen(131))
    y, _ = lml_forward(x, k.squeeze(-1))

    gx, gk = dense_ift_backward(lambda yy, xx, kk: lml_objective(yy, xx),
                                lambda yy, xx, kk: yy.sum(-1, keepdim=True) - kk,
                                y, (x, k), G)
    assert gx.shape == x.shape and gk.shape == k.shape
    _close(gx, _fd_grad(lambda z: (lml_forward(z, k.squeeze(-1))[0] * G).sum(), x), 1e-6)
    _close(gk, _fd_grad(lambda kk: (lml_forward(x, kk.squeeze(-1))[0] * G).sum(), k), 1e-6)
    ref_x, ref_k = lml_backward(y, G, with_k=True)
    _close(gx, ref_x, 1e-10)
    _close(gk.squeeze(-1), ref_k, 1e-10)


def test_dense_ift_nonlinear_constraint():
    """A nonlinear equality with curvature (hYY != 0, nu != 0): the closest point to x on the
    sphere ||y||^2 = rho, y = sqrt(rho) x / ||x||."""
    B, d = 2, 4
    x = torch.randn(B, d, dtype=D, generator=_gen(140)) + 1.0
    rho = torch.tensor([[2.0], [0.5]], dtype=D)
    G = torch.randn(B, d, dtype=D, generator=_gen(141))

    def closed(xx, rr):
        return rr.sqrt() * xx / xx.norm(dim=-1, keepdim=True)

    y = closed(x, rho)
    gx, gr = dense_ift_backward(lambda yy, xx, rr: 0.5 * ((yy - xx) ** 2).sum(-1),
                                lambda yy, xx, rr: (yy ** 2).sum(-1, keepdim=True) - rr,
                                y, (x, rho), G)
    xr, rr = x.clone().requires_grad_(True), rho.clone().requires_grad_(True)
    ax, ar = torch.autograd.grad((closed(xr, rr) * G).sum(), (xr, rr))
    _close(gx, ax, 1e-12)
    _close(gr, ar, 1e-12)
