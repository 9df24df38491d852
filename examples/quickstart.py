"""Solve a batch of P3P instances with the generated solver and backpropagate through it.

Run from the repository root:  python examples/quickstart.py
"""
import torch

import solvergen

# Generates generated/p3p.py from problems/p3p.py if it is missing or stale, then imports it.
solver = solvergen.load("problems/p3p.py")
print(f"{solver.__class__.__name__}: {solver.num_solutions} solutions of {solver.unknown_names}")

# A random scene: camera at the origin, three points in front of it.
torch.manual_seed(0)
batch = 4
points = torch.randn(batch, 3, 3, dtype=torch.float64)
points[..., 2] = points[..., 2].abs() + 2.0
depths = points[..., 2]
rays = points / depths.unsqueeze(-1)  # calibrated image points [u, v, 1]
params = torch.cat([points.reshape(batch, 9), rays.reshape(batch, 9)], dim=1).requires_grad_(True)

solutions, valid = solver(params)  # [4, 8, 3], [4, 8]
error = (solutions - depths.unsqueeze(1)).norm(dim=-1).masked_fill(~valid, float("inf"))
best = error.argmin(dim=1)
print("valid solutions per instance:", valid.sum(dim=1).tolist())
print("error of the best solution:  ", error.min(dim=1).values.tolist())

# Gradient of the picked depths with respect to the 18 parameters, by the implicit function theorem.
picked = solutions[torch.arange(batch), best]
picked.sum().backward()
print("d(sum of depths)/d(params) of instance 0:", params.grad[0].numpy().round(3).tolist())
