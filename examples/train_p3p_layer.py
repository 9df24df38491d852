"""A generated solver inside a training loop: learn to correct a systematic error of the
image rays so that P3P returns the true depths.

A small correction (a learned 3x3 matrix applied to every ray) is trained through the P3P
solver; the loss is the depth error of the solution closest to the ground truth. Gradients
reach the correction through the solver by the implicit function theorem.

Run from the repository root:  python examples/train_p3p_layer.py
"""
import torch

import solvergen

torch.manual_seed(0)
solver = solvergen.load("problems/p3p.py")

# Data: scenes whose rays were distorted by an unknown linear map (a miscalibration).
true_distortion = torch.tensor([[1.05, 0.02, 0.0], [-0.01, 0.97, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def batch_of_scenes(n):
    points = torch.randn(n, 3, 3, dtype=torch.float64)
    points[..., 2] = points[..., 2].abs() + 2.0
    rays = points / points[..., 2:3]
    return points, rays @ true_distortion.T, points[..., 2]


correction = torch.nn.Parameter(torch.eye(3, dtype=torch.float64))
optimizer = torch.optim.Adam([correction], lr=1e-2)
for step in range(201):
    points, observed, depths = batch_of_scenes(256)
    rays = observed @ correction.T
    params = torch.cat([points.reshape(-1, 9), rays.reshape(-1, 9)], dim=1)
    solutions, valid = solver(params)
    error = (solutions - depths.unsqueeze(1)).norm(dim=-1)
    pick = error.masked_fill(~valid, float("inf")).argmin(dim=1)
    usable = valid.any(dim=1)
    loss = error[torch.arange(len(pick)), pick][usable].mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step:3d}  depth error {loss.item():.4f}")
print("learned correction x distortion (should be close to identity):")
print((correction.detach() @ true_distortion).numpy().round(3))
