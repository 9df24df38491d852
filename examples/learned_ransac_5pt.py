"""Learned RANSAC with the generated 5-point solver in the loop (MinBackProp Section 6.2, on
synthetic scenes: no download).

Per scene: 128 tentative matches, 50% outliers. Each match has four normalised image
coordinates and a noisy "descriptor score" (outliers tend to score worse, as with a ratio
test). A small network with context normalisation (CNe) scores every match. A Gumbel-softmax
sampler (straight-through, without replacement) draws minimal samples of five matches. The
generated `relpose_5pt` module solves them. `Solver.select` keeps the solution closest to the
ground-truth E (up to sign, as in nabla-RANSAC / MinBackProp). The loss is the
expectation over a scene's hypotheses (weighted by their sampling probability, as in DSAC) of
a robust log(1 + d / scale) of the symmetric epipolar distance d of the selected E over the
true inliers (eq. 7 of MinBackProp).
Gradients reach the network through the solver (IFT or autograd) and the straight-through
sampler.

    python examples/learned_ransac_5pt.py                  # every backward mode, 10 seeds each
    python examples/learned_ransac_5pt.py --steps 20 --seeds 2

For each backward mode this records stable runs (no NaN/inf in the loss or the gradients),
backward time per step, and the final quality of the inlier scores (ROC AUC on held-out
scenes). The results go to benchmarks/results/learned_ransac_5pt.{json,md}, the analogue of
MinBackProp's Table 2.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

import solvergen

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Synthetic scenes
# ---------------------------------------------------------------------------------------------


def skew(t):
    zero = torch.zeros_like(t[..., 0])
    return torch.stack(
        [
            torch.stack([zero, -t[..., 2], t[..., 1]], -1),
            torch.stack([t[..., 2], zero, -t[..., 0]], -1),
            torch.stack([-t[..., 1], t[..., 0], zero], -1),
        ],
        dim=-2,
    )


def rotation(axis_angle):
    angle = axis_angle.norm(dim=-1, keepdim=True).unsqueeze(-1)
    K = skew(axis_angle / angle.squeeze(-1))
    return torch.eye(3, dtype=axis_angle.dtype) + angle.sin() * K + (1 - angle.cos()) * K @ K


def scenes(batch, matches, outlier_ratio, generator):
    """Matches [B, n, 4] (u1, v1, u2, v2), descriptor scores [B, n], inlier mask [B, n], E [B, 3, 3]."""
    d = torch.float64
    R = rotation(0.4 * torch.randn(batch, 3, dtype=d, generator=generator))
    t = torch.randn(batch, 3, dtype=d, generator=generator)
    t = t / t.norm(dim=-1, keepdim=True)
    X = torch.cat(
        [torch.rand(batch, matches, 2, dtype=d, generator=generator) * 3 - 1.5,
         torch.rand(batch, matches, 1, dtype=d, generator=generator) * 4 + 2], dim=-1)
    X2 = X @ R.transpose(1, 2) + t.unsqueeze(1)
    q1 = X[..., :2] / X[..., 2:]
    q2 = X2[..., :2] / X2[..., 2:]
    q1 = q1 + 1e-3 * torch.randn(q1.shape, dtype=d, generator=generator)
    q2 = q2 + 1e-3 * torch.randn(q2.shape, dtype=d, generator=generator)
    inlier = torch.rand(batch, matches, generator=generator) >= outlier_ratio
    fake = torch.rand(batch, matches, 2, dtype=d, generator=generator) * 1.2 - 0.6
    q2 = torch.where(inlier.unsqueeze(-1), q2, fake)
    score = torch.where(inlier, 0.3, 0.7) + 0.35 * torch.randn(batch, matches, dtype=d, generator=generator)
    return torch.cat([q1, q2], dim=-1), score, inlier, skew(t) @ R


# ---------------------------------------------------------------------------------------------
# Network, sampler, loss
# ---------------------------------------------------------------------------------------------


class ContextNormalization(torch.nn.Module):
    def forward(self, x):  # [B, n, c]
        return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-5)


class Scorer(torch.nn.Module):
    """Per-match logits from (u1, v1, u2, v2, descriptor score), with context normalisation."""

    def __init__(self, width=32):
        super().__init__()
        layers = [torch.nn.Linear(5, width)]
        for _ in range(3):
            layers += [ContextNormalization(), torch.nn.ReLU(), torch.nn.Linear(width, width)]
        layers += [ContextNormalization(), torch.nn.ReLU(), torch.nn.Linear(width, 1)]
        self.net = torch.nn.Sequential(*layers).double()

    def forward(self, matches, score):
        return self.net(torch.cat([matches, score.unsqueeze(-1)], dim=-1)).squeeze(-1)


def sample_minimal(logits, hypotheses, size, generator, tau=1.0):
    """Straight-through Gumbel-softmax, `size` draws without replacement per hypothesis.

    Returns selection weights [B, H, size, n] (one-hot forward, soft gradient backward) and the
    log-probability [B, H] of each drawn sample under the scores."""
    batch, n = logits.shape
    logits = logits.unsqueeze(1).expand(batch, hypotheses, n)
    taken = torch.zeros(batch, hypotheses, n, dtype=torch.bool)
    picks = []
    log_probability = torch.zeros(batch, hypotheses, dtype=logits.dtype)
    for _ in range(size):
        u = torch.rand(batch, hypotheses, n, dtype=logits.dtype, generator=generator).clamp(1e-12, 1 - 1e-12)
        noisy = (logits - torch.log(-torch.log(u))) / tau
        noisy = noisy.masked_fill(taken, -math.inf)
        soft = torch.softmax(noisy, dim=-1)
        hard = torch.nn.functional.one_hot(soft.argmax(dim=-1), n).to(soft.dtype)
        picks.append(hard + soft - soft.detach())
        remaining = torch.log_softmax(logits.masked_fill(taken, -math.inf), dim=-1)
        log_probability = log_probability + (remaining * hard).nan_to_num().sum(-1)
        taken = taken | hard.bool()
    return torch.stack(picks, dim=2), log_probability


def symmetric_epipolar(E, matches, inlier):
    """Mean symmetric epipolar distance of E [B, H, 3, 3] over the inliers (eq. 7 of MinBackProp)."""
    ones = torch.ones_like(matches[..., :1])
    x1 = torch.cat([matches[..., :2], ones], dim=-1).unsqueeze(1)  # [B, 1, n, 3]
    x2 = torch.cat([matches[..., 2:], ones], dim=-1).unsqueeze(1)
    l2 = x1 @ E.transpose(-1, -2)  # E x1: epipolar lines in image 2
    l1 = x2 @ E  # E^T x2
    algebraic = (x2 * l2).sum(-1)
    distance = algebraic**2 * (1 / (l1[..., :2].pow(2).sum(-1) + 1e-12) + 1 / (l2[..., :2].pow(2).sum(-1) + 1e-12))
    weight = inlier.unsqueeze(1).to(distance.dtype)
    return (distance * weight).sum(-1) / weight.sum(-1)


def roc_auc(logits, inlier):
    """Probability that a random inlier scores above a random outlier."""
    scores, labels = logits.flatten().detach().numpy(), inlier.flatten().numpy()
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

# Backward modes: the solver options of each.
MODES = {
    "ift": dict(backward="ift"),
    "ift-compiled": dict(backward="ift", compile=True),  # the first steps compile
    "autograd": dict(backward="autograd"),
}


def train(seed, backward, args):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    solver = solvergen.load(ROOT / "problems" / "relpose_5pt.py", out_dir=ROOT / "generated",
                            **MODES[backward])
    scorer = Scorer()
    optimizer = torch.optim.Adam(scorer.parameters(), lr=args.lr)
    backward_times, failure = [], None
    for step in range(args.steps):
        matches, score, inlier, E_true = scenes(args.batch, args.matches, args.outliers, generator)
        logits = scorer(matches, score)
        weights, log_probability = sample_minimal(logits, args.hypotheses, 5, generator)  # [B, H, 5, n]
        sample = weights @ matches.unsqueeze(1)  # [B, H, 5, 4], differentiable wrt the logits
        params = torch.cat([sample[..., :2].flatten(-2), sample[..., 2:].flatten(-2)], dim=-1)
        solutions, valid = solver(params)  # [B, H, 10, 9]
        reference = (E_true / E_true.norm(dim=(-2, -1), keepdim=True)).flatten(-2).unsqueeze(1)
        picked, found = solver.select(solutions, valid, reference=reference.expand(-1, args.hypotheses, -1))
        errors = symmetric_epipolar(picked.view(*picked.shape[:-1], 3, 3), matches, inlier)
        # Expected robust loss over each scene's hypotheses (DSAC): weights from the samples'
        # probabilities; the gradient also flows through the solver into the sampled points.
        robust = torch.log1p(errors / args.scale)
        weight = torch.softmax(log_probability.masked_fill(~found, -math.inf), dim=-1).nan_to_num()
        loss = (weight * torch.where(found, robust, torch.zeros_like(robust))).sum(-1).mean()
        optimizer.zero_grad()
        start = time.perf_counter()
        try:
            loss.backward()
        except RuntimeError as exc:  # e.g. a linalg error inside autograd's backward
            failure = f"step {step}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            break
        backward_times.append(time.perf_counter() - start)
        grads = torch.cat([p.grad.flatten() for p in scorer.parameters()])
        if not (torch.isfinite(loss) and torch.isfinite(grads).all()):
            failure = f"step {step}: non-finite {'loss' if not torch.isfinite(loss) else 'gradient'}"
            break
        optimizer.step()
    evaluation = torch.Generator().manual_seed(10_000 + seed)
    matches, score, inlier, _ = scenes(64, args.matches, args.outliers, evaluation)
    with torch.no_grad():
        auc = roc_auc(scorer(matches, score), inlier)
    return {
        "seed": seed,
        "stable": failure is None,
        "failure": failure,
        "steps": len(backward_times),
        # Median over steps: the steady state (a compiled solver's first steps compile).
        "backward_ms_per_step": 1e3 * float(np.median(backward_times)) if backward_times else None,
        "backward_ms_mean": 1e3 * float(np.mean(backward_times)) if backward_times else None,
        "auc": auc,
    }


def summarize(runs):
    times = [r["backward_ms_per_step"] for r in runs if r["backward_ms_per_step"] is not None]
    stable = [r for r in runs if r["stable"]]
    return {
        "stable_runs_percent": 100.0 * len(stable) / len(runs),
        "backward_ms_per_step": float(np.median(times)) if times else None,
        "auc_stable_runs_mean": float(np.mean([r["auc"] for r in stable])) if stable else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch", type=int, default=8, help="scenes per step")
    parser.add_argument("--hypotheses", type=int, default=16, help="minimal samples per scene")
    parser.add_argument("--matches", type=int, default=128)
    parser.add_argument("--outliers", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--scale", type=float, default=1e-4, help="loss = log(1 + error / scale)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    results = {}
    modes = args.modes.split(",")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    for mode in modes:
        runs = []
        for seed in range(args.seeds):
            run = train(seed, mode, args)
            runs.append(run)
            status = "ok" if run["stable"] else f"FAILED ({run['failure']})"
            ms = run["backward_ms_per_step"]
            print(f"{mode:12s} seed {seed}: {status}, backward {ms:.1f} ms/step, AUC {run['auc']:.3f}"
                  if ms is not None else f"{mode:12s} seed {seed}: {status}", flush=True)
        results[mode] = {"runs": runs, **summarize(runs)}

    settings = {k: v for k, v in vars(args).items() if k != "out"}
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "solvergen": solvergen.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learned_ransac_5pt.json").write_text(json.dumps({"settings": settings, "machine": machine, "results": results}, indent=2) + "\n")
    lines = [
        "# Learned RANSAC, 5-point (synthetic analogue of MinBackProp Table 2)",
        "",
        f"Machine: {machine['cpu']}, {machine['threads']} threads; Python {machine['python']}, "
        f"torch {machine['torch']}, solvergen {machine['solvergen']}; {machine['date']}.",
        f"Settings: {settings}.",
        "",
        "| backward | stable runs (%) | backward time per step (ms; median over steps, then over runs) | inlier-score AUC (stable runs) |",
        "| --- | --- | --- | --- |",
    ]
    for mode, summary in results.items():
        ms = summary["backward_ms_per_step"]
        auc = summary["auc_stable_runs_mean"]
        lines.append(f"| {mode} | {summary['stable_runs_percent']:.0f} | {ms:.1f} | {auc:.3f} |"
                     if ms is not None and auc is not None else f"| {mode} | {summary['stable_runs_percent']:.0f} | - | - |")
    failures = [f"- {mode} seed {r['seed']}: {r['failure']}" for mode, s in results.items() for r in s["runs"] if not r["stable"]]
    if failures:
        lines += ["", "Failures:", *failures]
    (out / "learned_ransac_5pt.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
