"""A fixed-pivot sparse elimination of the template, planned once at compile time.

Online, the template [E | T | B] (eliminated, reduced and basis columns) is solved for the
reduced monomials: [E T] X = B, keeping the rows of X that belong to T. LAPACK does that one
matrix at a time with partial pivoting on the dense matrix, although the sparsity pattern is the
same for every instance (P3P: 68 nonzeros of 17 x 21). Here the pivot sequence is chosen once:

1. Forward elimination, the E columns first, then the T columns. Each step picks, among the rows
   not yet used, the pivot of least Markowitz cost (fewest updates and fill-in) among those that
   pass a threshold test on sample matrices (the median over samples of |pivot| / the largest
   entry of its column is at least `THRESHOLD`); if none passes, the best ratio.
2. Upward elimination of the T block (Gauss-Jordan), so that each T pivot row ends as
   pivot * t + (combination of B).
3. X[t] = (the row's B entries) / pivot, read off directly.

Every step is a list of scalar updates target -= factor * source with factor = column / pivot.
Steps that do not depend on each other are merged into levels; online each level is a handful
of vectorized operations over the batch (gather, divide, multiply, index_add), on the entries
that are ever nonzero only ("slots"). The pivots are not chosen per instance, so the online
code checks every forward factor: a row whose largest |factor| exceeds the generated solver's
growth limit (partial pivoting keeps it at 1) is solved again by LAPACK.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .runtime.template import GROWTH_LIMIT as RUNTIME_GROWTH_LIMIT
from .template import template_entries

THRESHOLD = 0.1  # threshold pivoting: |pivot| >= THRESHOLD * max |column| (median over samples)
WORTHWHILE = 0.1  # generated only when its updates are at most this share of a dense LU's
TRUSTED = 0.9  # ... and when the online growth check trusts it on this share of the samples
GROWTH_LIMIT = RUNTIME_GROWTH_LIMIT[torch.float64]  # what the online check allows (float64)
MAX_ROWS = 200  # larger templates keep LAPACK: the pivot search is quadratic in the columns
# (measured: 100 rows 0.5 s, 300 rows 25 s on random 4% patterns)


@dataclass(frozen=True)
class Level:
    """Independent elimination steps, run as one: factor f = slots[column] / slots[pivot], then
    slots[target] -= f[factor] * slots[source] for every update."""

    pivot: tuple[int, ...]  # per factor
    column: tuple[int, ...]  # per factor
    factor: tuple[int, ...]  # per update: index into the level's factors
    source: tuple[int, ...]  # per update
    target: tuple[int, ...]  # per update


@dataclass(frozen=True)
class SparseLU:
    slots: int  # entries that are ever nonzero; slot `slots` stays zero (structural zeros)
    template_slots: tuple[int, ...]  # slot of each template entry (template_positions order)
    forward: tuple[Level, ...]  # its factors are checked against the growth limit online
    upward: tuple[Level, ...]
    numerators: tuple[int, ...]  # [num_reducible * num_basis] slots, row-major
    denominators: tuple[int, ...]  # [num_reducible]: X[t, b] = numerators[t, b] / denominators[t]
    updates: int  # scalar updates per instance
    dense_updates: int  # those of a dense LU with back substitution, for comparison
    trusted_share: float = 1.0  # samples whose forward factors stay within GROWTH_LIMIT

    @property
    def worthwhile(self) -> bool:
        """Whether the sparse elimination beats LAPACK: each level costs a handful of tensor
        operations, so it pays only for sparse templates, and only if few instances fail the
        growth check and go to LAPACK anyway (P3.5Pf's 97 x 113 template: 55%). Measured at
        batch 4,096 on 2 cores:
        P3P's even template, 145 of 2,584 dense updates, 6.6 ms against 28 (its former 25 x 33
        one: 140 of 9,700, 7 ms against 52); the 6-point, 2,917 of 9,170, 50 ms
        against 59 and no gain in the whole forward; the dense 5-point template, 945 of 1,185,
        13 ms against 12)."""
        return self.updates <= WORTHWHILE * self.dense_updates and self.trusted_share >= TRUSTED


@dataclass
class _Step:
    row: int
    col: int
    rows: list[int]  # the rows updated (entry in `col` eliminated)
    cols: list[int]  # the pivot row's other nonzero columns


def template_sparse_lu(system, template, seed: int = 0) -> SparseLU | None:
    """The plan for an elimination template (solvergen/template.py) whose entries are the
    coefficients of `system`, or None where LAPACK stays: more than MAX_ROWS rows, or a plan
    that is not `worthwhile`."""
    if template.shape[0] > MAX_ROWS:
        return None
    entries = template_entries(system, template)
    plan = plan_sparse_lu(
        [p for p, _ in entries],
        template.shape,
        len(template.excess),
        len(template.reducible),
        sample_templates(system, template.shape, entries, seed=seed),
    )
    return plan if plan.worthwhile else None


def plan_sparse_lu(positions, shape, num_excess: int, num_reducible: int, samples=None) -> SparseLU:
    """The elimination plan for a template with nonzeros at flat `positions` (row * cols + col,
    in template-entry order). `samples` [S, rows, cols]: numeric templates for the threshold test
    (None: structure only)."""
    rows, cols = shape
    square = num_excess + num_reducible
    nonzero = np.zeros(rows * cols, dtype=bool)
    nonzero[list(positions)] = True
    nonzero = nonzero.reshape(rows, cols)
    values = None if samples is None else np.array(samples, dtype=float)
    growth = None if values is None else np.zeros(len(values))
    remaining = list(range(rows))
    forward: list[_Step] = []
    for phase in (range(num_excess), range(num_excess, square)):
        left = list(phase)
        while left:
            step = _choose_pivot(nonzero, values, remaining, left)
            _apply(nonzero, values, step, growth)
            forward.append(step)
            remaining.remove(step.row)
            left.remove(step.col)
    reduced = forward[num_excess:]
    upward = []
    for k in range(len(reduced) - 1, -1, -1):
        pivot = reduced[k]
        above = [s.row for s in reduced[:k] if nonzero[s.row, pivot.col]]
        step = _Step(pivot.row, pivot.col, above, [c for c in np.flatnonzero(nonzero[pivot.row]) if c != pivot.col])
        _apply(nonzero, None, step)
        upward.append(step)

    entries = set(int(p) for p in positions)
    for step in forward + upward:
        entries |= set().union(*_access(step, cols))
    order = sorted(entries)
    slot = {e: i for i, e in enumerate(order)}
    zero = len(order)
    by_reduced = sorted(reduced, key=lambda s: s.col)  # T monomial t = column num_excess + t
    return SparseLU(
        slots=len(order),
        template_slots=tuple(slot[int(p)] for p in positions),
        forward=_levels(forward, cols, slot),
        upward=_levels(upward, cols, slot),
        numerators=tuple(
            slot[s.row * cols + c] if nonzero[s.row, c] else zero for s in by_reduced for c in range(square, cols)
        ),
        denominators=tuple(slot[s.row * cols + s.col] for s in by_reduced),
        updates=sum(len(s.rows) * (len(s.cols) + 1) for s in forward + upward),
        dense_updates=sum(k * (k + cols - square) for k in range(square)) + square * (square - 1) // 2 * (cols - square),
        trusted_share=1.0 if growth is None else float(np.mean(growth <= GROWTH_LIMIT)),
    )


def _choose_pivot(nonzero, values, remaining, columns) -> _Step:
    best = None
    for j in columns:
        candidates = [r for r in remaining if nonzero[r, j]]
        if not candidates:
            raise AssertionError("internal error: a template column without a pivot")
        if values is None:
            ratios = np.ones(len(candidates))
        else:
            column = np.abs(values[:, candidates, j])
            largest = np.maximum(column.max(axis=1, keepdims=True), np.finfo(float).tiny)
            ratios = np.median(column / largest, axis=0)
        for r, ratio in zip(candidates, ratios):
            cost = (int(nonzero[r].sum()) - 1) * (len(candidates) - 1)
            key = (not ratio >= THRESHOLD, cost, -ratio, j, r)
            if best is None or key < best[0]:
                best = (key, r, j, candidates)
    _, r, j, candidates = best
    return _Step(r, j, [q for q in candidates if q != r], [c for c in np.flatnonzero(nonzero[r]) if c != j])


def _apply(nonzero, values, step: _Step, growth=None) -> None:
    """Eliminate the step's column from its rows (structure, and the sample values if given;
    `growth` [samples] keeps the largest |factor| seen, as the online check does)."""
    for q in step.rows:
        nonzero[q, step.cols] = True
        nonzero[q, step.col] = False
        if values is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = values[:, q, step.col] / values[:, step.row, step.col]
            if growth is not None:
                np.maximum(growth, np.where(np.isfinite(factor), np.abs(factor), np.inf), out=growth)
            values[:, q, :] -= factor[:, None] * values[:, step.row, :]
            values[:, q, step.col] = 0.0


def _access(step: _Step, cols: int) -> tuple[set[int], set[int]]:
    """The flat positions a step reads (pivot, eliminated entries, pivot row) and writes."""
    read = {step.row * cols + step.col} | {q * cols + step.col for q in step.rows}
    read |= {step.row * cols + c for c in step.cols}
    write = {q * cols + c for q in step.rows for c in step.cols}
    return read, write


def _levels(steps: list[_Step], cols: int, slot: dict) -> tuple[Level, ...]:
    """Group steps into levels: a step runs after every earlier step whose writes it reads, and
    not before an earlier step that reads what it writes (within a level all reads come first)."""
    level, reads, writes = [], [], []
    for k, step in enumerate(steps):
        read, write = _access(step, cols)
        at = 0
        for a in range(k):
            if writes[a] & read:
                at = max(at, level[a] + 1)
            elif reads[a] & write or writes[a] & write:
                at = max(at, level[a])
        level.append(at)
        reads.append(read)
        writes.append(write)
    out = []
    for at in range(max(level, default=-1) + 1):
        pivot, column, factor, source, target = [], [], [], [], []
        for step, lv in zip(steps, level):
            if lv != at or not step.rows:
                continue
            for q in step.rows:
                for c in step.cols:
                    factor.append(len(column))
                    source.append(slot[step.row * cols + c])
                    target.append(slot[q * cols + c])
                pivot.append(slot[step.row * cols + step.col])
                column.append(slot[q * cols + step.col])
        if column:
            out.append(Level(tuple(pivot), tuple(column), tuple(factor), tuple(source), tuple(target)))
    return tuple(out)


def sample_templates(system, shape, entries, count: int = 64, seed: int = 0) -> np.ndarray:
    """Numeric templates [count, rows, cols] at standard normal parameters: generic values for
    the threshold test (the online growth check covers instances unlike them)."""
    parameters = np.random.default_rng(seed).standard_normal((len(system.parameters), count))
    values = {}
    for j in sorted({j for _, j in entries}):
        total = np.zeros(count)
        for exponents, coefficient in system.coefficients[j].poly.terms():
            term = np.full(count, float(coefficient))
            for values_i, e in zip(parameters, exponents):
                if e:
                    term = term * values_i**e
            total += term
        values[j] = total
    rows, cols = shape
    out = np.zeros((count, rows * cols))
    for position, j in entries:
        out[:, position] = values[j]
    return out.reshape(count, rows, cols)
