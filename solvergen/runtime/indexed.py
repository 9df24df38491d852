"""Size-generic declarative layers at run time (plan: `IndexedPlan`; compiler: solvergen/indexed.py).

Every linear system here, the Newton step of the forward and the IFT solve of the backward, is
solved by structure: runtime/structured_kkt.py (`StructuredSystem`).

Forward: Newton on the residuals from the start point (unknowns: the spec's init or `init=`;
multipliers: 0), with backtracking by Deuflhard's natural monotonicity test (the next Newton
correction must shrink; affine invariant) that keeps every value finite; rows stop as they
converge (max |r| <= tol, or a full Newton correction at rounding level: an entry at the edge
of float64, such as an LML entry within 1e-16 of 1, cannot reach tol). An unconstrained Argmin
descends on f with the Hessian's eigenvalues made positive; inequalities run a primal-dual
interior point and then Newton on the active set. Where the compiler solved each unknown's
stationarity in closed form from the multipliers (`plan.primal`: LML, OT, softmax-like layers),
the rows not converged after half of `max_iterations` continue with Newton on the multipliers
alone (the dual; Levenberg-Marquardt damping DUAL_DAMPING |h|), the unknowns computed from them
and so always inside their domain. Auxiliary unknowns (`plan.auxiliary`: sums the objective uses
nonlinearly) start at the value of their sum. Backward: w = K^-T (dL/dy, 0), grad_a = -VJP(w),
by the generated vector-Jacobian product.
"""
from __future__ import annotations

import math

import torch

from . import parallel
from .declarative import ARMIJO, HALVINGS, _all, _where_tree, set_options
from .plan import IndexedPlan
from .structured_kkt import StructuredSystem, materialize

POLISH_FROM = 1e-8  # interior point: residual and complementarity from which the active set is polished
POLISH_STEPS = 3  # Newton steps of the polish
INACTIVE = 1e30  # the diagonal block that decouples an inactive inequality's multiplier
DUAL_DAMPING = 0.01  # dual Newton: Levenberg-Marquardt lambda = DUAL_DAMPING |h|
ROUNDING_STEPS = 1000  # converged when the full Newton correction is below this many roundings of z


# -- The layer --------------------------------------------------------------------------------


class _ImplicitFunction(torch.autograd.Function):
    """The unknowns (computed without autograd) with the IFT gradient wrt the parameters."""

    @staticmethod
    def forward(ctx, layer, state, *params):
        ctx.layer, ctx.state = layer, state
        return tuple(state["z"][c].clone() for c in range(len(layer.plan.unknowns)))

    @staticmethod
    def backward(ctx, *grads):
        layer, state = ctx.layer, ctx.state
        with torch.no_grad():
            grads = [torch.zeros_like(z) if g is None else g if g.dtype == z.dtype else g.to(z.dtype)
                     for g, z in zip(grads, state["z"])]
            gradients = layer._ift(state, grads, ctx.needs_input_grad[2:])
        return (None, None) + tuple(gradients)


class IndexedLayer(torch.nn.Module):
    """`y, ok = layer(*params, init=None)` (or by name: `layer(x=..., k=...)`).

    Each parameter: a tensor [..., *its shape] (batch dimensions first, broadcast together); a
    scalar parameter is a tensor of the batch shape or a Python number. Sizes are read from the
    shapes. y: the unknown, shaped [..., *its shape] (a tuple when the spec declares several);
    ok [...]: the row converged (max |residual| <= tol, or the Newton correction at rounding
    level) and, for an Argmin, is a strict local minimum: the KKT matrix's inertia, counted
    along the structured elimination, is (unknown entries, constraint entries, 0). Rows that
    are not ok hold the last iterate and get zero gradient; rows with
    non-finite parameters return zeros.

    backward="ift" (default): the implicit function theorem with the structured solve (module
    docstring); "autograd": through the Newton iterations (the baseline). max_iterations=100,
    tol=1e-10 (float64) / 1e-5 (float32) on the largest absolute residual, refine_steps=1 (Newton
    steps of `attach`), precision="float64": solved in float64 whatever the input dtype.
    After a call, `multipliers` is the tuple of equality-multiplier arrays (an Argmin).
    """

    plan: IndexedPlan

    def __init__(self, backward="ift", max_iterations=100, tol=None, refine_steps=1, precision="float64"):
        super().__init__()
        if getattr(type(self), "plan", None) is None:
            raise TypeError("solvergen.runtime.IndexedLayer is a base class: use a generated layer")
        set_options(self, backward, max_iterations, tol, refine_steps, precision)
        self.multipliers = None
        self.iterations = None
        self._slack = None  # the interior point's slacks of the last forward

    forward_path = "local"

    def extra_repr(self):
        return f"backward={self.backward!r}, max_iterations={self.max_iterations}, tol={self.tol:g}"

    # -- arguments ---------------------------------------------------------------------------

    def _arguments(self, args, kwargs):
        """-> (params {name: [B, *shape] compute dtype}, sizes, batch shape, finite [B], dtype, device)."""
        names = [name for name, _ in self.plan.parameters]
        if len(args) > len(names):
            raise TypeError(f"{self.plan.name} takes {len(names)} parameters ({', '.join(names)}), got {len(args)}")
        given = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"{self.plan.name} has no parameter {key!r} (parameters: {', '.join(names)})")
            if key in given:
                raise TypeError(f"parameter {key!r} given twice")
            given[key] = value
        missing = [n for n in names if n not in given]
        if missing:
            raise TypeError(f"{self.plan.name} is missing parameter(s) {', '.join(missing)}")
        tensors = [v for v in given.values() if isinstance(v, torch.Tensor)]
        if not tensors:
            raise TypeError("at least one parameter must be a torch.Tensor")
        dtype = tensors[0].dtype
        device = tensors[0].device
        for name in names:
            v = given[name]
            if isinstance(v, torch.Tensor) and v.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"parameter {name} must be float32 or float64, got {v.dtype}")
        sizes: dict = {}
        where: dict = {}
        batch_shapes = []
        values = {}
        for name, dims in self.plan.parameters:
            v = given[name]
            if not isinstance(v, torch.Tensor):
                v = torch.tensor(float(v), dtype=dtype, device=device)
            k = len(dims)
            if v.dim() < k:
                raise ValueError(f"parameter {name} must have shape [..., {', '.join(map(str, dims))}], got {list(v.shape)}")
            for d, (dim, actual) in enumerate(zip(dims, v.shape[v.dim() - k:])):
                if isinstance(dim, int):
                    if actual != dim:
                        raise ValueError(f"dimension {d} of {name} must be {dim}, got {actual}")
                elif dim in sizes and sizes[dim] != actual:
                    raise ValueError(f"inconsistent size {dim}: {sizes[dim]} from {where[dim]}, {actual} from {name}")
                else:
                    sizes.setdefault(dim, actual)
                    where.setdefault(dim, name)
            batch_shapes.append(v.shape[:v.dim() - k])
            values[name] = v
        try:
            batch_shape = torch.broadcast_shapes(*batch_shapes)
        except RuntimeError:
            raise ValueError("the parameters' batch shapes do not broadcast: "
                             + ", ".join(f"{n} {list(s)}" for n, s in zip(names, batch_shapes))) from None
        B = math.prod(batch_shape)
        params = {}
        finite = torch.ones(B, dtype=torch.bool, device=device)
        for name, dims in self.plan.parameters:
            shape = tuple(d if isinstance(d, int) else sizes[d] for d in dims)
            v = values[name]
            if v.shape != (B,) + shape:  # (each view is one more node in autograd's backward)
                v = v.expand(tuple(batch_shape) + shape).reshape((B,) + shape)
            v = v.to(self.compute_dtype)
            ok = torch.isfinite(v).reshape(B, math.prod(shape)).all(dim=-1) if shape else torch.isfinite(v)
            finite = finite & ok
            params[name] = v
        if not _all(finite):
            for name in params:  # non-finite rows: a harmless problem instead (masked in the result)
                v = params[name]
                mask = finite.reshape((B,) + (1,) * (v.dim() - 1))
                params[name] = torch.where(mask, v, torch.ones_like(v))
        return params, sizes, batch_shape, finite, dtype

    def _start(self, params, sizes, init, batch_shape):
        plan = self.plan
        with torch.no_grad():
            default = plan.init(params, sizes)
        B = math.prod(batch_shape)
        if init is None:
            return self._with_auxiliary(params, sizes, [d.detach() for d in default])
        init = init if isinstance(init, (tuple, list)) else (init,)
        if len(init) != len(plan.unknowns):
            raise ValueError(f"init must give {len(plan.unknowns)} tensor(s), one per unknown")
        out = []
        for (name, dims), value, d in zip(plan.unknowns, init, default):
            shape = tuple(x if isinstance(x, int) else sizes[x] for x in dims)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"init for {name} must be a torch.Tensor")
            try:
                value = value.expand(tuple(batch_shape) + shape)
            except RuntimeError:
                raise ValueError(f"init for {name} has shape {list(value.shape)}, expected [..., "
                                 f"{', '.join(map(str, shape))}] with batch shape {list(batch_shape)}") from None
            out.append(value.reshape((B,) + shape).to(d).detach())
        return self._with_auxiliary(params, sizes, out)

    def _with_auxiliary(self, params, sizes, start):
        """The declared unknowns' start, then each auxiliary unknown's: the sum it stands for."""
        if not self.plan.auxiliary:
            return start
        v = dict(params)
        for (name, _), value in zip(self.plan.unknowns, start):
            v[name] = value
        with torch.no_grad():
            return start + [x.detach() for x in self.plan.auxiliary_values(v, sizes)]

    def _zero_multipliers(self, like, sizes):
        B = like.shape[0]
        return [like.new_zeros((B,) + tuple(d if isinstance(d, int) else sizes[d] for d in dims))
                for name, dims, kind in self.plan.columns if kind in ("multiplier", "inequality")]

    def _start_multipliers(self, params, sizes, z):
        """z with each auxiliary unknown's multiplier from its own stationarity (df/daux + mu
        dc/daux = 0, entry by entry) instead of 0: at mu = 0 the unknowns inside the sum it
        stands for would have no curvature (robust means with a size-symbol dimension: zero
        diagonal Hessian, a zero pivot)."""
        if not self.plan.auxiliary:
            return z
        with torch.no_grad():
            r, _ = self._residual(params, sizes, z)
            system = self._system(params, sizes, z)
            z = list(z)
            for a, f in self.plan.auxiliary:
                terms = [t for t in system.terms if t.row == a and t.col == f]
                if len(terms) != 1 or not terms[0].diagonal:
                    continue
                t = terms[0]
                coefficient = materialize(t.coefficient, t.letters, t.rows, system.letter_size).expand_as(r[a])
                mu = -r[a] / coefficient
                z[f] = torch.where(torch.isfinite(mu), mu, torch.zeros_like(mu)).reshape(z[f].shape)
        return z

    # -- Newton ------------------------------------------------------------------------------

    def _env(self, params, z, weights=None):
        v = dict(params)
        for (name, _, _), value in zip(self.plan.columns, z):
            v[name] = value
        if weights is not None:
            for r, w in enumerate(weights):
                v[f"_w{r}"] = w
        return v

    def _residual(self, params, sizes, z):
        """The residual blocks and their flat [B, total] form; NaN in the rows outside the
        expressions' domain (`plan.domain`: a log's argument below 0), so that every test of
        finiteness (the line searches, convergence, `ok`) keeps them out."""
        env = self._env(params, z)
        r = self.plan.residuals(env, sizes)
        if self.plan.domain is not None:
            B = z[0].shape[0]
            inside = torch.ones(B, dtype=torch.bool, device=z[0].device)
            for u in self.plan.domain(env, sizes):
                inside = inside & (u.reshape(B, -1) >= 0).all(-1)
            if not _all(inside):
                r = tuple(torch.where(_col(inside, x), x, torch.full_like(x, float("nan"))) for x in r)
        return r, self._flat(r)

    def _flat(self, r):
        """The residual blocks as [B, total] for the convergence tests. A redundant pair of
        equality families (OT: sum r = sum c) holds only up to the data's own gap, sum h_a -
        sum h_b (independent of the unknowns): float32 data leaves 1e-8 there, which the dropped
        constraint's residual keeps. Their entries are measured less that gap (`_redundancy_gap`
        checks it against the data's precision)."""
        B = r[0].shape[0]
        parts = [x.reshape(B, -1) for x in r]
        for a, b in self.plan.redundant:
            gap = (parts[a].sum(-1) - parts[b].sum(-1)).abs().unsqueeze(-1)
            for c in (a, b):
                parts[c] = parts[c].sign() * (parts[c].abs() - gap).clamp_min(0)
        return torch.cat(parts, -1)

    def _redundancy_gap_ok(self, params, sizes, z, dtype):
        """[B]: every redundant pair's data gap within the precision of the data (100 roundings of
        the input dtype, or tol if larger)."""
        ok = torch.ones(z[0].shape[0], dtype=torch.bool, device=z[0].device)
        if not self.plan.redundant:
            return ok
        r = self.plan.residuals(self._env(params, z), sizes)
        B = z[0].shape[0]
        limit = max(self.tol, 100 * torch.finfo(dtype).eps)
        for a, b in self.plan.redundant:
            gap = r[a].reshape(B, -1).sum(-1) - r[b].reshape(B, -1).sum(-1)
            ok = ok & (gap.abs() <= limit)
        return ok

    def _system(self, params, sizes, z):
        B = z[0].shape[0]
        return StructuredSystem(self.plan, sizes, self.plan.jacobian_terms(self._env(params, z), sizes), B)

    def _descent(self, params, sizes, z, iterations):
        """An Argmin without constraints: Newton on f with the convexified Hessian and Armijo
        backtracking on f (a descent method: it does not stop at maxima or saddles)."""
        plan = self.plan

        def objective(z_):
            return plan.objective(self._env(params, z_), sizes)[0]
        r, flat = self._residual(params, sizes, z)
        f = objective(z)
        done = torch.isfinite(flat).all(-1) & (flat.abs().amax(-1) <= self.tol)
        count = 0
        for _ in range(iterations):
            if _all(done):
                break
            count += 1
            step, solved = self._system(params, sizes, z).solve([-x for x in r], convexify=True)
            # converged also where the full (convexified) Newton correction is below rounding: the
            # gradient of a sum of many terms far from the origin cannot reach an absolute tol
            # (that last step is taken in full)
            at_rounding = ~done & solved & torch.isfinite(flat).all(-1) & (_norm(step) <= ROUNDING_STEPS * _rounding(z))
            z = [torch.where(_col(at_rounding, x), x + s, x) for x, s in zip(z, step)]
            done = done | at_rounding
            if _all(done):
                break
            slope = sum((x.reshape(len(f), -1) * s.reshape(len(f), -1)).sum(-1) for x, s in zip(r, step))
            slack = 8 * torch.finfo(f.dtype).eps * (1 + f.abs())

            def candidate(alpha):
                cand = [x + alpha * s for x, s in zip(z, step)]
                return cand, objective(cand)

            def armijo(alpha, cand, accepted):
                return torch.isfinite(cand[1]) & (cand[1] <= f + ARMIJO * alpha * slope + slack)
            z, f = _backtrack_rows(candidate, armijo, (z, f), ~done & solved)
            r, flat = self._residual(params, sizes, z)
            done = torch.isfinite(flat).all(-1) & ((flat.abs().amax(-1) <= self.tol) | done)
        return z, done, count

    def _inequality_columns(self):
        return [c for c, (_, _, kind) in enumerate(self.plan.columns) if kind == "inequality"]

    def _interior_point(self, params, sizes, z, iterations):
        """Primal-dual interior point (module docstring of runtime/declarative.py, here with the
        structured solve): slacks s = -g > 0 and multipliers lam > 0 of the inequality families;
        the Newton system in (y, mu, lam) has the diagonal block -s / lam for lam, so that it
        keeps the structure. Fraction-to-the-boundary steps, shortened until every value is
        finite; centring sigma = 0.1 of the mean complementarity, down to `tol`."""
        ineq = self._inequality_columns()
        B = z[0].shape[0]
        r, _ = self._residual(params, sizes, z)
        # slack = -g where the start is strictly feasible (g + s = 0 from the start: y stays
        # inside, where a bound such as y >= 0 is also the domain of y**1.5), else 1
        slack = {c: torch.where(r[c] < 0, -r[c], torch.ones_like(r[c])) for c in ineq}
        for c in ineq:
            z[c] = torch.ones_like(z[c])
        count = 0

        def measures(r, slack, z):
            primal = [r[c] + slack[c] if c in slack else r[c] for c in range(len(r))]
            flat = self._flat(primal)
            products = torch.cat([(z[c] * slack[c]).reshape(B, -1) for c in ineq], -1)
            return primal, flat, products
        primal, flat, products = measures(r, slack, z)
        tau = products.mean(-1)
        polish_from = max(self.tol, POLISH_FROM)
        # Rows whose residual and complementarity are below their threshold try Newton on the
        # KKT equations of their active set (multiplier larger than slack); a row is finished
        # when that converges, else it goes on with a threshold 100 times lower (the active set
        # was ambiguous: csoftmax's u = 1.6 / n at n = 1,024 still has mu and s near 1e-4).
        threshold = torch.full((B,), polish_from, dtype=z[0].dtype, device=z[0].device)
        finished = torch.zeros(B, dtype=torch.bool, device=z[0].device)
        z_out = [x.clone() for x in z]
        active_out = {c: torch.zeros_like(z[c], dtype=torch.bool) for c in ineq}
        in_loop = parallel.host_sync_is_free(z[0].device)  # elsewhere: once, after the loop, masked

        def polish(near):
            polished = self._polish_rows(params, sizes, z, slack, near)
            if polished is not None:
                rows, z_p, active_p, converged = polished
                good = rows[converged]
                finished[good] = True
                for k in range(len(z)):
                    z_out[k][good] = z_p[k][converged]
                for c in ineq:
                    active_out[c][good] = active_p[c][converged]
                threshold[rows[~converged]] *= 0.01

        def near_rows():
            return (~finished & torch.isfinite(flat).all(-1) & (flat.abs().amax(-1) <= threshold)
                    & (products.amax(-1) <= threshold))
        for _ in range(iterations + 1):
            if in_loop:
                near = near_rows()
                if not _all(~near):
                    polish(near)
            elif _all(near_rows()):  # (False without asking, off the CPU)
                break
            if _all(finished) or count == iterations:
                break
            count += 1
            target = 0.1 * tau
            rhs = [-p for p in primal]
            for c in ineq:  # G dy - (s / lam) dlam = -(g + s) + (lam s - target) / lam
                rhs[c] = -primal[c] + (z[c] * slack[c] - _col(target, z[c])) / z[c]
            extra = {c: -slack[c] / z[c] for c in ineq}
            step, solved = self._system(params, sizes, z).solve(rhs, extra_diagonal=extra)
            # ds from lam ds + s dlam = target - lam s
            ds = {c: (_col(target, z[c]) - z[c] * slack[c] - slack[c] * step[c]) / z[c] for c in ineq}
            alpha = torch.ones(B, dtype=z[0].dtype, device=z[0].device)
            for c in ineq:
                for value, change in ((z[c], step[c]), (slack[c], ds[c])):
                    ratio = torch.where(change < 0, -value / change, torch.full_like(value, float("inf")))
                    alpha = torch.minimum(alpha, 0.995 * ratio.reshape(B, -1).amin(-1))
            z, slack_list = _backtrack_rows(  # shortened until every value is finite
                lambda alpha: ([x + _col(alpha, x) * d for x, d in zip(z, step)],
                               [slack[c] + _col(alpha, slack[c]) * ds[c] for c in ineq]),
                lambda alpha, cand, accepted: torch.isfinite(self._residual(params, sizes, cand[0])[1]).all(-1),
                (z, [slack[c] for c in ineq]), ~finished & solved, alpha=alpha)
            slack = dict(zip(ineq, slack_list))
            r, _ = self._residual(params, sizes, z)
            primal, flat, products = measures(r, slack, z)
            tau = products.mean(-1)
        if not in_loop:
            polish(near_rows())
        for k in range(len(z)):
            z_out[k] = torch.where(_col(finished, z[k]), z_out[k], z[k])
        r, _ = self._residual(params, sizes, z_out)
        self._slack = {c: torch.where(active_out[c], torch.zeros_like(r[c]), -r[c]) for c in ineq}
        return z_out, finished, count

    def _polish_rows(self, params, sizes, z, slack, near):
        """`_active_set_newton` of the `near` rows (active: multiplier larger than slack) ->
        (their indices, polished z, active sets, converged), or None when there are none."""
        B = near.shape[0]
        masked = not parallel.host_sync_is_free(near.device)  # every row, masked: no host synchronization
        if masked:
            rows, sub, z_rows, s_rows = torch.arange(B, device=near.device), params, z, slack
        else:
            rows = near.nonzero().squeeze(-1)
            if rows.numel() == 0:
                return None
            sub = {k: v[rows] if v.dim() and v.shape[0] == B else v for k, v in params.items()}
            z_rows, s_rows = [x[rows] for x in z], {c: v[rows] for c, v in slack.items()}
        active = {c: z_rows[c] > s_rows[c] for c in s_rows}
        z_p, converged = self._active_set_newton(sub, sizes, z_rows, active, POLISH_STEPS)
        return rows, z_p, active, converged & near[rows]

    def _active_set_newton(self, params, sizes, z, active, steps):
        """Newton on the KKT equations with the active inequality entries as equalities and the
        inactive ones' multipliers driven to 0 (their diagonal block -INACTIVE: no coupling)."""
        ineq = list(active)
        extra = {c: torch.where(active[c], torch.zeros_like(z[c]), torch.full_like(z[c], -INACTIVE)) for c in ineq}
        B = z[0].shape[0]

        def residual(z_):
            r = list(self._residual(params, sizes, z_)[0])
            for c in ineq:  # active: g = 0; inactive: lam = 0
                r[c] = torch.where(active[c], r[c], z_[c])
            return r

        finite = _finite_rows
        r = residual(z)
        for _ in range(steps):
            rhs = [-x for x in r]
            for c in ineq:
                rhs[c] = torch.where(active[c], -r[c], INACTIVE * r[c])
            step, solved = self._system(params, sizes, z).solve(rhs, extra_diagonal=extra)
            candidate = [torch.where(_col(solved, x), x + d, x) for x, d in zip(z, step)]
            r_candidate = residual(candidate)
            # An entry driven onto its bound (y = 0) can land a rounding beyond it, outside the
            # domain of y**1.5: there the step stops short by a relative 1e-10 (the converged
            # entry is 1e-10 of its last distance from the bound, Newton's rate unchanged), and
            # where that is outside too, the row does not move.
            outside = solved & ~finite(r_candidate)
            if not _all(~outside):
                short = [torch.where(_col(outside, x), x + (1 - 1e-10) * d, c) for x, d, c in zip(z, step, candidate)]
                still = outside & ~finite(residual(short))
                candidate = [torch.where(_col(still, x), x, c) for x, c in zip(z, short)]  # else no step
            z = candidate
            for c in ineq:
                z[c] = torch.where(active[c], z[c], torch.zeros_like(z[c]))
            r = residual(z)
        flat = self._flat(r)
        g, _ = self._residual(params, sizes, z)
        feasible = torch.ones(B, dtype=torch.bool, device=z[0].device)
        for c in ineq:  # multipliers of the active entries >= 0, inactive entries feasible
            feasible = feasible & (z[c] >= -self.tol).reshape(B, -1).all(-1) & (g[c] <= self.tol).reshape(B, -1).all(-1)
        return z, torch.isfinite(flat).all(-1) & (flat.abs().amax(-1) <= self.tol) & feasible

    def _dual_newton(self, params, sizes, z, iterations, done):
        """Newton on the multipliers alone, every unknown in closed form from them
        (`plan.primal`): the unknowns stay inside their domain (an LML entry, a transport plan's
        entry), and the iteration is that of the dual problem, whose Hessian is the Schur
        complement -A D^-1 A^T the structured solve forms. Backtracking on |h|^2 (h: the
        equality residuals, the dual gradient), which stays finite where entries saturate."""
        plan = self.plan
        unknown = [c for c, (_, _, kind) in enumerate(plan.columns) if kind == "unknown"]
        B = z[0].shape[0]

        def primal(z_):
            out = list(z_)
            for c, value in zip(unknown, plan.primal(self._env(params, z_), sizes)):
                out[c] = value
            return out

        def constraints(z_):
            r, _ = self._residual(params, sizes, z_)
            h = torch.cat([r[c].reshape(B, -1) for c in range(len(r)) if c not in unknown], -1)
            finite = torch.isfinite(h).all(-1)
            for c in unknown:
                finite = finite & torch.isfinite(z_[c]).reshape(B, -1).all(-1)
            return r, h, finite
        z = [torch.where(_col(done, x), x, y) for x, y in zip(z, primal(z))]  # rows done stay as they are
        r, h, finite = constraints(z)
        value = (h * h).sum(-1)
        done = done | (finite & (h.abs().amax(-1) <= self.tol))
        count = 0
        for _ in range(iterations):
            if _all(done):
                break
            count += 1
            rhs = [torch.zeros_like(z[c]) if c in unknown else -r[c] for c in range(len(z))]
            # Levenberg-Marquardt damping lambda = |h| (Yamashita and Fukushima): bounded steps
            # where the dual is flat (every entry saturated), Newton's quadratic rate near the solution
            damping = DUAL_DAMPING * h.abs().amax(-1).nan_to_num(nan=0.0)
            extra = {c: torch.full_like(z[c], 0.0) - _col(damping, z[c]) for c in range(len(z)) if c not in unknown}
            step, solved = self._system(params, sizes, z).solve(rhs, extra_diagonal=extra)
            step = [torch.zeros_like(x) if c in unknown else x for c, x in enumerate(step)]
            def candidate(alpha):
                cand = primal([x + alpha * d for x, d in zip(z, step)])
                cr, ch, cfinite = constraints(cand)
                return cand, list(cr), ch, (ch * ch).sum(-1), cfinite

            def decrease(alpha, cand, accepted):
                return cand[4] & (cand[3] <= value * (1 - 2 * ARMIJO * alpha) + 8 * _eps(value) * (1 + value))
            z, r, h, value, finite = _backtrack_rows(candidate, decrease, (z, list(r), h, value, finite),
                                                     ~done & solved)
            # the unknowns are exact functions of the multipliers: converged when h is (no
            # rounding-level test: the damped steps are short by design)
            done = finite & ((h.abs().amax(-1) <= self.tol) | done)
        return z, done, count

    def _newton(self, params, sizes, z, iterations, line_search=True):
        if line_search and self.plan.primal is not None:
            # Newton on the whole KKT system for half the iterations (its line search keeps the
            # unknowns in their domain from any start), then, for the rows left, Newton on the
            # multipliers with the unknowns in closed form: it converges where the first crawls
            # (entries at the edge of their domain, which a shared step length holds back).
            z, done, first = self._kkt_newton(params, sizes, z, max(1, iterations // 2), line_search)
            z, done, second = self._dual_newton(params, sizes, z, iterations - first, done)
            return z, done, first + second
        return self._kkt_newton(params, sizes, z, iterations, line_search)

    def _kkt_newton(self, params, sizes, z, iterations, line_search=True):
        if line_search and self._inequality_columns():
            return self._interior_point(params, sizes, z, iterations)
        if line_search and self.plan.kind == "argmin" and all(k == "unknown" for _, _, k in self.plan.columns):
            return self._descent(params, sizes, z, iterations)
        r, flat = self._residual(params, sizes, z)
        done = torch.isfinite(flat).all(-1) & (flat.abs().amax(-1) <= self.tol)
        count = 0
        for _ in range(iterations):
            if _all(done):
                break
            count += 1
            system = self._system(params, sizes, z)
            step, solved = system.solve([-x for x in r])
            active = ~done & solved
            if not line_search:
                z = [torch.where(_col(active, s), x + s, x) for x, s in zip(z, step)]
                r, flat = self._residual(params, sizes, z)
                done = torch.isfinite(flat).all(-1) & (flat.abs().amax(-1) <= self.tol)
                continue
            # Deuflhard's natural monotonicity test: the next Newton correction with this
            # iteration's matrix must shrink, |K^-1 r(z + a dz)| <= (1 - a / 2) |dz|. Unlike |r|^2 it
            # is affine invariant: an entry at the edge of float64 (a saturated LML entry, whose
            # residual cannot vanish but whose correction is ~1e-16) does not stall the others.
            # A step that decreases |r|^2 (Armijo) is accepted without it: one solve saved.
            size = _norm(step)
            value = (flat * flat).sum(-1)

            def candidate(alpha):
                cand = [x + alpha * s for x, s in zip(z, step)]
                cr, cflat = self._residual(params, sizes, cand)
                return cand, list(cr), cflat

            def acceptable(alpha, cand, accepted):
                _, cr, cflat = cand
                finite = torch.isfinite(cflat).all(-1)
                decrease = finite & ((cflat * cflat).sum(-1) <= value * (1 - 2 * ARMIJO * alpha))
                if _all(accepted | decrease | ~finite):
                    return decrease
                simplified, _ = system.solve([torch.where(_col(finite, x), -x, torch.zeros_like(x)) for x in cr])
                return decrease | (finite & (_norm(simplified) <= (1 - alpha / 2) * size + _rounding(cand[0])))
            z, r, flat = _backtrack_rows(candidate, acceptable, (z, list(r), flat), active)
            # converged: residual at most tol, or the full Newton correction below rounding
            at_rounding = active & (size <= ROUNDING_STEPS * _rounding(z))
            done = torch.isfinite(flat).all(-1) & ((flat.abs().amax(-1) <= self.tol) | at_rounding | done)
        return z, done, count

    def _second_order(self, params, sizes, z, slack=None):
        """An Argmin's point is a strict local minimum: the inertia of the KKT matrix
        (StructuredSystem.inertia) is (unknown entries, kept multiplier entries, 0), with the
        active inequality entries as equalities and the inactive ones decoupled. An Implicit:
        True."""
        B = z[0].shape[0]
        if self.plan.kind != "argmin":
            return torch.ones(B, dtype=torch.bool, device=z[0].device)
        system = self._system(params, sizes, z)
        extra = None
        if slack:
            extra = {c: torch.where(z[c] > slack[c], torch.zeros_like(z[c]), torch.full_like(z[c], -INACTIVE))
                     for c in self._inequality_columns()}
        positive, negative, zero = system.inertia(extra)
        unknown = sum(math.prod(system.col_shapes[c]) for c, (_, _, kind) in enumerate(self.plan.columns)
                      if kind == "unknown")
        total = sum(math.prod(shape) for shape in system.col_shapes)
        kept = positive + negative + zero  # the entries of dropped (redundant) constraints are not counted
        strict = (positive == unknown) & (negative == kept - unknown) & (zero == 0) & (kept <= total)
        # Every unknown entry pinned by an active bound (a vertex): the Hessian reduced to the
        # active constraints' null space is empty, a strict minimum with multipliers >= 0 (the
        # polish checks them), even where the active constraints are dependent (zero eigenvalues
        # in the multipliers' block: an equality the bounds imply).
        fully = system.fully_pinned(extra) if extra else None
        if fully is not None:
            strict = strict | (fully & (positive == unknown) & (kept <= total))
        return strict

    def forward(self, *args, init=None, **kwargs):
        params, sizes, batch_shape, finite, dtype = self._arguments(args, kwargs)
        B = math.prod(batch_shape)
        if B == 0:
            return self._empty(params, sizes, batch_shape, dtype)
        start = self._start(params, sizes, init, batch_shape)
        z0 = self._start_multipliers(params, sizes, start + self._zero_multipliers(start[0], sizes))
        autograd = self.backward == "autograd" and torch.is_grad_enabled()
        self._slack = None
        inputs = params if autograd else {k: v.detach() for k, v in params.items()}
        with torch.set_grad_enabled(autograd):
            z, done, self.iterations = self._newton(inputs, sizes, z0, self.max_iterations)
        with torch.no_grad():
            ok = done & finite & self._second_order(inputs, sizes, [x.detach() for x in z], self._slack)
            ok = ok & self._redundancy_gap_ok(inputs, sizes, [x.detach() for x in z], dtype)
        return self._finish(params, sizes, z, ok, finite, batch_shape, dtype, autograd)

    def _empty(self, params, sizes, batch_shape, dtype):
        """An empty batch: empty outputs (and a zero gradient)."""
        like = next(iter(params.values()))
        zero = sum(v.sum() for v in params.values()) * 0  # keeps the graph to the parameters
        out = [zero + like.new_zeros(tuple(batch_shape) + tuple(d if isinstance(d, int) else sizes[d] for d in dims))
               for _, dims in self.plan.unknowns]
        self.multipliers = None
        ok = torch.zeros(tuple(batch_shape), dtype=torch.bool, device=like.device)
        return (out[0].to(dtype) if len(out) == 1 else tuple(o.to(dtype) for o in out)), ok

    def _finish(self, params, sizes, z, ok, finite, batch_shape, dtype, autograd):
        plan = self.plan
        U = len(plan.unknowns)
        if not autograd and self.backward == "ift" and torch.is_grad_enabled():
            state = {"params": {k: v.detach() for k, v in params.items()}, "sizes": sizes,
                     "z": [x.detach() for x in z], "ok": ok, "slack": getattr(self, "_slack", None)}
            names = [name for name, _ in plan.parameters]
            ys = _ImplicitFunction.apply(self, state, *[params[n] for n in names])
        else:  # backward="autograd": rows that are not ok get zero gradient, as documented
            ys = tuple(torch.where(_col(ok, y), y, y.detach()) for y in z[:U])
        out = []
        every = _all(finite)  # on the CPU: no mask (and no pass in the backward) where every row is finite
        for y in ys:
            if not every:
                y = torch.where(finite.reshape((-1,) + (1,) * (y.dim() - 1)), y, torch.zeros_like(y))
            shape = tuple(batch_shape) + tuple(y.shape[1:])
            out.append(y.to(dtype) if y.shape == shape else y.to(dtype).reshape(shape))
        internal = {family for _, family in plan.auxiliary}
        declared_multipliers = [z[c] for c, (_, _, kind) in enumerate(plan.columns)
                                if kind in ("multiplier", "inequality") and c not in internal]
        self.multipliers = tuple(m.detach().to(dtype).reshape(tuple(batch_shape) + tuple(m.shape[1:]))
                                 for m in declared_multipliers) or None
        y = out[0] if len(out) == 1 else tuple(out)
        return y, ok.reshape(batch_shape)

    def _ift(self, state, grads, wanted=None):
        """The parameters' gradients (None for those not `wanted`, a flag per parameter)."""
        plan = self.plan
        params, sizes, z, ok = state["params"], state["sizes"], state["z"], state["ok"]
        if plan.schur_solve is not None:  # the compiler's closed form (one scalar equality)
            env = self._env(params, z)
            env.update({f"_g{c}": g for c, g in enumerate(grads)})  # (the multipliers' right-hand side is 0)
            w = plan.schur_solve(env, sizes)
            return self._vjp(params, sizes, z, w, ok & _finite_rows(w), wanted, env)
        rhs = list(grads) + [x.new_zeros(x.shape) for x in z[len(plan.unknowns):]]
        system = self._system(params, sizes, z)
        if plan.kind == "implicit":
            w, solved = system.solve(rhs, transpose=True)
        else:
            # Inequalities: the active entries as equalities (block 0), the inactive ones dropped
            # (block -INACTIVE: their multipliers' rows decouple and their weights vanish).
            extra = None
            if state["slack"]:
                extra = {c: torch.where(z[c] > state["slack"][c], torch.zeros_like(z[c]), torch.full_like(z[c], -INACTIVE))
                         for c in self._inequality_columns()}
            w, solved = system.solve(rhs, extra_diagonal=extra)
        return self._vjp(params, sizes, z, w, ok & solved, wanted)

    def _vjp(self, params, sizes, z, w, good, wanted=None, env=None):
        """The parameters' gradients for the IFT weights w (the generated -(w . d residuals / d a)),
        zero in the rows that are not `good`; None for the parameters not `wanted`. env: the
        parameters and z as `_env` has them, if at hand (it gets the weights)."""
        plan = self.plan
        every = _all(good)  # on the CPU: skip the masks (full passes over large arrays) when all rows are good
        if not every:
            w = [torch.where(_col(good, x), x, torch.zeros_like(x)) for x in w]
        if env is None:
            env = self._env(params, z)
        env.update({f"_w{r}": x for r, x in enumerate(w)})
        gradients = plan.parameter_gradient(env, sizes)
        out = []
        for k, g in enumerate(gradients):
            if wanted is not None and not wanted[k]:
                out.append(None)
                continue
            # An entry at the edge of its domain (LML's y = 1, a transport plan's P = 0 after
            # underflow) has weight 0 and an infinite derivative: 0 * inf, whose limit is 0.
            g = torch.nan_to_num(g, nan=0.0)  # (one pass; asking whether any is NaN costs two)
            out.append(g if every else torch.where(_col(good, g), g, torch.zeros_like(g)))
        return out

    def attach(self, *args, **kwargs):
        """`y = layer.attach(*params, y_hat)`: y_hat (computed by any means; a tuple when the
        spec declares several unknowns) after `refine_steps` Newton steps (multipliers start at
        0: one step from an exact y_hat gives them exactly), with the IFT gradient attached."""
        if "y_hat" in kwargs:
            y_hat = kwargs.pop("y_hat")
        else:
            if not args:
                raise TypeError("attach(*params, y_hat): y_hat is missing")
            *args, y_hat = args
        plan = self.plan
        if self._inequality_columns():
            raise NotImplementedError(f"{plan.name}: attach is not supported yet for size-generic layers with "
                                      "inequalities; call the layer (its interior point forward) instead")
        params, sizes, batch_shape, finite, dtype = self._arguments(tuple(args), kwargs)
        start = self._start(params, sizes, y_hat, batch_shape)
        detached = {k: v.detach() for k, v in params.items()}
        with torch.no_grad():
            z0 = self._start_multipliers(detached, sizes, start + self._zero_multipliers(start[0], sizes))
            z, done, _ = self._newton(detached, sizes, z0, self.refine_steps,
                                      line_search=False)
            _, flat = self._residual(detached, sizes, z)
            ok = torch.isfinite(flat).all(-1) & (flat.abs().amax(-1) <= self.tol) & finite
            ok = ok & self._second_order(detached, sizes, z) & self._redundancy_gap_ok(detached, sizes, z, dtype)
        y, ok = self._finish(params, sizes, z, ok, finite, batch_shape, dtype, False)
        self.last_ok = ok
        return y


def _backtrack_rows(candidate, accept, state, active, alpha=1.0):
    """Per row, the first step length in alpha, alpha / 2, ... (HALVINGS of them) whose candidate
    passes `accept(alpha, candidate, accepted) -> [B] bool`; rows that are not `active`, or that
    accept none, keep `state`. candidate(alpha) -> a state like `state` (nested tuples and lists
    of [B, ...] tensors). alpha: a number or [B]."""
    accepted = ~active
    for _ in range(HALVINGS):
        cand = candidate(alpha)
        better = ~accepted & accept(alpha, cand, accepted)
        state = _where_tree(better, cand, state)
        accepted = accepted | better
        if _all(accepted):
            break
        alpha = alpha * 0.5
    return state


def _eps(t) -> float:
    return torch.finfo(t.dtype).eps


def _norm(parts) -> torch.Tensor:
    """Euclidean norm per row of a list of [B, ...] tensors."""
    return torch.sqrt(sum((x.reshape(x.shape[0], -1) ** 2).sum(-1) for x in parts))


def _rounding(parts) -> torch.Tensor:
    """The size of a float64 rounding of the point: eps (1 + |z|) per row."""
    return torch.finfo(parts[0].dtype).eps * (1 + _norm(parts))


def _finite_rows(arrays):
    """[B]: every entry of the row in each array [B, ...] is finite (and so is their sum: a row
    whose sum overflows counts as not finite). One sum per array and two small operations, where
    isfinite would take four passes over each array."""
    first, *rest = [x.sum(tuple(range(1, x.dim()))) if x.dim() > 1 else x for x in arrays]
    total = first
    for x in rest:
        total = total + x
    return (total - total) == 0  # NaN where any entry is NaN or infinite


def _col(mask, like):
    return mask.reshape((-1,) + (1,) * (like.dim() - 1))
