"""Smoke tests of the size-generic layers' examples (examples/lml_topk.py, examples/robust_pooling.py):
each runs end to end with tiny settings, reports finite figures, writes its results only where
--out points, and leaves benchmarks/results alone."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from conftest import ROOT

RESULTS = ROOT / "benchmarks" / "results"


def example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(value):
    """Every number in a JSON-like record."""
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def snapshot(name):
    """The example's files in benchmarks/results (only its own: other runs may write there meanwhile)."""
    return {path.name: path.stat().st_mtime_ns for path in RESULTS.glob(f"{name}*")}


@pytest.fixture
def threads():
    """The examples set the torch thread count: restored afterwards."""
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


def run(name, tmp_path, *options):
    before = snapshot(name)
    record = example(name).main(["--steps", "5", "--test", "64", "--out", str(tmp_path), *options])
    assert snapshot(name) == before  # nothing written into benchmarks/results
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json", f"{name}.md"]
    assert json.loads((tmp_path / f"{name}.json").read_text()) == json.loads(json.dumps(record))
    assert all(math.isfinite(x) for x in numbers(record))
    return record


def test_lml_topk_runs_with_tiny_settings(tmp_path, threads):
    record = run("lml_topk", tmp_path, "--batch", "16")
    precision = record["precision_at_k"]
    assert set(precision) == {"untrained", "lml", "softmax", "bce"}
    assert all(0 <= p <= 1 for p in precision.values())
    assert all(run["finite"] and run["step_ms_median"] > 0 for run in record["runs"].values())
    lml = record["runs"]["lml"]
    assert lml["train_not_ok_rows"] == 0 and lml["test_not_ok_rows"] == 0  # small logits: every row converges
    assert lml["train_first_not_ok_row"] is None and lml["test_y_sum_error_max"] < 1e-8
    assert lml["test_precision_from_y"] == precision["lml"]  # y is monotone in the logits: the same top k


def test_robust_pooling_runs_with_tiny_settings(tmp_path, threads):
    record = run("robust_pooling", tmp_path, "--batch", "8")
    errors = record["centre_error"]
    assert {"mean_pooling", "robust_pooling", "trained_mean", "trained_robust_ift",
            "trained_robust_autograd"} <= set(errors)
    assert errors["robust_pooling"]["mean"] < errors["mean_pooling"]["mean"]  # outliers: robust beats the mean
    # The two backwards train the same network: the same batches, the same gradients.
    assert errors["trained_robust_ift"]["mean"] == pytest.approx(errors["trained_robust_autograd"]["mean"], rel=1e-6)
    assert record["gradient_check"]["max_abs_difference"] <= 1e-8 * max(record["gradient_check"]["max_abs_gradient"], 1)
    assert all(ok == 1.0 for ok in record["test_ok_fraction"].values())
    assert max(record["layer_minus_irls_max_abs"].values()) < 1e-8  # the layer's forward against IRLS
    # the second scale (alpha = 0.5 by default) is reported alongside, with its own gradient check
    assert record["setting"]["second_alpha"] == 0.5
    assert {"robust_pooling_alpha2", "trained_robust_ift_alpha2", "reference_undistorted_robust_alpha2"} <= set(errors)
    for check in (record["gradient_check"], record["gradient_check_alpha2"]):
        assert check["max_abs_difference"] <= 1e-8 * max(check["max_abs_gradient"], 1)
        # d loss / d alpha: both backwards against a central finite difference
        fd = check["alpha_gradient_finite_difference"]
        assert check["alpha_gradient_ift"] == pytest.approx(fd, rel=1e-5, abs=1e-9)
        assert check["alpha_gradient_autograd"] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_robust_pooling_second_alpha_can_be_skipped(tmp_path, threads):
    record = run("robust_pooling", tmp_path, "--batch", "4", "--second-alpha", "0")
    assert record["gradient_check_alpha2"] is None
    assert not any(key.endswith("_alpha2") for key in record["centre_error"])


def test_size_generic_layers_example_runs():
    """examples/size_generic_layers.py at a small size: every layer ok, every gradient within
    1e-5 (relative) of a central difference."""
    out = example("size_generic_layers").main(["--n", "16", "--batch", "2"])
    for name, result in out.items():
        assert result["ok"], name
        assert result["gradient_vs_fd"] < 1e-5, name
