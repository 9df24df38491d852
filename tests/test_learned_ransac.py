"""examples/learned_ransac_5pt.py (MinBackProp Section 6.2): the evaluation's pieces against
independent references, and the training loss's gradient through the solver."""
from __future__ import annotations

import argparse
import importlib.util
import math

import numpy as np
import pytest
import torch
from conftest import ROOT

import solvergen


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("learned_ransac_5pt", ROOT / "examples" / "learned_ransac_5pt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(**changes):
    values = dict(matches=64, outliers=0.5, descriptor_gap=0.5, rotation=0.3, noise=0.0, threshold=3e-3,
                  ransac_hypotheses=8, eval_chunk=4, hypotheses=4, scale=1e-4, batch=2,
                  no_solution_loss=10.0, solver_weight=1.0, score_function=True)
    values.update(changes)
    return argparse.Namespace(**values)


def test_pose_auc_is_the_area_under_the_recall_curve(example):
    errors = np.random.default_rng(0).exponential(8.0, size=200)
    for threshold in (5, 10, 20):
        grid = np.linspace(0, threshold, 200_001)
        recall = (errors[None, :] <= grid[:, None]).mean(axis=1)  # the recall curve, sampled
        reference = ((recall[1:] + recall[:-1]) / 2 * np.diff(grid)).sum() / threshold  # trapezoid rule
        assert example.pose_auc(errors)[str(threshold)] == pytest.approx(reference, abs=1e-4)
    assert example.pose_auc([0.0, 0.0]) == {"5": 1.0, "10": 1.0, "20": 1.0}
    assert example.pose_auc([90.0]) == {"5": 0.0, "10": 0.0, "20": 0.0}


def test_decomposition_recovers_the_true_pose(example):
    scenes = example.scenes(16, settings(outliers=0.0), torch.Generator().manual_seed(0))
    E = scenes.E * torch.tensor([1.0, -1.0] * 8, dtype=torch.float64).view(-1, 1, 1)  # E up to sign
    R, t = example.decompose(E, scenes.matches, scenes.inlier)
    assert example.pose_errors(R, t, scenes.R, scenes.t).max() < 1e-5


def test_ransac_on_inliers_finds_the_pose_and_samples_are_distinct(example):
    args = settings()
    scenes = example.scenes(4, args, torch.Generator().manual_seed(1))
    logits = torch.where(scenes.inlier, 0.0, -50.0).double()
    index = example.draw_samples(logits, 8, 5, torch.Generator().manual_seed(2))
    assert all(len(set(sample.tolist())) == 5 for sample in index.reshape(-1, 5))
    assert scenes.inlier.gather(1, index.flatten(1)).all()
    solver = solvergen.load(example.SPEC, out_dir=ROOT / "generated")
    auc = example.evaluate(lambda matches, descriptor: logits, scenes, solver, args, 0)
    assert auc["5"] > 0.99  # noise-free inliers: every scene's pose within a few hundredths of a degree


def test_ift_and_autograd_train_the_scorer_with_the_same_gradient(example):
    """The loss's path through the solver (straight-through samples): the network's gradient
    by the IFT equals autograd's through the forward."""
    args = settings(noise=1e-3, score_function=False)
    gradients = {}
    for backward in ("ift", "autograd"):
        generator = torch.Generator().manual_seed(3)
        batch = example.scenes(args.batch, args, generator)
        scorer = example.new_scorer(0)
        solver = solvergen.load(example.SPEC, out_dir=ROOT / "generated", backward=backward)
        timer = example.SolverBackwardTimer()
        loss = example.training_loss(scorer, solver, batch, args, generator, timer)
        loss.backward()
        assert timer.seconds is not None and timer.seconds > 0
        gradients[backward] = torch.cat([p.grad.flatten() for p in scorer.parameters()])
    assert torch.isfinite(gradients["ift"]).all() and gradients["ift"].norm() > 0
    scale = gradients["autograd"].norm()
    assert (gradients["ift"] - gradients["autograd"]).norm() <= 1e-6 * scale


def test_real_parts_mode_keeps_every_root(example):
    solver = solvergen.load(example.SPEC, out_dir=ROOT / "generated", **example.MODES["autograd-real-parts"])
    scenes = example.scenes(8, settings(outliers=1.0), torch.Generator().manual_seed(4))
    sample = scenes.matches[:, :5]  # outliers: usually some complex roots
    _, valid = solver(example.solver_inputs(sample))
    strict = solvergen.load(example.SPEC, out_dir=ROOT / "generated")
    _, real = strict(example.solver_inputs(sample))
    assert valid.sum() > real.sum() and math.isclose(valid.float().mean().item(), 1.0, abs_tol=0.05)
