"""solvergen.blackbox: Algorithm 1 of blackbox_graph_matching.md around batched black-box solvers."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import ROOT
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

import solvergen


def cheapest(weights: torch.Tensor, k: int = 2) -> torch.Tensor:
    """argmin_y w . y over y in {0, 1}^n with k ones, per row of [B, n]: the k cheapest entries."""
    y = torch.zeros_like(weights)
    return y.scatter_(1, weights.topk(k, dim=1, largest=False).indices, 1.0)


class Counted:
    """`cheapest`, counting its calls and the batch size of each."""

    def __init__(self):
        self.sizes = []

    def __call__(self, weights):
        self.sizes.append(len(weights))
        return cheapest(weights)


def gradient(layer, w, g):
    """dL/dw through `layer` for L = <layer(w), g>."""
    w = w.clone().requires_grad_(True)
    (layer(w) * g).sum().backward()
    return w.grad


def test_the_gradient_is_its_definition_with_two_direct_calls():
    gen = torch.Generator().manual_seed(0)
    w, g = torch.randn(8, 6, generator=gen, dtype=torch.float64), torch.randn(8, 6, generator=gen, dtype=torch.float64)
    for lam in (0.5, 3.0, 20.0):
        expected = -(cheapest(w) - cheapest(w + lam * g)) / lam
        torch.testing.assert_close(gradient(solvergen.blackbox(cheapest, lambda_=lam), w, g), expected, rtol=0, atol=0)
        assert expected.abs().sum() > 0  # the check is not vacuous


def test_one_call_per_batch_and_the_same_as_per_instance_calls():
    gen = torch.Generator().manual_seed(1)
    w, g = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    solve = Counted()
    layer = solvergen.blackbox(solve, lambda_=2.0)
    w_batch = w.clone().requires_grad_(True)
    y = layer(w_batch)
    assert solve.sizes == [5]
    (y * g).sum().backward()
    assert solve.sizes == [5, 5]
    for b in range(5):
        torch.testing.assert_close(layer(w[b:b + 1]), y[b:b + 1].detach())
        torch.testing.assert_close(gradient(layer, w[b:b + 1], g[b:b + 1]), w_batch.grad[b:b + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_and_torch_solvers_agree_and_follow_the_input_dtype_and_device(dtype):
    gen = torch.Generator().manual_seed(2)
    w, g = torch.randn(4, 6, generator=gen, dtype=dtype), torch.randn(4, 6, generator=gen, dtype=dtype)

    def numpy_solve(weights):
        assert isinstance(weights, np.ndarray)
        y = np.zeros(weights.shape, dtype=np.int64)  # another dtype than the weights
        np.put_along_axis(y, np.argsort(weights, axis=1)[:, :2], 1, axis=1)
        return y

    def torch_solve(weights):
        assert isinstance(weights, torch.Tensor) and weights.dtype == dtype
        return cheapest(weights).bool()

    outputs = []
    for layer in (solvergen.blackbox(numpy_solve, numpy=True), solvergen.blackbox(torch_solve)):
        y = layer(w)
        assert y.dtype == dtype and y.device == w.device
        outputs.append((y, gradient(layer, w, g)))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_threads_give_the_result_of_one_call():
    gen = torch.Generator().manual_seed(3)
    w, g = torch.randn(9, 5, generator=gen), torch.randn(9, 5, generator=gen)
    solve = Counted()
    one, threaded = solvergen.blackbox(cheapest), solvergen.blackbox(solve, threads=2)
    torch.testing.assert_close(threaded(w), one(w))
    torch.testing.assert_close(gradient(threaded, w, g), gradient(one, w, g))
    assert sorted(solve.sizes) == [4, 4, 4, 5, 5, 5]  # chunks of 5 and 4: the forward, then forward and backward
    assert solvergen.blackbox(Counted(), threads=50)(w[:3]).shape == (3, 5)  # more threads than instances


def test_bad_arguments_give_one_line_errors():
    with pytest.raises(TypeError, match="solve must be callable, got int"):
        solvergen.blackbox(3)
    for lam in (0.0, -1.0, float("nan"), float("inf"), "20", True):
        with pytest.raises(ValueError, match="lambda_ must be a positive finite number"):
            solvergen.blackbox(cheapest, lambda_=lam)
    for threads in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be None or a positive int"):
            solvergen.blackbox(cheapest, threads=threads)
    layer = solvergen.blackbox(cheapest)
    for weights in (np.zeros((2, 3)), torch.zeros(2, 3, dtype=torch.int64), torch.tensor(1.0)):
        with pytest.raises(TypeError, match="weights must be a floating-point torch tensor"):
            layer(weights)
    with pytest.raises(TypeError, match="solve must return a numpy array or a torch tensor, got list"):
        solvergen.blackbox(lambda w: w.tolist())(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"solve returned shape \(2, 2\) for weights of shape \(2, 3\)"):
        solvergen.blackbox(lambda w: w[:, :2])(torch.zeros(2, 3))
    # A solver whose solution changes shape between the forward and the backward call.
    shapes = iter([(2, 3), (2, 4)])
    w = torch.zeros(2, 3, requires_grad=True)
    y = solvergen.blackbox(lambda weights: torch.zeros(next(shapes)))(w)
    with pytest.raises(ValueError, match=r"solve returned shape \(2, 4\) for weights of shape \(2, 3\)"):
        y.sum().backward()


def test_non_finite_instances_get_zero_gradient_and_leave_the_others_alone():
    gen = torch.Generator().manual_seed(4)
    w, g = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    w[1, 2], g[3, 0] = float("nan"), float("inf")  # instance 1: its costs; instance 3: its loss gradient

    def finite_only(weights):
        assert torch.isfinite(weights).all()
        return cheapest(weights)

    layer = solvergen.blackbox(finite_only, lambda_=3.0)
    grad = gradient(layer, w, g)
    assert (grad[[1, 3]] == 0).all() and torch.isfinite(layer(w)).all()
    for b in (0, 2):
        torch.testing.assert_close(grad[b], gradient(layer, w[b:b + 1], g[b:b + 1])[0])
        assert grad[b].abs().sum() > 0


def test_solvergen_blackbox_stays_the_function():
    # A lazily loaded function stays the function on every access (not a submodule of its name).
    assert solvergen.blackbox is solvergen.blackbox and callable(solvergen.blackbox)
    assert isinstance(solvergen.blackbox(cheapest), torch.nn.Module)


K, FEATURES = 6, 5  # grid side, features per cell
_CELLS = np.arange(K * K).reshape(K, K)
_TAILS = np.concatenate([_CELLS[:, :-1].ravel(), _CELLS[:, 1:].ravel(), _CELLS[:-1].ravel(), _CELLS[1:].ravel()])
_HEADS = np.concatenate([_CELLS[:, 1:].ravel(), _CELLS[:, :-1].ravel(), _CELLS[1:].ravel(), _CELLS[:-1].ravel()])


def shortest_paths(costs: np.ndarray) -> np.ndarray:
    """Cells on the cheapest 4-connected path from the top-left to the bottom-right corner, per
    instance of [B, K, K] vertex costs (Dijkstra, costs clipped at 1e-3)."""
    paths = np.zeros_like(costs)
    for path, cost in zip(paths, costs):
        weight = np.maximum(cost.ravel(), 1e-3)[_HEADS]  # entering a cell costs the cell's cost
        _, predecessors = dijkstra(csr_matrix((weight, (_TAILS, _HEADS)), shape=(K * K, K * K)),
                                   indices=0, return_predecessors=True)
        cell = K * K - 1
        while cell >= 0:
            path.flat[cell], cell = 1, predecessors[cell]
    return paths


def test_a_linear_model_learns_grid_costs_through_dijkstra():
    gen = torch.Generator().manual_seed(0)
    features = torch.rand(32, K, K, FEATURES, generator=gen, dtype=torch.float64)
    theta = 2 * torch.rand(FEATURES, generator=gen, dtype=torch.float64) - 0.5
    true_paths = torch.as_tensor(shortest_paths((features @ theta + 0.1).numpy()))
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, 1, dtype=torch.float64)
    layer = solvergen.blackbox(shortest_paths, numpy=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        paths = layer(model(features).squeeze(-1))
        loss = (paths * (1 - true_paths) + (1 - paths) * true_paths).sum((1, 2)).mean()  # Hamming
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses


def test_the_matching_example_learns_in_a_tiny_setting():
    spec = importlib.util.spec_from_file_location("blackbox_matching", ROOT / "examples" / "blackbox_matching.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script runs: tiny tensors, and intra-op threads slow down on a busy machine
    try:
        record = example.main(steps=60, test_pairs=200, write=False)
    finally:
        torch.set_num_threads(threads)
    accuracy = {name: value["all"] for name, value in record["accuracy"].items()}
    assert accuracy["untrained"] < 0.2 < accuracy["raw_descriptors"] + 0.1 < accuracy["trained"], accuracy
