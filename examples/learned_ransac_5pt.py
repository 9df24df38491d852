"""Learned RANSAC with the generated 5-point solver in the loop: MinBackProp's Section 6.2 on
synthetic scenes (no download), with the paper's metric (Table 1) and stability table (Table 2).

Scenes. Two calibrated views of random points; per scene 128 tentative matches, most of them
outliers (75% by default: a random point in the second image). Each match comes with a
"descriptor score" (lower is better, like a ratio test) that separates inliers from outliers
only weakly. What separates them well is geometry: the inliers move with the scene's single
relative motion and the outliers do not. The network has to learn to see that.

Training (the nabla-RANSAC pipeline, as in MinBackProp). A small network with context
normalisation (CNe) scores every match from its coordinates and descriptor score. A
straight-through Gumbel-softmax sampler draws minimal samples of five matches. The generated
`relpose_5pt` solver solves them. `Solver.select` keeps the solution closest to the true E (up to
sign). The loss is the expectation over a scene's hypotheses, weighted by their sampling
probability, of a robust log(1 + d / scale) of the symmetric epipolar distance d of the selected
E over the true inliers (eq. 7 of MinBackProp). Gradients reach the network through the solver
(backward="ift" or "autograd") and the sampler.

Evaluation (Table 1's metric). Per held-out scene: a RANSAC of `--ransac-hypotheses` minimal
samples drawn from the scores (Gumbel top-k: without replacement, probabilities softmax(logits)),
the generated solver on each, the MSAC score (truncated Sampson error) over all matches to pick
the model. The chosen E is decomposed by SVD, its (R, t) chosen by cheirality on its inliers;
the error is max(rotation angle error, translation direction angle error) and the metric the
AUC of its recall curve up to 5, 10 and 20 degrees. The same RANSAC samples uniformly, by the
raw descriptor score (softmax(-score / T), T tuned on training scenes) and by the untrained
network: the baselines.

    python examples/learned_ransac_5pt.py          # --quick (default): a few minutes
    python examples/learned_ransac_5pt.py --full   # 10 seeds x 1000 steps x 3 backward modes

Backward modes: "ift" and "autograd" (the same forward, real solutions only), and
"autograd-real-parts": autograd through a forward that keeps the real parts of complex roots
(no solution dropped: imag_tol and residual_tol infinite), the nabla-RANSAC* setting of
MinBackProp's Table 2. Results: benchmarks/results/learned_ransac_5pt.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import solvergen

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "problems" / "relpose_5pt.py"
DTYPE = torch.float64
THRESHOLDS = (5, 10, 20)  # pose AUC thresholds, degrees

# Backward modes: the solver options of each.
MODES = {
    "ift": dict(backward="ift"),
    "autograd": dict(backward="autograd"),
    "autograd-real-parts": dict(backward="autograd", imag_tol=math.inf, residual_tol=math.inf),
    "ift-compiled": dict(backward="ift", compile=True),  # not in the defaults: first steps compile
}
DEFAULT_MODES = ("ift", "autograd", "autograd-real-parts")

# Which part of the loss's gradient does the learning (backward="ift"): the loss options of each.
ABLATIONS = {
    "score function only": dict(solver_weight=0.0, score_function=True),
    "solver path only": dict(solver_weight=1.0, score_function=False),
}

SETTINGS = {
    "quick": dict(seeds=2, steps=500, eval_every=100, test_scenes=256, ablation_seeds=1, modes=("ift", "autograd")),
    "full": dict(seeds=10, steps=1000, eval_every=100, test_scenes=512, ablation_seeds=3, modes=DEFAULT_MODES),
}


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
    """Rodrigues: [..., 3] -> [..., 3, 3]."""
    angle = axis_angle.norm(dim=-1, keepdim=True).unsqueeze(-1)
    K = skew(axis_angle / angle.squeeze(-1))
    eye = torch.eye(3, dtype=axis_angle.dtype)
    return eye + angle.sin() * K + (1 - angle.cos()) * K @ K


@dataclass
class Scenes:
    matches: torch.Tensor  # [B, n, 4]: u1, v1, u2, v2 (normalised image coordinates)
    descriptor: torch.Tensor  # [B, n]: lower is better
    inlier: torch.Tensor  # [B, n] bool
    R: torch.Tensor  # [B, 3, 3]: x2 ~ R x1 + t
    t: torch.Tensor  # [B, 3], unit

    @property
    def E(self):
        return skew(self.t) @ self.R


def scenes(count, args, generator):
    """`count` synthetic two-view scenes (see the module docstring)."""
    n = args.matches
    R = rotation(args.rotation * torch.randn(count, 3, dtype=DTYPE, generator=generator))
    t = torch.randn(count, 3, dtype=DTYPE, generator=generator)
    t = t / t.norm(dim=-1, keepdim=True)
    X = torch.cat(
        [torch.rand(count, n, 2, dtype=DTYPE, generator=generator) * 3 - 1.5,
         torch.rand(count, n, 1, dtype=DTYPE, generator=generator) * 4 + 4], dim=-1)
    X2 = X @ R.transpose(1, 2) + t.unsqueeze(1)
    q1 = X[..., :2] / X[..., 2:]
    q2 = X2[..., :2] / X2[..., 2:]
    q1 = q1 + args.noise * torch.randn(q1.shape, dtype=DTYPE, generator=generator)
    q2 = q2 + args.noise * torch.randn(q2.shape, dtype=DTYPE, generator=generator)
    inlier = torch.rand(count, n, generator=generator) >= args.outliers
    # An outlier matches a random point of the second image's field of view.
    fake = (torch.rand(count, n, 2, dtype=DTYPE, generator=generator) * 2 - 1) * q2.abs().amax(dim=1, keepdim=True)
    q2 = torch.where(inlier.unsqueeze(-1), q2, fake)
    mean = torch.where(inlier, 0.0, args.descriptor_gap)
    descriptor = mean + torch.randn(count, n, dtype=DTYPE, generator=generator)
    return Scenes(torch.cat([q1, q2], dim=-1), descriptor, inlier, R, t)


# ---------------------------------------------------------------------------------------------
# Network, sampler, loss
# ---------------------------------------------------------------------------------------------


class ContextNormalization(torch.nn.Module):
    def forward(self, x):  # [B, n, c]
        return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-5)


class Scorer(torch.nn.Module):
    """Per-match logits from (u1, v1, u2, v2, descriptor score), with context normalisation."""

    def __init__(self, width=32, depth=4):
        super().__init__()
        layers = [torch.nn.Linear(5, width)]
        for _ in range(depth - 1):
            layers += [ContextNormalization(), torch.nn.ReLU(), torch.nn.Linear(width, width)]
        layers += [ContextNormalization(), torch.nn.ReLU(), torch.nn.Linear(width, 1)]
        self.net = torch.nn.Sequential(*layers).double()

    def forward(self, matches, descriptor):
        return self.net(torch.cat([matches, descriptor.unsqueeze(-1)], dim=-1)).squeeze(-1)


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


def solver_inputs(sample):
    """Minimal samples [..., 5, 4] -> the solver's parameters [..., 20] (the five q, then the five q')."""
    return torch.cat([sample[..., :2].flatten(-2), sample[..., 2:].flatten(-2)], dim=-1)


def homogeneous(points):
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


def symmetric_epipolar(E, matches):
    """Symmetric epipolar distance of each match for each E: E [B, H, 3, 3], matches [B, n, 4]
    -> [B, H, n] (eq. 7 of MinBackProp, before the mean)."""
    x1 = homogeneous(matches[..., :2]).unsqueeze(1)  # [B, 1, n, 3]
    x2 = homogeneous(matches[..., 2:]).unsqueeze(1)
    l2 = x1 @ E.transpose(-1, -2)  # E x1: epipolar lines in image 2
    l1 = x2 @ E  # E^T x2
    algebraic = (x2 * l2).sum(-1)
    return algebraic**2 * (1 / (l1[..., :2].pow(2).sum(-1) + 1e-12) + 1 / (l2[..., :2].pow(2).sum(-1) + 1e-12))


def sampson(E, matches):
    """Squared Sampson distance, E [B, H, 3, 3], matches [B, n, 4] -> [B, H, n]."""
    x1 = homogeneous(matches[..., :2]).unsqueeze(1)
    x2 = homogeneous(matches[..., 2:]).unsqueeze(1)
    l2 = x1 @ E.transpose(-1, -2)
    l1 = x2 @ E
    algebraic = (x2 * l2).sum(-1)
    return algebraic**2 / (l1[..., :2].pow(2).sum(-1) + l2[..., :2].pow(2).sum(-1)).clamp_min(1e-30)


class SolverBackwardTimer:
    """The time the backward spends inside the solver: from the gradient reaching its solutions
    to the gradient reaching its parameters (tensor hooks; the solver's parameters feed nothing
    else, so their hook fires when the solver's part of the graph is done)."""

    def __init__(self):
        self.start = self.end = None

    def attach(self, params, solutions):
        if params.requires_grad:
            solutions.register_hook(self._started)
            params.register_hook(self._ended)

    def _started(self, grad):
        if self.start is None:
            self.start = time.perf_counter()

    def _ended(self, grad):
        self.end = time.perf_counter()

    @property
    def seconds(self):
        return None if self.start is None or self.end is None else self.end - self.start


def training_loss(scorer, solver, batch, args, generator, timer=None):
    """The expected robust epipolar loss of one batch of training scenes (see the docstring);
    `timer` (a SolverBackwardTimer) is attached to the solver's input and output."""
    logits = scorer(batch.matches, batch.descriptor)
    weights, log_probability = sample_minimal(logits, args.hypotheses, 5, generator)  # [B, H, 5, n]
    sample = weights @ batch.matches.unsqueeze(1)  # [B, H, 5, 4], differentiable wrt the logits
    params = solver_inputs(sample)
    solutions, valid = solver(params)  # [B, H, 10, 9]
    if timer is not None:
        timer.attach(params, solutions)
    E_true = batch.E
    reference = (E_true / E_true.norm(dim=(-2, -1), keepdim=True)).flatten(-2).unsqueeze(1)
    picked, found = solver.select(solutions, valid, reference=reference.expand(-1, args.hypotheses, -1))
    distance = symmetric_epipolar(picked.view(*picked.shape[:-1], 3, 3), batch.matches)
    inlier = batch.inlier.unsqueeze(1).to(distance.dtype)
    errors = (distance * inlier).sum(-1) / inlier.sum(-1)
    robust = torch.where(found, torch.log1p(errors / args.scale), torch.full_like(errors, args.no_solution_loss))
    # The gradient of the expected loss over the sampling distribution has two parts: through
    # the solver into the sampled points (straight-through; weighted by `solver_weight`), and the
    # score function (REINFORCE), with the mean of the scene's other hypotheses as baseline.
    loss = args.solver_weight * robust
    if args.score_function:
        others = (robust.sum(-1, keepdim=True) - robust) / (robust.shape[-1] - 1)
        loss = loss + (robust - others).detach() * log_probability
    return loss.mean()


# ---------------------------------------------------------------------------------------------
# Evaluation: RANSAC, decomposition of E, pose AUC
# ---------------------------------------------------------------------------------------------


def draw_samples(logits, hypotheses, size, generator):
    """Gumbel top-k: `hypotheses` samples of `size` distinct matches per scene, each drawn
    without replacement with probabilities softmax(logits). [B, n] -> indices [B, H, size]."""
    batch, n = logits.shape
    u = torch.rand(batch, hypotheses, n, dtype=DTYPE, generator=generator).clamp(1e-12, 1 - 1e-12)
    keys = logits.unsqueeze(1).to(DTYPE) - torch.log(-torch.log(u))
    return keys.topk(size, dim=-1).indices


def ransac(solver, matches, logits, args, generator):
    """Best E [B, 3, 3] by MSAC over `args.ransac_hypotheses` minimal samples drawn from the
    logits, and whether any hypothesis had a solution [B]."""
    batch, n, _ = matches.shape
    index = draw_samples(logits, args.ransac_hypotheses, 5, generator)  # [B, H, 5]
    sample = matches.unsqueeze(1).expand(-1, index.shape[1], -1, -1).gather(
        2, index.unsqueeze(-1).expand(-1, -1, -1, 4))
    solutions, valid = solver(solver_inputs(sample))  # [B, H, 10, 9]
    E = solutions.reshape(batch, -1, 3, 3)  # [B, H * 10, 3, 3]
    valid = valid.reshape(batch, -1)
    threshold = args.threshold**2
    cost = sampson(E, matches).clamp_max(threshold).sum(-1)  # MSAC
    cost = torch.where(valid, cost, torch.full_like(cost, math.inf))
    best = cost.argmin(dim=-1)
    return E[torch.arange(batch), best], valid.any(dim=-1)


def decompose(E, matches, inliers):
    """(R, t) of E [B, 3, 3] by SVD, the one of the four with the most of `inliers` [B, n]
    triangulated in front of both cameras (cheirality). -> R [B, 3, 3], t [B, 3]."""
    U, _, Vh = torch.linalg.svd(E)
    U = U * torch.linalg.det(U).sign().view(-1, 1, 1)
    Vh = Vh * torch.linalg.det(Vh).sign().view(-1, 1, 1)
    W = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=E.dtype)
    x1 = homogeneous(matches[..., :2])  # [B, n, 3]
    x2 = homogeneous(matches[..., 2:])
    candidates = []
    for R in (U @ W @ Vh, U @ W.T @ Vh):
        for t in (U[..., 2], -U[..., 2]):
            # Depths d1, d2 of d2 x2 = d1 R x1 + t, least squares: [R x1, -x2] [d1, d2]^T = -t.
            a = x1 @ R.transpose(1, 2)  # R x1, [B, n, 3]
            b = -x2
            aa, ab, bb = (a * a).sum(-1), (a * b).sum(-1), (b * b).sum(-1)
            at, bt = -(a * t.unsqueeze(1)).sum(-1), -(b * t.unsqueeze(1)).sum(-1)
            det = aa * bb - ab * ab
            d1 = (bb * at - ab * bt) / det
            d2 = (aa * bt - ab * at) / det
            in_front = ((d1 > 0) & (d2 > 0) & inliers).sum(-1)
            candidates.append((in_front, R, t))
    count = torch.stack([c[0] for c in candidates], dim=-1)  # [B, 4]
    best = count.argmax(dim=-1)
    R = torch.stack([c[1] for c in candidates], dim=1)[torch.arange(len(E)), best]
    t = torch.stack([c[2] for c in candidates], dim=1)[torch.arange(len(E)), best]
    return R, t


def pose_errors(R, t, R_true, t_true):
    """max(rotation angle error, translation direction angle error) in degrees [B]; the
    translation error ignores the sign of t, as E does not fix it (OANet's convention)."""
    cos_r = ((R @ R_true.transpose(1, 2)).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    rotation_error = torch.rad2deg(torch.arccos(cos_r.clamp(-1, 1)))
    cos_t = (t * t_true).sum(-1).abs() / (t.norm(dim=-1) * t_true.norm(dim=-1))
    translation_error = torch.rad2deg(torch.arccos(cos_t.clamp(-1, 1)))
    return torch.maximum(rotation_error, translation_error)


def pose_auc(errors, thresholds=THRESHOLDS):
    """Area under the recall curve of `errors` (degrees) up to each threshold T, divided by T:
    {"5": ..., "10": ..., "20": ...}. The empirical recall curve is a step function, so the area
    is exactly the mean of max(0, 1 - error / T). (SuperGlue's code interpolates the curve
    linearly between the sorted errors, which differs by O(1 / number of scenes).)"""
    errors = np.asarray(errors, dtype=float)
    return {str(threshold): float(np.clip(1 - errors / threshold, 0, 1).mean()) for threshold in thresholds}


def evaluate(logits_of, test, solver, args, seed):
    """Pose AUC of RANSAC sampling by `logits_of(matches, descriptor)` on the scenes `test`;
    the RANSAC's random draws come from `seed`, the same for every method."""
    generator = torch.Generator().manual_seed(seed)
    errors = []
    with torch.no_grad():
        for start in range(0, len(test.matches), args.eval_chunk):
            part = slice(start, start + args.eval_chunk)
            matches = test.matches[part]
            logits = logits_of(matches, test.descriptor[part])
            E, found = ransac(solver, matches, logits, args, generator)
            inliers = sampson(E.unsqueeze(1), matches).squeeze(1) <= args.threshold**2
            R, t = decompose(E, matches, inliers)
            error = pose_errors(R, t, test.R[part], test.t[part])
            errors.append(torch.where(found, error, torch.full_like(error, 180.0)).nan_to_num(180.0))
    return pose_auc(torch.cat(errors).numpy())


def network_logits(scorer):
    def logits_of(matches, descriptor):
        scorer.eval()
        try:
            return scorer(matches, descriptor)
        finally:
            scorer.train()
    return logits_of


def descriptor_logits(temperature):
    return lambda matches, descriptor: -descriptor / temperature


def uniform_logits(matches, descriptor):
    return torch.zeros_like(descriptor)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def new_scorer(seed):
    torch.manual_seed(seed)
    return Scorer()


def train(seed, mode, args, validation, evaluation_solver, **loss_options):
    """Train one scorer; returns the run's record and the trained scorer. `loss_options`
    override the loss's settings (`solver_weight`, `score_function`)."""
    args = argparse.Namespace(**{**vars(args), **loss_options})
    generator = torch.Generator().manual_seed(seed)
    solver = solvergen.load(SPEC, out_dir=ROOT / "generated", **MODES[mode])
    scorer = new_scorer(seed)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=args.lr)
    backward_times, solver_times, step_times, curve, failure = [], [], [], [], None
    for step in range(args.steps):
        if step % args.eval_every == 0:
            curve.append({"step": step, "pose_auc": evaluate(network_logits(scorer), validation, evaluation_solver, args, 1)})
        start = time.perf_counter()
        batch = scenes(args.batch, args, generator)
        timer = SolverBackwardTimer()
        loss = training_loss(scorer, solver, batch, args, generator, timer)
        optimizer.zero_grad()
        backward_start = time.perf_counter()
        try:
            loss.backward()
        except RuntimeError as exc:  # e.g. a linalg error inside autograd's backward
            failure = f"step {step}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            break
        backward_times.append(time.perf_counter() - backward_start)
        if timer.seconds is not None:
            solver_times.append(timer.seconds)
        grads = torch.cat([p.grad.flatten() for p in scorer.parameters()])
        if not (torch.isfinite(loss) and torch.isfinite(grads).all()):
            failure = f"step {step}: non-finite {'loss' if not torch.isfinite(loss) else 'gradient'}"
            break
        optimizer.step()
        step_times.append(time.perf_counter() - start)
    if failure is None:
        curve.append({"step": args.steps, "pose_auc": evaluate(network_logits(scorer), validation, evaluation_solver, args, 1)})
    record = {
        "seed": seed,
        "stable": failure is None,
        "failure": failure,
        "steps": len(backward_times),
        # Median over steps: the steady state (a compiled solver's first steps compile).
        "backward_ms_per_step": 1e3 * float(np.median(backward_times)) if backward_times else None,
        "solver_backward_ms_per_step": 1e3 * float(np.median(solver_times)) if solver_times else None,
        "step_ms": 1e3 * float(np.median(step_times)) if step_times else None,
        "validation_curve": curve,
    }
    return record, scorer


def tune_temperature(args, solver):
    """The descriptor baseline's temperature: the best validation pose AUC@10 on a grid, on
    scenes from the training distribution (not the test scenes)."""
    tuning = scenes(args.validation_scenes, args, torch.Generator().manual_seed(20_000))
    table = {}
    for temperature in (0.25, 0.5, 1.0, 2.0, 4.0):
        table[temperature] = evaluate(descriptor_logits(temperature), tuning, solver, args, 2)["10"]
    return max(table, key=table.get), table


def std_auc(aucs):
    return {key: float(np.std([a[key] for a in aucs])) for key in aucs[0]} if len(aucs) > 1 else None


def mean_auc(aucs):
    return {key: float(np.mean([a[key] for a in aucs])) for key in aucs[0]} if aucs else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="10 seeds x 1000 steps x 3 backward modes")
    parser.add_argument("--seeds", type=int, help="seeds per mode (quick: 1, full: 10)")
    parser.add_argument("--steps", type=int, help="training steps (quick: 300, full: 1000)")
    parser.add_argument("--eval-every", type=int, help="validation pose AUC every this many steps (100)")
    parser.add_argument("--modes", help="comma-separated, from: " + ", ".join(MODES))
    parser.add_argument("--ablation-seeds", type=int, help="seeds per loss ablation (quick: 1, full: 3)")
    parser.add_argument("--solver-weight", type=float, default=0.1,
                        help="weight of the loss's gradient path through the solver")
    parser.add_argument("--no-score-function", dest="score_function", action="store_false",
                        help="leave out the loss's score-function (REINFORCE) gradient")
    parser.add_argument("--batch", type=int, default=8, help="scenes per step")
    parser.add_argument("--hypotheses", type=int, default=16, help="minimal samples per scene in training")
    parser.add_argument("--ransac-hypotheses", type=int, default=64, help="minimal samples per scene in evaluation")
    parser.add_argument("--matches", type=int, default=128)
    parser.add_argument("--outliers", type=float, default=0.75)
    parser.add_argument("--descriptor-gap", type=float, default=0.5,
                        help="outliers' mean descriptor score minus the inliers' (unit noise)")
    parser.add_argument("--rotation", type=float, default=0.3, help="std of the axis-angle rotation, rad")
    parser.add_argument("--noise", type=float, default=1e-3, help="image noise, normalised coordinates")
    parser.add_argument("--threshold", type=float, default=3e-3, help="MSAC threshold on the Sampson distance")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scale", type=float, default=1e-4, help="loss = log(1 + error / scale)")
    parser.add_argument("--no-solution-loss", type=float, default=10.0, help="loss of a sample without a real solution")
    parser.add_argument("--test-scenes", type=int, help="held-out scenes (quick: 256, full: 512)")
    parser.add_argument("--validation-scenes", type=int, default=128)
    parser.add_argument("--eval-chunk", type=int, default=32, help="scenes per evaluation batch")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    preset = SETTINGS["full" if args.full else "quick"]
    for key in ("seeds", "steps", "eval_every", "test_scenes", "ablation_seeds"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    modes = args.modes.split(",") if args.modes else list(preset["modes"])
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    evaluation_solver = solvergen.load(SPEC, out_dir=ROOT / "generated")
    test = scenes(args.test_scenes, args, torch.Generator().manual_seed(10_000))
    validation = scenes(args.validation_scenes, args, torch.Generator().manual_seed(30_000))
    temperature, tuning = tune_temperature(args, evaluation_solver)
    baselines = {
        "uniform": evaluate(uniform_logits, test, evaluation_solver, args, 0),
        "descriptor": evaluate(descriptor_logits(temperature), test, evaluation_solver, args, 0),
        "untrained": mean_auc([evaluate(network_logits(new_scorer(seed)), test, evaluation_solver, args, 0)
                               for seed in range(args.seeds)]),
    }
    print(f"baselines (test pose AUC): {baselines}; descriptor temperature {temperature}", flush=True)
    validation_baselines = {  # for the plot, beside the validation curves
        "uniform": evaluate(uniform_logits, validation, evaluation_solver, args, 1),
        "descriptor": evaluate(descriptor_logits(temperature), validation, evaluation_solver, args, 1),
    }

    def runs_of(mode, seeds, **loss_options):
        label = mode + "".join(f", {key}={value}" for key, value in loss_options.items())
        runs = []
        for seed in range(seeds):
            run, scorer = train(seed, mode, args, validation, evaluation_solver, **loss_options)
            if run["stable"]:
                run["pose_auc"] = evaluate(network_logits(scorer), test, evaluation_solver, args, 0)
            runs.append(run)
            ms = run["backward_ms_per_step"]
            status = "ok" if run["stable"] else f"FAILED ({run['failure']})"
            auc = run.get("pose_auc")
            print(f"{label}, seed {seed}: {status}; backward {'-' if ms is None else f'{ms:.1f}'} ms/step; "
                  f"test pose AUC@10 {'-' if auc is None else format(auc['10'], '.3f')}", flush=True)
        stable = [r for r in runs if r["stable"]]
        times = [r["backward_ms_per_step"] for r in runs if r["backward_ms_per_step"] is not None]
        solver_times = [r["solver_backward_ms_per_step"] for r in runs if r["solver_backward_ms_per_step"] is not None]
        return {
            "pose_auc": mean_auc([r["pose_auc"] for r in stable]),
            "stable_runs_percent": 100.0 * len(stable) / len(runs),
            "backward_ms_per_step": float(np.median(times)) if times else None,
            "solver_backward_ms_per_step": float(np.median(solver_times)) if solver_times else None,
            "pose_auc_std": std_auc([r["pose_auc"] for r in stable]),
            "runs": runs,
        }

    results = {mode: runs_of(mode, args.seeds) for mode in modes}
    ablations = {name: runs_of("ift", args.ablation_seeds, **options) for name, options in ABLATIONS.items()
                 if args.ablation_seeds > 0}

    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["modes"] = modes
    settings["descriptor_temperature"] = temperature
    settings["descriptor_temperature_tuning_auc10"] = {str(k): v for k, v in tuning.items()}
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "solvergen": solvergen.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "minutes": round((time.time() - started) / 60, 1),
    }
    write_results(Path(args.out), {"settings": settings, "machine": machine, "baselines": baselines, **results,
                                   "ablations": ablations, "validation_baselines": validation_baselines})


def command(settings) -> str:
    """The command line that wrote the results (its settings that differ from the quick default)."""
    words = ["python examples/learned_ransac_5pt.py"] + (["--full"] if settings["full"] else [])
    if settings.get("threads"):
        words.append(f"--threads {settings['threads']}")
    return " ".join(words)


def write_results(out, data):
    out.mkdir(parents=True, exist_ok=True)
    (out / "learned_ransac_5pt.json").write_text(json.dumps(data, indent=2) + "\n")
    machine, settings, baselines = data["machine"], data["settings"], data["baselines"]
    modes = settings["modes"]

    def auc_cells(auc):
        return " | ".join(f"{auc[str(k)]:.3f}" for k in THRESHOLDS) if auc else " | ".join("-" for _ in THRESHOLDS)

    lines = [
        "# Learned RANSAC, 5-point (synthetic analogue of MinBackProp Tables 1 and 2)",
        "",
        f"Machine: {machine['cpu']}, {machine['threads']} threads; Python {machine['python']}, "
        f"torch {machine['torch']}, solvergen {machine['solvergen']}; {machine['date']}; "
        f"{machine['minutes']} min. Written by `{command(settings)}`.",
        "",
        f"Settings: {json.dumps({k: v for k, v in settings.items() if not k.startswith('descriptor_temperature_')})}.",
        "",
        f"## Pose AUC on {settings['test_scenes']} held-out scenes (Table 1)",
        "",
        f"RANSAC with {settings['ransac_hypotheses']} minimal samples per scene drawn from the scores, "
        "MSAC on the Sampson distance; error max(rotation, translation) in degrees.",
        "",
        "| sampling by | AUC@5° | AUC@10° | AUC@20° |",
        "| --- | --- | --- | --- |",
        f"| uniform | {auc_cells(baselines['uniform'])} |",
        f"| raw descriptor score (T = {settings['descriptor_temperature']}) | {auc_cells(baselines['descriptor'])} |",
        f"| untrained network (mean over {settings['seeds']} seeds) | {auc_cells(baselines['untrained'])} |",
    ]
    for mode in modes:
        std = data[mode]["pose_auc_std"]
        spread = f" (std over runs at 10°: {std['10']:.3f})" if std else ""
        lines.append(f"| network trained, backward={mode}: mean over stable runs{spread} | {auc_cells(data[mode]['pose_auc'])} |")
    lines += [
        "",
        f"## Stability over {settings['seeds']} seeds x {settings['steps']} steps (Table 2)",
        "",
        "Backward time per step: median over steps, then over runs; the whole `loss.backward()` "
        "(network, sampler, loss and solver) and the solver's part of it.",
        "",
        "| backward | stable runs (%) | backward time per step (ms) | of which in the solver (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for mode in modes:
        ms, solver_ms = data[mode]["backward_ms_per_step"], data[mode]["solver_backward_ms_per_step"]
        lines.append(f"| {mode} | {data[mode]['stable_runs_percent']:.0f} | {'-' if ms is None else f'{ms:.1f}'} "
                     f"| {'-' if solver_ms is None else f'{solver_ms:.1f}'} |")
    ablations = data["ablations"]
    if ablations:
        lines += [
            "",
            "## Which gradient path learns (backward=\"ift\", test pose AUC, mean over "
            f"{settings['ablation_seeds']} seed(s))",
            "",
            f"The default loss: solver path (weight {settings['solver_weight']}) plus score function.",
            "",
            "| loss gradient | AUC@5° | AUC@10° | AUC@20° | stable runs (%) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, summary in ablations.items():
            lines.append(f"| {name} | {auc_cells(summary['pose_auc'])} | {summary['stable_runs_percent']:.0f} |")
    failures = [f"- {mode} seed {r['seed']}: {r['failure']}" for mode in modes for r in data[mode]["runs"] if not r["stable"]]
    if failures:
        lines += ["", "Failures:", *failures]
    lines += ["", "![validation pose AUC@10 against training steps](learned_ransac_5pt.png)"]
    (out / "learned_ransac_5pt.md").write_text("\n".join(lines) + "\n")
    plot(out / "learned_ransac_5pt.png", data)
    print("\n".join(lines))


def plot(path, data):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for mode in data["settings"]["modes"]:
        for index, run in enumerate(data[mode]["runs"]):
            steps = [point["step"] for point in run["validation_curve"]]
            auc = [point["pose_auc"]["10"] for point in run["validation_curve"]]
            axis.plot(steps, auc, color=f"C{data['settings']['modes'].index(mode)}", alpha=0.6,
                      label=mode if index == 0 else None)
    for style, (name, auc) in zip(("dotted", "dashed"), data["validation_baselines"].items()):
        axis.axhline(auc["10"], color="black", linestyle=style, label=f"sampling by {name}")
    axis.set_xlabel("training step")
    axis.set_ylabel("validation pose AUC@10°")
    axis.set_title("Learned RANSAC through the generated 5-point solver")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
