"""Every shipped solver on noise-free synthetic geometry (tests/geometry.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROBLEMS, accuracy_cases, generated_module

import geometry

EXPECTED_SOLUTIONS = {
    "p3p": 8,
    "relpose_5pt_nullspace": 10,
    "fundamental_7pt_nullspace": 3,
    "relpose_6pt_shared_focal": 15,
    "implicit_example": 2,
    "relpose_5pt": 10,
    "fundamental_7pt": 3,
    "homography_4pt": 1,
    "relpose_6pt_shared_focal_natural": 15,  # as its null-space form: pairs +-F count once
    "gp3p": 8,
    "p35pf": 16,  # 10 and 6 spurious complex ones (problems/p35pf.py)
    "relpose_8pt_radial": 16,
}


def test_every_problem_has_ground_truth():
    assert set(PROBLEMS) <= set(geometry.INSTANCES), "add a ground-truth generator to tests/geometry.py"


@pytest.mark.parametrize("name", PROBLEMS)
def test_solution_count(name):
    assert generated_module(name).Solver().num_solutions == EXPECTED_SOLUTIONS[name]


@pytest.mark.parametrize("name", accuracy_cases())
def test_truth_among_valid_solutions(name):
    module = generated_module(name)
    params, truth = geometry.INSTANCES[name](2000, np.random.default_rng(2026))
    solutions, valid = module.Solver()(torch.from_numpy(params))
    err = geometry.relative_errors(solutions.numpy(), valid.numpy(), truth, module.PLAN.sign_flip)
    found = np.mean(err < 1e-6)
    median = np.median(np.log10(np.maximum(err, 1e-18)))
    assert found >= 0.995, f"truth found for {found:.2%} of instances"
    assert median <= -11, f"median log10 relative error {median:.2f}"


@pytest.mark.parametrize("name", accuracy_cases())
def test_float32_inputs(name):
    """float32 in, float32 out; the solve itself runs in float64 (the default precision): the
    solutions are the float64 solver's on the same rounded inputs, to float32 rounding (a
    float32 solve is off by 1e-6 and more), and near the truth."""
    module = generated_module(name)
    params, truth = geometry.INSTANCES[name](500, np.random.default_rng(7))
    params32 = torch.from_numpy(params).float()
    solutions, valid = module.Solver()(params32)
    assert solutions.dtype == torch.float32 and valid.dtype == torch.bool
    reference, reference_valid = module.Solver()(params32.double())
    assert torch.equal(valid, reference_valid)
    scale = reference.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    difference = ((solutions.double() - reference).abs() / scale).amax(dim=-1)[valid]
    assert difference.max() <= 2 * torch.finfo(torch.float32).eps, difference.max()
    err = geometry.relative_errors(solutions.double().numpy(), valid.numpy(), truth, module.PLAN.sign_flip)
    # The inputs carry float32 rounding (1e-7 relative); the solutions should not add much.
    assert np.mean(err < 1e-3) >= 0.98, np.mean(err < 1e-3)
    assert np.median(np.log10(np.maximum(err, 1e-18))) <= -5


def test_template_size_5pt():
    """Nister / Stewenius: 10 x 20."""
    rows, cols = generated_module("relpose_5pt_nullspace").TEMPLATE_SHAPE
    assert rows <= 10 and cols <= 20


def test_template_size_6pt_shared_focal():
    """At most PoseLib's hand-made 31 x 46 (we find 21 x 36 with a non-standard basis)."""
    rows, cols = generated_module("relpose_6pt_shared_focal").TEMPLATE_SHAPE
    assert rows <= 31 and cols <= 46
