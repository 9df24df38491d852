"""The native backend (runtime/native.py): the template stage in C against the torch path on the
same instances, garbage rows, float32, the IFT gradient, the on-disk cache, and the fallbacks
(no compiler, unsupported problems). Skipped where there is no C compiler, except the
fallback tests, which simulate its absence."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import geometry
from conftest import ROOT, generated_module
from solvergen.runtime import forward, native

NATIVE = ["p3p", "implicit_example", "relpose_5pt_nullspace", "relpose_5pt", "relpose_6pt_shared_focal",
          "relpose_6pt_shared_focal_natural",
          "fundamental_7pt", "gp3p", "p35pf", "relpose_8pt_radial"]
needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Builds go to a fresh cache folder (the kernels stay loaded in their plans' caches)."""
    saved = os.environ.get("SOLVERGEN_CACHE")
    os.environ["SOLVERGEN_CACHE"] = str(tmp_path_factory.mktemp("native_cache"))
    yield
    if saved is None:
        del os.environ["SOLVERGEN_CACHE"]
    else:
        os.environ["SOLVERGEN_CACHE"] = saved


def instances(name, count, seed=0):
    params, truth = geometry.INSTANCES[name](count, np.random.default_rng(seed))
    return torch.tensor(params, dtype=torch.float64), truth


def matched(x_a, v_a, x_b, v_b, tol=1e-8):
    """Per instance: every valid solution of a has a valid one of b within tol (relative)."""
    out = []
    for xa, va, xb, vb in zip(x_a, v_a, x_b, v_b):
        points, others = xa[va], xb[vb]
        if len(others) == 0:
            out.append(len(points) == 0)
            continue
        distance = (points[:, None, :] - others[None]).norm(dim=-1).amin(-1) / points.norm(dim=-1).clamp_min(1.0)
        out.append(bool((distance <= tol).all()))
    return torch.tensor(out)


def both_paths(name, count=400):
    params, truth = instances(name, count)
    module = generated_module(name)
    return module, params, truth, module.Solver()(params), module.Solver(backend="native")(params)


RADIAL_GAP = pytest.mark.xfail(strict=True, reason=(
    "relpose_8pt_radial: its action matrices (norm up to 1e12, graded) get eigenvalues off by up to 1e-5 from "
    "the native Hessenberg reduction and QR; refined by Newton on each eigenpair they find more solutions than "
    "the torch path, but about 1% of instances miss one that it finds (the truth is found as often)"))


@needs_compiler
@pytest.mark.parametrize("name", [pytest.param(n, marks=RADIAL_GAP) if n == "relpose_8pt_radial" else n for n in NATIVE])
def test_native_finds_the_torch_paths_solutions(name):
    """Every solution the torch path finds, the native backend finds too, on 99.5% of instances
    (1e-6 relative: spurious solutions far out, a focal length of 1e8, are only that well
    determined in either path)."""
    _, _, _, (x_t, v_t), (x_n, v_n) = both_paths(name)
    assert matched(x_t, v_t, x_n, v_n, 1e-6).float().mean() >= 0.995


@needs_compiler
@pytest.mark.parametrize("name", NATIVE)
def test_native_solutions_are_solutions_and_find_the_truth(name):
    """The native backend's valid solutions satisfy the declared equations (relative residual
    evaluated by the torch runtime) as often as the torch path's, and it finds the truth on at
    least 99.5% of instances (or as often as the torch path, where that misses the bar:
    relpose_8pt_radial's instances, about 98% for both), with a median error below 1e-11."""
    module, params, truth, (x_t, v_t), (x_n, v_n) = both_paths(name)
    above = [(forward.relative_residuals(module.PLAN, params, x)[v] > 1e-8).double().mean() for x, v in
             ((x_t, v_t), (x_n, v_n))]
    assert above[1] <= above[0] + 1e-3, above
    errors, torch_errors = (geometry.relative_errors(x.numpy(), v.numpy(), truth, module.PLAN.sign_flip)
                            for x, v in ((x_n, v_n), (x_t, v_t)))
    assert (errors <= 1e-6).mean() >= min(0.995, (torch_errors <= 1e-6).mean())
    assert np.median(np.log10(np.maximum(errors, 1e-17))) <= -11


@needs_compiler
def test_garbage_rows_float32_and_the_gradient():
    module = generated_module("relpose_5pt_nullspace")
    params, _ = instances("relpose_5pt_nullspace", 6, seed=1)
    solver = module.Solver(backend="native")
    alone, valid_alone = solver(params[[0, 2, 3, 4, 5]])
    mixed = params.clone()
    mixed[1, 4] = float("nan")
    x, valid = solver(mixed)
    assert not valid[1].any() and (x[1] == 0).all()
    assert torch.equal(x[[0, 2, 3, 4, 5]], alone) and torch.equal(valid[[0, 2, 3, 4, 5]], valid_alone)
    x32, valid32 = solver(params.float())
    assert x32.dtype == torch.float32 and torch.equal(valid32, solver(params)[1])
    # The IFT backward is the torch path's: the same gradient of the first valid solution.
    grads = []
    for backend in ("torch", "native"):
        p = params.clone().requires_grad_(True)
        x, valid = module.Solver(backend=backend)(p)
        picked, _ = module.Solver.select(x, valid, score=lambda s: -s.norm(dim=-1))
        picked.sum().backward()
        grads.append(p.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9)


@needs_compiler
def test_builds_are_cached_on_disk_and_reused_by_other_processes(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from conftest import generated_module
        solver = generated_module("fundamental_7pt").Solver
        started = time.perf_counter()
        solver(backend="native")
        print(time.perf_counter() - started)
    """)
    env = dict(os.environ, SOLVERGEN_CACHE=str(tmp_path))
    seconds = [float(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                    check=True).stdout.split()[-1]) for _ in range(2)]
    builds = list((tmp_path / "native").glob("*.so"))
    assert len(builds) == 1 and seconds[1] < 1.0, (builds, seconds)


def test_without_a_compiler_auto_falls_back_and_native_says_why(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    module = generated_module("fundamental_7pt")
    module.Solver.plan.cache.pop("native_kernel", None)
    module.Solver.plan.cache.pop("native_warned", None)
    with pytest.raises(native.NativeUnavailable, match="no C compiler found") as error:
        module.Solver(backend="native")
    assert "\n" not in str(error.value)
    params, _ = instances("fundamental_7pt", 20)
    with pytest.warns(UserWarning, match="runs its template stage in torch: no C compiler found"):
        x, valid = module.Solver(backend="auto")(params)
    x_t, valid_t = module.Solver()(params)
    assert torch.equal(x, x_t) and torch.equal(valid, valid_t)


def test_unsupported_problems_and_bad_options_are_refused_in_one_line():
    homography = generated_module("homography_4pt")
    with pytest.raises(native.NativeUnavailable,
                       match="homography_4pt: the native backend does not support it: it has no elimination template"):
        homography.Solver(backend="native")
    params, _ = instances("homography_4pt", 5)
    x, valid = homography.Solver(backend="auto")(params)  # no template stage: nothing to warn about
    assert valid.all()
    with pytest.raises(ValueError, match="backend must be 'torch', 'native' or 'auto'"):
        homography.Solver(backend="c")
    with pytest.raises(ValueError, match="backend='native' needs backward='ift'"):
        generated_module("relpose_5pt_nullspace").Solver(backend="native", backward="autograd")
