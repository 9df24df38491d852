"""The structured KKT solve of size-generic layers (runtime/indexed.py; compiler: solvergen/indexed.py).

Every linear system here, the Newton step of the forward and the IFT solve of the backward, is
the KKT (Argmin) or Jacobian (Implicit) system of the plan's terms, solved by structure:

1. The unknowns whose Hessian is diagonal (`plan.eliminated`; LML's y, a transport plan) are
   eliminated: D^-1 applied entrywise, their coupling to the other variables contracted into a
   Schur complement term by term with einsum, over the terms' letters, so that a pattern such
   as "row sums of P" gives a diagonal block (sum_j 1 / D_ij) or an m x n coupling (1 / D_ij)
   and never an (m n) x (m n) matrix.
2. Among what is left, a variable whose block is diagonal is eliminated the same way (the
   larger first: a transport plan's m row multipliers, leaving the n x n column system).
3. The rest is solved densely, batched. One entry of a redundant multiplier family
   (`plan.redundant`: sum r = sum c) is dropped there (its multiplier is 0).
An Implicit's Jacobian is not symmetric: it is assembled densely (step 3 only).
"""
from __future__ import annotations

import math
import string

import torch

from . import parallel

from .declarative import _all, _solve
from .plan import IndexedPlan

FLOOR_DIAGONAL = 1e-14  # descent: |Hessian diagonal| floored at this share of its largest entry
FLOOR_DENSE = 1e-12  # descent: |eigenvalues| of the Jacobi-scaled Hessian floored at this share
DECOUPLED = 1e25  # eigenvalues this large come from decoupled entries (an inactive inequality: -1e30)
_LETTERS = string.ascii_letters


# -- Views between arrays and the printed functions' axes ------------------------------------


_IN_ORDER = [tuple(range(k)) for k in range(16)]  # (0, ..., k - 1), for the fast paths below


def _in_order(axes: tuple, total: int) -> bool:
    return axes == (_IN_ORDER[total] if total < len(_IN_ORDER) else tuple(range(total)))


def place(t: torch.Tensor, axes: tuple, total: int) -> torch.Tensor:
    """t [B, d_1, ..., d_k] -> [B, 1 or d on each of `total` axes], dimension j on axes[j]."""
    if len(axes) == total == t.dim() - 1 and _in_order(axes, total):
        return t  # already so (the common case: a small cost per call, many calls per solve)
    order = sorted(range(len(axes)), key=lambda j: axes[j])
    if order != list(range(len(axes))):
        t = t.permute(0, *[1 + j for j in order])
    shape = [t.shape[0]] + [1] * total
    for position, j in enumerate(order):
        shape[1 + axes[j]] = t.shape[1 + position]
    return t.reshape(shape)


def take(value, axes: tuple, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A printed result (tensor over the function's axes, or a number) -> [B, *shape] with
    dimension j from axis axes[j]."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return like.new_full((like.shape[0],) + tuple(shape), float(value))
    total = value.dim() - 1
    if len(axes) == total and _in_order(axes, total) and value.shape[1:] == shape and value.shape[0] == like.shape[0]:
        return value  # already so
    if not shape and value.numel() == like.shape[0]:
        return value.reshape(like.shape[0])  # a scalar per row: [B, 1, ..., 1] -> [B]
    full = [like.shape[0]] + [1] * total
    for j, a in enumerate(axes):
        full[1 + a] = shape[j]
    value = value.expand(full)
    order = list(axes) + [a for a in range(total) if a not in axes]
    if order != list(range(total)):
        value = value.permute(0, *[1 + a for a in order])
    return value.reshape((like.shape[0],) + tuple(shape))


# -- Terms and their contractions -------------------------------------------------------------


def _contract(operands, out_letters):
    """einsum of (tensor [B, ...], letters) operands over shared letters -> (tensor, letters
    kept): out_letters that no operand has are left out (broadcast)."""
    present = []
    for _, letters in operands:
        for l in letters:
            if l not in present:
                present.append(l)
    chars = {l: _LETTERS[k] for k, l in enumerate(present)}
    kept = tuple(dict.fromkeys(l for l in out_letters if l in chars))
    spec = ",".join("Z" + "".join(chars[l] for l in letters) for _, letters in operands)
    spec += "->Z" + "".join(chars[l] for l in kept)
    return torch.einsum(spec, *[t for t, _ in operands]), kept


def materialize(t: torch.Tensor, letters: tuple, positions: tuple, size) -> torch.Tensor:
    """A coefficient over `letters` -> [B, size of each position]: a position repeats a letter
    (a delta: the same element, eye mask) or names one t does not have (broadcast)."""
    seen = []
    for p in positions:
        if p not in seen:
            seen.append(p)
    order = [l for l in seen if l in letters]
    if order != list(letters):
        t = t.permute(0, *[1 + letters.index(l) for l in order])
    first = {}
    view = [t.shape[0]]
    for k, p in enumerate(positions):
        if p not in first:
            first[p] = k
            view.append(size(p) if p in letters else 1)
        else:
            view.append(1)
    t = t.reshape(view)
    for k, p in enumerate(positions):
        j = first[p]
        if j != k:
            n = size(p)
            mask_shape = [1] * (len(positions) + 1)
            mask_shape[1 + j] = mask_shape[1 + k] = n
            t = t * torch.eye(n, dtype=t.dtype, device=t.device).reshape(mask_shape)
    return t.expand([t.shape[0]] + [size(p) for p in positions])


class _Term:
    __slots__ = ("row", "col", "letters", "rows", "cols", "coefficient")

    def __init__(self, spec, coefficient):
        self.row, self.col, self.letters, self.rows, self.cols = spec
        self.coefficient = coefficient

    @property
    def diagonal(self) -> bool:
        return self.rows == self.cols and len(set(self.rows)) == len(self.rows) and set(self.letters) <= set(self.rows)


def _renamed(term: _Term, suffix: str):
    def r(ls):
        return tuple(l + suffix for l in ls)
    return r(term.letters), r(term.rows), r(term.cols)


class StructuredSystem:
    """The Newton / IFT matrix of one batch of points (module docstring), from the plan's terms."""

    def __init__(self, plan: IndexedPlan, sizes: dict, coefficients, batch: int):
        self.plan, self.sizes, self.batch = plan, sizes, batch
        self.terms = [_Term(spec, c) for spec, c in zip(plan.terms, coefficients)]
        self.row_shapes = [self.shape(dims) for _, dims in plan.rows]
        self.col_shapes = [self.shape(col[1]) for col in plan.columns]

    def shape(self, dims) -> tuple:
        return tuple(d if isinstance(d, int) else self.sizes[d] for d in dims)

    def letter_size(self, letter: str) -> int:
        base = letter.split("#")[0]
        size = self.plan.letter_sizes[base]
        return size if isinstance(size, int) else self.sizes[size]

    def _of(self, row=None, col=None):
        return [t for t in self.terms if (row is None or t.row == row) and (col is None or t.col == col)]

    def apply(self, term: _Term, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """The term times x (x over its column shape; transpose: x over its row shape) ->
        [B, *row shape] (transpose: column shape)."""
        letters, rows, cols = term.letters, term.rows, term.cols
        ins, outs = (rows, cols) if transpose else (cols, rows)
        # x's dimensions that share a letter: a diagonal of x
        result, kept = _contract([(term.coefficient, letters), (x, ins)], outs)
        return materialize(result, kept, outs, self.letter_size)

    def dense(self, term: _Term) -> torch.Tensor:
        """[B, rows, cols] of one term."""
        n_r = math.prod(self.row_shapes[term.row])
        n_c = math.prod(self.col_shapes[term.col])
        full = materialize(term.coefficient, term.letters, term.rows + term.cols, self.letter_size)
        return full.reshape(self.batch, n_r, n_c)

    # -- the solve ---------------------------------------------------------------------------

    def solve(self, rhs: list, transpose: bool = False, convexify: bool = False,
              extra_diagonal: dict | None = None) -> tuple[list, torch.Tensor]:
        """K x = rhs (rhs per row block, x per column) -> (x, solved [B]). An Argmin's K is
        symmetric; an Implicit's is assembled densely (transpose: K^T x = rhs over columns).
        convexify (an unconstrained Argmin's Newton step): the Hessian's eigenvalues are
        replaced by their absolute values, floored, so that the step descends. extra_diagonal:
        column -> [B, *shape] added to that column's diagonal block (the interior point's
        -slack / multiplier for an inequality family)."""
        if self.plan.kind == "implicit":
            return self._dense_solve(rhs, transpose)
        if not convexify and not extra_diagonal and self._scalar_constraints():
            return self._scalar_schur_solve(rhs)
        return self._structured_solve(rhs, convexify, extra_diagonal or {})

    def _scalar_constraints(self) -> bool:
        """Every unknown eliminated (a diagonal Hessian) and every other column one scalar
        equality multiplier (LML's sum y = k): the Schur complement is E x E, formed directly."""
        plan = self.plan
        unknown = {c for c, column in enumerate(plan.columns) if column[2] == "unknown"}
        if plan.redundant or set(plan.eliminated) != unknown:
            return False
        if any(plan.columns[c][2] != "multiplier" or self.col_shapes[c] for c in range(len(plan.columns))
               if c not in unknown):
            return False
        for t in self.terms:
            if (t.row in unknown) == (t.col in unknown) and not (t.row == t.col and t.diagonal and t.rows):
                return False  # a multiplier-multiplier block, or an unknown coupled to another
        return True

    def _scalar_schur_solve(self, rhs):
        """K w = rhs for `_scalar_constraints`: with D the unknowns' diagonal Hessian and A the
        constraints' Jacobian rows, w_mu = S^-1 (A D^-1 rhs_y - rhs_mu), S = A D^-1 A^T (E x E),
        and w_y = D^-1 (rhs_y - A^T w_mu): the closed form of the paper's LML backward, for any
        such layer. A few entrywise passes over y; no materialised block, no Python loop over
        terms beyond one pass. Rows where S is singular or a result is not finite: solved False."""
        plan, B = self.plan, self.batch
        unknown = list(plan.eliminated)
        multipliers = [c for c in range(len(plan.columns)) if c not in unknown]
        inverse, rows = {}, {}
        for t in self.terms:
            if t.row == t.col:
                value = materialize(t.coefficient, t.letters, t.rows, self.letter_size)
                inverse[t.row] = inverse.get(t.row, 0) + value
            elif t.row in multipliers:  # A[m, e] (the transposed term is the same: K is symmetric)
                value = materialize(t.coefficient, t.letters, t.cols, self.letter_size)
                rows[(t.row, t.col)] = rows.get((t.row, t.col), 0) + value
        inverse = {e: torch.reciprocal(d.expand((B,) + self.col_shapes[e])) for e, d in inverse.items()}
        scaled = {e: inverse[e] * rhs[e] for e in unknown}
        E = len(multipliers)
        reduced = [-rhs[m].reshape(B) for m in multipliers]
        schur = [[None] * E for _ in range(E)]
        for i, m in enumerate(multipliers):
            for e in unknown:
                if (m, e) not in rows:
                    continue
                reduced[i] = reduced[i] + (rows[(m, e)] * scaled[e]).flatten(1).sum(-1)
                weighted = rows[(m, e)] * inverse[e]
                for j in range(i, E):
                    if (multipliers[j], e) in rows:
                        entry = (weighted * rows[(multipliers[j], e)]).flatten(1).sum(-1)
                        schur[i][j] = entry if schur[i][j] is None else schur[i][j] + entry
        zero = rhs[0].new_zeros(B)
        if E == 0:  # no constraints: D w = rhs
            w_mu, solved = [], torch.ones(B, dtype=torch.bool, device=zero.device)
        elif E == 1:
            w_mu = [reduced[0] / (zero if schur[0][0] is None else schur[0][0])]
            solved = torch.isfinite(w_mu[0])
        else:
            S = torch.stack([torch.stack([schur[min(i, j)][max(i, j)] if schur[min(i, j)][max(i, j)] is not None
                                          else zero for j in range(E)], -1) for i in range(E)], -2)
            w, info = torch.linalg.solve_ex(S, torch.stack(reduced, -1).unsqueeze(-1))
            w_mu = list(w.squeeze(-1).unbind(-1))
            solved = (info == 0) & torch.isfinite(w).flatten(1).all(-1)
        out = [None] * len(plan.columns)
        for i, m in enumerate(multipliers):
            out[m] = w_mu[i]
        for e in unknown:
            acc = rhs[e]
            for i, m in enumerate(multipliers):
                if (m, e) in rows:
                    acc = acc - rows[(m, e)] * w_mu[i].reshape((B,) + (1,) * len(self.col_shapes[e]))
            out[e] = acc * inverse[e]
            solved = solved & torch.isfinite(out[e]).flatten(1).all(-1)
        return out, solved

    def _entrywise(self) -> bool:
        """Every block of one shape and every term entry by entry (an Implicit whose equation
        entry e involves the unknowns' entries e only): one R x R system per entry."""
        shapes = set(self.row_shapes) | set(self.col_shapes)
        return (len(self.row_shapes) == len(self.col_shapes) and len(shapes) == 1 and bool(next(iter(shapes)))
                and all(t.diagonal and t.rows for t in self.terms))

    def _entrywise_solve(self, rhs, transpose):
        R = len(self.row_shapes)
        shape = self.row_shapes[0]
        K = rhs[0].new_zeros((self.batch,) + shape + (R, R))
        for t in self.terms:
            K[..., t.row, t.col] += materialize(t.coefficient, t.letters, t.rows, self.letter_size)
        if transpose:
            K = K.transpose(-1, -2)
        entries = math.prod(shape)
        b = torch.stack([r.reshape((self.batch,) + shape) for r in rhs], -1)
        x, solved = _solve(K.reshape(self.batch * entries, R, R), b.reshape(self.batch * entries, R))
        x = x.reshape((self.batch,) + shape + (R,))
        return [x[..., k] for k in range(R)], solved.reshape(self.batch, entries).all(-1)

    def _dense_solve(self, rhs, transpose):
        if self._entrywise():
            return self._entrywise_solve(rhs, transpose)
        rows = range(len(self.plan.rows))
        cols = range(len(self.plan.columns))
        n_r = [math.prod(s) for s in self.row_shapes]
        n_c = [math.prod(s) for s in self.col_shapes]
        K = rhs[0].new_zeros(self.batch, sum(n_r), sum(n_c))
        r_off = [sum(n_r[:k]) for k in rows]
        c_off = [sum(n_c[:k]) for k in cols]
        for t in self.terms:
            K[:, r_off[t.row]:r_off[t.row] + n_r[t.row], c_off[t.col]:c_off[t.col] + n_c[t.col]] += self.dense(t)
        if transpose:
            K = K.transpose(-1, -2)
        b = torch.cat([r.reshape(self.batch, -1) for r in rhs], -1)
        x, solved = _solve(K, b)
        shapes = self.row_shapes if transpose else self.col_shapes
        sizes = n_r if transpose else n_c
        out = list(torch.split(x, sizes, dim=-1))
        return [o.reshape((self.batch,) + s) for o, s in zip(out, shapes)], solved

    def inertia(self, extra_diagonal=None) -> tuple:
        """(positive, negative, zero) eigenvalue counts [B] of the KKT matrix (an Argmin), by
        Sylvester's law along the structured elimination: the signs of each diagonal pivot, then
        the eigenvalues of the dense remainder. A strict local minimum (second-order sufficient
        condition, constraint Jacobian of full rank) has as many positive ones as unknown
        entries and as many negative ones as (kept) multiplier entries."""
        zeros = [torch.zeros((self.batch,) + shape, dtype=self.terms[0].coefficient.dtype,
                             device=self.terms[0].coefficient.device) for shape in self.col_shapes]
        _, _, counts = self._structured_solve(zeros, extra_diagonal=extra_diagonal, count_inertia=True)
        return counts

    def _structured_solve(self, rhs, convexify=False, extra_diagonal=None, count_inertia=False):
        plan = self.plan
        counts = [torch.zeros(self.batch, dtype=torch.long, device=rhs[0].device) for _ in range(3)]

        def count(values):  # values [B, k]: an infinite pivot is an entry at the edge of its domain
            finite = torch.isfinite(values)
            counts[0].add_(((values > 0) | ~finite & ~torch.isnan(values)).sum(-1))
            counts[1].add_((finite & (values < 0)).sum(-1))
            counts[2].add_(((values == 0) | torch.isnan(values)).sum(-1))
        C = len(plan.columns)
        eliminated = [c for c in plan.eliminated]
        rest = [c for c in range(C) if c not in eliminated]
        n = [math.prod(s) for s in self.col_shapes]
        D, pins = {}, {}
        for e in eliminated:
            d = 0
            for t in self._of(e, e):
                d = d + materialize(t.coefficient, t.letters, t.rows, self.letter_size)
            D[e] = d.expand((self.batch,) + self.col_shapes[e])
            D[e], pins[e] = self._pinned(e, D[e], extra_diagonal)
            if convexify:
                D[e] = _floored(D[e].abs(), D[e].abs().reshape(self.batch, -1).amax(-1), FLOOR_DIAGONAL)
            if count_inertia:
                count(D[e].reshape(self.batch, -1))
        # Blocks among the rest: diag [B, n] (a == b only), cross [B, n] (a != b of one shape,
        # entry by entry: two bound families y >= 0, y <= 1 through y) and dense [B, n_a, n_b].
        diag: dict = {}
        cross: dict = {}
        dense: dict = {}

        def add_dense(a, b, value):  # (a cross block of the same pair joins it)
            if (a, b) in cross:
                value = value + torch.diag_embed(cross.pop((a, b)))
            dense[(a, b)] = dense[(a, b)] + value if (a, b) in dense else value

        def add_cross(a, b, v):
            if (a, b) in dense:
                add_dense(a, b, torch.diag_embed(v))
            else:
                cross[(a, b)] = cross[(a, b)] + v if (a, b) in cross else v

        for t in self.terms:
            if t.row in eliminated or t.col in eliminated:
                continue
            if t.row == t.col and t.diagonal and t.rows:
                v = materialize(t.coefficient, t.letters, t.rows, self.letter_size).reshape(self.batch, -1)
                diag[t.row] = diag[t.row] + v if t.row in diag else v
            else:
                add_dense(t.row, t.col, self.dense(t))
        # A family whose diagonal is only its extra block (no term of its own, no Schur
        # complement from an eliminated unknown: y >= 0 on a y with a dense Hessian) has a 0
        # pivot at its active entries: it stays for the dense remainder.
        coupled = {t.row for t in self.terms if t.col in eliminated}
        bare = {c for c, value in (extra_diagonal or {}).items() if c not in diag and c not in coupled
                and (not parallel.host_sync_is_free(value.device) or bool((value == 0).any()))}
        for c, value in (extra_diagonal or {}).items():
            v = value.reshape(self.batch, -1)
            diag[c] = diag[c] + v if c in diag else v
        b = {c: rhs[c] for c in range(C)}
        for e in eliminated:
            inverse = 1.0 / D[e]
            for t1 in self._of(col=e):
                if t1.row in eliminated:
                    continue
                for t2 in self._of(col=e):
                    if t2.row in eliminated:
                        continue
                    self._schur_term(t1, t2, inverse, diag, add_cross, add_dense)
                # rhs_r -= B_re D^-1 rhs_e
                b[t1.row] = b[t1.row] - self.apply(t1, inverse * rhs[e])
        # Second level: eliminate diagonal-only blocks, the largest first.
        order = list(rest)
        steps = []
        while len(order) > 1:
            candidates = [v for v in order if v in diag and (v, v) not in dense and (v, v) not in cross
                          and v not in bare]
            if not candidates:
                break
            v = max(candidates, key=lambda c: (n[c], -c))
            order.remove(v)
            if count_inertia:
                count(diag[v])
            inv = 1.0 / diag[v]
            bv = b[v].reshape(self.batch, -1)
            for a in order:
                if (a, v) not in dense and (a, v) not in cross:
                    continue
                for c in order:
                    if (a, v) in cross and (v, c) in cross:  # entry by entry
                        update = cross[(a, v)] * inv * cross[(v, c)]
                        if a == c:
                            diag[a] = diag[a] - update if a in diag else -update
                        else:
                            add_cross(a, c, -update)
                    elif (v, c) in dense or (v, c) in cross:
                        left = (dense[(a, v)] * inv[:, None, :] if (a, v) in dense
                                else torch.diag_embed(cross[(a, v)] * inv))
                        if (v, c) in dense and (a, c) in dense:  # in place: one pass over the block
                            dense[(a, c)] = torch.baddbmm(dense[(a, c)], left, dense[(v, c)], alpha=-1)
                        else:
                            right = dense[(v, c)] if (v, c) in dense else torch.diag_embed(cross[(v, c)])
                            add_dense(a, c, -(left @ right))
                scaled_b = inv * bv
                if (a, v) in dense:
                    b[a] = b[a] - (dense[(a, v)] @ scaled_b.unsqueeze(-1)).squeeze(-1).reshape(b[a].shape)
                else:
                    b[a] = b[a] - (cross[(a, v)] * scaled_b).reshape(b[a].shape)
            steps.append(v)
        # Dense remainder.
        sizes = [n[c] for c in order]
        offsets = [sum(sizes[:k]) for k in range(len(order))]
        N = sum(sizes)
        K = rhs[0].new_zeros(self.batch, N, N)
        for i, a in enumerate(order):
            for j, c in enumerate(order):
                if (a, c) in dense:
                    K[:, offsets[i]:offsets[i] + sizes[i], offsets[j]:offsets[j] + sizes[j]] += dense[(a, c)]
                if (a, c) in cross:
                    K[:, offsets[i]:offsets[i] + sizes[i], offsets[j]:offsets[j] + sizes[j]] += torch.diag_embed(cross[(a, c)])
            if a in diag:
                K[:, offsets[i]:offsets[i] + sizes[i], offsets[i]:offsets[i] + sizes[i]] += torch.diag_embed(diag[a])
        rhs_flat = torch.cat([b[a].reshape(self.batch, -1) for a in order], -1) if order else K.new_zeros(self.batch, 0)
        dropped = []  # one entry of a redundant family (its multiplier is 0)
        for pair in plan.redundant:
            for c in pair:
                if c in order:
                    dropped.append(offsets[order.index(c)] + sizes[order.index(c)] - 1)
                    break
        keep = [k for k in range(N) if k not in dropped]
        if dropped and sorted(dropped) == list(range(N - len(dropped), N)):  # trailing entries: views
            K, rhs_flat = K[:, :len(keep), :len(keep)], rhs_flat[:, :len(keep)]
        elif dropped:
            index = torch.tensor(keep, dtype=torch.long, device=K.device)
            K, rhs_flat = K[:, index][:, :, index], rhs_flat[:, index]
        if count_inertia:
            if K.shape[-1]:
                finite = torch.isfinite(K).all(-1).all(-1)
                # Decoupled entries (an inactive inequality's -1e30 diagonal, runtime/indexed.py's
                # INACTIVE) are negative eigenvalues of their own (their coupling changes the rest
                # by 1e-30); left in, they would drown the others in the eigensolver's 1e30 eps.
                decoupled = K.diagonal(dim1=-2, dim2=-1) <= -DECOUPLED
                keep = ~(decoupled.unsqueeze(-1) | decoupled.unsqueeze(-2))
                K = torch.where(keep, K, torch.diag_embed(-decoupled.to(K.dtype)))
                values = torch.linalg.eigvalsh(torch.where(finite[:, None, None], 0.5 * (K + K.transpose(-1, -2)),
                                                           torch.zeros_like(K)))
                small = values.abs() <= 1e-12 * values.abs().amax(-1, keepdim=True)
                counts[0].add_(((values > 0) & ~small).sum(-1))
                counts[1].add_(((values < 0) & ~small).sum(-1))
                counts[2].add_(small.sum(-1) + (~finite).long() * K.shape[-1])
            return None, None, tuple(counts)
        fully = self._fully_pinned(pins)
        if convexify:
            x_flat, solved = _convexified_solve(K, rhs_flat)
        elif all(plan.columns[c][2] in ("multiplier", "inequality") for c in order):
            # -A H^-1 A^T with H positive definite: Cholesky of -K (half of LU's work), LU where it fails
            x_flat, solved = _negative_definite_solve(K, rhs_flat)
        else:
            x_flat, solved = _solve(K, rhs_flat)
        if fully is not None:
            # every unknown entry pinned by an active bound (a vertex: with an equality too, the
            # active constraints are dependent and this block is singular): y's step comes from
            # the bounds' rows alone, and the multipliers here keep their values (the bounds'
            # multipliers take up stationarity exactly)
            x_flat = torch.where(fully.unsqueeze(-1), torch.zeros_like(x_flat), x_flat)
            solved = solved | fully
        if dropped:
            full = K.new_zeros(self.batch, N)
            full[:, torch.tensor(keep, dtype=torch.long, device=K.device)] = x_flat
        else:
            full = x_flat
        x = {}
        for i, a in enumerate(order):
            x[a] = full[:, offsets[i]:offsets[i] + sizes[i]]
        for v in reversed(steps):  # back-substitute the second level
            acc = b[v].reshape(self.batch, -1)
            for c in x:
                if (v, c) in dense:
                    acc = acc - (dense[(v, c)] @ x[c].unsqueeze(-1)).squeeze(-1)
                if (v, c) in cross:
                    acc = acc - cross[(v, c)] * x[c]
            x[v] = acc / diag[v]
        out = [None] * C
        for c in rest:
            out[c] = x[c].reshape((self.batch,) + self.col_shapes[c])
        for e in eliminated:  # back-substitute the diagonal unknowns
            acc = rhs[e]
            for t in self._of(row=e):
                if t.col not in eliminated:
                    acc = acc - self.apply(t, out[t.col])
            out[e] = acc / D[e]
            for mask, c, term in pins[e]:  # from the bound's own row, exact to a rounding of y
                coefficient = materialize(term.coefficient, term.letters, term.cols, self.letter_size)
                out[e] = torch.where(mask, rhs[c] / coefficient.expand_as(out[e]), out[e])
        return out, solved

    def _fully_pinned(self, pins):
        """[B] rows whose every unknown entry is pinned by an active bound, or None where some
        unknown column cannot be (not eliminated, or no bound family on it)."""
        unknown = [c for c, column in enumerate(self.plan.columns) if column[2] == "unknown"]
        if not all(pins.get(c) for c in unknown):
            return None
        fully = None
        for c in unknown:
            covered = pins[c][0][0]
            for mask, _, _ in pins[c][1:]:
                covered = covered | mask
            row = covered.reshape(self.batch, -1).all(-1)
            fully = row if fully is None else fully & row
        return fully

    def fully_pinned(self, extra_diagonal) -> torch.Tensor | None:
        """`_fully_pinned` for the active set of `extra_diagonal` (0: active)."""
        pins = {}
        for e in self.plan.eliminated:
            d = torch.zeros((self.batch,) + self.col_shapes[e], dtype=self.terms[0].coefficient.dtype,
                            device=self.terms[0].coefficient.device)
            _, pins[e] = self._pinned(e, d, extra_diagonal)
        return self._fully_pinned(pins)

    def _pinned(self, e, d, extra_diagonal):
        """-> (d, pins): the diagonal Hessian d of unknown column e with 1 at the entries pinned by an active
        bound: an inequality family whose only unknown term is entry-wise on e (y[i] >= 0), active
        where its diagonal block is exactly 0 (the active-set polish, the IFT, the inertia). The
        steps of y and the Hessian reduced to the active constraints' null space do not depend
        on those entries (the null space has no component there), which may be infinite (y**1.5
        at y = 0) or 1e20 (at y = 1e-40, its Schur complement -1e-20 would count as zero)."""
        pins = []  # (mask, family, its term): the step of a pinned entry comes from its bound's row
        for c, value in (extra_diagonal or {}).items():
            terms = [t for t in self.terms if t.row == c and self.plan.columns[t.col][2] == "unknown"]
            if (len(terms) == 1 and terms[0].col == e and terms[0].diagonal and terms[0].rows
                    and self.col_shapes[c] == self.col_shapes[e]):
                mask = value.reshape(d.shape) == 0
                d = torch.where(mask, torch.ones_like(d), d)
                pins.append((mask, c, terms[0]))
        return d, pins

    def _schur_term(self, t1, t2, inverse, diag, add_cross, add_dense):
        """-(t1 D^-1 t2^T) into the block (t1.row, t2.row)."""
        l1, r1, c1 = t1.letters, t1.rows, t1.cols
        l2, r2, c2 = _renamed(t2, "#2")
        parent = {}

        def find(a):
            while parent.get(a, a) != a:
                a = parent[a]
            return a
        for a, b in zip(c1, c2):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra

        def canon(ls):
            return tuple(find(l) for l in ls)
        positions = canon(r1) + canon(r2)
        value, kept = _contract([(t1.coefficient, canon(l1)), (inverse, canon(c1)), (t2.coefficient, canon(l2))],
                                positions)
        a, b = t1.row, t2.row
        if canon(r1) == canon(r2) and len(set(canon(r1))) == len(r1) and r1 and (
                a == b or self.col_shapes[a] == self.col_shapes[b]):  # entry by entry
            v = materialize(value, kept, canon(r1), self.letter_size).reshape(self.batch, -1)
            if a == b:
                diag[a] = diag[a] - v if a in diag else -v
            else:
                add_cross(a, b, -v)
            return
        n_a = math.prod(self.col_shapes[a])
        n_b = math.prod(self.col_shapes[b])
        add_dense(a, b, -materialize(value, kept, positions, self.letter_size).reshape(self.batch, n_a, n_b))


def _negative_definite_solve(K, rhs):
    L, info = torch.linalg.cholesky_ex(-K)
    x = -torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
    usable = (info == 0) & torch.isfinite(x).all(dim=-1)
    if _all(usable):
        return x, usable
    fallback, solved = _solve(K, rhs)
    return torch.where(usable[:, None], x, fallback), usable | solved


def _floored(values, scale, relative):
    floor = relative * scale.clamp_min(1e-300)
    return torch.maximum(values, floor.reshape((-1,) + (1,) * (values.dim() - 1)))


def _convexified_solve(H, g):
    """|H| x = g with |H| = V |Lambda| V^T of the Jacobi-scaled H (entropic Hessians span many
    orders of magnitude), eigenvalues floored at FLOOR_DENSE of the largest."""
    if H.shape[-1] == 0:
        return g, torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    H = torch.where(torch.isfinite(H).all(-1).all(-1)[:, None, None], H, eye)
    scale = H.diagonal(dim1=-2, dim2=-1).abs()
    scale = 1.0 / torch.sqrt(torch.where(scale > 0, scale, torch.ones_like(scale)))
    values, vectors = torch.linalg.eigh(0.5 * (H + H.transpose(-1, -2)) * scale[:, :, None] * scale[:, None, :])
    values = _floored(values.abs(), values.abs().amax(-1), FLOOR_DENSE)
    y = vectors @ ((vectors.transpose(-1, -2) @ (scale * g).unsqueeze(-1)).squeeze(-1) / values).unsqueeze(-1)
    x = scale * y.squeeze(-1)
    usable = torch.isfinite(x).all(-1)
    return torch.where(usable[:, None], x, torch.zeros_like(x)), usable
