"""MinBackProp, Section 6.1: learn outlier-rejection weights for 3D point registration.

Four random 3D points p_i, their images q_i = R_true p_i (R_true = I, as in the paper) with one
correspondence corrupted. Per-point weights w (initialised to 1/N) define the rotation
R(w) = argmin_R sum_i w_i ||R p_i - q_i||^2 (Wahba's problem), solved in the forward by the
Kabsch algorithm (SVD). The upper loss is the angle of R(w) R_true^T; w is trained by gradient
descent (learning rate 0.1, 30 steps, weights kept non-negative). Three backward passes through
the same forward:

- "svd": autograd through torch.linalg.svd (the closed-form SVD derivatives);
- "ift": solvergen. examples/specs/horn_rotation.py writes the same rotation as Horn's
  quaternion eigenproblem N(M) q = lam q, |q| = 1 (M = sum_i w_i p_i q_i^T); the generated
  solver returns its eigenpairs, the largest lam is picked, and its backward is the implicit
  function theorem on those equations (nothing differentiated through an eigendecomposition);
- "ddn": the generic dense IFT of the DDN library (Gould et al.) on the KKT system of
  min_R f(w, R) s.t. R^T R = I: Hessians and mixed derivatives by autograd, one linear solve.

Each method trains its own weights; at every step of the IFT run, the three gradients are also
compared on the same weights. Writes benchmarks/results/registration_toy.{png,md,json}.

Run from the repository root:  python examples/registration_toy.py
"""
from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import solvergen

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STEPS, LEARNING_RATE, OUTLIER, CORRUPTION = 30, 0.1, 0, 0.3
DTYPE = torch.float64

solver = solvergen.load(ROOT / "examples" / "specs" / "horn_rotation.py", out_dir=tempfile.mkdtemp())


def scene(seed: int = 0):
    """Four random points, R_true = I, the first correspondence moved by CORRUPTION * N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(4, 3, generator=g, dtype=DTYPE)
    q = p.clone()
    q[OUTLIER] = p[OUTLIER] + CORRUPTION * torch.randn(3, generator=g, dtype=DTYPE)
    return p, q


def cross_covariance(w, p, q):
    """M = sum_i w_i p_i q_i^T."""
    return torch.einsum("i,ij,ik->jk", w, p, q)


def kabsch(M):
    """argmax_R tr(R M) over rotations (= argmin sum_i w_i ||R p_i - q_i||^2): R = V D U^T."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(Vh.T @ U.T))
    D = torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d]))
    return Vh.T @ D @ U.T


def quaternion_rotation(x):
    a, b, c, d = x
    return torch.stack([
        torch.stack([a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)]),
        torch.stack([2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)]),
        torch.stack([2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]),
    ])


def rotation_ift(M):
    """The same rotation through the generated Horn solver (IFT backward)."""
    solutions, valid = solver(M.reshape(1, 9))
    lam = solutions[0, :, 4].masked_fill(~valid[0], -float("inf"))
    return quaternion_rotation(solutions[0, lam.argmax(), :4])


def rotation_ddn(M):
    """Kabsch forward; backward by the DDN generic method on the KKT system of
    min_R -tr(R M) s.t. R^T R = I (the same minimiser as f up to terms free of R)."""
    return _DDNRotation.apply(M)


def _objective(y, M):
    return -torch.trace(y.reshape(3, 3) @ M)


def _constraints(y):
    R = y.reshape(3, 3)
    C = R.T @ R - torch.eye(3, dtype=y.dtype)
    rows, cols = torch.triu_indices(3, 3)
    return C[rows, cols]  # 6 independent constraints


class _DDNRotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, M):
        R = kabsch(M.detach())
        ctx.save_for_backward(R, M.detach())
        return R

    @staticmethod
    def backward(ctx, grad):
        R, M = ctx.saved_tensors
        y = R.reshape(9)
        A = torch.autograd.functional.jacobian(_constraints, y)  # [6, 9]
        gf = torch.autograd.functional.jacobian(lambda v: _objective(v, M), y)  # [9]
        nu = torch.linalg.lstsq(A.T, -gf.unsqueeze(-1)).solution.squeeze(-1)  # stationarity multipliers

        def lagrangian(v):
            return _objective(v, M) + nu @ _constraints(v)

        H = torch.autograd.functional.hessian(lagrangian, y)  # [9, 9]
        B = torch.autograd.functional.jacobian(
            lambda m: torch.autograd.functional.jacobian(lambda v: _objective(v, m.reshape(3, 3)), y,
                                                         create_graph=True), M.reshape(9))  # [9, 9]
        kkt = torch.cat([torch.cat([H, A.T], 1), torch.cat([A, A.new_zeros(6, 6)], 1)], 0)
        rhs = -torch.cat([B, B.new_zeros(6, 9)], 0)
        dy = torch.linalg.solve(kkt, rhs)[:9]  # dR/dM [9, 9]
        return (grad.reshape(1, 9) @ dy).reshape(3, 3)


ROTATIONS = {"svd": kabsch, "ift": rotation_ift, "ddn": rotation_ddn}


def angle(R):
    """J = arccos((tr(R R_true^T) - 1) / 2) with R_true = I."""
    return torch.arccos(((torch.trace(R) - 1) / 2).clamp(-1 + 1e-15, 1 - 1e-15))


def gradient(method, w, p, q):
    """J and dJ/dw for one method, and the time of its backward."""
    w = w.detach().requires_grad_(True)
    loss = angle(ROTATIONS[method](cross_covariance(w, p, q)))
    start = time.perf_counter()
    loss.backward()
    return loss.item(), w.grad, time.perf_counter() - start


def train(method, p, q):
    w = torch.full((len(p),), 1 / len(p), dtype=DTYPE)
    history, times = [w.tolist()], []
    for _ in range(STEPS):
        _, g, seconds = gradient(method, w, p, q)
        times.append(seconds)
        w = (w - LEARNING_RATE * g).clamp_min(0.0)
        history.append(w.tolist())
    return history, times


def main() -> None:
    p, q = scene()
    runs = {method: train(method, p, q) for method in ROTATIONS}
    # Gradient agreement at every step of the IFT run, all three methods on the same weights.
    agreement = []
    for weights in runs["ift"][0][:-1]:
        w = torch.tensor(weights, dtype=DTYPE)
        grads = {m: gradient(m, w, p, q)[1] for m in ROTATIONS}
        singular = torch.linalg.svdvals(cross_covariance(w, p, q))
        scale = grads["svd"].norm().clamp_min(1e-300)
        agreement.append(dict(
            ift_vs_svd=((grads["ift"] - grads["svd"]).norm() / scale).item(),
            ddn_vs_svd=((grads["ddn"] - grads["svd"]).norm() / scale).item(),
            singular_gap=(singular[1] - singular[2]).item() / singular[0].item(),
        ))
    final_angle = {m: angle(kabsch(cross_covariance(torch.tensor(runs[m][0][-1], dtype=DTYPE), p, q))).item()
                   for m in ROTATIONS}
    median_ms = {m: 1e3 * sorted(runs[m][1])[len(runs[m][1]) // 2] for m in ROTATIONS}
    record = dict(
        machine=dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__),
        steps=STEPS, learning_rate=LEARNING_RATE, outlier=OUTLIER,
        weights={m: runs[m][0] for m in ROTATIONS}, backward_ms_median=median_ms,
        final_angle_rad=final_angle, agreement=agreement,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "registration_toy.json").write_text(json.dumps(record, indent=1))
    worst_ift = max(a["ift_vs_svd"] for a in agreement)
    worst_ddn = max(a["ddn_vs_svd"] for a in agreement)
    lines = [
        "# MinBackProp Section 6.1: registration with an outlier (examples/registration_toy.py)", "",
        f"{record['machine']['platform']}, python {record['machine']['python']}, torch {torch.__version__}; "
        f"{STEPS} steps of gradient descent, learning rate {LEARNING_RATE}, 4 points, point {OUTLIER} the outlier.", "",
        "| backward | outlier weight after training | inlier weights after training | final angle (rad) | backward, median ms per step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, label in (("svd", "autograd through SVD"), ("ift", "solvergen IFT (Horn eigenproblem)"),
                     ("ddn", "DDN generic dense IFT")):
        final = runs[m][0][-1]
        inliers = ", ".join(f"{v:.3f}" for i, v in enumerate(final) if i != OUTLIER)
        lines.append(f"| {label} | {final[OUTLIER]:.2e} | {inliers} | {final_angle[m]:.2e} | {median_ms[m]:.2f} |")
    lines += ["", "Gradient agreement at every step of the IFT run (relative to the SVD gradient, same weights): "
              f"IFT worst {worst_ift:.1e}, DDN worst {worst_ddn:.1e}; smallest relative gap between the two "
              f"smallest singular values of M: {min(a['singular_gap'] for a in agreement):.2e}.", "",
              "![weights over the iterations](registration_toy.png)"]
    (RESULTS / "registration_toy.md").write_text("\n".join(lines) + "\n")
    plot(runs)
    print("\n".join(lines))


def plot(runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    styles = {"svd": ("tab:red", "-", "SVD (autograd)"), "ift": ("tab:green", "--", "IFT (solvergen)"),
              "ddn": ("tab:blue", ":", "DDN (dense IFT)")}
    for ax, index, title in ((axes[0], OUTLIER, "outlier weight"), (axes[1], OUTLIER + 1, "an inlier's weight")):
        for m, (color, style, label) in styles.items():
            ax.plot([w[index] for w in runs[m][0]], color=color, linestyle=style, label=label, linewidth=2)
        ax.set_xlabel("iteration")
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "registration_toy.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
