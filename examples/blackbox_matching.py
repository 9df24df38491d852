"""Keypoint matching through a black-box assignment solver (solvergen.blackbox; Rolinek et al. 2020).

Setting: synthetic graph pairs. Each pair has KEYPOINTS keypoints with a hidden descriptor h_i
(HIDDEN dims) and a random 2-D position. The source image observes h_i + noise through a linear
"camera" map A (DESCRIPTOR x HIDDEN); the target image observes the keypoints in a random order
(the ground-truth permutation), h_i + noise through another map
B = sqrt(1 - CAMERA_CHANGE^2) A + CAMERA_CHANGE G (G another random matrix), its positions rotated,
translated and jittered, and OUTLIERS of its keypoints replaced by random ones (new descriptor, new
position). The maps are fixed over the data set and unknown to the model, so the raw descriptor
distance matches poorly (the baseline) and a learned projection matches well (the reference:
the hidden descriptors recovered with the true maps).

Model: two small MLPs (source, target) map each keypoint's features (its descriptor and its
distance to the centroid of its graph, which rotation and translation leave unchanged) to an
embedding; the node-affinity costs are c_ij = -<f_s(x_i), f_t(x'_j)>, [B, n, n]. The matching is
scipy.optimize.linear_sum_assignment (looped over the batch inside `solve`, one permutation matrix
per instance) wrapped by solvergen.blackbox; the loss is the Hamming distance to the true
permutation (summed per pair, averaged over the batch), trained with Adam on fresh pairs at every
step, the learning rate halved four times.

Reports the matching accuracy (fraction of keypoints matched to their true partner, over all
keypoints and over the inliers) on held-out pairs for the raw-descriptor baseline, the untrained
and the trained model and the reference, and the median time per training step (forward and
backward, one torch thread) and of the two solver calls inside it.

Run from the repository root:  python examples/blackbox_matching.py
Results: benchmarks/results/blackbox_matching.{json,md}
"""
from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

import solvergen

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
KEYPOINTS, OUTLIERS, HIDDEN, DESCRIPTOR = 10, 2, 8, 16
DESCRIPTOR_NOISE, POSITION_NOISE, CAMERA_CHANGE = 0.3, 0.02, 0.95
STEPS, BATCH, LEARNING_RATE, LAMBDA, EMBEDDING = 1500, 16, 2e-3, 20.0, 32
TEST_PAIRS = 1000


def cameras(seed: int = 0):
    """The fixed source and target maps A, B [DESCRIPTOR, HIDDEN]."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(DESCRIPTOR, HIDDEN, generator=g) / HIDDEN ** 0.5
    G = torch.randn(DESCRIPTOR, HIDDEN, generator=g) / HIDDEN ** 0.5
    return A, (1 - CAMERA_CHANGE ** 2) ** 0.5 * A + CAMERA_CHANGE * G


def pairs(count: int, maps, g: torch.Generator):
    """`count` graph pairs: source and target node features [count, n, DESCRIPTOR + 1], the true
    permutation matrices [count, n, n] (1 where source i and target j are the same keypoint) and
    which source keypoints are inliers [count, n]."""
    A, B = maps
    n, rows = KEYPOINTS, torch.arange(count)[:, None]
    hidden = torch.randn(count, n, HIDDEN, generator=g)
    positions = torch.rand(count, n, 2, generator=g)
    order = torch.argsort(torch.rand(count, n, generator=g), dim=1)  # target j shows source keypoint order[j]
    target_hidden, target_positions = hidden[rows, order], positions[rows, order]
    angle = 2 * torch.pi * torch.rand(count, generator=g)
    rotation = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], -1).view(count, 2, 2)
    target_positions = (target_positions @ rotation.transpose(1, 2) + torch.rand(count, 1, 2, generator=g)
                        + POSITION_NOISE * torch.randn(count, n, 2, generator=g))
    outliers = torch.argsort(torch.rand(count, n, generator=g), dim=1)[:, :OUTLIERS]  # target slots replaced
    target_hidden[rows, outliers] = torch.randn(count, OUTLIERS, HIDDEN, generator=g)
    target_positions[rows, outliers] = 2 * torch.rand(count, OUTLIERS, 2, generator=g) - 0.5
    source = features((hidden + DESCRIPTOR_NOISE * torch.randn(hidden.shape, generator=g)) @ A.T, positions)
    target = features((target_hidden + DESCRIPTOR_NOISE * torch.randn(hidden.shape, generator=g)) @ B.T,
                      target_positions)
    truth = torch.zeros(count, n, n)
    truth[rows, order, torch.arange(n)] = 1.0
    inlier = torch.ones(count, n, dtype=torch.bool)
    inlier[rows, order[rows, outliers]] = False
    return source, target, truth, inlier


def features(descriptors, positions):
    """Per node: the descriptor and the distance to the graph's centroid."""
    radius = (positions - positions.mean(1, keepdim=True)).norm(dim=-1, keepdim=True)
    return torch.cat([descriptors, radius], -1)


def assignment(costs: np.ndarray) -> np.ndarray:
    """The minimum-cost permutation matrix of each [n, n] cost matrix of the batch [B, n, n]."""
    matchings = np.zeros_like(costs)
    for matching, cost in zip(matchings, costs):
        rows, cols = linear_sum_assignment(cost)
        matching[rows, cols] = 1.0
    return matchings


class Timed:
    """A solve that records the seconds spent in it."""

    def __init__(self, solve):
        self.solve, self.seconds = solve, 0.0

    def __call__(self, costs):
        start = time.perf_counter()
        solutions = self.solve(costs)
        self.seconds += time.perf_counter() - start
        return solutions


class Matcher(nn.Module):
    """Node-affinity costs c_ij = -<f_s(x_i), f_t(x'_j)> from two MLPs on node features."""

    def __init__(self):
        super().__init__()
        self.source, self.target = (nn.Sequential(nn.Linear(DESCRIPTOR + 1, 64), nn.ReLU(), nn.Linear(64, EMBEDDING))
                                    for _ in range(2))

    def forward(self, source, target):
        return -self.source(source) @ self.target(target).transpose(1, 2)


def accuracy(costs, truth, inlier):
    """Fractions of (all, inlier) source keypoints assigned to their true target keypoint."""
    correct = (torch.as_tensor(assignment(costs.detach().numpy())) * truth).sum(-1) > 0
    return correct.float().mean().item(), correct[inlier].float().mean().item()


def raw_costs(source, target):
    """The baseline: squared distance between raw descriptors."""
    return torch.cdist(source[..., :DESCRIPTOR], target[..., :DESCRIPTOR]) ** 2


def oracle_costs(source, target, maps):
    """A reference the model does not have: squared distance between the hidden descriptors
    recovered with the true maps (pseudo-inverses of A and B)."""
    A, B = maps
    return torch.cdist(source[..., :DESCRIPTOR] @ torch.linalg.pinv(A).T,
                       target[..., :DESCRIPTOR] @ torch.linalg.pinv(B).T) ** 2


def main(steps: int = STEPS, test_pairs: int = TEST_PAIRS, write: bool = True) -> dict:
    torch.manual_seed(0)
    maps, data = cameras(), torch.Generator().manual_seed(1)
    test = pairs(test_pairs, maps, torch.Generator().manual_seed(2))
    model, solve = Matcher(), Timed(assignment)
    layer = solvergen.blackbox(solve, lambda_=LAMBDA, numpy=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, steps // 5), gamma=0.5)  # halved 4 times
    with torch.no_grad():
        baseline, oracle = accuracy(raw_costs(*test[:2]), *test[2:]), accuracy(oracle_costs(*test[:2], maps), *test[2:])
        before = accuracy(model(*test[:2]), *test[2:])
    step_ms, solver_ms, losses = [], [], []
    for _ in range(steps):
        source, target, truth, _ = pairs(BATCH, maps, data)
        solve.seconds, start = 0.0, time.perf_counter()
        matching = layer(model(source, target))
        loss = (matching * (1 - truth) + (1 - matching) * truth).sum((1, 2)).mean()  # Hamming
        optimizer.zero_grad()
        loss.backward()
        step_ms.append(1e3 * (time.perf_counter() - start))
        solver_ms.append(1e3 * solve.seconds)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    with torch.no_grad():
        after = accuracy(model(*test[:2]), *test[2:])
    record = dict(
        command="python examples/blackbox_matching.py",
        machine=dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                     scipy=scipy.__version__, torch_threads=torch.get_num_threads(),
                     date=datetime.date.today().isoformat()),
        setting=dict(keypoints=KEYPOINTS, outliers=OUTLIERS, hidden=HIDDEN, descriptor=DESCRIPTOR,
                     descriptor_noise=DESCRIPTOR_NOISE, position_noise=POSITION_NOISE, camera_change=CAMERA_CHANGE,
                     steps=steps, batch=BATCH, learning_rate=LEARNING_RATE, lambda_=LAMBDA, test_pairs=test_pairs),
        accuracy={name: dict(all=value[0], inliers=value[1])
                  for name, value in (("raw_descriptors", baseline), ("untrained", before), ("trained", after),
                                      ("oracle_known_maps", oracle))},
        step_ms_median=float(np.median(step_ms)), solver_ms_median=float(np.median(solver_ms)),
        loss_first_50=float(np.mean(losses[:50])), loss_last_50=float(np.mean(losses[-50:])),
    )
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "blackbox_matching.json").write_text(json.dumps(record, indent=1) + "\n")
        (RESULTS / "blackbox_matching.md").write_text(report(record))
    return record


def report(record) -> str:
    m, s, a = record["machine"], record["setting"], record["accuracy"]
    lines = [
        "# Keypoint matching through solvergen.blackbox (examples/blackbox_matching.py)", "",
        f"`{record['command']}` on {m['platform']}, python {m['python']}, torch {m['torch']}, scipy {m['scipy']}, "
        f"{m['date']}. {s['keypoints']} keypoints per graph, {s['outliers']} of them outliers in the target; "
        f"{s['steps']} Adam steps of {s['batch']} pairs, lambda_ = {s['lambda_']}; accuracy on {s['test_pairs']} "
        "held-out pairs (fraction of source keypoints matched to their true partner by linear_sum_assignment).", "",
        "| costs | accuracy, all keypoints | accuracy, inliers |", "| --- | --- | --- |",
    ]
    for key, label in (("raw_descriptors", "raw descriptor distance (baseline)"),
                       ("untrained", "network before training"), ("trained", "network after training"),
                       ("oracle_known_maps", "reference: hidden descriptors recovered with the true maps")):
        lines.append(f"| {label} | {a[key]['all']:.3f} | {a[key]['inliers']:.3f} |")
    lines += ["", f"Hamming loss per pair: {record['loss_first_50']:.2f} over the first 50 steps, "
              f"{record['loss_last_50']:.2f} over the last 50. Median per training step: "
              f"{record['step_ms_median']:.2f} ms forward and backward, of which {record['solver_ms_median']:.2f} ms "
              f"in the two batched solver calls (forward, backward); torch threads: {m['torch_threads']}, wall clock."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(1)  # the per-step tensors are tiny: intra-op threads only add overhead
    print(report(main()), end="")
