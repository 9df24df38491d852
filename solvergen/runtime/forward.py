"""The forward pass: coefficients, the linear block, the template stage, back to the declared
unknowns, the validity check."""
from __future__ import annotations

import torch

from . import coefficients, equations, linear, native, newton, parallel, template
from .plan import Plan


def tensors(plan: Plan, device, dtype) -> dict:
    """The plan's tables as tensors on `device`, built once per device and dtype."""
    cache = plan.cache.setdefault("tensors", {})
    tables = cache.get((device, dtype))
    if tables is None:
        tables = {
            "declared": equations.system_tensors(plan.equations, device, dtype),
            "declared_program": coefficients.program_tensors(
                plan.coefficients, plan.num_parameters, plan.cache, device, dtype
            ),
        }
        if plan.template is not None:
            tables["template"] = template.tensors(plan.template, device, dtype)
        block = plan.linear
        if block is not None:
            tables["linear"] = linear.tensors(block, device, dtype)
            if block.reduced_equations is not None:
                tables["reduced"] = equations.system_tensors(block.reduced_equations, device, dtype)
            if block.reduced_coefficients is not None:
                tables["reduced_program"] = coefficients.program_tensors(
                    block.reduced_coefficients, block.num_reduced_inputs, plan.cache, device, dtype
                )
        cache[(device, dtype)] = tables
    return tables


def solve(a, settings):
    """a [B, M] (the compute dtype) -> solutions [B, S, N], valid [B, S], coefficients, for the
    plan of `settings` (the solver module).

    Rows with non-finite parameters or an unusable elimination are returned all-invalid; they
    do not affect the other rows.
    """
    plan = settings.plan
    native_stage = plan.template is not None and settings.uses_native(a.device)
    if native_stage and native.computes_coefficients(plan, a.device):
        # the whole forward per instance in the kernel: coefficients (runtime/ctrace.py), the
        # linear block, the template stage, validity and order
        return native.solve_from_params(a, plan, settings)
    tables = tensors(plan, a.device, a.dtype)
    finite = torch.isfinite(a).all(dim=-1)
    if parallel.differentiated(a):  # rows whose coefficients overflow too (parallel.differentiated)
        with torch.no_grad():
            c = coefficients.coefficients_of(torch.where(finite.unsqueeze(-1), a, 1), plan.coefficients, None, settings)
            finite &= torch.isfinite(c).all(dim=-1)
    a = torch.where(finite.unsqueeze(-1), a, torch.ones_like(a))
    c = coefficients.coefficients_of(a, plan.coefficients, tables["declared_program"], settings)
    block = plan.linear
    ok, c_template, polish_system = finite, c, tables["declared"]
    if block is not None:
        matrix, rhs, null, particular, full_rank = linear.null_space(c, block, tables["linear"])
        ok = ok & full_rank
        if plan.template is not None:
            inputs = linear.reduced_inputs(a, null, particular, block, tables["linear"])
            program = tables["reduced_program"]
            c_template = coefficients.coefficients_of(inputs, block.reduced_coefficients, program, settings)
            polish_system = tables["reduced"]

    if native_stage:
        x, error, candidate = native.solve_candidates(c_template, ok, plan, settings)
    elif plan.template is not None:
        # Candidates from the template, real ones polished by Newton in the template's unknowns.
        x, error, candidate = parallel.by_chunks(
            lambda c_rows, ok_rows: template.solve_candidates(
                c_rows, ok_rows, plan.template, tables["template"], polish_system, settings
            ),
            c_template,
            ok,
            parallel=not template.compiled_stage(settings, c_template),
        )
    else:
        candidate = ok.unsqueeze(-1)

    if block is not None:
        # Back to the declared unknowns: the block x = x_p + N z (in a chart: z = [z, 1]), then
        # the gauge; the free unknowns are the template's last ones.
        if plan.template is not None:
            free = x[..., x.shape[-1] - len(block.free):]
            z = x[..., : x.shape[-1] - len(block.free)]
            if block.gauge is not None:
                z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
            x = z @ null.transpose(1, 2) + particular.unsqueeze(1)
        elif block.homogeneous:
            x = null.transpose(1, 2)
        else:
            x = particular.unsqueeze(1)
        if block.gauge is not None:
            x, scalable = linear.rescale_to_gauge(x, c, block.gauge, tables["linear"])
            candidate = candidate & scalable
        if plan.template is not None:
            # The remaining declared equations are the template's (already checked, invariant
            # under the gauge's scaling); check the linear block too (a gauge holds by construction).
            error = torch.maximum(error, linear.linear_error(matrix, rhs, x))
            if block.free:
                x = torch.cat([x, free], dim=-1).index_select(-1, tables["linear"]["assemble"])
            x, declared_error = declared_polish(c, x, candidate & (error <= settings.residual_tol), tables["declared"],
                                                settings)
            error = torch.maximum(error, declared_error)
        else:
            h, scale, _ = equations.evaluate(equations.prepare(c, tables["declared"]), x, tables["declared"])
            error = equations.relative_error(h, scale)
    x, valid = _finish(plan, x, error, candidate, settings)
    return x, valid, c


def declared_polish(c, x, usable, system, settings):
    """A natural formulation's solutions x [B, S, N] in the declared unknowns -> x and the
    declared equations' relative residual [B, S] (0 where not `usable`). Validity needs every
    declared equation: on degenerate input (relpose_5pt with {0, 1} coordinates) the reduced
    equations and the linear block can hold and the declared ones not (residuals of 1e-2 to 1
    on 36 of 168 valid solutions before this check). Points that miss the tolerance only there
    (roots of the device eigen path or of float32, polished in the chart's unknowns) get
    Gauss-Newton steps on the declared system, whose gauge fixes the scale. On the CPU only the
    usable points are evaluated, gathered (about half the slots)."""
    if not parallel.host_sync_is_free(x.device):
        h, scale, _ = equations.evaluate(equations.prepare(c, system), x, system)
        error = equations.relative_error(h, scale)
        x, error = newton.polish(c, x, usable & (error > settings.residual_tol), settings.newton_steps, system)
        return x, torch.where(usable, error, torch.zeros_like(error))
    error = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
    instance, slot = usable.nonzero(as_tuple=True)
    if len(instance) == 0:
        return x, error
    points, point_c = x[instance, slot].unsqueeze(1), c.index_select(0, instance)  # [P, 1, N], [P, C]
    h, scale, _ = equations.evaluate(equations.prepare(point_c, system), points, system)
    point_error = equations.relative_error(h, scale)
    missed = point_error > settings.residual_tol
    if bool(missed.any()):
        again = missed.squeeze(1).nonzero().squeeze(-1)
        polished, polished_error = newton.polish(point_c.index_select(0, again), points.index_select(0, again),
                                                 missed.index_select(0, again), settings.newton_steps, system)
        points = points.index_copy(0, again, polished)
        point_error = point_error.index_copy(0, again, polished_error)
    x = x.index_put((instance, slot), points.squeeze(1))
    return x, error.index_put((instance, slot), point_error.squeeze(1))


def representable(x, valid, dtype):
    """Solutions x [B, S, N] (the compute dtype) and valid [B, S] for an output in `dtype`: those
    it cannot represent (a float64 solution beyond float32's range, which would become inf) are
    made invalid, the valid ones still first."""
    if dtype == x.dtype:
        return x, valid
    fits = torch.isfinite(x.to(dtype)).all(dim=-1)
    if parallel.host_sync_is_free(x.device) and bool((fits | ~valid).all()):
        return x, valid
    return _valid_first(x, valid & fits)


def _finish(plan: Plan, x, error, candidate, settings):
    """The valid solutions (candidates with a relative residual within tolerance), first, in
    the order the solver found them: -> x [B, S, N] (zeros where not valid), valid [B, S]."""
    return _valid_first(x, candidate & (error <= settings.residual_tol) & torch.isfinite(x).all(dim=-1))


def _valid_first(x, valid):
    """x [B, S, N] zero where not valid, and both reordered so that the valid ones come first
    (stable: in the order found)."""
    x = torch.where(valid.unsqueeze(-1), x, torch.zeros_like(x))
    order = torch.sort((~valid).to(torch.uint8), dim=-1, stable=True).indices
    return x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1])), valid.gather(1, order)


def relative_residuals(plan: Plan, a, x):
    """The declared equations' relative residual at given points: max_k |h_k(x, a)| / sum of
    the sizes of h_k's terms (what validity is decided on). a [B, M], x [B, S, N] -> [B, S]."""
    tables = tensors(plan, a.device, a.dtype)
    system = tables["declared"]
    h, scale, _ = equations.evaluate(equations.prepare(plan.coefficients(a), system), x, system)
    return equations.relative_error(h, scale)
