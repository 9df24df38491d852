"""examples/registration_toy.py (MinBackProp Section 6.1): the three backward passes agree and
the outlier's weight goes to zero."""
from __future__ import annotations

import importlib.util

import torch
from conftest import ROOT


def _example():
    spec = importlib.util.spec_from_file_location("registration_toy", ROOT / "examples" / "registration_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backward_passes_agree_and_the_outlier_is_rejected():
    toy = _example()
    assert torch.get_default_dtype() == torch.float32  # the example leaves global state alone
    p, q = toy.scene()
    w = torch.full((4,), 0.25, dtype=torch.float64)
    for _ in range(12):
        grads = {m: toy.gradient(m, w, p, q)[1] for m in toy.ROTATIONS}
        scale = grads["svd"].norm()
        assert (grads["ift"] - grads["svd"]).norm() <= 1e-8 * scale
        assert (grads["ddn"] - grads["svd"]).norm() <= 1e-8 * scale
        w = (w - toy.LEARNING_RATE * grads["ift"]).clamp_min(0.0)
    assert w[toy.OUTLIER] == 0 and (w[[i for i in range(4) if i != toy.OUTLIER]] > 0.25).all()
    # Horn's quaternion (IFT forward) and Kabsch (SVD) give the same rotation.
    M = toy.cross_covariance(torch.full((4,), 0.25, dtype=torch.float64), p, q)
    torch.testing.assert_close(toy.rotation_ift(M), toy.kabsch(M), rtol=0, atol=1e-12)
