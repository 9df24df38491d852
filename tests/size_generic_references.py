"""Independent reference implementations for size-generic declarative layers.

Plain PyTorch, batch dimension first, written from the papers' equations (not from solvergen):
tests and benchmarks check the compiled layers against these. Every function follows the dtype
and device of its inputs; float64 is what the tight (1e-6 relative) checks assume.

Papers (in /work/shared/papers/):

* [LML]  Amos, Koltun, Kolter, "The Limited Multi-Label Projection Layer" (lml_projection_layer.md)
* [DDN]  Gould, Campbell, Ben-Shabat, Koneputugodage, Xu, "Exploiting Problem Structure in Deep
         Declarative Networks: Two Case Studies" (ddn_problem_structure.md)
* [IMP]  "Implicitly Defined Layers in Neural Networks" (implicit_layers.md), section 5.4
         (spectral matching, eqs. 41-42)
* the generic DDN node (anucvml/ddn, ddn/pytorch/node.py) for `dense_ift_backward`.

Contents

1. LML projection: `lml_forward`, `lml_backward`, `lml` (autograd.Function with the closed-form
   backward), `lml_autograd` (autograd through the solution map, one Newton step re-attached),
   `lml_kkt_jacobian` (dense KKT solve, eq. 17), `lml_objective`, `lml_cvxpy_layer`.
2. Entropic optimal transport: `sinkhorn`, `ot_backward_ddn`, `ot_project_marginal_grads`,
   `ot_objective`.
3. Robust vector pooling: `robust_pool_objective`, `robust_pool_kappa`, `robust_pool_forward`,
   `robust_pool_backward`.
4. Spectral: `leading_eigenvector`.
5. Generic dense IFT (the DDN library's method): `dense_ift_backward`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

__all__ = [
    "lml_objective", "lml_forward", "lml_backward", "lml", "lml_autograd", "lml_kkt_jacobian",
    "lml_cvxpy_layer",
    "ot_objective", "sinkhorn", "ot_backward_ddn", "ot_project_marginal_grads",
    "robust_pool_objective", "robust_pool_kappa", "robust_pool_forward", "robust_pool_backward",
    "leading_eigenvector",
    "dense_ift_backward",
]


def _batch_k(k, x: torch.Tensor) -> torch.Tensor:
    """k (number, 0-d or [B] tensor) as a [B] tensor of x's dtype and device."""
    k = torch.as_tensor(k, dtype=x.dtype, device=x.device)
    return k.expand(x.shape[0]) if k.dim() == 0 else k.reshape(x.shape[0])


# ------------------------------------------------------------------------------------------------
# 1. LML projection [LML]
# ------------------------------------------------------------------------------------------------

def lml_objective(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[LML] eq. (14) objective -x^T y - H_b(y), H_b(y) = -sum_i y_i log y_i + (1-y_i) log(1-y_i).

    y, x: [B, n] -> [B]. The constraint 1^T y = k and 0 < y < 1 are not part of it.
    """
    return -(x * y).sum(-1) + (torch.xlogy(y, y) + torch.xlogy(1 - y, 1 - y)).sum(-1)


@torch.no_grad()
def lml_forward(x: torch.Tensor, k, iterations: int = 100, samples: int = 10,
                delta: float = 7.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LML projection y = argmin_{0<y<1, 1^T y = k} -x^T y - H_b(y) by [LML] Algorithm 1.

    x: [B, n]; k: number or [B] (0 < k < n, need not be an integer). Returns (y [B, n],
    nu [B]), detached, with y = sigmoid(x + nu) ([LML] eq. 15) and nu the root of the monotone
    scalar dual g(nu) = 1^T sigmoid(x + nu) - k ([LML] eq. 16).

    Bracketing ([LML] Sec. 3.1.1, Algorithm 1): `samples` (the paper's d; 10 is its CPU setting,
    3 is plain bisection) equally spaced values of nu across [nu_l, nu_u], endpoints included;
    keep the sub-interval [nu_i, nu_{i+1}] with i the last sample where g < 0; stop when every
    batch element's interval is at floating-point resolution (about 4 ulp of nu), or after
    `iterations`; return the midpoint. Vectorised over the batch.

    Initial bracket: the paper's nu_l = -pi(x)_k - Delta and nu_u = -pi(x)_{k+1} + Delta
    (pi sorts descending, Delta = 7; for non-integer k, ceil(k) is used for k). That bracket is
    only valid "with high probability": g(nu_l) <= k - 1 + (n - k + 1) sigmoid(-Delta) - k, so
    nu_l can fail once (n - k + 1) sigmoid(-7) > 1 (n > ~1100) when many entries sit near
    pi(x)_k. So each end is checked and, where g has the wrong sign, replaced by the always
    valid bound -max(x) + logit(k/n) (lower; then every sigmoid <= k/n) or -min(x) + logit(k/n)
    (upper). In float64 the result satisfies |1^T y - k| ~ 1e-15 * n.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [B, n], got {tuple(x.shape)}")
    if samples < 3:
        raise ValueError("samples must be >= 3 (3 is bisection)")
    B, n = x.shape
    kb = _batch_k(k, x)
    if bool(((kb <= 0) | (kb >= n)).any()):
        raise ValueError(f"need 0 < k < n = {n}")

    def g(nu):  # nu [B, S] -> [B, S]
        return torch.sigmoid(x.unsqueeze(1) + nu.unsqueeze(-1)).sum(-1) - kb.unsqueeze(-1)

    xs = x.sort(dim=-1, descending=True).values
    j = kb.ceil().long().clamp(1, n)  # 1-based rank for k
    lo = -xs.gather(-1, (j - 1).unsqueeze(-1)).squeeze(-1) - delta
    hi = -xs.gather(-1, j.clamp(max=n - 1).unsqueeze(-1)).squeeze(-1) + delta  # pi_{k+1}
    logit = torch.log(kb / n) - torch.log1p(-kb / n)
    safe_lo = -xs[:, 0] + logit
    safe_hi = -xs[:, -1] + logit
    g_ends = g(torch.stack([lo, hi], -1))
    lo = torch.where(g_ends[:, 0] <= 0, lo, safe_lo)
    hi = torch.where(g_ends[:, 1] >= 0, hi, safe_hi)

    steps = torch.linspace(0, 1, samples, dtype=x.dtype, device=x.device)
    tiny = torch.finfo(x.dtype).eps
    for _ in range(iterations):
        width = hi - lo
        if bool((width <= 4 * tiny * torch.maximum(lo.abs(), hi.abs()).clamp_min(1.0)).all()):
            break
        nus = lo.unsqueeze(-1) + width.unsqueeze(-1) * steps  # [B, d]
        gs = g(nus)
        i_l = ((gs < 0).sum(-1) - 1).clamp(0, samples - 2)
        lo = nus.gather(-1, i_l.unsqueeze(-1)).squeeze(-1)
        hi = nus.gather(-1, (i_l + 1).unsqueeze(-1)).squeeze(-1)
    nu = 0.5 * (lo + hi)
    return torch.sigmoid(x + nu.unsqueeze(-1)), nu


def lml_backward(y: torch.Tensor, grad: torch.Tensor, with_k: bool = False):
    """Closed-form LML backward, [LML] Module 1 / eqs. (17)-(19), O(n) per batch element.

    y: [B, n] the LML output, grad: [B, n] = dl/dy. With h = 1/y + 1/(1-y) (eq. 18), i.e.
    h^{-1} = y (1 - y):
        d_nu = (1^T h^{-1})^{-1} h^{-T} grad,   d_y = h^{-1} o (d_nu - grad),   dl/dx = -d_y,
    so dl/dx = y(1-y) o (grad - d_nu). Returns dl/dx [B, n]; with with_k=True also dl/dk [B],
    which is d_nu (y = sigmoid(x + nu) and dnu/dk = 1 / 1^T h^{-1}).
    """
    hinv = y * (1 - y)
    d_nu = (hinv * grad).sum(-1) / hinv.sum(-1)
    dx = hinv * (grad - d_nu.unsqueeze(-1))
    return (dx, d_nu) if with_k else dx


class _LML(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, iterations, samples):
        y, _ = lml_forward(x, k, iterations=iterations, samples=samples)
        ctx.save_for_backward(y)
        ctx.k_is_tensor = isinstance(k, torch.Tensor)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        dx, dk = lml_backward(y, grad, with_k=True)
        return dx, (dk if ctx.k_is_tensor and ctx.needs_input_grad[1] else None), None, None


def lml(x: torch.Tensor, k, iterations: int = 100, samples: int = 10) -> torch.Tensor:
    """LML layer as an autograd.Function: `lml_forward` forward, `lml_backward` backward
    ([LML] Module 1). k may be a [B] tensor requiring grad (its gradient is d_nu)."""
    return _LML.apply(x, k, iterations, samples)


def lml_autograd(x: torch.Tensor, k) -> torch.Tensor:
    """LML output differentiable by plain autograd, without the closed-form backward.

    nu* from `lml_forward` (detached), then one Newton step on g(nu) = 1^T sigmoid(x + nu) - k
    built on the graph of x (and k):  nu = nu* - g(nu*)/g'(nu*),  y = sigmoid(x + nu).
    At the root, g = 0 and dT/dnu = 0 for the Newton map T, so autograd of this step gives
    dnu/dx = -(dg/dx)/g' exactly: the implicit-function derivative of [LML] eq. (16) through
    autograd of eqs. (15)-(16), an independent route from eq. (19).
    """
    _, nu0 = lml_forward(x.detach(), k.detach() if isinstance(k, torch.Tensor) else k)
    kb = _batch_k(k, x)
    s = torch.sigmoid(x + nu0.unsqueeze(-1))
    gval = s.sum(-1) - kb
    gder = (s * (1 - s)).sum(-1)
    nu = nu0 - gval / gder
    return torch.sigmoid(x + nu.unsqueeze(-1))


def lml_kkt_jacobian(y: torch.Tensor) -> torch.Tensor:
    """Dense Jacobian J = dy/dx [B, n, n] from the KKT system [LML] eq. (17), solved by
    torch.linalg.solve (O(n^3); a check of the O(n) closed form eq. (19)).

    Eq. (17) with K = [[H, -1], [-1^T, 0]], H = diag(1/y + 1/(1-y)) (eq. 18): K [d_y; d_nu] =
    -[grad; 0] and dl/dx = -d_y = (K^{-1})_yy grad, so J^T = (K^{-1})_yy (symmetric, as K is).
    """
    B, n = y.shape
    K = y.new_zeros(B, n + 1, n + 1)
    K[:, :n, :n] = torch.diag_embed(1 / y + 1 / (1 - y))
    K[:, :n, n] = -1
    K[:, n, :n] = -1
    rhs = y.new_zeros(B, n + 1, n)
    rhs[:, :n, :] = torch.eye(n, dtype=y.dtype, device=y.device)
    return torch.linalg.solve(K, rhs)[:, :n, :].transpose(-1, -2)


def lml_cvxpy_layer(n: int, k: float):
    """A cvxpylayers CvxpyLayer for the LML projection [LML] eq. (14) with a parameter x (n,)
    and a variable y (n,): maximise x^T y + sum(entr(y) + entr(1 - y)) s.t. sum(y) == k
    (cp.entr(p) = -p log p, so the objective is -(eq. 14)). Returns None where cvxpy or
    cvxpylayers is not installed. The solver is an exponential-cone interior-point/ADMM method:
    expect only solver accuracy (about 1e-6..1e-8), not 1e-12.
    """
    try:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer
    except Exception:  # pragma: no cover - optional dependency
        return None
    xp = cp.Parameter(n)
    yv = cp.Variable(n)
    prob = cp.Problem(cp.Maximize(xp @ yv + cp.sum(cp.entr(yv)) + cp.sum(cp.entr(1 - yv))),
                      [cp.sum(yv) == k])
    return CvxpyLayer(prob, parameters=[xp], variables=[yv])


# ------------------------------------------------------------------------------------------------
# 2. Entropic optimal transport [DDN], "Optimal Transport"
# ------------------------------------------------------------------------------------------------

def ot_objective(P: torch.Tensor, M: torch.Tensor, eps: float) -> torch.Tensor:
    """Entropic OT objective used here: <M, P> + eps * sum_ij P_ij (log P_ij - 1), [B].

    [DDN] writes f(M, P) = sum M_ij P_ij + (1/gamma) sum P_ij (log P_ij - log r_i c_j) (the text
    before eq. 12), gamma = 1/eps. On the feasible set (P 1 = r, P^T 1 = c) the two differ by
    eps * (sum_i r_i log r_i + sum_j c_j log c_j + 1^T r), a constant in P: same minimiser
    P = diag(a) exp(-M/eps) diag(b), same H = diag(eps / P) (eq. 13), same B_M = I (eq. 14).
    With this form the objective does not depend on r, c at all, so B_r = B_c = 0 exactly
    ([DDN] reaches B = 0 for r via eq. 24 only after using the constraint; the two agree because
    the r-dependent term of eq. 12, -(1/gamma) log r_i c_j, lies in the range of A^T).
    """
    return (M * P).sum((-2, -1)) + eps * (torch.xlogy(P, P) - P).sum((-2, -1))


def sinkhorn(M: torch.Tensor, r: torch.Tensor, c: torch.Tensor, eps: float,
             iterations: int = 1000, log_domain: bool = True) -> torch.Tensor:
    """Entropic OT plan P [B, m, n] = argmin_P <M, P> + eps sum P (log P - 1) s.t. P 1 = r,
    P^T 1 = c (sum r = sum c), by `iterations` Sinkhorn sweeps (Cuturi 2013; [DDN] eq. 11).

    Differentiable by autograd through the unrolled iterations (the "autograd through Sinkhorn"
    reference: its gradient converges to the implicit one as the iterations converge).
    log_domain=True (default) iterates the dual potentials with logsumexp:
        f_i = eps log r_i - eps LSE_j((g_j - M_ij)/eps),  g_j = eps log c_j - eps LSE_i((f_i - M_ij)/eps),
        P_ij = exp((f_i + g_j - M_ij)/eps),
    stable for small eps. log_domain=False alternates scalings a = r/(K b), b = c/(K^T a) with
    K = exp(-M/eps) (underflows for small eps). Each sweep ends with the column update, so the
    column sums of P equal c exactly and the row sums converge to r.
    """
    if log_domain:
        f = torch.zeros_like(r)
        g = torch.zeros_like(c)
        log_r, log_c = torch.log(r), torch.log(c)
        for _ in range(iterations):
            f = eps * log_r - eps * torch.logsumexp((g.unsqueeze(-2) - M) / eps, dim=-1)
            g = eps * log_c - eps * torch.logsumexp((f.unsqueeze(-1) - M) / eps, dim=-2)
        return torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - M) / eps)
    K = torch.exp(-M / eps)
    b = torch.ones_like(c)
    for _ in range(iterations):
        a = r / (K @ b.unsqueeze(-1)).squeeze(-1)
        b = c / (K.transpose(-1, -2) @ a.unsqueeze(-1)).squeeze(-1)
    return a.unsqueeze(-1) * K * b.unsqueeze(-2)


def ot_backward_ddn(P: torch.Tensor, r: torch.Tensor, c: torch.Tensor, eps: float,
                    grad: torch.Tensor, marginal_grads: str = "paper"):
    """Structured implicit backward of entropic OT, [DDN] eqs. (3), (12)-(27).

    P: [B, m, n] the plan, r [B, m], c [B, n], eps > 0 (= 1/gamma of [DDN]), grad = dJ/dP
    [B, m, n]. Returns (dJ/dM [B, m, n], dJ/dr [B, m], dJ/dc [B, n]).

    Derivation (DDN notation, eq. 3 evaluated left to right as v^T Dy):
      H = diag(eps / P) (eq. 13), so H^{-1} = P / eps; B_M = I (eq. 14); B_r = B_c = 0 (eq. 24,
      exactly so for `ot_objective`'s form); C_r = -[I_{(m-1) x m}; 0], C_c = -[0; I_n]
      (eqs. 26-27, and the column analogue [DDN] omits).
      Redundant constraint: the m + n marginal constraints (eq. 15) have rank m + n - 1
      (sum of rows = sum of columns); as in [DDN] the FIRST ROW constraint is removed, giving
      A of eq. (16) and AH^{-1}A^T = (1/eps) [[diag(r_2:m), P_2:m], [P_2:m^T, diag(c)]]
      (eq. 18; built here from P's own row and column sums, equal to r and c at the solution,
      which makes it the literal A H^{-1} A^T of the given P).
      With q = P o grad: s = (A H^{-1} A^T)^{-1} A H^{-1} v solves
          [[diag(rowsum_2:m), P_2:m], [P_2:m^T, diag(colsum)]] [s_r; s_c] = [q 1 (rows 2:m); q^T 1]
      (the 1/eps factors cancel), then with alpha = [0, s_r] and beta = s_c,
          dJ/dM = (P / eps) o (alpha 1^T + 1 beta^T - grad),   dJ/dr = alpha,   dJ/dc = beta.
      The 2 x 2 block system is solved by block elimination (eqs. 20-23) with a Cholesky
      factorisation of the Schur complement of the larger diagonal block, i.e. of the smaller
      side ([DDN] footnote 3): diag(rowsum_2:m) - P_2:m diag(colsum)^{-1} P_2:m^T when m-1 <= n,
      else diag(colsum) - P_2:m^T diag(rowsum_2:m)^{-1} P_2:m.

    Complexity per batch element: O(m n min(m, n)) to form the Schur complement plus
    O(min(m, n)^3) for its Cholesky factorisation, O(m n) for everything else; memory
    O(m n + min(m, n)^2). (The dense IFT of eq. 3 would be O((m n)^3), the unreduced
    (m+n-1)-square solve O((m + n)^3).)

    Marginal gradients: P is defined only for sum r = sum c, so dJ/d(r, c) is unique only on
    the tangent space {(dr, dc): 1^T dr = 1^T dc}; off it, any value along (1_m, -1_n) is as
    good. marginal_grads="paper" returns the [DDN] convention that comes with removing the first
    row constraint (r_1 appears in no constraint, so dJ/dr_1 = 0); "tangent" returns the
    projection onto the tangent space (`ot_project_marginal_grads`), the convention-free form to
    compare against autograd through Sinkhorn. (The DDN library's OptimalTransportFcn also
    normalises r and c to sum 1 inside the layer, which multiplies these by the normalisation
    Jacobian; not done here.)
    """
    if marginal_grads not in ("paper", "tangent"):
        raise ValueError("marginal_grads must be 'paper' or 'tangent'")
    B, m, n = P.shape
    q = P * grad
    row = P.sum(-1)  # [B, m]
    col = P.sum(-2)  # [B, n]
    a1 = q[:, 1:, :].sum(-1)  # [B, m-1]
    a2 = q.sum(-2)  # [B, n]
    Q = P[:, 1:, :]  # [B, m-1, n]
    d1 = row[:, 1:]
    d2 = col
    if m - 1 <= n:
        Qd = Q / d2.unsqueeze(-2)  # Q diag(d2)^{-1}
        S = torch.diag_embed(d1) - Qd @ Q.transpose(-1, -2)  # [B, m-1, m-1]
        L = torch.linalg.cholesky(S)
        rhs = a1 - (Qd @ a2.unsqueeze(-1)).squeeze(-1)
        s1 = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
        s2 = (a2 - (Q.transpose(-1, -2) @ s1.unsqueeze(-1)).squeeze(-1)) / d2
    else:
        Qd = Q / d1.unsqueeze(-1)  # diag(d1)^{-1} Q
        S = torch.diag_embed(d2) - Q.transpose(-1, -2) @ Qd  # [B, n, n]
        L = torch.linalg.cholesky(S)
        rhs = a2 - (Qd.transpose(-1, -2) @ a1.unsqueeze(-1)).squeeze(-1)
        s2 = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
        s1 = (a1 - (Q @ s2.unsqueeze(-1)).squeeze(-1)) / d1
    alpha = torch.cat([s1.new_zeros(B, 1), s1], dim=-1)  # [B, m]
    beta = s2
    dM = (P / eps) * (alpha.unsqueeze(-1) + beta.unsqueeze(-2) - grad)
    dr, dc = alpha, beta
    if marginal_grads == "tangent":
        dr, dc = ot_project_marginal_grads(dr, dc)
    return dM, dr, dc


def ot_project_marginal_grads(dr: torch.Tensor, dc: torch.Tensor):
    """Project (dJ/dr, dJ/dc) onto the tangent space of the OT feasibility condition
    1^T r = 1^T c, i.e. remove the component along (1_m, -1_n). Any two valid conventions
    (dropping a different constraint, autograd through Sinkhorn ending on either normalisation)
    agree after this projection."""
    m, n = dr.shape[-1], dc.shape[-1]
    t = (dr.sum(-1) - dc.sum(-1)) / (m + n)
    return dr - t.unsqueeze(-1), dc + t.unsqueeze(-1)


# ------------------------------------------------------------------------------------------------
# 3. Robust vector pooling [DDN], "Robust Vector Pooling"
# ------------------------------------------------------------------------------------------------

_PENALTIES = ("quadratic", "pseudo_huber", "welsch")


def _phi(z2: torch.Tensor, penalty: str, alpha: float) -> torch.Tensor:
    """phi(z; alpha) of [DDN] Table 1 as a function of z^2 (smooth at z = 0)."""
    if penalty == "quadratic":
        return 0.5 * z2
    if penalty == "pseudo_huber":
        return alpha ** 2 * (torch.sqrt(1 + z2 / alpha ** 2) - 1)
    if penalty == "welsch":
        return 1 - torch.exp(-z2 / (2 * alpha ** 2))
    raise ValueError(f"penalty must be one of {_PENALTIES}")


def robust_pool_kappa(z2: torch.Tensor, penalty: str, alpha: float):
    """kappa_1 = phi'(z)/z and kappa_2 = (phi''(z) - kappa_1)/z^2 of [DDN] Table 1 / eq. (8),
    written in z^2 so that z = 0 (y on a data point) needs no 1e-9 guard:
      quadratic     phi = z^2/2                               k1 = 1,                 k2 = 0
      pseudo-Huber  phi = alpha^2 (sqrt(1 + (z/alpha)^2) - 1)  k1 = (1 + z^2/alpha^2)^(-1/2),
                                                              k2 = -(1/alpha^2)(1 + z^2/alpha^2)^(-3/2)
      Welsch        phi = 1 - exp(-z^2 / (2 alpha^2))          k1 = exp(-z^2/(2 alpha^2)) / alpha^2,
                                                              k2 = -exp(-z^2/(2 alpha^2)) / alpha^4
    """
    if penalty == "quadratic":
        return torch.ones_like(z2), torch.zeros_like(z2)
    if penalty == "pseudo_huber":
        s = 1 + z2 / alpha ** 2
        return s.rsqrt(), -s.pow(-1.5) / alpha ** 2
    if penalty == "welsch":
        e = torch.exp(-z2 / (2 * alpha ** 2))
        return e / alpha ** 2, -e / alpha ** 4
    raise ValueError(f"penalty must be one of {_PENALTIES}")


def robust_pool_objective(y: torch.Tensor, x: torch.Tensor, penalty: str, alpha: float) -> torch.Tensor:
    """[DDN] eq. (5): f = sum_i phi(||y - x_i||_2; alpha). y [B, d], x [B, n, d] -> [B]."""
    z2 = ((y.unsqueeze(-2) - x) ** 2).sum(-1)
    return _phi(z2, penalty, alpha).sum(-1)


def _robust_grad_hess(y, x, penalty, alpha):
    diff = y.unsqueeze(-2) - x  # [B, n, d]
    z2 = (diff ** 2).sum(-1)
    k1, k2 = robust_pool_kappa(z2, penalty, alpha)
    gradf = (k1.unsqueeze(-1) * diff).sum(-2)  # eq. (7) summed
    d = x.shape[-1]
    H = k1.sum(-1)[:, None, None] * torch.eye(d, dtype=x.dtype, device=x.device) \
        + torch.einsum("bi,bik,bil->bkl", k2, diff, diff)  # eq. (8) summed (eq. 9's H)
    return gradf, H, k1


@torch.no_grad()
def robust_pool_forward(x: torch.Tensor, penalty: str, alpha: float,
                        iterations: int = 100) -> torch.Tensor:
    """Robust vector pooling y = argmin_{y in R^d} sum_i phi(||x_i - y||; alpha), [DDN] eq. (4).

    x: [B, n, d] -> y [B, d] (detached). Penalties as [DDN] Table 1 (see `robust_pool_kappa`):
    "pseudo_huber" (convex), "welsch" (non-convex), "quadratic" (the mean).

    Method (the paper uses L-BFGS and, for non-convex penalties, the best of two starts; here a
    deterministic local method from one start): start at the sample mean; each iteration takes
    the Newton step -H^{-1} grad f (H of eq. 9) where H is positive definite and the step does
    not increase f, and otherwise the IRLS step y = sum_i k1_i x_i / sum_i k1_i (k1 = phi'(z)/z
    are the IRLS weights; for both penalties phi is concave in z^2, so IRLS is a
    majorise-minimise step and never increases f). Stops after `iterations` or when the step is
    at round-off. For Welsch this finds the local minimum reached from the mean (documented
    choice; as in [DDN], the mean is the natural start and the result can differ from the
    global minimum when the data have several clusters). If all Welsch weights underflow
    (every point farther than ~38 alpha from the mean) y stays at the mean.
    """
    if penalty not in _PENALTIES:
        raise ValueError(f"penalty must be one of {_PENALTIES}")
    y = x.mean(-2)
    if penalty == "quadratic":
        return y
    tiny = torch.finfo(x.dtype).tiny
    for _ in range(iterations):
        gradf, H, k1 = _robust_grad_hess(y, x, penalty, alpha)
        wsum = k1.sum(-1, keepdim=True)
        y_irls = torch.where(wsum > tiny, (k1.unsqueeze(-1) * x).sum(-2) / wsum.clamp_min(tiny), y)
        L, info = torch.linalg.cholesky_ex(H)
        ok = info == 0
        L = torch.where(ok[:, None, None], L, torch.eye(x.shape[-1], dtype=x.dtype, device=x.device))
        y_newton = y - torch.cholesky_solve(gradf.unsqueeze(-1), L).squeeze(-1)
        f0 = robust_pool_objective(y, x, penalty, alpha)
        fn = robust_pool_objective(y_newton, x, penalty, alpha)
        use_newton = ok & (fn <= f0) & torch.isfinite(y_newton).all(-1)
        y_new = torch.where(use_newton.unsqueeze(-1), y_newton, y_irls)
        step = (y_new - y).abs().max()
        y = y_new
        scale = 1.0 + y.abs().max()
        if float(step) <= 4 * torch.finfo(x.dtype).eps * float(scale):
            break
    return y


def robust_pool_backward(x: torch.Tensor, y: torch.Tensor, penalty: str, alpha: float,
                         grad: torch.Tensor) -> torch.Tensor:
    """dJ/dx [B, n, d] for robust vector pooling by the IFT, [DDN] eqs. (6)-(10) (its Fig. 2).

    H = sum_i k1_i I + k2_i (y - x_i)(y - x_i)^T (d x d, accumulated over the points, eq. 9);
    w = H^{-1} v with v = grad = dJ/dy; then (eq. 10)
        dJ/dx_i = k1_i w + k2_i (w^T (y - x_i)) (y - x_i),
    the inner product w^T(y - x_i) taken first (O(n d) memory). Sign: D_{x_i} y = -H^{-1} B with
    B = D^2_{x_i y} f = -(k1_i I + k2_i (y-x_i)(y-x_i)^T) by the antisymmetry of eq. (7).
    O(n d^2 + d^3) time. H is solved by Cholesky where it is positive definite (a strict local
    minimum, as [DDN] assumes) and by LU otherwise.
    """
    diff = y.unsqueeze(-2) - x
    z2 = (diff ** 2).sum(-1)
    k1, k2 = robust_pool_kappa(z2, penalty, alpha)
    d = x.shape[-1]
    H = k1.sum(-1)[:, None, None] * torch.eye(d, dtype=x.dtype, device=x.device) \
        + torch.einsum("bi,bik,bil->bkl", k2, diff, diff)
    L, info = torch.linalg.cholesky_ex(H)
    ok = (info == 0)[:, None]
    L = torch.where(ok[..., None], L, torch.eye(d, dtype=x.dtype, device=x.device))
    w_chol = torch.cholesky_solve(grad.unsqueeze(-1), L).squeeze(-1)
    w = w_chol if bool(ok.all()) else torch.where(ok, w_chol, torch.linalg.solve(H, grad))
    u = (w.unsqueeze(-2) * diff).sum(-1)  # w^T (y - x_i), [B, n]
    return k1.unsqueeze(-1) * w.unsqueeze(-2) + (k2 * u).unsqueeze(-1) * diff


# ------------------------------------------------------------------------------------------------
# 4. Spectral [IMP] Sec. 5.4, eqs. (41)-(42)
# ------------------------------------------------------------------------------------------------

def leading_eigenvector(W: torch.Tensor, sign: str = "sum"):
    """Leading eigenpair of a symmetric W [B, n, n]: v = argmax_{||v|| = 1} v^T W v ([IMP]
    eq. 41; KKT eq. 42: W v = lam v, v^T v = 1) with lam the LARGEST (algebraic) eigenvalue.

    Returns (v [B, n], lam [B]) from torch.linalg.eigh of the symmetric part (W + W^T)/2, so
    autograd goes through eigh; its gradient is the reference where the gap lam_1 - lam_2 is
    large (it blows up as 1/gap). Sign convention (v and -v both solve eq. 41):
      sign="sum"      sum(v) >= 0 (for non-negative affinities, as in spectral matching, the
                      Perron vector is then entrywise non-negative); ties (sum(v) == 0 exactly)
                      fall back to "max_abs";
      sign="max_abs"  the entry of largest magnitude is positive.
    The sign flip is a piecewise-constant factor, so it does not change the autograd formula.
    """
    Ws = 0.5 * (W + W.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(Ws)
    v = evecs[..., -1]
    lam = evals[..., -1]
    with torch.no_grad():
        idx = v.abs().argmax(-1, keepdim=True)
        s_max = torch.sign(v.gather(-1, idx)).squeeze(-1)
        s_max = torch.where(s_max == 0, torch.ones_like(s_max), s_max)
        if sign == "max_abs":
            s = s_max
        elif sign == "sum":
            tot = v.sum(-1)
            s = torch.where(tot > 0, torch.ones_like(tot), torch.where(tot < 0, -torch.ones_like(tot), s_max))
        else:
            raise ValueError("sign must be 'sum' or 'max_abs'")
    return v * s.unsqueeze(-1), lam


# ------------------------------------------------------------------------------------------------
# 5. Generic dense IFT, as the DDN library's AbstractDeclarativeNode / EqConstDeclarativeNode
# ------------------------------------------------------------------------------------------------

def _batch_jacobian(out: torch.Tensor, wrt: torch.Tensor, create_graph: bool = False):
    """DDN node.py `_batch_jacobian`: Jacobian [B, M, P] of out [B, ...] (M entries per batch
    element) w.r.t. wrt [B, ...] (P entries) by M backward passes, one per output entry with
    grad_outputs the indicator of entry i across the whole batch (valid because batch elements
    are independent). Returns None when wrt is not in the graph (DDN: then all are None)."""
    B = out.shape[0]
    out = out.reshape(B, -1)
    M = out.shape[-1]
    jac = out.new_zeros(B, M, wrt.reshape(B, -1).shape[-1])
    for i in range(M):
        go = torch.zeros_like(out)
        go[:, i] = 1.0
        (gi,) = torch.autograd.grad(out, wrt, grad_outputs=go, retain_graph=True,
                                    create_graph=create_graph, allow_unused=True)
        if gi is None:
            return None
        jac[:, i, :] = gi.reshape(B, -1)
    return jac


def _spd_or_lu_solve(A: torch.Tensor, Bm: torch.Tensor) -> torch.Tensor:
    """DDN `_solve_linear_system`: batched Cholesky solve, LU for the elements where Cholesky
    fails (DDN falls back to a per-element loop with the same two solvers)."""
    L, info = torch.linalg.cholesky_ex(A)
    ok = info == 0
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    X = torch.cholesky_solve(Bm, torch.where(ok[:, None, None], L, eye))
    if not bool(ok.all()):
        X = torch.where(ok[:, None, None], X, torch.linalg.solve(A, Bm))
    return X


def dense_ift_backward(objective: Callable[..., torch.Tensor],
                       equalities: Callable[..., torch.Tensor] | None,
                       y: torch.Tensor, params: Sequence[torch.Tensor], grad: torch.Tensor,
                       gamma: float | None = None) -> tuple[torch.Tensor, ...]:
    """Generic dense implicit backward, the DDN library's method (ddn/pytorch/node.py,
    AbstractDeclarativeNode.gradient and EqConstDeclarativeNode.gradient), [DDN] eq. (3).

    objective(y, *params) -> [B]; equalities(y, *params) -> [B, p] or None; y [B, N] the
    (flattened) solution; params: tensors [B, ...]; grad = dJ/dy [B, N]. Returns dJ/dparam for
    each param (its shape). Everything is dense: O(N^3 + p^3) solves and, per parameter tensor,
    O(N) backward passes.

    What follows DDN's node.py step by step:
      * fY = df/dy by autograd with create_graph; fYY = _batch_jacobian(fY, y): N backward passes
        (one per entry of fY); fXY = _batch_jacobian(fY, x) for each parameter tensor x: N passes
        each. (DDN's optional chunking of x is not reproduced; it does not change the passes.)
      * With equalities: h [B, p]; A = hY = _batch_jacobian(h, y, create_graph=True): p passes;
        hYY_i = _batch_jacobian(hY[:, i], y): N passes per constraint; hXY_i likewise per
        parameter tensor; C = hX = _batch_jacobian(h, x): p passes per parameter tensor.
      * Multipliers by least squares, DDN `_get_nu`: hY^T nu = fY (Lagrangian f - nu^T h).
      * H = fYY - sum_i nu_i hYY_i, symmetrised (H + H^T)/2, optional damping H + gamma I.
      * u = -H^{-1} v, t = H^{-1} A^T (one solve with both right-hand sides), s = (A t)^{-1}(-A u)
        (DDN `_solve_linear_system`: Cholesky, LU fallback), then
        dJ/dx = B^T (u + t s) - C^T s with B = fXY - sum_j nu_j hjXY. Unconstrained: dJ/dx = B^T u.
    Differences from node.py: no optimality/feasibility warnings; Cholesky failures fall back to
    LU per batch element without a Python loop; lstsq gets fY as an explicit [B, N, 1] column.
    Pitfall (as in DDN): A must have full row rank, so redundant equalities (e.g. all m + n OT
    marginals) make A t singular and must be removed first.
    """
    B, N = y.shape
    v = grad.reshape(B, N)
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        params = tuple(p.detach().requires_grad_(True) for p in params)
        f = objective(y, *params)
        (fY,) = torch.autograd.grad(f, y, grad_outputs=torch.ones_like(f), create_graph=True)
        fY = fY.reshape(B, N)
        fYY = _batch_jacobian(fY, y) if fY.requires_grad else None
        fYY = y.new_zeros(B, N, N) if fYY is None else fYY.detach()

        def fXY(x):
            j = _batch_jacobian(fY, x) if fY.requires_grad else None
            return y.new_zeros(B, N, x.reshape(B, -1).shape[-1]) if j is None else j.detach()

        if equalities is not None:
            h = equalities(y, *params).reshape(B, -1)
            p = h.shape[-1]
            hY = _batch_jacobian(h, y, create_graph=True)
            A = hY.detach()
            nu = torch.linalg.lstsq(A.transpose(-1, -2), fY.detach().unsqueeze(-1)).solution.squeeze(-1)
            H = fYY.clone()
            for i in range(p):
                hiY = hY[:, i]
                hiYY = _batch_jacobian(hiY, y) if hiY.requires_grad else None
                if hiYY is not None:
                    H = H - nu[:, i, None, None] * hiYY.detach()
        else:
            H = fYY
        H = 0.5 * (H + H.transpose(-1, -2))
        if gamma is not None:
            H = H + gamma * torch.eye(N, dtype=H.dtype, device=H.device)

        if equalities is None:
            u = _spd_or_lu_solve(H, -v.unsqueeze(-1)).squeeze(-1)
            return tuple((torch.einsum("bmc,bm->bc", fXY(x), u)).reshape(x.shape) for x in params)

        ut = _spd_or_lu_solve(H, torch.cat([-v.unsqueeze(-1), A.transpose(-1, -2)], dim=-1))
        u, t = ut[..., 0], ut[..., 1:]  # [B, N], [B, N, p]
        s = _spd_or_lu_solve(A @ t, (A @ (-u).unsqueeze(-1))).squeeze(-1)  # [B, p]
        uts = u + (t @ s.unsqueeze(-1)).squeeze(-1)
        grads = []
        for x in params:
            Bx = fXY(x)
            for j in range(p):
                hjY = hY[:, j]
                hjXY = _batch_jacobian(hjY, x) if hjY.requires_grad else None
                if hjXY is not None:
                    Bx = Bx - nu[:, j, None, None] * hjXY.detach()
            g = torch.einsum("bmc,bm->bc", Bx, uts)
            Cx = _batch_jacobian(h, x)
            if Cx is not None:
                g = g - torch.einsum("bpc,bp->bc", Cx.detach(), s)
            grads.append(g.reshape(x.shape))
        return tuple(grads)
