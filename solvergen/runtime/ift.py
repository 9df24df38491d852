"""The backward pass: the implicit function theorem on the declared equations, per valid
solution; nothing is differentiated through QR, SVD or the eigendecomposition."""
from __future__ import annotations

import torch

from . import coefficients, dense, equations, forward, newton, parallel
from . import compiled as compilation

# The float64 refinement of float32 solutions in the backward (refine_in_float64). Measured on
# 11,849 selected solutions (8 problems x 3 seeds x 500 instances): the only two float32 gradients
# more than 1e-2 off float64's came from refinements whose second step was 0.45 and 0.28 times
# the first (near-double roots); 0.1 zeroes 6 other gradients.
CONTRACTION = 0.1
REFINED_RESIDUAL = 1e-8  # relative residual a refined solution must reach (float64's residual_tol)


def implicit_vjp(a, x, valid, c, grad, cond_max, plan, system):
    """Gradient wrt the parameters of <grad, solutions> by the implicit function theorem.

    Per valid solution that receives a non-zero gradient, with J = dh/dx (K x N, rows scaled to
    unit norm): w = J^-T grad when K == N, and w = J (J^T J)^-1 grad when K > N (Theorem 1 of
    MinBackProp, by `dense.gram_solve`); then
    d<grad, x>/da = -sum_k w_k dh_k/da. Solutions whose Jacobian is singular or whose estimated
    condition number exceeds `cond_max` contribute zero; their number is returned with the
    gradient.
    """
    n, k = plan.num_unknowns, plan.num_equations
    batch, slots = valid.shape
    grad = grad.reshape(-1, n)
    usable = valid.reshape(-1) & (grad != 0).any(dim=-1)
    # The (instance, solution) pairs to differentiate: on the CPU only the usable ones (after
    # `select`, one per instance; a host synchronization costs nothing there); elsewhere all of
    # them, masked, to avoid one.
    if parallel.host_sync_is_free(a.device):
        pairs = usable.nonzero().squeeze(-1)
    else:
        pairs = torch.arange(batch * slots, device=a.device)
    instance = pairs // slots
    usable = usable.index_select(0, pairs)
    g = torch.where(usable.unsqueeze(-1), grad.index_select(0, pairs), torch.zeros_like(grad[:1]))
    tiny = torch.finfo(a.dtype).tiny
    if system["dense"] and len(pairs) > batch:  # several pairs per instance: per instance, then the pairs
        prepared = equations.prepare(c, system, residual=False, jacobian=True)
        _, _, jacobian = equations.evaluate(prepared, x, system, jacobian=True, residual=False)
        jacobian = jacobian.flatten(0, 1).index_select(0, pairs)
        x = x.reshape(-1, n).index_select(0, pairs)
    elif system["dense"]:  # about one per instance (after `select`): C of each pair times dm/dx
        x = x.reshape(-1, n).index_select(0, pairs)
        matrix = equations.coefficient_matrix(c.index_select(0, instance), system)
        monomials = equations.monomial_values(x, system, below_top=True)  # [P_below, pairs]
        derivatives = monomials.index_select(0, system["derivative_source"]) * system["derivative_scale"]
        derivatives = derivatives.t().contiguous().view(len(pairs), system["monomials"], n)  # [pairs, P, N]
        jacobian = matrix @ derivatives
    else:  # terms per point anyway: only the pairs
        x = x.reshape(-1, n).index_select(0, pairs)
        monomials = equations.monomial_values(x, system, below_top=True)
        factor = equations.derivative_factors(c, system).index_select(0, instance)
        jacobian = equations.sparse_jacobian(monomials, factor, system).view(-1, k, n)
    a = a.index_select(0, instance)
    # Rows of J scaled to unit norm (this scales w, not the result); condition numbers are those
    # of J with equilibrated columns.
    row = torch.linalg.vector_norm(jacobian, dim=-1).clamp_min(tiny)  # [P, K]
    jacobian = jacobian.div_(row.unsqueeze(-1))  # (a fresh tensor in every branch)
    if k == n:
        column = torch.linalg.vector_norm(jacobian, dim=-2).clamp_min(tiny)
        scaled = jacobian / column.unsqueeze(-2)
        inverse, invertible = dense.small_inverse(scaled)
        condition = torch.linalg.matrix_norm(scaled) * torch.linalg.matrix_norm(inverse)
        w = (inverse.transpose(-1, -2) @ (g / column).unsqueeze(-1)).squeeze(-1)
    else:
        u, invertible, condition = dense.gram_solve(jacobian.transpose(-1, -2) @ jacobian, g)
        w = (jacobian @ u.unsqueeze(-1)).squeeze(-1)
    good = usable & invertible & (condition <= cond_max) & torch.isfinite(w).all(dim=-1)
    skipped = (usable & ~good).sum()
    w = torch.where(good.unsqueeze(-1), w, torch.zeros_like(w)) / row  # unused pairs: w = 0
    contribution = -plan.parameter_vjp(x, a, w)
    contribution = torch.where(good.unsqueeze(-1), contribution, torch.zeros_like(contribution))
    return contribution.new_zeros(batch, plan.num_parameters).index_add_(0, instance, contribution), skipped


class ImplicitFunction(torch.autograd.Function):
    """Forward: the solver without autograd. Backward: the implicit function theorem, in float64
    (a float32 solve's solutions are refined in float64 first: `refine_in_float64`)."""

    @staticmethod
    def forward(ctx, params, solver):
        a = params.detach().to(solver.compute_dtype)
        x, valid, c = forward.solve(a, solver)
        x, valid = forward.representable(x, valid, params.dtype)
        ctx.save_for_backward(params.detach(), x, valid, c)
        ctx.solver = solver
        ctx.mark_non_differentiable(valid)
        return x.to(params.dtype), valid

    @staticmethod
    def backward(ctx, grad_solutions, grad_valid):
        params, x, valid, c = ctx.saved_tensors
        solver = ctx.solver
        grad = grad_solutions.to(torch.float64)
        if x.dtype == torch.float64:
            a, refused = params.to(torch.float64), 0
        else:
            a, x, valid, c, refused = refine_in_float64(params, x, valid, grad, solver)
        vjp = compilation.compiled(implicit_vjp, solver, len(a))
        system = forward.tensors(solver.plan, a.device, a.dtype)["declared"]
        result, skipped = vjp(a, x, valid, c, grad, solver.cond_max, solver.plan, system)
        solver.ill_conditioned = skipped + refused
        return result.to(params.dtype), None


def refine_in_float64(params, x, valid, grad, settings):
    """For the backward of a float32 solve: the solutions that receive a gradient, refined by two
    Newton steps in float64 on the declared equations (from float64 coefficients), so that the
    IFT runs at the float64 solution. (The IFT at a float32 solution, with float32 Jacobians, was
    more than 10% off float64's gradient on 6% of natural 5-point instances, and 1e-2 off on
    22%.) A refinement is trusted where the second step is at most `CONTRACTION` times the first
    (Newton's quadratic convergence: the float32 solution lay in the root's basin) and the
    relative residual reaches `REFINED_RESIDUAL`. The others (near-double roots, where float32
    cannot tell the two roots apart) get no gradient and count as ill-conditioned: their number
    is returned with a, x, valid, c in float64."""
    plan = settings.plan
    a = params.to(torch.float64)
    tables = forward.tensors(plan, a.device, torch.float64)
    c = coefficients.coefficients_of(a, plan.coefficients, tables["declared_program"], settings)
    wanted = valid & (grad != 0).any(dim=-1)
    start = x.to(torch.float64)
    batch, slots, n = start.shape
    system = tables["declared"]
    pairs = wanted.flatten().nonzero().squeeze(-1) if parallel.host_sync_is_free(a.device) else None
    # On the CPU the wanted solutions only, with their instance's coefficients, unless a dense
    # system would then build its coefficient matrices once per solution (as in implicit_vjp).
    if pairs is not None and not (system["dense"] and len(pairs) > batch):
        refined, kept = _refine(c.index_select(0, pairs // slots), start.view(-1, 1, n).index_select(0, pairs),
                                torch.ones_like(pairs, dtype=torch.bool).unsqueeze(-1), system)
        x = start.view(-1, n).index_copy(0, pairs, refined.squeeze(1)).view(batch, slots, n)
        kept = torch.zeros_like(wanted).flatten().index_copy(0, pairs, kept.squeeze(1)).view_as(wanted)
    else:  # every solution slot, masked
        x, kept = _refine(c, start, wanted, system)
    return a, x, kept, c, (wanted & ~kept).sum()


def _refine(c, x, active, system):
    """Two Newton steps from x [B, S, N] for the `active` points: the new points and where the
    refinement is trusted (see `refine_in_float64`)."""
    first, _ = newton.polish(c, x, active, 1, system)
    refined, error = newton.polish(c, first, active, 1, system)
    contracting = (refined - first).norm(dim=-1) <= CONTRACTION * (first - x).norm(dim=-1)
    return refined, active & contracting & (error <= REFINED_RESIDUAL) & torch.isfinite(refined).all(dim=-1)
