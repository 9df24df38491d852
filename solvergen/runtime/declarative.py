"""Declarative layers at run time (`Argmin`, `Implicit`; plan: `DeclarativePlan`).

Global forward (a polynomial spec without inequalities: `plan.critical_points`): every solution
of the polynomial system (an Argmin's critical points with their multipliers, an Implicit's
solutions) by the elimination template of a generated `Solver`; the layer keeps the real
critical point with the smallest objective (Argmin; `ok` also needs the second-order condition,
so a saddle is never ok) or the real solution nearest the start point (Implicit).

Local forward (batched, rows masked as they converge; on the CPU the loop stops when every row
has converged, elsewhere it runs `max_iterations` without a host synchronization):
    Implicit: damped Newton on F (Gauss-Newton on J^T J when overdetermined), backtracking
        line search on |F|^2 that keeps every value finite.
    Argmin without constraints: Newton (Cholesky where the Hessian is safely positive
        definite, else its eigenvalues floored in absolute value: a descent direction at
        saddles), Armijo backtracking on f.
    Argmin with constraints (equalities alone too: Newton on the KKT equations with their
        residual as merit stalls at that merit's local minima): primal-dual interior point
        with slacks (g + s = 0, mu s = tau; s = -g where the start is strictly feasible, and a
        start on a bound moved inside first, as IPOPT's bound push),
        as IPOPT without its filter: the barrier tau decreases monotonically, the Lagrangian's
        Hessian is shifted by delta I where the KKT matrix has the wrong inertia, and the step
        backtracks on an l1 merit function from the fraction to the boundary, keeping every
        expression finite. Rows whose residual is below 1e-8 try Newton on the KKT equations of
        their active set (multiplier larger than slack), which polishes to `tol`; a row is done
        when that succeeds, else it goes on with a smaller barrier.
Backward: the implicit function theorem. Argmin: on the KKT system of stationarity and the
constraints, with the inequalities active at the solution (multiplier larger than slack) as
equalities and the inactive ones dropped (a weakly active one, mu = slack = 0, counts as
inactive: the one-sided derivative of moving into the interior). The KKT matrix is
[[d2L/dy2, A^T], [A, 0]]; the parameter side is the generated vector-Jacobian product, so no
d(.)/da matrix is formed. Implicit: J^T w = grad (J (J^T J)^-1 grad when overdetermined).
Rows that did not converge, or whose matrix is singular or has a 1-norm condition number above
`cond_max` (also after equilibration, `dense.equilibrate`), get zero gradient; the latter are
counted in `ill_conditioned`.
"""
from __future__ import annotations

import torch

from . import dense, eig, parallel
from .plan import DeclarativePlan
from .solver import Solver, checked_number, flat_params

BACKWARDS = ("ift", "autograd")
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
ARMIJO = 1e-4  # sufficient decrease of the line searches
HALVINGS = 30  # backtracking steps before a row gives up for this iteration
BOUNDARY = 0.995  # interior point: fraction to the boundary
POLISH_FROM = 1e-8  # interior point: residual from which the active set is polished
POLISH_STEPS = 3  # interior point: Newton steps of the polish
TAU_START, TAU_FACTOR, TAU_KAPPA = 0.1, 0.2, 10.0  # interior point: the barrier's schedule
PENALTY_ETA = 0.1  # interior point: the merit penalty's share of the predicted decrease
BOUND_PUSH = 1e-2  # interior point: a start within this (relative) of a bound moves inside
ROUNDING_STEPS = 1000  # converged when the full Newton step is below this many roundings of y
KAPPA_SIGMA = 1e10  # interior point: multipliers kept within this factor of tau / s


def set_options(layer, backward, max_iterations, tol, refine_steps, precision) -> None:
    """Check and set the options every declarative layer has (one-line errors)."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be 'ift' or 'autograd', got {backward!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    layer.backward = backward
    layer.max_iterations = checked_number("max_iterations", max_iterations, minimum=1, strict=False, integer=True)
    layer.compute_dtype = PRECISIONS[precision]
    layer.tol = checked_number("tol", tol) if tol is not None else (1e-10 if precision == "float64" else 1e-5)
    layer.refine_steps = checked_number("refine_steps", refine_steps, strict=False, integer=True)


def _solve(matrix, rhs):
    """Batched solve of matrix x = rhs [B, n]; rows that are singular or not finite get x = 0
    and usable = False."""
    x, info = torch.linalg.solve_ex(matrix, rhs.unsqueeze(-1))
    x = x.squeeze(-1)
    usable = (info == 0) & torch.isfinite(x).all(dim=-1)
    if not _all(usable):  # again with the identity in those rows: finite, also for autograd's backward
        eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
        x = torch.linalg.solve_ex(torch.where(usable[:, None, None], matrix, eye),
                                  torch.where(usable.unsqueeze(-1), rhs, 0).unsqueeze(-1))[0].squeeze(-1)
    return torch.where(usable.unsqueeze(-1), x, torch.zeros_like(x)), usable


def _at_rounding(y, step):
    """Rows whose full Newton step is below ROUNDING_STEPS roundings of y: converged, whatever
    the residual's absolute size (a gradient summed from many terms far from the origin cannot
    reach an absolute tol)."""
    size = torch.linalg.vector_norm(step, dim=-1)
    return torch.isfinite(size) & (size <= ROUNDING_STEPS * torch.finfo(y.dtype).eps * (1 + torch.linalg.vector_norm(y, dim=-1)))


def _all(mask) -> bool:
    """Whether every row is done, where asking costs nothing (the CPU); elsewhere False."""
    return parallel.host_sync_is_free(mask.device) and bool(mask.all())


def _backtrack(merit, y, step, value, slope, active):
    """Armijo backtracking, per row: the first alpha in 1, 1/2, ... with a finite merit(y +
    alpha step) <= value + ARMIJO alpha slope (+ the rounding error of value). Rows that are not `active` or find no alpha keep y.
    merit: y -> (value [B], anything to return with it)."""
    accepted = ~active
    new_y, new_value, new_extra = y, value, None
    slack = 8 * torch.finfo(value.dtype).eps * (1 + value.abs())  # rounding: no decrease to see
    alpha = 1.0
    for _ in range(HALVINGS):
        candidate = y + alpha * step
        candidate_value, extra = merit(candidate)
        better = (~accepted & torch.isfinite(candidate_value) & torch.isfinite(candidate).all(dim=-1)
                  & (candidate_value <= value + ARMIJO * alpha * slope + slack))
        new_y = torch.where(better.unsqueeze(-1), candidate, new_y)
        new_value = torch.where(better, candidate_value, new_value)
        new_extra = extra if new_extra is None else _where_tree(better, extra, new_extra)
        accepted = accepted | better
        if _all(accepted):
            break
        alpha *= 0.5
    return new_y, new_value, new_extra, accepted


def _where_tree(mask, a, b):
    """torch.where(mask, a, b) per row [B], through nested tuples and lists of tensors."""
    if isinstance(a, (tuple, list)):
        return type(a)(_where_tree(mask, x, z) for x, z in zip(a, b))
    shape = mask.shape + (1,) * (a.dim() - mask.dim())
    return torch.where(mask.view(shape), a, b)


# -- Implicit ---------------------------------------------------------------------------------


def _newton_step(J, F):
    """Newton step J d = -F (square); least squares by the normal equations with a tiny damping
    (overdetermined, and the rows where the square solve fails)."""
    square = J.shape[-2] == J.shape[-1]
    if square:
        step, usable = _solve(J, -F)
        if _all(usable):
            return step
    JT = J.transpose(-1, -2)
    normal = JT @ J
    damping = 1e-12 * normal.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1).clamp_min(1e-300)
    eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
    damped, _ = _solve(normal + damping[:, None, None] * eye, -(JT @ F.unsqueeze(-1)).squeeze(-1))
    return torch.where(usable.unsqueeze(-1), step, damped) if square else damped


def solve_implicit(plan: DeclarativePlan, a, y, layer):
    """Damped Newton on F(y, a) = 0 from y: -> y, converged [B]."""

    def merit(z):
        F = plan.residual(z, a)
        return (F * F).sum(-1), F

    value, F = merit(y)
    done = F.abs().amax(dim=-1) <= layer.tol
    for _ in range(layer.max_iterations):
        if _all(done):
            break
        J = plan.jacobian(y, a)
        step = _newton_step(J, F)
        if J.shape[-2] == J.shape[-1]:  # (a Gauss-Newton step vanishes at any least-squares point)
            at_rounding = ~done & _at_rounding(y, step)  # converged: that last step is taken in full
            y = torch.where(at_rounding.unsqueeze(-1), y + step, y)
            done = done | at_rounding
        y, value, F, _ = _backtrack(merit, y, step, value, -2 * value, ~done)
        done = torch.isfinite(y).all(dim=-1) & ((F.abs().amax(dim=-1) <= layer.tol) | done)
    return y, done


# -- Argmin -----------------------------------------------------------------------------------


def _eigh(H):
    """Batched symmetric eigendecomposition that never raises: rows that are not finite, or that
    LAPACK cannot decompose, get NaN eigenpairs (and so never converge or count as ok)."""
    finite = torch.isfinite(H).all(dim=-1).all(dim=-1)
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    values, vectors = eig.nan_on_failure(torch.linalg.eigh, torch.where(finite[:, None, None], H, eye))
    nan = torch.tensor(float("nan"), dtype=H.dtype, device=H.device)
    return torch.where(finite[:, None], values, nan), torch.where(finite[:, None, None], vectors, nan)


def _floored_inverse_apply(H, g, relative=1e-8):
    """H_mod^-1 g: H^-1 g by Cholesky where H is positive definite, else with H_mod = V |Lambda|
    V^T, eigenvalues floored at relative * max(1, |lambda|max). (The eigendecomposition is of
    the detached H: backward="autograd" through eigenvectors of repeated eigenvalues is NaN.)"""
    factor, info = torch.linalg.cholesky_ex(torch.where(torch.isfinite(H), H, 0))
    pivots = factor.diagonal(dim1=-2, dim2=-1) ** 2  # each at least H's smallest eigenvalue
    scale = H.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0)
    definite = (info == 0) & (pivots.amin(-1) > 1e-6 * scale) & torch.isfinite(g).all(-1)
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    factor = torch.where(definite[:, None, None], factor, eye)  # finite everywhere, also for autograd
    step = torch.cholesky_solve(g.unsqueeze(-1), factor).squeeze(-1)
    if _all(definite):
        return step
    values, vectors = _eigh(H.detach())
    floor = relative * values.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    inverse = 1 / values.abs().clamp_min(floor)
    floored = (vectors @ (inverse * (vectors.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
    return torch.where(definite.unsqueeze(-1), step, floored)


def _kkt_matrix(H, A, active, symmetric=False):
    """[[H, A_act^T], [A_act, diag(inactive)]]: the KKT matrix with the inactive constraints'
    rows and columns replaced by the identity (their multipliers are fixed at 0).

    An unknown y_j pinned by an active bound (an active row of A with one nonzero entry, in
    column j) has its row of H replaced by the identity's (and its column too, `symmetric`):
    the steps of y, and the Hessian reduced to the active constraints' null space, do not
    depend on that row (the null space has no j component); only the bound's multiplier does,
    which the residual corrects. It may be infinite: y**1.5 at y = 0, or 1e20 at y = 1e-40,
    which would drown every other eigenvalue. Not symmetric: solve its transpose for adjoints."""
    A = A * active.unsqueeze(-1).to(A.dtype)
    pinned = _pinned(A)
    if not _all(~pinned):
        rows = pinned.unsqueeze(-1)
        replaced = rows | pinned.unsqueeze(-2) if symmetric else rows.expand_as(H)
        H = torch.where(replaced, torch.diag_embed(pinned.to(H.dtype)), H)
    corner = torch.diag_embed((~active).to(A.dtype))
    top = torch.cat([H, A.transpose(-1, -2)], dim=-1)
    return torch.cat([top, torch.cat([A, corner], dim=-1)], dim=-2)


def _pinned(A):
    """[B, N]: the unknowns pinned by a bound among the rows of A (an active constraint with one
    nonzero entry in the Jacobian); A's inactive rows zeroed."""
    bound = (A != 0).sum(-1) == 1  # [B, C]
    return ((A != 0) & bound.unsqueeze(-1)).any(-2)


def _at_vertex(A, active):
    """-> (fully, active'): rows whose every unknown is pinned by an active bound (a vertex), and
    the active set with only those bounds kept for them. At a vertex an active equality (or
    other constraint) is implied by the bounds, the KKT matrix singular: Newton and the IFT
    then use the bounds alone, the other multipliers keeping their values (the bounds'
    multipliers take up stationarity exactly)."""
    A = A * active.unsqueeze(-1).to(A.dtype)
    fully = _pinned(A).all(-1)
    bound = (A != 0).sum(-1) == 1
    return fully, torch.where(fully.unsqueeze(-1), active & bound, active)


def _second_order_ok(H, A, active):
    """Strict local minimum on the active constraints (second-order sufficient condition): the
    KKT matrix has exactly as many negative eigenvalues as active constraints and no (near) zero
    one; with A of full row rank this is the reduced Hessian being positive definite. Rows that
    fail are counted again on the equilibrated matrix (a congruence: the same inertia), where
    "near zero" is relative to the entries' own scale: an entropy's Hessian entry tau / y of
    1e16 does not make the eigenvalues of order 1 zero."""
    K = _kkt_matrix(H, A, active, symmetric=True)
    fully, _ = _at_vertex(A, active)  # a vertex: the reduced Hessian is empty
    ok = _inertia_ok(K, active) | fully
    if _all(ok):
        return ok

    def equilibrated(K, active):
        scale, _ = dense.equilibrate(K, symmetric=True)
        return (_inertia_ok(K * scale.unsqueeze(-1) * scale.unsqueeze(-2), active),)

    return _redo_rows(~ok, equilibrated, (K, active), (ok,))[0]


def _redo_rows(redo, fn, inputs, outputs):
    """`outputs` (tensors [B, ...]) with the rows in `redo` replaced by fn(*inputs) -> a tuple
    like `outputs`: on the CPU fn runs on those rows only, elsewhere on every row, masked (no
    host synchronisation)."""
    if parallel.host_sync_is_free(redo.device):
        rows = redo.nonzero().squeeze(-1)
        again = fn(*(x.index_select(0, rows) for x in inputs))
        return tuple(out.index_put((rows,), new) for out, new in zip(outputs, again))
    again = fn(*inputs)
    return tuple(torch.where(redo.view((-1,) + (1,) * (out.dim() - 1)), new, out) for out, new in zip(outputs, again))


def _inertia_ok(K, active):
    """K symmetric [B, n, n] has no eigenvalue within 1e-10 of the largest (or of 1) and as
    many negative ones as active constraints."""
    values, _ = _eigh(K)
    scale = values.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    nonsingular = (values.abs() > 1e-10 * scale).all(dim=-1)
    return nonsingular & ((values < 0).sum(-1) == active.sum(-1))


def _kkt_residual(plan, a, y, m, active):
    """Stationarity and active constraints, [B, N + C] (inactive constraints' entries: m)."""
    c = plan.constraints(y, a)
    A = plan.constraint_jacobian(y, a)
    stationarity = plan.gradient(y, a) + (A.transpose(-1, -2) @ (m * active).unsqueeze(-1)).squeeze(-1)
    return torch.cat([stationarity, torch.where(active, c, m)], dim=-1)


def _kkt_newton(plan, a, y, m, active, iterations, tol):
    """Full Newton steps on the KKT equations with the `active` constraints as equalities (the
    polish of the interior point, `attach`): -> y, m, done."""
    n = y.shape[-1]

    def merit(z):
        r = _kkt_residual(plan, a, z[..., :n], z[..., n:], active)
        return (r * r).sum(-1), r

    z = torch.cat([y, m], dim=-1)
    value, r = merit(z)
    done = r.abs().amax(dim=-1) <= tol
    for _ in range(iterations):
        if _all(done):
            break
        y, m = z[..., :n], z[..., n:]
        A = plan.constraint_jacobian(y, a)
        _, kept = _at_vertex(A, active)  # at a vertex the multipliers of what the bounds imply stay
        K = _kkt_matrix(plan.lagrangian_hessian(y, a, m * active), A, kept)
        rhs = torch.cat([-r[..., :n], torch.where(active & ~kept, 0, -r[..., n:])], -1)
        step, _ = _solve(K, rhs)
        candidate = torch.where(done.unsqueeze(-1), z, z + step)
        value, r = merit(candidate)
        # An unknown driven onto its bound (y = 0) can land a rounding beyond it, outside the
        # domain of y**1.5: there the step stops short by a relative 1e-10.
        outside = ~done & ~torch.isfinite(value)
        if not _all(~outside):
            candidate = torch.where(outside.unsqueeze(-1), z + (1 - 1e-10) * step, candidate)
            value, r = merit(candidate)
        z = candidate
        done = torch.isfinite(z).all(dim=-1) & (r.abs().amax(dim=-1) <= tol)
    return z[..., :n], z[..., n:], done


def _least_squares_multipliers(plan, a, y, active):
    """Multipliers m of the active constraints minimising |df/dy + A^T m|; 0 for the others."""
    if not plan.num_constraints:
        return y.new_zeros(y.shape[0], 0)
    A = plan.constraint_jacobian(y, a) * active.unsqueeze(-1).to(y.dtype)
    gram = A @ A.transpose(-1, -2) + torch.diag_embed((~active).to(y.dtype))
    gram = gram + 1e-14 * gram.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-300)[:, None, None] * torch.eye(
        gram.shape[-1], dtype=y.dtype, device=y.device)
    m, _ = _solve(gram, -(A @ plan.gradient(y, a).unsqueeze(-1)).squeeze(-1))
    return m * active


def _unconstrained(plan, a, y, layer):
    empty = y.new_zeros(y.shape[0], 0)

    def merit(z):
        return plan.objective(z, a), None

    f, g = plan.objective(y, a), plan.gradient(y, a)
    done = g.abs().amax(dim=-1) <= layer.tol
    for _ in range(layer.max_iterations):
        if _all(done):
            break
        step = -_floored_inverse_apply(plan.lagrangian_hessian(y, a, empty), g)
        at_rounding = ~done & _at_rounding(y, step)  # converged: that last step is taken in full
        y = torch.where(at_rounding.unsqueeze(-1), y + step, y)
        done = done | at_rounding
        slope = (g * step).sum(-1)
        # Where the predicted decrease is below f's rounding (a sum of many terms far from the
        # origin), f cannot tell the steps apart: the full Newton step, if it shrinks the gradient.
        unseen = ~done & (slope.abs() <= ROUNDING_STEPS * torch.finfo(f.dtype).eps * (1 + f.abs()))
        y_before = y
        y, f, _, _ = _backtrack(merit, y, step, f, slope, ~done & ~unseen)
        g_before, g = g, plan.gradient(y, a)
        if not _all(~unseen):
            candidate = y_before + step
            g_candidate = plan.gradient(candidate, a)
            take = unseen & torch.isfinite(g_candidate).all(-1) & (g_candidate.abs().amax(-1) < g_before.abs().amax(-1))
            y = torch.where(take.unsqueeze(-1), candidate, y)
            g = torch.where(take.unsqueeze(-1), g_candidate, g)
            f = torch.where(take, plan.objective(y, a), f)
        done = torch.isfinite(y).all(dim=-1) & ((g.abs().amax(dim=-1) <= layer.tol) | done)
    return y, empty, done


def _inertia_corrected(M, Ae):
    """The KKT matrix [[M + delta I, Ae^T], [Ae, 0]] with delta = 0 where that has inertia
    (N, E, 0), else delta = -1.5 (smallest eigenvalue of M) + 1e-8 (times M's scale): M + delta I
    is then positive definite with its smallest eigenvalue |lambda_min| / 2 (IPOPT's ladder lands
    between 1 and 8 times |lambda_min|), so the Newton step is a descent direction of the merit
    function even where the Lagrangian's Hessian is indefinite, and of bounded length."""
    N, E = M.shape[-1], Ae.shape[-2]
    eye = torch.eye(N, dtype=M.dtype, device=M.device)
    corner = Ae.new_zeros(Ae.shape[0], E, E)

    def kkt(delta):
        top = torch.cat([M + delta[:, None, None] * eye, Ae.transpose(-1, -2)], -1)
        return torch.cat([top, torch.cat([Ae, corner], -1)], -2)

    K = kkt(torch.zeros_like(M[..., 0, 0]))
    # M positive definite (a Cholesky factor exists; every convex problem) settles the inertia
    # without an eigendecomposition, given Ae of full row rank (else the solve fails anyway).
    right = torch.linalg.cholesky_ex(torch.where(torch.isfinite(M), M, 0).detach())[1] == 0
    if _all(right):
        return K
    values, _ = _eigh(K.detach())
    right |= ((values < 0).sum(-1) == E) & (values.abs() > 1e-13 * values.abs().amax(-1, keepdim=True).clamp_min(1.0)).all(-1)
    if _all(right):
        return K
    smallest = _eigh(M.detach())[0]
    scale = smallest.abs().amax(-1).clamp_min(1.0)
    delta = (1e-8 * scale - 1.5 * smallest[..., 0]).clamp_min(0)
    return torch.where(right[:, None, None], K, kkt(delta))


def _interior_point(plan, a, y, layer):
    """Primal-dual interior point (module docstring): -> y, multipliers (h's, then g's), done.

    Each iteration: the Newton step on the perturbed KKT equations (mu s = tau) with the
    Lagrangian's Hessian, corrected by delta I where needed (`_inertia_corrected`); then
    backtracking from the fraction-to-the-boundary step on the merit function
    f - tau sum(log s) + rho (|h|_1 + |g + s|_1), with rho from the step (`_penalty`). The
    barrier tau decreases monotonically per row, as IPOPT's default: from TAU_START to
    max(tol / 10, min(TAU_FACTOR tau, tau^1.5)) whenever the barrier problem's residual is below
    TAU_KAPPA tau. (An adaptive tau, a fraction of the mean complementarity,
    takes fewer iterations on convex problems but lets the slacks collapse on non-convex ones.)"""
    E = plan.num_equalities
    y = _bound_push(plan, a, y)
    c = plan.constraints(y, a)
    # slack = -g where the start is strictly feasible (g + s = 0 from the start: y stays inside,
    # where a bound such as y >= 0 is also the domain of y**1.5), else 1
    s = torch.where(c[..., E:] < 0, -c[..., E:], torch.ones_like(c[..., E:]))
    mu = torch.ones_like(s)
    nu = y.new_zeros(y.shape[0], E)
    rho = y.new_ones(y.shape[0])
    tau = torch.full_like(rho, TAU_START).unsqueeze(-1)
    tau_min = layer.tol ** 2  # (IPOPT: tol / 10) lower for rows whose polish keeps failing
    N = y.shape[-1]
    done = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    y_out, m_out = y, y.new_zeros(y.shape[0], plan.num_constraints)
    coarse = max(layer.tol, POLISH_FROM)
    for _ in range(layer.max_iterations):
        A = plan.constraint_jacobian(y, a)
        Ae, Ai = A[..., :E, :], A[..., E:, :]
        grad_f = plan.gradient(y, a)
        r_d = grad_f + (A.transpose(-1, -2) @ torch.cat([nu, mu], -1).unsqueeze(-1)).squeeze(-1)
        r_e, r_i = c[..., :E], c[..., E:] + s
        feasibility = torch.cat([r_d, r_e, r_i], -1).abs().amax(dim=-1)
        scale = 1 + grad_f.abs().amax(-1)  # rounding in r_d grows with the gradient's size
        near = ~done & (feasibility <= coarse * scale) & (_largest(mu * s) <= coarse)
        y_out, m_out, done = _polish_near(plan, a, y, torch.cat([nu, mu], -1), s, layer.tol, near, y_out, m_out, done)
        if _all(done):
            break
        for _ in range(3):  # the barrier problem solved well enough: decrease tau
            solved = torch.maximum(feasibility, _largest((mu * s - tau).abs())) <= TAU_KAPPA * tau.squeeze(-1)
            tau = torch.where(solved.unsqueeze(-1), torch.minimum(TAU_FACTOR * tau, tau ** 1.5).clamp_min(tau_min), tau)
        r_c = mu * s - tau
        M = plan.lagrangian_hessian(y, a, torch.cat([nu, mu], -1)) + Ai.transpose(-1, -2) @ ((mu / s).unsqueeze(-1) * Ai)
        rhs = -(r_d + (Ai.transpose(-1, -2) @ ((mu * r_i - r_c) / s).unsqueeze(-1)).squeeze(-1))
        step, _ = _solve(_inertia_corrected(M, Ae), torch.cat([rhs, -r_e], -1))
        dy, dnu = step[..., :N], step[..., N:]
        ds = -r_i - (Ai @ dy.unsqueeze(-1)).squeeze(-1)
        dmu = (-r_c - mu * ds) / s
        rho = _penalty(rho, M, grad_f, dy, ds, s, tau, r_e, r_i)
        y, s = _merit_search(plan, a, y, s, dy, ds, grad_f, r_e, r_i, tau, rho, ~done)
        alpha_d = _to_boundary(mu, dmu)
        keep = done.unsqueeze(-1)
        nu = torch.where(keep, nu, nu + alpha_d * dnu)
        mu = torch.where(keep, mu, mu + alpha_d * dmu)
        # Keep each multiplier within a factor KAPPA_SIGMA of its central value tau / s (IPOPT).
        mu = torch.minimum(torch.maximum(mu, tau / (KAPPA_SIGMA * s)), KAPPA_SIGMA * tau / s)
        c = plan.constraints(y, a)
    y_out = torch.where(done.unsqueeze(-1), y_out, y)
    m_out = torch.where(done.unsqueeze(-1), m_out, torch.cat([nu, mu], -1))
    return y_out, m_out, done


def _bound_push(plan, a, y):
    """IPOPT's bound push: a start on (or within BOUND_PUSH max(1, |b|) of) a bound y_j >= b or
    y_j <= b (an inequality whose Jacobian row has one nonzero entry; b where it vanishes,
    to first order) moves that far inside (to the middle of a narrower box). A start on the
    bound would leave the interior point there where the objective's Hessian is infinite
    (y**1.5 at 0), and slow it down elsewhere."""
    E = plan.num_equalities
    g = plan.constraints(y, a)[..., E:]
    G = plan.constraint_jacobian(y, a)[..., E:, :]
    bound = ((G != 0).sum(-1) == 1) & torch.isfinite(g)  # [B, I]
    if _all(~bound):
        return y
    coefficient = G.sum(-1)  # the one nonzero entry (0 where not a bound)
    column = (G != 0).to(y.dtype).argmax(-1)  # [B, I]
    at = y.gather(-1, column)
    b = at - g / torch.where(bound, coefficient, 1.0)  # the bound's value of y_j
    push = BOUND_PUSH * b.abs().clamp_min(1.0)
    inf = torch.full_like(b, float("inf"))
    lower = torch.where(bound & (coefficient < 0), b, -inf)  # g = |c| (b - y_j) <= 0
    upper = torch.where(bound & (coefficient > 0), b, inf)
    target_low = y.new_full(y.shape, -float("inf")).scatter_reduce(-1, column, lower + push, "amax")
    target_up = y.new_full(y.shape, float("inf")).scatter_reduce(-1, column, upper - push, "amin")
    raw_low = y.new_full(y.shape, -float("inf")).scatter_reduce(-1, column, lower, "amax")
    raw_up = y.new_full(y.shape, float("inf")).scatter_reduce(-1, column, upper, "amin")
    pushed = torch.minimum(torch.maximum(y, target_low), target_up)
    narrow = (target_low > target_up) & torch.isfinite(raw_low) & torch.isfinite(raw_up)
    pushed = torch.where(narrow, (raw_low + raw_up) / 2, pushed)
    return torch.where(torch.isfinite(pushed), pushed, y)


def _penalty(rho, M, grad_f, dy, ds, s, tau, r_e, r_i):
    """The merit function's penalty for this step: the least (at least 1) with which the step
    decreases the merit function (Nocedal and Wright, eq. 18.36), recomputed at each step where
    the constraints are violated. Not the multipliers' Newton estimates, and not kept from step
    to step: one nearly singular step would inflate it for good, and a large penalty makes the
    l1 merit function zigzag along curved constraints (trust regions took hundreds of steps).
    (A step length's ingredient: no gradient through it.)"""
    with torch.no_grad():
        violation = r_e.abs().sum(-1) + r_i.abs().sum(-1)
        curvature = ((M @ dy.unsqueeze(-1)).squeeze(-1) * dy).sum(-1).clamp_min(0)
        model = (grad_f * dy).sum(-1) - (tau * ds / s).sum(-1) + curvature / 2
        needed = model / ((1 - PENALTY_ETA) * violation).clamp_min(torch.finfo(M.dtype).tiny)
        return torch.where(violation > 0, (needed + 1e-8).clamp_min(1.0), rho)


def _polish_near(plan, a, y, m, s, tol, near, y_out, m_out, done):
    """`_polish` of the rows `near` the end; those that succeed are done, with their polished y
    and multipliers in y_out and m_out: -> y_out, m_out, done. On the CPU only those rows are
    computed; elsewhere every row, masked (no host synchronization)."""
    if not parallel.host_sync_is_free(near.device):
        with torch.no_grad():
            y_p, m_p, polished = _polish(plan, a, y, m, s, tol)
        polished &= near
        if torch.is_grad_enabled():
            y_p, m_p = _polish_on_graph(plan, a, y, m, s, tol, polished, y_p, m_p)
        keep = polished.unsqueeze(-1)
        return torch.where(keep, y_p, y_out), torch.where(keep, m_p, m_out), done | polished
    if not bool(near.any()):
        return y_out, m_out, done
    rows = near.nonzero().squeeze(-1)
    with torch.no_grad():
        y_p, m_p, polished = _polish(plan, a[rows], y[rows], m[rows], s[rows], tol)
    rows, y_p, m_p = rows[polished], y_p[polished], m_p[polished]
    if torch.is_grad_enabled():  # again on the autograd graph, only the kept rows (`_polish_on_graph`)
        y_p, m_p, _ = _polish(plan, a[rows], y[rows], m[rows], s[rows], tol)
    done = done.index_put((rows,), torch.ones_like(rows, dtype=torch.bool))
    return y_out.index_put((rows,), y_p), m_out.index_put((rows,), m_p), done


def _polish_on_graph(plan, a, y, m, s, tol, polished, y_p, m_p):
    """backward="autograd": the polish of the `polished` rows again, on the autograd graph (the
    other rows' Newton steps may leave the domain of a log or a root, and 0 * inf in their
    backward would be NaN)."""
    rows = polished.nonzero().squeeze(-1)
    y_g, m_g, _ = _polish(plan, a[rows], y[rows], m[rows], s[rows], tol)
    return y_p.index_put((rows,), y_g), m_p.index_put((rows,), m_g)


def _polish(plan, a, y, m, s, tol):
    """Newton on the KKT equations with the interior point's active set (equalities, and the
    inequalities whose multiplier exceeds their slack) as equalities, from its iterate: -> y, m
    and whether it converged and stayed consistent (inactive inequalities satisfied,
    multipliers >= 0). Where the active set is ambiguous (mu close to s) the guess may be wrong:
    rows where it fails try again with no inequality active (an interior solution within the
    barrier's reach of a bound: an entropy's y = 1e-12 next to y >= 0, where the final barrier
    leaves mu = tau / s of order 1e-2 > s), and those that fail both go on with a smaller
    barrier."""
    E = plan.num_equalities
    active = torch.cat([torch.ones_like(m[..., :E], dtype=torch.bool), m[..., E:] > s], -1)
    y_p, m_p, polished = _polish_with(plan, a, y, m, active, tol)
    if _all(polished) or not plan.num_inequalities:
        return y_p, m_p, polished
    interior = torch.zeros_like(active)
    interior[..., :E] = True
    y_i, m_i, polished_i = _polish_with(plan, a, y, m, interior, tol)
    second = (~polished & polished_i).unsqueeze(-1)
    return torch.where(second, y_i, y_p), torch.where(second, m_i, m_p), polished | polished_i


def _polish_with(plan, a, y, m, active, tol):
    """`_polish` with the given active set."""
    E = plan.num_equalities
    y_p, m_p, converged = _kkt_newton(plan, a, y, m * active, active, POLISH_STEPS, tol)
    g = plan.constraints(y_p, a)[..., E:]
    consistent = ((g <= tol) | active[..., E:]).all(dim=-1) & (m_p[..., E:] >= 0).all(dim=-1)
    return y_p, m_p * active, converged & consistent


def _merit_search(plan, a, y, s, dy, ds, grad_f, r_e, r_i, tau, rho, active):
    """Backtracking on the interior point's merit function phi(y, s) = f - tau sum(log s) +
    rho (|h|_1 + |g + s|_1) from the fraction-to-the-boundary step: the first alpha in
    alpha_max, alpha_max / 2, ... with phi finite (and the gradient and constraints finite) and
    phi <= phi(0) + ARMIJO alpha Dphi. Rows that find none take the last (smallest) finite step,
    which keeps s > 0. -> y, s."""
    E = plan.num_equalities
    tau = tau.squeeze(-1)

    def merit(z, slack):
        c = plan.constraints(z, a)
        violation = c[..., :E].abs().sum(-1) + (c[..., E:] + slack).abs().sum(-1)
        return plan.objective(z, a) - tau * slack.log().sum(-1) + rho * violation, c

    value, _ = merit(y, s)
    slope = ((grad_f * dy).sum(-1) - tau * (ds / s).sum(-1)
             - rho * (r_e.abs().sum(-1) + r_i.abs().sum(-1)))
    alpha = _to_boundary(s, ds)
    accepted = ~active
    new_y, new_s = y, s
    slack = 8 * torch.finfo(value.dtype).eps * (1 + value.abs())
    for attempt in range(HALVINGS):
        cand_y, cand_s = y + alpha * dy, s + alpha * ds
        cand_value, c = merit(cand_y, cand_s)
        finite = (torch.isfinite(cand_value) & torch.isfinite(c).all(-1)
                  & torch.isfinite(plan.gradient(cand_y, a)).all(-1))
        better = ~accepted & finite & (cand_value <= value + ARMIJO * alpha.squeeze(-1) * slope + slack)
        if attempt == HALVINGS - 1:
            better = ~accepted & finite
        new_y = torch.where(better.unsqueeze(-1), cand_y, new_y)
        new_s = torch.where(better.unsqueeze(-1), cand_s, new_s)
        accepted = accepted | better
        if _all(accepted):
            break
        alpha = alpha / 2
    return new_y, new_s


def _largest(t):
    """t.amax(-1), 0 for no entries (an interior point without inequalities)."""
    return t.amax(-1) if t.shape[-1] else t.new_zeros(t.shape[:-1])


def _to_boundary(value, step):
    """The largest alpha <= 1 keeping value + alpha step >= (1 - BOUNDARY) value, per row [B, 1]
    (a step length: no gradient through it with backward="autograd")."""
    value, step = value.detach(), step.detach()
    ratio = torch.where(step < 0, -value / step.clamp_max(-1e-300), torch.full_like(value, float("inf")))
    return (BOUNDARY * ratio.amin(dim=-1, keepdim=True)).clamp_max(1.0) if value.shape[-1] else value.new_ones(value.shape[0], 1)


def active_set(plan, a, y, m):
    """Equalities always; an inequality when its multiplier is positive."""
    E = plan.num_equalities
    active = m > 0
    active[..., :E] = True
    return active


def solve_argmin(plan: DeclarativePlan, a, y, layer):
    """The local forward of an Argmin from y: -> y, multipliers [B, E + I], ok [B]."""
    if plan.num_constraints:
        # also for equalities alone: Newton on the KKT equations with |KKT residual|^2 as merit
        # stalls where that has a local minimum (a curved equality from a far start); the
        # interior point's inertia correction and l1 merit function do not
        y, m, done = _interior_point(plan, a, y, layer)
    else:
        y, m, done = _unconstrained(plan, a, y, layer)
    return y, m, done & second_order(plan, a, y, m)


def second_order(plan, a, y, m):
    """Strict local minimum (`_second_order_ok`) and feasible inequalities, per row."""
    active = active_set(plan, a, y, m)
    with torch.no_grad():
        H = plan.lagrangian_hessian(y, a, m)
        A = plan.constraint_jacobian(y, a)
        ok = _second_order_ok(H, A, active)
        if plan.num_inequalities:
            ok = ok & (m[..., plan.num_equalities:] >= 0).all(dim=-1)
    return ok


# -- The global forward ------------------------------------------------------------------------


def solve_global(layer, a, start):
    """Every solution of the layer's polynomial system (`plan.critical_points`, solved by the
    elimination template), then per row: for an Argmin the real critical point with the smallest
    objective, for an Implicit the real solution nearest `start` (the first one without it).
    When an Argmin's system is symmetric under y -> -y (an even template in y and m), the
    representative of +-y is the one whose entry of largest magnitude is positive; an Implicit
    keeps the solution nearest the start (its mirror image is another solution, and with a
    linear block, as implicit_example_layer's y1 = 1/x, only the template's unknowns are
    mirrored). -> y, multipliers [B, E], found [B]."""
    plan = layer.plan
    solutions, valid = layer.critical_points(a)  # [B, S, N (+ E)]
    batch, slots, _ = solutions.shape
    n = plan.num_unknowns
    y_all = solutions[..., :n]
    if plan.kind == "argmin":
        with torch.no_grad():
            key = plan.objective(y_all.reshape(batch * slots, n), a.repeat_interleave(slots, 0)).view(batch, slots)
    elif start is not None:
        key = (y_all.detach() - start.unsqueeze(1)).norm(dim=-1)
    else:
        key = torch.arange(slots, device=a.device, dtype=a.dtype).expand(batch, slots)  # the first valid one
    key = torch.where(valid & torch.isfinite(key), key, torch.full_like(key, float("inf")))
    index = key.argmin(dim=-1)
    found = valid.gather(1, index.unsqueeze(-1)).squeeze(-1)
    picked = solutions.gather(1, index.view(batch, 1, 1).expand(batch, 1, solutions.shape[-1])).squeeze(1)
    y, m = picked[..., :n], picked[..., n:]
    template = plan.critical_points.template
    if (plan.kind == "argmin" and template is not None and template.even and not template.fixed
            and plan.critical_points.linear is None):  # (the template's unknowns are y, m)
        with torch.no_grad():
            largest = y.abs().argmax(dim=-1, keepdim=True)
            sign = torch.where(y.gather(-1, largest) < 0, -1.0, 1.0).to(y.dtype)
        y = y * sign  # the multipliers of +-y are the same (stationarity is odd in y)
    return y, m, found


# -- The backward -----------------------------------------------------------------------------


def implicit_gradient(plan: DeclarativePlan, a, y, m, ok, grad, cond_max):
    """d<grad, y>/da by the implicit function theorem: -> gradient [B, M], ill-conditioned count.
    On the CPU the masks are skipped where every row passes (each is a full pass over the batch)."""
    usable = ok & (grad != 0).any(dim=-1) & torch.isfinite(grad).all(dim=-1)
    if plan.kind == "implicit":
        J = plan.jacobian(y, a)
        if J.shape[-2] == J.shape[-1]:
            matrix, rhs = J.transpose(-1, -2), grad
        else:  # w = J (J^T J)^-1 grad
            matrix, rhs = J.transpose(-1, -2) @ J, grad
    elif plan.num_constraints:
        active = active_set(plan, a, y, m)
        A = plan.constraint_jacobian(y, a)
        _, active = _at_vertex(A, active)  # at a vertex y follows the bounds alone
        K = _kkt_matrix(plan.lagrangian_hessian(y, a, m), A, active)
        matrix = K.transpose(-1, -2)  # the adjoint system (K is symmetric but for pinned rows)
        rhs = torch.cat([grad, grad.new_zeros(grad.shape[0], plan.num_constraints)], -1)
    else:
        matrix, rhs = plan.lagrangian_hessian(y, a, m), grad
    finite = torch.isfinite(matrix).all(dim=-1).all(dim=-1)
    if not _all(finite):
        matrix = torch.where(finite[:, None, None], matrix, torch.ones_like(matrix))
    w, conditioned = _conditioned_solve(matrix, rhs, cond_max)
    conditioned = conditioned & torch.isfinite(w).all(dim=-1)
    good = usable & conditioned & finite
    every = _all(good)
    if plan.kind == "implicit" and J.shape[-2] != J.shape[-1]:
        w = (J @ w.unsqueeze(-1)).squeeze(-1)
    if not every:
        w = torch.where(good.unsqueeze(-1), w, torch.zeros_like(w))
    vjp = plan.parameter_vjp(y, a, w) if plan.kind == "implicit" else plan.parameter_vjp(y, a, m, w)
    gradient = -vjp if every else torch.where(good.unsqueeze(-1), -vjp, torch.zeros_like(vjp))
    return gradient, (usable & ~conditioned).sum()


def _conditioned_solve(matrix, rhs, cond_max):
    """matrix x = rhs [B, n] and whether each row's matrix is nonsingular with a 1-norm
    condition number |K|_1 |K^-1|_1 of at most cond_max (within a factor n of the 2-norm one;
    the singular values would cost ten times the factorisation). Rows that fail are solved
    again after equilibration (`dense.equilibrate`: x = C z with (R K C) z = R rhs), with the
    condition number of the equilibrated matrix, which is what bounds the solve's error: an
    entropy's Hessian entry tau / y of 1e16 next to entries of order 1 is badly scaled, not
    ill-conditioned. (Equilibrating every row would cost more than the solve.)"""
    x, conditioned = _plain_conditioned_solve(matrix, rhs, cond_max)
    if _all(conditioned):
        return x, conditioned

    def equilibrated(matrix, rhs):
        row_scale, column_scale = dense.equilibrate(matrix)
        z, ok = _plain_conditioned_solve(matrix * row_scale.unsqueeze(-1) * column_scale.unsqueeze(-2),
                                         rhs * row_scale, cond_max)
        return z * column_scale, ok

    return _redo_rows(~conditioned, equilibrated, (matrix, rhs), (x, conditioned))


def _plain_conditioned_solve(matrix, rhs, cond_max):
    """`_conditioned_solve` without equilibration. Up to 3 x 3 by the adjugate
    (robust_line_fit's 2 x 2, batch 1,024: 0.24 -> 0.09 ms), beyond by one LU factorisation."""
    if matrix.shape[-1] <= 3:  # (a singular row's inverse is not finite: x too, and it is not conditioned)
        inverse, invertible = dense.small_inverse(matrix)
        x = dense.matvec(inverse, rhs)
    else:
        lu, pivots, info = torch.linalg.lu_factor_ex(matrix)
        eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
        inverse = torch.linalg.lu_solve(lu, pivots, eye)
        x = torch.linalg.lu_solve(lu, pivots, rhs.unsqueeze(-1)).squeeze(-1)
        invertible = info == 0
    condition = dense.norm1(matrix) * dense.norm1(inverse)
    return x, invertible & (condition <= cond_max)


class _ImplicitFunction(torch.autograd.Function):
    """y (computed without autograd) with the IFT gradient wrt the parameters attached."""

    @staticmethod
    def forward(ctx, a, y, m, ok, layer):
        ctx.save_for_backward(a, y, m, ok)
        ctx.layer = layer
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        a, y, m, ok = ctx.saved_tensors
        layer = ctx.layer
        with torch.no_grad():
            gradient, ill = implicit_gradient(layer.plan, a, y, m, ok, grad.to(a.dtype), layer.cond_max)
        layer.ill_conditioned = ill
        return gradient, None, None, None, None


class DeclarativeLayer(torch.nn.Module):
    """`y, ok = layer(params, init=None)`; `y = layer.attach(params, y_hat)`.

    params: [..., M] float32 or float64, any device. y: [..., N] with the dtype and device of
    params. ok: [...] bool: the row converged (residual of the equations or of the KKT system at
    most `tol`, or, without constraints or with as many equations as unknowns, a full Newton
    step below ROUNDING_STEPS roundings of y) and, for an Argmin, is a strict local minimum (second-order sufficient condition
    on the active constraints). Rows that are not ok hold the last iterate and get zero gradient.
    init: [..., N] start point; default: the spec's `init=` (zeros without it).

    backward="ift" (default): the implicit function theorem (module docstring of
    runtime/declarative.py); after each backward `ill_conditioned` counts the rows left out for a
    singular matrix or one whose 1-norm condition number exceeds `cond_max`. backward="autograd"
    differentiates through the forward's iterations (the baseline).
    max_iterations=50: the forward's iteration cap. tol: 1e-10 (float64) or 1e-5 (float32)
    on the largest absolute residual. refine_steps=1: Newton steps of `attach`.
    precision="float64" (default) solves in float64 whatever the input dtype.
    After a call, `multipliers` is (equality multipliers [..., E], inequality multipliers
    [..., I]) of an Argmin (None for an Implicit).
    """

    plan: DeclarativePlan  # set by each generated subclass

    def __init__(self, backward="ift", max_iterations=50, tol=None, refine_steps=1, cond_max=1e10,
                 precision="float64"):
        super().__init__()
        if getattr(type(self), "plan", None) is None:
            raise TypeError("solvergen.runtime.DeclarativeLayer is a base class: use a generated layer")
        set_options(self, backward, max_iterations, tol, refine_steps, precision)
        self.cond_max = checked_number("cond_max", cond_max, finite=False)
        self.multipliers = None
        self.ill_conditioned = None
        self.critical_points = None
        if self.plan.critical_points is not None:  # the global forward's solver
            solver = type(f"{type(self).__name__}CriticalPoints", (Solver,), {"plan": self.plan.critical_points})
            self.critical_points = solver(backward=backward, precision=precision)

    @property
    def forward_path(self) -> str:
        """"global" (all solutions of the polynomial system) or "local" (iterations from a start)."""
        return "global" if self.critical_points is not None else "local"

    def solutions(self, params):
        """All solutions of the global forward's polynomial system, as a Problem solver returns
        them: [..., S, N'] and valid [..., S] (an Argmin's critical points: y, then the equality
        multipliers)."""
        if self.critical_points is None:
            raise ValueError(f"{self.plan.name} has no global forward (not polynomial, or with inequalities)")
        return self.critical_points(params)

    def extra_repr(self):
        return f"backward={self.backward!r}, max_iterations={self.max_iterations}, tol={self.tol:g}"

    def _rows(self, params):
        """params -> rows [B, M] in the compute dtype (non-finite rows replaced by ones), which
        rows were finite [B], and the batch shape."""
        a_in, batch_shape = flat_params(params, self.plan.num_parameters)
        finite = torch.isfinite(a_in).all(dim=-1)
        a = torch.where(finite.unsqueeze(-1), a_in, torch.ones_like(a_in)).to(self.compute_dtype)
        return a, finite, batch_shape

    def _points(self, value, batch_shape, flat_batch, name, like):
        n = self.plan.num_unknowns
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.shape[-1:] != (n,):
            raise ValueError(f"{name} must have shape [..., {n}], got {list(value.shape)}")
        try:
            value = value.expand(*batch_shape, n)
        except RuntimeError:
            raise ValueError(f"{name} has shape {list(value.shape)}, which does not match params' batch shape "
                             f"{list(batch_shape)}") from None
        return value.reshape(flat_batch, n).to(like)

    def _split(self, m, batch_shape):
        if self.plan.kind != "argmin":
            return None
        E = self.plan.num_equalities
        return (m[..., :E].reshape(*batch_shape, E), m[..., E:].reshape(*batch_shape, self.plan.num_inequalities))

    def forward(self, params, init=None):
        a, finite, batch_shape = self._rows(params)
        with torch.no_grad():
            start = self.plan.init(a) if init is None else None
        if init is not None:
            start = self._points(init, batch_shape, len(a), "init", a).detach()
        with torch.set_grad_enabled(self.backward == "autograd" and torch.is_grad_enabled()):
            y, m, ok = self._solve(a if self.backward == "autograd" else a.detach(), start, init is not None)
        ok = ok & finite
        if self.backward == "ift":
            y = _ImplicitFunction.apply(a, y.detach(), m.detach(), ok, self)
        else:  # autograd: rows that are not ok get zero gradient, as documented
            y = torch.where(ok.unsqueeze(-1), y, y.detach())
        y = torch.where(finite.unsqueeze(-1), y, torch.zeros_like(y))
        self.multipliers = self._split(m.detach().to(params.dtype), batch_shape)
        return y.to(params.dtype).reshape(*batch_shape, -1), ok.reshape(batch_shape)

    def _solve(self, a, start, init_given):
        plan = self.plan
        if self.critical_points is not None:
            y, m, found = solve_global(self, a, start if init_given or plan.default_init else None)
            if plan.kind == "argmin":
                found = found & second_order(plan, a, y.detach(), m.detach())
            return y, m, found
        if plan.kind == "implicit":
            y, ok = solve_implicit(plan, a, start, self)
            return y, a.new_zeros(len(a), 0), ok
        return solve_argmin(plan, a, start, self)

    def attach(self, params, y_hat):
        """y_hat (computed by any means) after `refine_steps` Newton steps, with the IFT gradient
        wrt params attached. Multipliers come from least squares on stationarity, with the
        inequalities within `tol` of 0 as the active ones."""
        a, finite, batch_shape = self._rows(params)
        y = self._points(y_hat, batch_shape, len(a), "y_hat", a).detach()
        plan = self.plan
        with torch.no_grad():
            if plan.kind == "implicit":
                for _ in range(self.refine_steps):
                    y = y + _newton_step(plan.jacobian(y, a), plan.residual(y, a))
                ok = plan.residual(y, a).abs().amax(dim=-1) <= self.tol
                m = a.new_zeros(len(a), 0)
            else:
                c = plan.constraints(y, a)
                active = torch.ones_like(c, dtype=torch.bool)
                active[..., plan.num_equalities:] = c[..., plan.num_equalities:] >= -self.tol
                m = _least_squares_multipliers(plan, a, y, active)
                if self.refine_steps:
                    y, m, _ = _kkt_newton(plan, a, y, m, active, self.refine_steps, self.tol)
                m = m * active
                r = _kkt_residual(plan, a, y, m, active)
                ok = (r.abs().amax(dim=-1) <= self.tol) & second_order(plan, a, y, m)
        ok = ok & finite & torch.isfinite(y).all(dim=-1)
        out = _ImplicitFunction.apply(a, y, m, ok, self)
        self.multipliers = self._split(m.to(params.dtype), batch_shape)
        return torch.where(finite.unsqueeze(-1), out, torch.zeros_like(out)).to(params.dtype).reshape(*batch_shape, -1)
