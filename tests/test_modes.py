"""Solver options: the device-independent eigen path, float32 precision, and their accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ACCURACY_LIMITATIONS, PROBLEMS, float32_solve_cases, generated_module
from torch.utils._python_dispatch import TorchDispatchMode

import geometry
from solvergen.runtime import parallel
from solvergen.runtime import template as template_stage

WITH_TEMPLATE = [name for name in PROBLEMS if generated_module(name).TEMPLATE_SHAPE != (0, 0)]


# Action matrices up to 4 x 4 also have the closed-form eigen path.
CLOSED_FORM = [name for name in WITH_TEMPLATE if generated_module(name).PLAN.closed_form_eig]
DEVICE_PATHS = [
    pytest.param(*case, marks=pytest.mark.xfail(strict=True, reason=ACCURACY_LIMITATIONS[case[0]]))
    if case[0] in ACCURACY_LIMITATIONS else case
    for case in [(name, "charpoly") for name in WITH_TEMPLATE] + [(name, "closed_form") for name in CLOSED_FORM]
]


@pytest.mark.parametrize("name, eig", DEVICE_PATHS)
def test_device_eigen_paths_match_lapack(name, eig):
    """eig="charpoly" (Hessenberg, characteristic polynomial, Aberth roots) and, for action
    matrices up to 4 x 4, eig="closed_form" (closed-form real roots, adjugate eigenvectors): the
    paths used on GPUs, without host synchronization, meet the accuracy bars on the CPU too."""
    module = generated_module(name)
    params, truth = geometry.INSTANCES[name](1000, np.random.default_rng(21))
    solutions, valid = module.Solver(eig=eig)(torch.from_numpy(params))
    err = geometry.relative_errors(solutions.numpy(), valid.numpy(), truth, module.PLAN.sign_flip)
    assert np.mean(err < 1e-6) >= 0.99, np.mean(err < 1e-6)
    assert np.median(np.log10(np.maximum(err, 1e-18))) <= -11
    lapack, lapack_valid = module.Solver(eig="lapack")(torch.from_numpy(params))
    same_count = (valid.sum(-1) == lapack_valid.sum(-1)).double().mean().item()
    assert same_count >= 0.98, same_count


@pytest.mark.parametrize("name", ["p3p", "relpose_5pt", "relpose_6pt_shared_focal"])
def test_chunked_forward_matches_whole_batch(name, monkeypatch):
    """On the CPU large batches are solved in chunks (`parallel.CHUNK` instances); the result is the
    whole batch's, including non-finite rows, which stay masked in their own chunk."""
    module = generated_module(name)
    params, _ = geometry.INSTANCES[name](300, np.random.default_rng(23))
    params = torch.from_numpy(params)
    params[7] = float("nan")
    params[250] = 0.0
    whole, whole_valid = module.Solver()(params)
    monkeypatch.setattr(parallel, "CHUNK", 64)
    chunked, chunked_valid = module.Solver()(params)
    assert torch.equal(whole_valid.sum(-1), chunked_valid.sum(-1))
    assert not whole_valid[7].any() and not whole_valid[250].any()
    # The same solutions; their order may differ where LAPACK ordered close eigenvalues
    # differently (last-bit differences between batched and chunked calls).
    distance = (chunked.unsqueeze(-2) - whole.unsqueeze(-3)).norm(dim=-1)  # [B, S, S]
    distance = distance.masked_fill(~whole_valid.unsqueeze(-2), float("inf"))
    nearest = distance.amin(dim=-1)[chunked_valid]
    size = chunked.norm(dim=-1)[chunked_valid].clamp_min(1.0)
    assert (nearest <= 1e-9 * size).all(), (nearest / size).max()


@pytest.mark.parametrize("name", PROBLEMS)
def test_masked_paths_match_compacted(name, monkeypatch):
    """Off the CPU the solver masks instead of compacting (no host synchronization): Newton
    steps on every instance, the backward on every solution slot. Forced here on the CPU, the
    solutions and the gradient are those of the compacted paths."""
    module = generated_module(name)
    # Both runs eliminate the template alike (LAPACK): the sparse elimination, CPU only, rounds
    # differently, which can reorder the eigenvalues (tests/test_sparse_lu.py checks it).
    monkeypatch.setattr(template_stage, "eliminate", template_stage.dense_elimination)
    params, truth = geometry.INSTANCES[name](200, np.random.default_rng(24))
    params = torch.from_numpy(params)
    params[3] = float("nan")

    def solve_and_differentiate():
        p = params.clone().requires_grad_(True)
        solver = module.Solver()
        x, valid = solver(p)
        picked, found = solver.select(x, valid, reference=torch.from_numpy(truth))
        (picked * torch.linspace(-1, 1, picked.shape[-1], dtype=picked.dtype)).sum().backward()
        return x.detach(), valid, p.grad

    x, valid, grad = solve_and_differentiate()
    monkeypatch.setattr(parallel, "host_sync_is_free", lambda device: False)
    x_masked, valid_masked, grad_masked = solve_and_differentiate()
    assert torch.equal(valid, valid_masked)
    torch.testing.assert_close(x_masked, x, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(grad_masked).all()
    torch.testing.assert_close(grad_masked, grad, rtol=1e-6, atol=1e-9)


class _HostSynchronizations(TorchDispatchMode):
    """Records the ATen operations that make the host wait for the device: reading a value
    (item, bool), or an output whose shape depends on the data (nonzero, masked_select, boolean
    indexing, unique)."""

    SYNCHRONIZING = {
        "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::nonzero",
        "aten::masked_select", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim",
    }

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in self.SYNCHRONIZING:
            self.seen.add(name)
        if name == "aten::index" and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.seen.add("aten::index (boolean mask)")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "name, eig", [(name, "charpoly") for name in PROBLEMS] + [(name, "closed_form") for name in CLOSED_FORM]
)
def test_device_path_never_synchronizes(name, eig, monkeypatch):
    """The paths taken off the CPU (eig="charpoly" or "closed_form", masking instead of
    compaction) run the forward, `select` and the IFT backward without one operation that waits
    for the device. (A proxy on the CPU for CUDA's sync debug mode: this task had no GPU.) The CPU path's own
    compaction is seen by the same detector."""
    module = generated_module(name)
    params, truth = geometry.INSTANCES[name](64, np.random.default_rng(25))
    params = torch.from_numpy(params)
    solver = module.Solver(eig=eig)
    solver(params)  # tables built once per device, outside the check

    def run():
        p = params.clone().requires_grad_(True)
        with _HostSynchronizations() as detector:
            x, valid = solver(p)
            picked, _ = solver.select(x, valid, reference=torch.from_numpy(truth))
            (picked.sum() + (x * valid.unsqueeze(-1)).sum()).backward()
        return detector.seen

    assert "aten::nonzero" in run()  # on the CPU: compaction, and the detector sees it
    monkeypatch.setattr(parallel, "host_sync_is_free", lambda device: False)
    assert run() == set()


@pytest.mark.parametrize("name", float32_solve_cases())
def test_float32_precision(name):
    """precision="float32" solves in float32: median log10 error <= -5 after polishing."""
    module = generated_module(name)
    params, truth = geometry.INSTANCES[name](1000, np.random.default_rng(22))
    solver = module.Solver(precision="float32", newton_steps=3)
    solutions, valid = solver(torch.from_numpy(params).float())
    assert solutions.dtype == torch.float32
    err = geometry.relative_errors(solutions.double().numpy(), valid.numpy(), truth, module.PLAN.sign_flip)
    assert np.median(np.log10(np.maximum(err, 1e-18))) <= -5
    assert np.mean(err < 1e-3) >= 0.95, np.mean(err < 1e-3)


def test_bad_options():
    module = generated_module("p3p")
    with pytest.raises(ValueError, match="precision"):
        module.Solver(precision="float16")
    with pytest.raises(ValueError, match="eig must be"):
        module.Solver(eig="qr")
