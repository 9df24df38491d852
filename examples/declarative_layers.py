"""Declarative layers in training code: an `Implicit` deep-equilibrium cell, an OptNet-style QP
`Argmin`, and `attach` for a solution computed elsewhere.

    python examples/declarative_layers.py

1. A deep-equilibrium cell (problems/tanh_fixed_point.py: y = tanh(W y + x)) learns W so that its
   fixed point matches the fixed point of a hidden teacher cell. The forward is damped Newton,
   the backward the implicit function theorem; the same gradient through `attach` from a plain
   fixed-point iteration.
2. A QP layer (problems/qp_layer.py) learns its linear cost p from examples of the teacher's
   solutions: the IFT on the KKT system of 2 equalities and 6 inequalities.
Each prints (and returns) its test loss before and after training (about 10 s on a CPU).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

import solvergen
from solvergen.spec import read_spec

ROOT = Path(__file__).resolve().parent.parent


def contraction(W):
    """W scaled to spectral norm 0.9: the fixed point exists and is unique."""
    return 0.9 * W / torch.linalg.matrix_norm(W, ord=2).clamp_min(0.9)


def fixed_point_iteration(W, x, steps=300):
    y = torch.zeros_like(x)
    for _ in range(steps):
        y = torch.tanh((W @ y.unsqueeze(-1)).squeeze(-1) + x)
    return y


def train_equilibrium_cell(steps=150):
    cell = solvergen.load(ROOT / "problems" / "tanh_fixed_point.py")
    g = torch.Generator().manual_seed(0)
    teacher = contraction(torch.randn(6, 6, dtype=torch.float64, generator=g))
    W = torch.nn.Parameter(0.1 * torch.randn(6, 6, dtype=torch.float64, generator=g))
    optimizer = torch.optim.Adam([W], lr=0.02)
    x_test = torch.randn(256, 6, dtype=torch.float64, generator=g)

    def loss_on(x, use_attach=False):
        params = torch.cat([contraction(W).flatten().expand(len(x), -1), x], -1)
        if use_attach:  # y_hat from any solver; the layer attaches the IFT gradient
            y = cell.attach(params, fixed_point_iteration(contraction(W).detach(), x))
        else:
            y, ok = cell(params)
            assert ok.all()
        return (y - fixed_point_iteration(teacher, x)).pow(2).mean()

    before = loss_on(x_test).item()
    for step in range(steps):
        x = torch.randn(64, 6, dtype=torch.float64, generator=g)
        loss = loss_on(x, use_attach=step % 2 == 1)  # alternate: the two gradients are the same
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = loss_on(x_test).item()
    print(f"equilibrium cell: test loss {before:.2e} -> {after:.2e}")
    return before, after


def train_qp_cost(steps=100):
    qp = solvergen.load(ROOT / "problems" / "qp_layer.py")
    problem = read_spec(ROOT / "problems" / "qp_layer.py").problem
    instance = torch.tensor(problem.sampler(random.Random(0)), dtype=torch.float64)
    Q, p_true, rest = instance[:64], instance[64:72], instance[72:]  # one feasible set, cost p to learn
    g = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
    optimizer = torch.optim.Adam([p], lr=0.05)

    def solve(cost, shift):
        # A batch of QPs: the learned cost, shifted per example (the input of this toy model).
        batch = len(shift)
        params = torch.cat([Q.expand(batch, -1), cost + shift, rest.expand(batch, -1)], -1)
        y, ok = qp(params)
        return y, ok

    def loss_on(shift):
        y, ok = solve(p, shift)
        target, _ = solve(p_true, shift)
        return ((y - target) ** 2)[ok].mean()

    shift_test = torch.randn(128, 8, dtype=torch.float64, generator=g)
    before = loss_on(shift_test).item()
    for _ in range(steps):
        loss = loss_on(torch.randn(32, 8, dtype=torch.float64, generator=g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = loss_on(shift_test).item()
    print(f"QP layer: test loss {before:.2e} -> {after:.2e}; cost error |p - p_true| {(p - p_true).norm().item():.2e}")
    return before, after


if __name__ == "__main__":
    train_equilibrium_cell()
    train_qp_cost()
