"""Batches with garbage rows, shapes, dtypes and bad arguments of generated solvers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROBLEMS, generated_module

import geometry
from solvergen.runtime import compiled


MODES = {
    "ift": dict(),
    "ift-float32": dict(precision="float32"),
    "autograd": dict(backward="autograd"),
    "compiled": dict(compile=True),  # with the aot_eager backend, in the `compiled` group
}


@pytest.mark.parametrize("mode", [m if m != "compiled" else pytest.param(m, marks=pytest.mark.compiled) for m in MODES])
@pytest.mark.parametrize("name", PROBLEMS)
def test_garbage_rows_are_masked_and_do_not_disturb_others(name, mode, monkeypatch):
    """NaN, inf, zero and huge rows, in every backward mode: no raise, no solution for them,
    zero gradient for them, finite gradients, and the other rows' solutions and gradients as in
    the batch with clean rows in their place."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    module = generated_module(name)
    solver = module.Solver(**MODES[mode])
    params, _ = geometry.INSTANCES[name](8, np.random.default_rng(5))
    params = torch.from_numpy(params).to(solver.compute_dtype)
    good, bad = [0, 2, 5, 7], [1, 3, 4, 6]
    # Per slot and unknown (P3P's solutions come in pairs +-x: one weight for both would cancel).
    weights = torch.linspace(-1, 1, module.NUM_SOLUTIONS * len(module.UNKNOWN_NAMES), dtype=params.dtype)
    weights = weights.view(module.NUM_SOLUTIONS, -1)

    def solve(rows):
        a = rows.clone().requires_grad_(True)
        solutions, valid = solver(a)
        (solutions * weights * valid.unsqueeze(-1)).sum().backward()
        return solutions.detach(), valid, a.grad

    clean, clean_valid, clean_grad = (value[good] for value in solve(params))  # the same batch, clean
    garbage = params.clone()
    garbage[1] = float("nan")
    garbage[3] = float("inf")
    garbage[4] = 0.0
    garbage[6] = 1e200 if params.dtype == torch.float64 else 1e30
    solutions, valid, grad = solve(garbage)
    assert not valid[bad].any()
    assert torch.equal(valid[good], clean_valid)
    float64 = params.dtype == torch.float64
    torch.testing.assert_close(solutions[good], clean, rtol=1e-9 if float64 else 1e-4, atol=1e-12 if float64 else 1e-5)
    assert torch.isfinite(solutions).all()
    assert torch.isfinite(grad).all() and (grad[bad] == 0).all()
    torch.testing.assert_close(grad[good], clean_grad, rtol=1e-7 if float64 else 1e-5, atol=1e-9)
    assert grad[good].abs().sum() > 0


@pytest.mark.parametrize("name", PROBLEMS)
def test_batch_shapes(name):
    module = generated_module(name)
    solver = module.Solver()
    params, _ = geometry.INSTANCES[name](6, np.random.default_rng(8))
    params = torch.from_numpy(params)
    flat, flat_valid = solver(params)
    s, n = module.NUM_SOLUTIONS, len(module.UNKNOWN_NAMES)
    solutions, valid = solver(params.reshape(2, 3, -1))
    assert solutions.shape == (2, 3, s, n) and valid.shape == (2, 3, s)
    assert torch.equal(solutions.reshape(6, s, n), flat)
    single, single_valid = solver(params[0])
    # Alone or in a batch: the same solutions, up to the last bits (BLAS picks kernels by size).
    assert single.shape == (s, n) and torch.equal(single_valid, flat_valid[0])
    assert torch.allclose(single, flat[0], rtol=1e-12, atol=1e-12 * flat[0].abs().max().item())
    empty, empty_valid = solver(params[:0])
    assert empty.shape == (0, s, n) and empty_valid.shape == (0, s)


def test_bad_arguments_are_clear_errors():
    module = generated_module("p3p")
    solver = module.Solver()
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 18\]"):
        solver(torch.zeros(4, 17, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        solver(torch.zeros(4, 18, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        solver([0.0] * 18)
    with pytest.raises(ValueError, match="backward must be"):
        module.Solver(backward="finite-differences")
    # Numeric options out of range: one line naming the option (they used to be accepted, and
    # then every solution was invalid, or every gradient zero, without a word).
    for option, value, message in (("newton_steps", -1, "an integer at least 0"), ("newton_steps", 1.5, "integer"),
                                   ("residual_tol", -1.0, "above 0"), ("imag_tol", -1.0, "at least 0"),
                                   ("residual_tol", float("nan"), "above 0"), ("cond_max", 0, "above 0"),
                                   ("residual_tol", "tight", "a number")):
        with pytest.raises(ValueError, match=f"{option} must be .*{message}"):
            module.Solver(**{option: value})
    assert module.Solver(cond_max=float("inf"), newton_steps=0).cond_max == float("inf")
    every_root = module.Solver(imag_tol=float("inf"), residual_tol=float("inf"))  # every root, as it is
    assert every_root.imag_tol == every_root.residual_tol == float("inf")
    # select: shapes that do not match the solutions
    params, _ = geometry.INSTANCES["p3p"](4, np.random.default_rng(0))
    solutions, valid = solver(torch.from_numpy(params))
    with pytest.raises(ValueError, match=r"reference must be a tensor of shape \[4, 3\]"):
        module.Solver.select(solutions, valid, reference=torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"score must be callable or a tensor shaped like valid \[4, 8\]"):
        module.Solver.select(solutions, valid, score=torch.zeros(4, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not match"):
        module.Solver.select(solutions, valid[:, :3], score=lambda x: x[..., 0])


def test_attributes():
    module = generated_module("p3p")
    solver = module.Solver()
    assert solver.num_solutions == 8
    assert solver.unknown_names == ("x1", "x2", "x3")
    assert solver.parameter_names[:3] == ("A1_x", "A1_y", "A1_z")
    assert len(solver.parameter_names) == 18
    assert isinstance(solver, torch.nn.Module)


HUGE_ENTRY_SCRIPT = """
import sys
import numpy as np
import torch
sys.path.insert(0, {tests!r})
import geometry
from conftest import generated_module
module = generated_module({name!r})
params, _ = geometry.INSTANCES[{name!r}](40, np.random.default_rng(0))
params = torch.tensor(params, dtype=torch.float64)
clean, clean_valid = module.Solver(backend="torch")(params)  # the same batch, clean
for j in range(params.shape[1]):
    huge = params.clone()
    huge[8:, j] = 1e300
    solutions, valid = module.Solver(backend="torch")(huge)
    assert torch.equal(valid[:8], clean_valid[:8]), j
    torch.testing.assert_close(solutions[:8], clean[:8], rtol=1e-9, atol=1e-12)
    assert torch.isfinite(solutions).all(), j
print("ok")
"""


@pytest.mark.parametrize("name", ["relpose_8pt_radial", "relpose_6pt_shared_focal"])
def test_one_huge_parameter_does_not_abort(name):
    """One parameter of 1e300 makes action matrices with entries near 1e307, on which MKL's eig
    aborted the whole process ("double free or corruption"): run in a child process, which must
    finish, with finite outputs and the other rows unchanged."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    result = subprocess.run([sys.executable, "-c", HUGE_ENTRY_SCRIPT.format(tests=tests, name=name)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
