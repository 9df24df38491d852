"""Size-generic layers (sympy IndexedBase / Sum specs): values and gradients against independent
references (tests/size_generic_references.py: the papers' forwards and closed-form backwards,
Sinkhorn, eigh), central finite differences, the structure the compiler finds, and errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, generated_module

import size_generic_references as ref
from solvergen.errors import SpecError



@pytest.fixture(autouse=True)
def float64_default():
    """These tests build float64 tensors by default; the default is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def layer(name, **options):
    return generated_module(name).Layer(**options)


def directional_fd(f, inputs, direction, h=1e-6):
    """Central difference of the scalar f along `direction` (a list matching `inputs`)."""
    plus = [x + h * d for x, d in zip(inputs, direction)]
    minus = [x - h * d for x, d in zip(inputs, direction)]
    return (f(*plus) - f(*minus)) / (2 * h)


def agree(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-8)


# -- LML --------------------------------------------------------------------------------------


def lml_instances(batch, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(batch, n, generator=g)
    k = torch.randint(1, max(2, n // 2), (batch,), generator=g).double()
    return x, k


@pytest.mark.parametrize("n", [5, 64, 1024])
def test_lml_matches_the_papers_bracketing_and_closed_form(n):
    x, k = lml_instances(64 if n < 1024 else 8, n, seed=n)
    lml = layer("lml")
    xg = x.clone().requires_grad_(True)
    y, ok = lml(xg, k)
    y_ref, _ = ref.lml_forward(x, k)
    assert ok.all()
    assert (y - y_ref).abs().max() < 1e-8
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    assert (xg.grad - ref.lml_backward(y_ref, grad)).abs().max() < 1e-8
    assert lml.multipliers[0].shape == (len(x),)


def test_lml_with_saturated_and_widely_spread_logits():
    """An entry within 1e-16 of 1 cannot reach the residual tolerance in float64 (log(1 - y)):
    the row still converges (its Newton correction is at rounding level); logits spread over
    +-30 converge within the default iterations."""
    x = torch.tensor([[18.0] + [0.0] * 19, [25.0, 21.0] + [-3.0] * 18])
    y, ok = layer("lml")(x, 3.0)
    y_ref, _ = ref.lml_forward(x, 3.0)
    assert ok.all() and (y - y_ref).abs().max() < 1e-12
    x = 10 * torch.randn(400, 20, generator=torch.Generator().manual_seed(1))
    y, ok = layer("lml")(x, 3.0)
    y_ref, _ = ref.lml_forward(x, 3.0)
    assert ok.float().mean() >= 0.995 and (y - y_ref)[ok].abs().max() < 1e-8


def test_lml_gradient_matches_finite_differences():
    x, k = lml_instances(100, 12, seed=1)
    lml = layer("lml")
    grad = torch.randn(100, 12)
    xg, kg = x.clone().requires_grad_(True), k.clone().requires_grad_(True)
    y, ok = lml(xg, kg)
    (y * grad).sum().backward()
    dx, dk = torch.randn_like(x), torch.randn_like(k)

    def loss(x_, k_):
        return (lml(x_, k_)[0] * grad).sum(-1)

    fd = directional_fd(loss, [x, k], [dx, dk])
    analytic = (xg.grad * dx).sum(-1) + kg.grad * dk
    good = sum(agree(a.item(), b.item(), 1e-5) for a, b in zip(analytic, fd))
    assert good >= 99, f"{good} of 100 agree"


def test_lml_matches_cvxpylayers_on_small_n():
    x, k = lml_instances(4, 6, seed=2)
    k = torch.full((4,), 2.0)
    cvx = ref.lml_cvxpy_layer(6, 2.0)
    if cvx is None:
        pytest.skip("cvxpylayers is not installed")
    y, ok = layer("lml")(x, k)
    (y_cvx,) = cvx(x, solver_args={"eps": 1e-12})
    assert ok.all() and (y - y_cvx).abs().max() < 1e-7


def test_lml_autograd_backward_agrees_with_ift():
    x, k = lml_instances(8, 30, seed=3)
    grads = []
    for backward in ("ift", "autograd"):
        xg = x.clone().requires_grad_(True)
        y, _ = layer("lml", backward=backward)(xg, k)
        (y * torch.arange(30.0)).sum().backward()
        grads.append(xg.grad)
    assert (grads[0] - grads[1]).abs().max() < 1e-8


# -- Entropic optimal transport ----------------------------------------------------------------


def ot_instances(batch, m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.rand(batch, m, n, generator=g)
    r = torch.rand(batch, m, generator=g) + 0.5
    c = torch.rand(batch, n, generator=g) + 0.5
    return M, r / r.sum(-1, keepdim=True), c / c.sum(-1, keepdim=True)


@pytest.mark.parametrize("m,n", [(5, 7), (40, 24), (1, 6)])
def test_entropic_ot_matches_sinkhorn_and_the_ddn_backward(m, n):
    M, r, c = ot_instances(6, m, n, seed=m * n)
    eps = 0.1
    ot = layer("entropic_ot")
    Mg = M.clone().requires_grad_(True)
    P, ok = ot(Mg, r, c, eps)
    P_ref = ref.sinkhorn(M, r, c, eps, iterations=3000)
    assert ok.all()
    assert (P - P_ref).abs().max() < 1e-8
    grad = torch.randn_like(P)
    (P * grad).sum().backward()
    dM, _, _ = ref.ot_backward_ddn(P_ref, r, c, eps, grad)
    assert (Mg.grad - dM).abs().max() < 1e-8


def test_entropic_ot_gradient_matches_autograd_through_sinkhorn_and_finite_differences():
    M, r, c = ot_instances(4, 6, 5, seed=4)
    eps = 0.2
    grad = torch.randn(4, 6, 5)
    ot = layer("entropic_ot")
    Mg = M.clone().requires_grad_(True)
    (ot(Mg, r, c, eps)[0] * grad).sum().backward()
    Ms = M.clone().requires_grad_(True)
    (ref.sinkhorn(Ms, r, c, eps, iterations=1000) * grad).sum().backward()
    assert (Mg.grad - Ms.grad).abs().max() < 1e-8
    dM = torch.randn_like(M)
    fd = directional_fd(lambda M_: (ot(M_, r, c, eps)[0] * grad).sum((-1, -2)), [M], [dM])
    analytic = (Mg.grad * dM).sum((-1, -2))
    assert all(agree(a.item(), b.item(), 1e-5) for a, b in zip(analytic, fd))


def test_entropic_ot_attach_to_sinkhorn():
    M, r, c = ot_instances(3, 8, 8, seed=5)
    ot = layer("entropic_ot")
    P_s = ref.sinkhorn(M, r, c, 0.1, iterations=3000).detach()
    Mg = M.clone().requires_grad_(True)
    P = ot.attach(Mg, r, c, 0.1, P_s)
    assert ot.last_ok.all() and (P - P_s).abs().max() < 1e-10
    grad = torch.randn_like(P)
    (P * grad).sum().backward()
    assert (Mg.grad - ref.ot_backward_ddn(P_s, r, c, 0.1, grad)[0]).abs().max() < 1e-8


def test_entropic_ot_structure_found_by_the_compiler():
    plan = generated_module("entropic_ot").PLAN
    assert plan.eliminated == (0,)  # P: diagonal Hessian, eliminated entrywise
    assert plan.redundant == ((1, 2),)  # sum r = sum c: one constraint dropped
    assert "diagonal Hessian of P" in (ROOT / "generated" / "entropic_ot.py").read_text().splitlines()[5]


# -- Robust pooling ---------------------------------------------------------------------------


def pool_instances(batch, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, 3, generator=g)
    outliers = torch.rand(batch, n, generator=g) < 0.2
    x = x + 6 * outliers[..., None] * torch.randn(batch, n, 3, generator=g).sign()
    return x


@pytest.mark.parametrize("name,penalty,alpha", [("robust_pool", "pseudo_huber", 1.0), ("robust_pool", "pseudo_huber", 0.6),
                                                ("robust_pool_welsch", "welsch", 1.0), ("robust_pool_welsch", "welsch", 1.5)])
def test_robust_pool_matches_reference_and_finite_differences(name, penalty, alpha):
    x = pool_instances(50, 40, seed=6)
    pool = layer(name)
    xg = x.clone().requires_grad_(True)
    y, ok = pool(xg, alpha)
    y_ref = ref.robust_pool_forward(x, penalty, alpha)
    assert ok.float().mean() >= 0.995
    assert (y - y_ref)[ok].abs().max() < 1e-8
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    back = ref.robust_pool_backward(x, y_ref, penalty, alpha, grad)
    assert (xg.grad - back)[ok].abs().max() < 1e-8
    dx = torch.randn_like(x)
    fd = directional_fd(lambda x_: (pool(x_, alpha)[0] * grad).sum(-1), [x], [dx])
    analytic = (xg.grad * dx).sum((-1, -2))
    good = sum(agree(a.item(), b.item(), 1e-5) for a, b in zip(analytic, fd))
    assert good >= 49
    # the scale alpha is a parameter too: its gradient against finite differences
    a = torch.full((50,), alpha, requires_grad=True)
    (pool(x, a)[0] * grad).sum().backward()
    fd_alpha = directional_fd(lambda a_: (pool(x, a_)[0] * grad).sum(-1), [a.detach()], [torch.ones(50)])
    good = sum(agree(u.item(), v.item(), 1e-5) for u, v in zip(a.grad, fd_alpha))
    assert good >= 49


@pytest.mark.parametrize("name,penalty", [("robust_pool", "pseudo_huber"), ("robust_pool_welsch", "welsch")])
def test_robust_pool_far_from_the_origin(name, penalty):
    """Points around (1e5, 1e5, 1e5): the gradient summed over the points cannot reach an absolute
    tol (its rounding is about n |x| eps), the layer stops at a rounding-level Newton step; the
    Hessian keeps (x_i - y)(x_i - y)^T in one sum (distributed into four sums over x_i x_i^T,
    x_i y^T, ..., its entries cancel: at 1e3 the gradient was off by 2e-10)."""
    x = pool_instances(16, 256, seed=11)
    grad = torch.randn(16, 3, generator=torch.Generator().manual_seed(3))
    pool = layer(name)
    for offset, rel in ((1e3, 1e-11), (1e5, 1e-9)):
        xg = (x + offset).requires_grad_(True)
        y, ok = pool(xg, 1.0)
        assert bool(ok.all()), offset
        y_ref = ref.robust_pool_forward(x, penalty, 1.0) + offset  # translation equivariant
        assert (y - y_ref).abs().max() <= 1e-12 * offset
        (y * grad).sum().backward()
        back = ref.robust_pool_backward(x, y_ref - offset, penalty, 1.0, grad)
        assert (xg.grad - back).abs().max() <= rel * back.abs().max(), offset


# -- Spectral matching ------------------------------------------------------------------------


def test_spectral_matching_attach_matches_autograd_through_eigh():
    g = torch.Generator().manual_seed(7)
    A = torch.randn(20, 6, 6, generator=g)
    W = A + A.transpose(-1, -2) + 8 * torch.ones(6, 6)  # a large leading gap
    v, lam = ref.leading_eigenvector(W)
    spectral = layer("spectral_matching")
    Wg = W.clone().requires_grad_(True)
    v_out, lam_out = spectral.attach(Wg, (v, lam))
    assert spectral.last_ok.all() and (v_out - v).abs().max() < 1e-10
    grad = torch.randn_like(v)
    (v_out * grad).sum().backward()
    Wr = W.clone().requires_grad_(True)
    (ref.leading_eigenvector(Wr)[0] * grad).sum().backward()
    assert (Wg.grad - Wr.grad).abs().max() < 1e-8
    dW = torch.randn_like(W)
    fd = directional_fd(lambda W_: (spectral.attach(W_, (v, lam))[0] * grad).sum(-1), [W], [dW])
    assert all(agree(a.item(), b.item(), 1e-5) for a, b in zip((Wg.grad * dW).sum((-1, -2)), fd))


# -- At n = 1,024 ----------------------------------------------------------------------------


def test_gradients_at_n_1024_against_references_and_finite_differences():
    """The bars at scale: LML and pooling at n = 1,024, OT at 128 x 96, spectral at n = 128
    (values and gradients against the references; central differences along a random
    direction per instance)."""
    g = torch.Generator().manual_seed(13)
    checks = []
    x, k = 3 * torch.randn(4, 1024, generator=g), torch.full((4,), 50.0)
    checks.append(("lml", (x, k), 0, lambda x_, k_: ref.lml_forward(x_, k_)[0],
                   lambda y, grad: ref.lml_backward(y, grad)))
    pts = pool_instances(4, 1024, seed=14)
    checks.append(("robust_pool", (pts, 1.0), 0, lambda x_, a: ref.robust_pool_forward(x_, "pseudo_huber", a),
                   lambda y, grad: ref.robust_pool_backward(pts, y, "pseudo_huber", 1.0, grad)))
    M, r, c = ot_instances(2, 128, 96, seed=15)
    checks.append(("entropic_ot", (M, r, c, 0.1), 0, lambda M_, r_, c_, e: ref.sinkhorn(M_, r_, c_, e, 3000),
                   lambda P, grad: ref.ot_backward_ddn(P, r, c, 0.1, grad)[0]))
    for name, args, wrt, reference, backward in checks:
        layer_ = layer(name)
        inputs = list(args)
        inputs[wrt] = inputs[wrt].clone().requires_grad_(True)
        y, ok = layer_(*inputs)
        y_ref = reference(*args)
        assert ok.all() and (y - y_ref).abs().max() < 1e-8, name
        grad = torch.randn(y.shape, generator=g)
        (y * grad).sum().backward()
        assert (inputs[wrt].grad - backward(y_ref, grad)).abs().max() < 1e-8, name
        direction = torch.randn(args[wrt].shape, generator=g)

        def loss(a, name=name, layer_=layer_, grad=grad, wrt=wrt):
            call = list(args)
            call[wrt] = a
            return (layer_(*call)[0] * grad).reshape(len(a), -1).sum(-1)
        fd = directional_fd(loss, [args[wrt]], [direction])
        analytic = (inputs[wrt].grad * direction).reshape(len(fd), -1).sum(-1)
        assert all(agree(a.item(), b.item(), 1e-5) for a, b in zip(analytic, fd)), name
    A = torch.randn(2, 128, 128, generator=g)
    W = A + A.transpose(-1, -2) + 40 * torch.ones(128, 128) / 128 * 8
    v, lam = ref.leading_eigenvector(W)
    spectral = layer("spectral_matching")
    Wg = W.clone().requires_grad_(True)
    v_out, _ = spectral.attach(Wg, (v, lam))
    grad = torch.randn(v.shape, generator=g)
    (v_out * grad).sum().backward()
    Wr = W.clone().requires_grad_(True)
    (ref.leading_eigenvector(Wr)[0] * grad).sum().backward()
    assert spectral.last_ok.all() and (Wg.grad - Wr.grad).abs().max() < 1e-8


# -- Calls, batches, masking ------------------------------------------------------------------


def test_call_by_name_broadcast_and_float32():
    x, _ = lml_instances(6, 10, seed=8)
    lml = layer("lml")
    y64, _ = lml(x.reshape(2, 3, 10), 3.0)
    assert y64.shape == (2, 3, 10)
    y_kw, _ = lml(k=torch.tensor(3.0), x=x.reshape(2, 3, 10))
    assert torch.equal(y64, y_kw)
    y32, ok32 = lml(x.float().reshape(2, 3, 10), 3.0)
    assert y32.dtype == torch.float32 and ok32.all()
    assert (y32.double() - y64).abs().max() < 1e-6


def test_unbatched_and_empty_calls():
    lml = layer("lml")
    x = torch.randn(10, requires_grad=True)
    y, ok = lml(x, 3.0)
    assert y.shape == (10,) and ok.shape == () and ok
    y[0].backward()
    assert x.grad.shape == (10,) and torch.isfinite(x.grad).all()
    x = torch.randn(0, 10, requires_grad=True)
    y, ok = lml(x, 3.0)
    assert y.shape == (0, 10) and ok.shape == (0,)
    y.sum().backward()
    assert x.grad.shape == (0, 10)


def test_autograd_backward_gives_zero_gradient_to_rows_that_are_not_ok():
    x, k = lml_instances(6, 20, seed=16)
    xg = x.clone().requires_grad_(True)
    y, ok = layer("lml", backward="autograd", max_iterations=2)(xg, k)
    assert not ok.all()
    (y * torch.randn_like(y)).sum().backward()
    assert (xg.grad[~ok] == 0).all() and torch.isfinite(xg.grad).all()


def test_inconsistent_sizes_and_bad_arguments_are_one_line_errors():
    ot = layer("entropic_ot")
    M, r, c = ot_instances(2, 4, 5)
    with pytest.raises(ValueError, match="inconsistent size n: 5 from M, 6 from c"):
        ot(M, r, torch.ones(2, 6) / 6, 0.1)
    with pytest.raises(TypeError, match="missing parameter"):
        ot(M, r, c)
    with pytest.raises(TypeError, match="no parameter 'q'"):
        ot(M, r, c, 0.1, q=1)
    with pytest.raises(ValueError, match="do not broadcast"):
        ot(M, r[:1].expand(3, 4), c, 0.1)


def test_nan_rows_are_masked_and_do_not_poison_the_batch():
    x, k = lml_instances(5, 20, seed=9)
    lml = layer("lml")
    clean, ok_clean = lml(x, k)
    bad = x.clone()
    bad[2, 3] = float("nan")
    xg = bad.clone().requires_grad_(True)
    y, ok = lml(xg, k)
    assert ok.tolist() == [True, True, False, True, True]
    assert torch.equal(y[[0, 1, 3, 4]], clean[[0, 1, 3, 4]]) and (y[2] == 0).all()
    y.sum().backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad[2] == 0).all()


def test_a_row_that_does_not_converge_is_not_ok_and_others_are_unchanged():
    M, r, c = ot_instances(3, 6, 6, seed=10)
    ot = layer("entropic_ot", max_iterations=50)
    P_all, ok_all = ot(M, r, c, 0.1)
    eps = torch.tensor([0.1, 1e-4, 0.1])  # a tiny regulariser: Newton from r c^T needs far more steps
    P, ok = layer("entropic_ot", max_iterations=6)(M, r, c, eps)
    assert not ok[1]
    assert ok_all.all()


# -- Specs no problem file has: compile and meet the bars -------------------------------------

SOFTMAX = '''
import sympy as sp
from solvergen import Argmin
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
x = sp.IndexedBase("x", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
problem = Argmin("softmax_argmin", unknowns=[y], parameters=[x],
                 objective=sp.Sum(-x[i] * y[i] + y[i] * sp.log(y[i]), (i, 0, n - 1)),
                 equalities=[sp.Sum(y[i], (i, 0, n - 1)) - 1], init=[1 / n])
'''

WEIGHTED_MEAN = '''
import sympy as sp
from solvergen import Argmin
n = sp.Symbol("n", integer=True, positive=True)
d = sp.Symbol("d", integer=True, positive=True)
i = sp.Idx("i", n)
k = sp.Idx("k", d)
x = sp.IndexedBase("x", shape=(n, d))
w = sp.IndexedBase("w", shape=(n,))
y = sp.IndexedBase("y", shape=(d,))
problem = Argmin("weighted_mean", unknowns=[y], parameters=[x, w],
                 objective=sp.Sum(w[i] * sp.Sum((x[i, k] - y[k]) ** 2, (k, 0, d - 1)), (i, 0, n - 1)))
'''


def compile_spec(tmp_path, text, name):
    from solvergen.generate import generate, import_generated

    spec = tmp_path / f"{name}_spec.py"
    spec.write_text(text)
    result = generate(spec, tmp_path / "out")
    return import_generated(result.path).Layer


def test_softmax_written_as_an_argmin(tmp_path):
    Softmax = compile_spec(tmp_path, SOFTMAX, "softmax_argmin")
    x = torch.randn(16, 50, requires_grad=True)
    y, ok = Softmax()(x)
    assert ok.all() and (y - torch.softmax(x, -1)).abs().max() < 1e-10
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (torch.softmax(x2, -1) * grad).sum().backward()
    assert (x.grad - x2.grad).abs().max() < 1e-10


def test_weighted_mean_with_a_size_generic_point_dimension(tmp_path):
    Mean = compile_spec(tmp_path, WEIGHTED_MEAN, "weighted_mean")
    x = torch.randn(8, 30, 4, requires_grad=True)
    w = (torch.rand(8, 30) + 0.1).requires_grad_(True)
    y, ok = Mean()(x, w)
    expected = (w[..., None] * x).sum(1) / w.sum(1, keepdim=True)
    assert ok.all() and (y - expected).abs().max() < 1e-10
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    ((w2[..., None] * x2).sum(1) / w2.sum(1, keepdim=True) * grad).sum().backward()
    assert (x.grad - x2.grad).abs().max() < 1e-10 and (w.grad - w2.grad).abs().max() < 1e-10


SPARSEMAX = '''
import sympy as sp
from solvergen import Argmin
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
x = sp.IndexedBase("x", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
problem = Argmin("sparsemax_argmin", unknowns=[y], parameters=[x],
                 objective=sp.Sum((y[i] - x[i]) ** 2, (i, 0, n - 1)) / 2,
                 equalities=[sp.Sum(y[i], (i, 0, n - 1)) - 1], inequalities=[y[i] >= 0], init=[1 / n])
'''


def sparsemax(x):
    """Martins and Astudillo's closed form: the Euclidean projection onto the simplex."""
    z, _ = torch.sort(x, dim=-1, descending=True)
    k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    cumulative = z.cumsum(-1)
    support = (1 + k * z > cumulative).sum(-1, keepdim=True)
    tau = (cumulative.gather(-1, support - 1) - 1) / support
    return torch.clamp(x - tau, min=0)


def test_sparsemax_written_as_an_argmin_with_an_inequality_family(tmp_path):
    Sparsemax = compile_spec(tmp_path, SPARSEMAX, "sparsemax_argmin")
    x = 2 * torch.randn(200, 30)
    xg = x.clone().requires_grad_(True)
    layer_ = Sparsemax()
    y, ok = layer_(xg)
    expected = sparsemax(x)
    assert ok.float().mean() >= 0.995
    assert (y - expected)[ok].abs().max() < 1e-8
    assert ((y == 0) == (expected == 0))[ok].float().mean() > 0.999  # the same support
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    x2 = x.clone().requires_grad_(True)
    (sparsemax(x2) * grad).sum().backward()
    assert (xg.grad - x2.grad)[ok].abs().max() < 1e-8
    multipliers = layer_.multipliers
    assert len(multipliers) == 2 and multipliers[1].shape == (200, 30) and (multipliers[1] >= 0).all()


ENTMAX15 = '''
import sympy as sp
from solvergen import Argmin
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
x = sp.IndexedBase("x", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
problem = Argmin("entmax15_argmin", unknowns=[y], parameters=[x],
                 objective=sp.Sum(-x[i] * y[i] - sp.Rational(4, 3) * (y[i] - y[i] ** sp.Rational(3, 2)), (i, 0, n - 1)),
                 equalities=[sp.Sum(y[i], (i, 0, n - 1)) - 1], inequalities=[y[i] >= 0], init=[1 / n])
'''


def entmax15(x, iterations=200):
    """1.5-entmax (Peters, Niculae and Martins): y = [(x - tau) / 2]_+^2 with sum y = 1, tau by
    bisection (sum y decreases in tau; tau in [max x - 2, max x])."""
    low, high = x.amax(-1, keepdim=True) - 2, x.amax(-1, keepdim=True)
    for _ in range(iterations):
        tau = (low + high) / 2
        over = (torch.clamp((x - tau) / 2, min=0) ** 2).sum(-1, keepdim=True) > 1
        low, high = torch.where(over, tau, low), torch.where(over, high, tau)
    return torch.clamp((x - (low + high) / 2) / 2, min=0) ** 2


@pytest.mark.parametrize("n", [6, 200])
def test_entmax15_with_an_infinite_hessian_at_its_zeros(tmp_path, n):
    """y**1.5 has an infinite second derivative at y = 0, where most entries end (sparse): the
    interior point keeps y inside its domain, the active-set polish and the inertia count take
    the entries pinned by their bound from the bound's row; the gradient agrees with central
    differences. (Before: ok on no row.)"""
    Entmax = compile_spec(tmp_path, ENTMAX15, "entmax15_argmin")
    x = 2 * torch.randn(100, n, generator=torch.Generator().manual_seed(n))
    xg = x.clone().requires_grad_(True)
    y, ok = Entmax()(xg)
    expected = entmax15(x)
    assert ok.float().mean() >= 0.995
    assert (y - expected)[ok].abs().max() < 1e-8
    assert ((y == 0) == (expected == 0)).float().mean() > 0.999 and (expected == 0).float().mean() > 0.3  # sparse
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    dx = torch.randn_like(x)
    fd = directional_fd(lambda x_: (Entmax()(x_)[0] * grad).sum(-1), [x], [dx])
    analytic = (xg.grad * dx).sum(-1)
    good = sum(agree(a.item(), b.item(), 1e-5) for a, b in zip(analytic, fd))
    assert good >= 99


CAPPED_SIMPLEX = '''
import sympy as sp
from solvergen import Argmin
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
x = sp.IndexedBase("x", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
k = sp.Symbol("k")
problem = Argmin("capped_simplex", unknowns=[y], parameters=[x, k],
                 objective=sp.Sum((y[i] - x[i]) ** 2, (i, 0, n - 1)) / 2,
                 equalities=[sp.Sum(y[i], (i, 0, n - 1)) - k], inequalities=[y[i] >= 0, y[i] <= 1], init=[k / n])
'''


def capped_simplex(x, k, iterations=200):
    """The Euclidean projection onto {0 <= y <= 1, sum y = k}: y = clip(x - tau, 0, 1), tau by bisection."""
    low, high = x.amin(-1, keepdim=True) - 1, x.amax(-1, keepdim=True)
    for _ in range(iterations):
        tau = (low + high) / 2
        over = torch.clamp(x - tau, 0, 1).sum(-1, keepdim=True) > k.unsqueeze(-1)
        low, high = torch.where(over, tau, low), torch.where(over, high, tau)
    return torch.clamp(x - (low + high) / 2, 0, 1)


def test_capped_simplex_at_its_vertices(tmp_path):
    """Integer k: many solutions are vertices (k ones, the rest zeros), where the n bounds and
    the equality are active and dependent. Every entry is pinned by a bound: y comes from the
    bounds' rows, the equality's multiplier keeps the interior point's value, the row is a
    strict minimum (empty reduced Hessian), and the gradient is the vertex's: zero."""
    Capped = compile_spec(tmp_path, CAPPED_SIMPLEX, "capped_simplex")
    x = 8 * torch.randn(200, 6, generator=torch.Generator().manual_seed(6))
    k = torch.full((200,), 2.0)
    xg = x.clone().requires_grad_(True)
    y, ok = Capped()(xg, k)
    expected = capped_simplex(x, k)
    vertex = ((expected == 0) | (expected == 1)).all(-1)
    assert vertex.float().mean() > 0.2
    assert bool(ok.all()) and (y - expected).abs().max() < 1e-12
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    assert (xg.grad[vertex] == 0).all()
    free = ((expected > 0) & (expected < 1)).to(x.dtype)
    expected_grad = free * (grad - (free * grad).sum(-1, keepdim=True) / free.sum(-1, keepdim=True).clamp_min(1))
    assert (xg.grad - expected_grad).abs().max() < 1e-8


def test_capped_simplex_with_two_bound_families(tmp_path):
    """0 <= y <= 1 and sum y = k: the inactive bounds' -1e30 blocks no longer drown the inertia
    count's eigenvalues (before: ok on no row). k is not an integer here (vertices: the next
    test)."""
    Capped = compile_spec(tmp_path, CAPPED_SIMPLEX, "capped_simplex")
    x = 1.5 * torch.randn(100, 10, generator=torch.Generator().manual_seed(4))
    k = torch.rand(100, generator=torch.Generator().manual_seed(5)) * 4 + 1.25
    k = torch.where((k - k.round()).abs() < 0.05, k + 0.1, k)
    xg = x.clone().requires_grad_(True)
    y, ok = Capped()(xg, k)
    expected = capped_simplex(x, k)
    assert ok.float().mean() >= 0.995
    assert (y - expected)[ok].abs().max() < 1e-8
    assert ((expected == 0).any(-1) & (expected == 1).any(-1)).float().mean() > 0.5  # both families active
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    free = ((expected > 0) & (expected < 1)).to(x.dtype)  # dy/dx = I - 1 1^T / |F| on the free entries F
    expected_grad = free * (grad - (free * grad).sum(-1, keepdim=True) / free.sum(-1, keepdim=True))
    assert (xg.grad - expected_grad)[ok].abs().max() < 1e-8
    dx = torch.randn_like(x)
    fd = directional_fd(lambda x_: (Capped()(x_, k)[0] * grad).sum(-1), [x], [dx])
    analytic = (xg.grad * dx).sum(-1)
    # relative 1e-5, or both zero to the differences' rounding (1e-10 at h = 1e-6): a row with a
    # single free entry (the others on bounds, it fixed by k) has a zero gradient
    assert sum(agree(u.item(), v.item(), 1e-5) or abs(u - v) <= 1e-8 for u, v in zip(analytic, fd)) >= 99


ENTRYWISE_IMPLICIT = '''
import sympy as sp
from solvergen import Implicit
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
a = sp.IndexedBase("a", shape=(n,))
b = sp.IndexedBase("b", shape=(n,))
u = sp.IndexedBase("u", shape=(n,))
v = sp.IndexedBase("v", shape=(n,))
problem = Implicit("entrywise_pair", unknowns=[u, v], parameters=[a, b],
                   equations=[u[i] + u[i] ** 3 - v[i] - a[i], v[i] + sp.exp(v[i]) / 4 + u[i] / 2 - b[i]],
                   init=[0, 0])
'''


def test_entrywise_implicit_is_solved_entry_by_entry(tmp_path):
    """Equations whose entry i involves the unknowns' entries i only: the Newton and IFT systems
    are one 2 x 2 system per entry (the summary says so), not a dense (2n)^2 matrix. Values
    against Newton per entry written here, gradients against central differences, n = 1,024."""
    from solvergen.generate import generate, import_generated

    spec = tmp_path / "entrywise_pair.py"
    spec.write_text(ENTRYWISE_IMPLICIT)
    result = generate(spec, tmp_path / "out")
    assert "Jacobian entry by entry: a 2 x 2 system per entry" in result.path.read_text()
    Pair = import_generated(result.path).Layer
    g = torch.Generator().manual_seed(9)
    a, b = 2 * torch.randn(4, 1024, generator=g), 2 * torch.randn(4, 1024, generator=g)
    ag = a.clone().requires_grad_(True)
    (u, v), ok = Pair()(ag, b)
    assert bool(ok.all())
    uu, vv = torch.zeros_like(a), torch.zeros_like(a)  # Newton per entry, the 2 x 2 inverse by hand
    for _ in range(100):
        f1, f2 = uu + uu**3 - vv - a, vv + torch.exp(vv) / 4 + uu / 2 - b
        j11, j12, j21, j22 = 1 + 3 * uu**2, -torch.ones_like(uu), torch.full_like(uu, 0.5), 1 + torch.exp(vv) / 4
        det = j11 * j22 - j12 * j21
        uu, vv = uu - (j22 * f1 - j12 * f2) / det, vv - (j11 * f2 - j21 * f1) / det
    assert (u - uu).abs().max() < 1e-10 and (v - vv).abs().max() < 1e-10
    w = torch.randn(4, 1024, generator=g)
    (u * w).sum().backward()
    da = torch.randn(4, 1024, generator=g)
    fd = directional_fd(lambda a_: (Pair()(a_, b)[0][0] * w).sum(-1), [a], [da])
    analytic = (ag.grad * da).sum(-1)
    assert all(agree(x.item(), y.item(), 1e-5) for x, y in zip(analytic, fd))


BOX_LEAST_SQUARES = '''
import sympy as sp
from solvergen import Argmin
m = sp.Symbol("m", integer=True, positive=True)
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", m)
j = sp.Idx("j", n)
y = sp.IndexedBase("y", shape=(n,))
A = sp.IndexedBase("A", shape=(m, n))
b = sp.IndexedBase("b", shape=(m,))
problem = Argmin("box_least_squares", unknowns=[y], parameters=[A, b],
                 objective=sp.Sum((sp.Sum(A[i, j] * y[j], (j, 0, n - 1)) - b[i]) ** 2, (i, 0, m - 1)),
                 inequalities=[y[j] >= 0, y[j] <= 1], init=[sp.Rational(1, 2)])
'''


def test_box_least_squares_with_a_dense_hessian(tmp_path):
    """min |A y - b|^2 over 0 <= y <= 1: y's Hessian A^T A is dense, so the bound families'
    diagonal is only their own block, 0 at the active entries: they must not be eliminated by
    those pivots (before: ok on no row with an active bound). Against scipy's lsq_linear."""
    from scipy.optimize import lsq_linear

    Box = compile_spec(tmp_path, BOX_LEAST_SQUARES, "box_least_squares")
    g = torch.Generator().manual_seed(12)
    A, b = torch.randn(100, 8, 6, generator=g), 2 * torch.randn(100, 8, generator=g)
    Ag = A.clone().requires_grad_(True)
    y, ok = Box()(Ag, b)
    reference = torch.stack([torch.from_numpy(lsq_linear(a.numpy(), c.numpy(), bounds=(0, 1), tol=1e-15,
                                                        lsmr_tol=1e-15).x) for a, c in zip(A, b)])
    active = ((reference < 1e-9) | (reference > 1 - 1e-9)).any(-1)
    assert active.float().mean() > 0.5
    assert ok.float().mean() >= 0.995
    assert (y - reference)[ok].abs().max() < 1e-8
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    dA = torch.randn_like(A)
    fd = directional_fd(lambda A_: (Box()(A_, b)[0] * grad).sum(-1), [A], [dA])
    analytic = (Ag.grad * dA).sum((-1, -2))
    assert sum(agree(u.item(), v.item(), 1e-5) for u, v in zip(analytic, fd)) >= 97  # FD may cross a kink


QUADRATIC_OT = '''
import sympy as sp
from solvergen import Argmin
m = sp.Symbol("m", integer=True, positive=True)
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", m)
j = sp.Idx("j", n)
M = sp.IndexedBase("M", shape=(m, n))
P = sp.IndexedBase("P", shape=(m, n))
r = sp.IndexedBase("r", shape=(m,))
c = sp.IndexedBase("c", shape=(n,))
eps = sp.Symbol("eps")
problem = Argmin("quadratic_ot", unknowns=[P], parameters=[M, r, c, eps],
                 objective=sp.Sum(M[i, j] * P[i, j] + eps / 2 * P[i, j] ** 2, (i, 0, m - 1), (j, 0, n - 1)),
                 equalities=[sp.Sum(P[i, j], (j, 0, n - 1)) - r[i], sp.Sum(P[i, j], (i, 0, m - 1)) - c[j]],
                 inequalities=[P[i, j] >= 0], init=[r[i] * c[j]])
'''


def test_quadratic_ot_with_float32_marginals(tmp_path):
    """Sparse (quadratically regularised) OT, P >= 0, with a redundant pair of families: with
    float32 marginals sum r and sum c differ by about 1e-8, which the dropped constraint cannot
    absorb; the convergence test measures those families less that gap and checks the gap
    against float32's precision (before: ok on 1 row of 20). Against the float64 solution."""
    OT = compile_spec(tmp_path, QUADRATIC_OT, "quadratic_ot")
    g = torch.Generator().manual_seed(13)
    M = torch.rand(20, 5, 4, generator=g)
    r, c = torch.rand(20, 5, generator=g) + 0.5, torch.rand(20, 4, generator=g) + 0.5
    r32, c32 = r.float() / r.float().sum(-1, keepdim=True), c.float() / c.float().sum(-1, keepdim=True)
    assert ((r32.double().sum(-1) - c32.double().sum(-1)).abs() > 0).any()
    P32, ok32 = OT()(M.float(), r32, c32, torch.full((20,), 0.1))
    P64, ok64 = OT()(M, r / r.sum(-1, keepdim=True),
                     c / c.sum(-1, keepdim=True), torch.full((20,), 0.1))
    assert bool(ok32.all()) and bool(ok64.all()) and P32.dtype == torch.float32
    assert (P32.double() - P64).abs().max() < 1e-5
    assert (P64 == 0).float().mean() > 0.3  # sparse


UNBALANCED_OT = '''
import sympy as sp
from solvergen import Argmin
m = sp.Symbol("m", integer=True, positive=True)
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", m)
j = sp.Idx("j", n)
P = sp.IndexedBase("P", shape=(m, n))
M = sp.IndexedBase("M", shape=(m, n))
r = sp.IndexedBase("r", shape=(m,))
c = sp.IndexedBase("c", shape=(n,))
eps, tau = sp.symbols("eps tau")
a = sp.Sum(P[i, j], (j, 0, n - 1))  # row sums, used inside a KL term: nonlinearly
b = sp.Sum(P[i, j], (i, 0, m - 1))
objective = (sp.Sum(M[i, j] * P[i, j] + eps * P[i, j] * (sp.log(P[i, j]) - 1), (i, 0, m - 1), (j, 0, n - 1))
             + tau * sp.Sum(a * sp.log(a / r[i]) - a + r[i], (i, 0, m - 1))
             + tau * sp.Sum(b * sp.log(b / c[j]) - b + c[j], (j, 0, n - 1)))
problem = Argmin("unbalanced_ot", unknowns=[P], parameters=[M, r, c, eps, tau], objective=objective,
                 init=[r[i] * c[j]])
'''


def unbalanced_sinkhorn(M, r, c, eps, tau, iterations):
    """Chizat et al.'s scaling iterations for KL-penalised marginals (the reference)."""
    K = torch.exp(-M / eps)
    power = tau / (tau + eps)
    u, v = torch.ones_like(r), torch.ones_like(c)
    for _ in range(iterations):
        u = (r / (K @ v[..., None])[..., 0]) ** power
        v = (c / (K.transpose(-1, -2) @ u[..., None])[..., 0]) ** power
    return u[..., None] * K * v[..., None, :]


def test_unbalanced_ot_sums_become_auxiliary_unknowns(tmp_path):
    """The KL terms use the row and column sums nonlinearly: the compiler makes them auxiliary
    unknowns with equality families, so that the Hessian stays diagonal."""
    from solvergen.generate import generate, import_generated

    spec = tmp_path / "unbalanced_ot_spec.py"
    spec.write_text(UNBALANCED_OT)
    result = generate(spec, tmp_path / "out")
    assert "auxiliary unknowns" in result.description and "diagonal Hessian of P" in result.description
    layer_ = import_generated(result.path).Layer()
    g = torch.Generator().manual_seed(11)
    M = torch.rand(20, 7, 5, generator=g)
    r = torch.rand(20, 7, generator=g) + 0.2
    c = torch.rand(20, 5, generator=g) + 0.2
    Mg = M.clone().requires_grad_(True)
    P, ok = layer_(Mg, r, c, 0.1, 0.5)
    P_ref = unbalanced_sinkhorn(M, r, c, 0.1, 0.5, 5000)
    assert ok.all() and (P - P_ref).abs().max() < 1e-8
    assert layer_.multipliers is None  # the auxiliary families are internal: no declared constraint
    grad = torch.randn_like(P)
    (P * grad).sum().backward()
    Ms = M.clone().requires_grad_(True)
    (unbalanced_sinkhorn(Ms, r, c, 0.1, 0.5, 5000) * grad).sum().backward()
    assert (Mg.grad - Ms.grad).abs().max() < 1e-8


QUADRATIC_ON_PLANE = '''
import sympy as sp
from solvergen import Argmin
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
j = sp.Idx("j", n)
W = sp.IndexedBase("W", shape=(n, n))
x = sp.IndexedBase("x", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
problem = Argmin("quadratic_on_plane", unknowns=[y], parameters=[W, x],
                 objective=sp.Sum(sp.Sum(y[i] * W[i, j] * y[j], (j, 0, n - 1)) / 2 - x[i] * y[i], (i, 0, n - 1)),
                 equalities=[sp.Sum(y[i], (i, 0, n - 1)) - 1])
'''


def test_ok_is_false_at_constrained_maxima_and_saddles(tmp_path):
    """ok needs the second-order sufficient condition: the KKT matrix's inertia (as many
    positive eigenvalues as unknowns, as many negative as constraints), here checked against
    the reduced Hessian Z^T W Z on the plane sum y = 1."""
    Layer = compile_spec(tmp_path, QUADRATIC_ON_PLANE, "quadratic_on_plane")
    g = torch.Generator().manual_seed(12)
    A = torch.randn(60, 5, 5, generator=g)
    W = A + A.transpose(-1, -2) + torch.linspace(-6, 6, 60)[:, None, None] * torch.eye(5)
    x = torch.randn(60, 5, generator=g)
    y, ok = Layer()(W, x)
    Z = torch.linalg.qr(torch.cat([torch.ones(5, 1), torch.randn(5, 4, generator=g)], -1))[0][:, 1:]
    reduced = torch.linalg.eigvalsh(Z.T @ W @ Z)
    minimum = (reduced > 0).all(-1)
    assert minimum.any() and (~minimum).any()
    assert torch.equal(ok, minimum)
    stationary = W @ y.unsqueeze(-1) - x.unsqueeze(-1)  # = -mu 1 at any KKT point
    assert (stationary - stationary.mean(-2, keepdim=True)).abs().max() < 1e-8


# -- Malformed specs ---------------------------------------------------------------------------

HEAD = '''
import sympy as sp
from solvergen import Argmin, Implicit
n = sp.Symbol("n", integer=True, positive=True)
m = sp.Symbol("m", integer=True, positive=True)
i = sp.Idx("i", n)
j = sp.Idx("j", m)
x = sp.IndexedBase("x", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
'''

BAD = {
    "index range": ('problem = Argmin("b", [y], [x], sp.Sum(y[j] ** 2, (j, 0, m - 1)))',
                    "index j of y[j] runs over m but dimension 0 of y has size n"),
    "partial sum": ('problem = Argmin("b", [y], [x], sp.Sum(y[i] ** 2, (i, 0, n - 2)))',
                    "sums must run over the index's whole range"),
    "free index in objective": ('problem = Argmin("b", [y], [x], y[i] ** 2)', "the objective has the free index i"),
    "index as a value": ('problem = Argmin("b", [y], [x], sp.Sum(i * y[i] ** 2, (i, 0, n - 1)))',
                         "uses the index i as a value"),
    "undeclared array": ('z = sp.IndexedBase("z", shape=(n,))\n'
                         'problem = Argmin("b", [y], [x], sp.Sum(z[i] * y[i] ** 2, (i, 0, n - 1)))',
                         "uses the undeclared array z"),
    "non-smooth": ('problem = Argmin("b", [y], [x], sp.Sum(sp.Abs(y[i] - x[i]), (i, 0, n - 1)))',
                   "Abs(...) of an unknown, which is not smooth"),
    "size from no parameter": ('k = sp.Symbol("k")\nz = sp.IndexedBase("z", shape=(m,))\n'
                               'problem = Argmin("b", [z], [k], sp.Sum((z[j] - k) ** 2, (j, 0, m - 1)))',
                               "size m appears in no parameter's shape"),
    "inequality without unknown": ('problem = Argmin("b", [y], [x], sp.Sum((y[i] - x[i]) ** 2, (i, 0, n - 1)), '
                                   'inequalities=[x[i] - 1])', "inequality 0 (x[i] - 1) does not involve any unknown"),
    "no shape": ('z = sp.IndexedBase("z")\nproblem = Argmin("b", [z], [x], sp.Sum(z[i] ** 2, (i, 0, n - 1)))',
                 "has no shape"),
    "constraint without unknown": ('problem = Argmin("b", [y], [x], sp.Sum(y[i] ** 2, (i, 0, n - 1)), '
                                   'equalities=[sp.Sum(x[i], (i, 0, n - 1)) - 1])', "does not involve any unknown"),
    "unused unknown": ('z = sp.IndexedBase("z", shape=(n,))\nproblem = Argmin("b", [y, z], [x], '
                       'sp.Sum((y[i] - x[i]) ** 2, (i, 0, n - 1)))', "unknown z appears in no objective term"),
    "infinity": ('problem = Argmin("b", [y], [x], sp.Sum((y[i] - x[i]) ** 2, (i, 0, n - 1)) + sp.oo)',
                 "contains an infinite or undefined number"),
    "implicit shapes": ('problem = Implicit("b", [y], [x], [sp.Sum(y[i] - x[i], (i, 0, n - 1))])',
                        "one equation family per unknown"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_size_generic_specs_are_refused_in_one_line(case, tmp_path):
    body, message = BAD[case]
    spec = tmp_path / "bad.py"
    spec.write_text(HEAD + body + "\n")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "solvergen", "generate", "--out", str(out), str(spec)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not out.exists() or not any(out.iterdir())


def test_spec_error_is_raised_in_python_too():
    namespace: dict = {}
    with pytest.raises(SpecError, match="free index i"):
        exec(HEAD + BAD["free index in objective"][0], namespace)


# -- The closed-form KKT solve the compiler derives (solvergen/indexed.py, schur_solve) ---------


def test_lml_backward_is_the_papers_closed_form_derived_by_the_compiler():
    """LML (diagonal Hessian, one scalar equality): the compiler emits the KKT solve in closed
    form with D^-1 simplified to y (1 - y), the paper's eq. 19; its weights equal the general
    structured solve's on random points, for the IFT's right-hand side (the loss's gradient for
    y, 0 for the multiplier)."""
    from solvergen.runtime.structured_kkt import StructuredSystem

    plan = generated_module("lml").PLAN
    assert plan.schur_solve is not None
    gen = torch.Generator().manual_seed(3)
    B, n = 5, 40
    env = {"x": torch.randn(B, n, generator=gen), "k": torch.full((B,), 7.0),
           "y": torch.rand(B, n, generator=gen) * 0.98 + 0.01, "_mu0": torch.randn(B, generator=gen)}
    rhs = [torch.randn(B, n, generator=gen), torch.zeros(B)]
    closed = plan.schur_solve({**env, "_g0": rhs[0]}, {"n": n})
    general, solved = StructuredSystem(plan, {"n": n}, plan.jacobian_terms(env, {"n": n}), B)._structured_solve(rhs)
    assert solved.all()
    y = env["y"]  # w_y = D^-1 (g - A w_mu) with D^-1 = y (1 - y) and A = 1
    torch.testing.assert_close(closed[0], y * (1 - y) * (rhs[0] - closed[1][:, None]), rtol=1e-13, atol=1e-13)
    for a, b in zip(closed, general):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


SPHERE = '''
import sympy as sp
from solvergen import Argmin
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
x = sp.IndexedBase("x", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
problem = Argmin("sphere_projection", unknowns=[y], parameters=[x],
                 objective=sp.Sum((y[i] - x[i]) ** 2, (i, 0, n - 1)),
                 equalities=[sp.Sum(y[i] ** 2, (i, 0, n - 1)) - 1], init=[x[i]])
'''


def test_closed_form_solve_with_a_curved_constraint(tmp_path):
    """The projection onto the unit sphere: the closed-form solve's D = 2 + 2 mu depends on the
    multiplier and A = 2 y on the point. y = x / |x|; the gradient is (I - y y^T) / |x| applied
    to the upstream gradient (the closed form), and agrees with central differences."""
    Sphere = compile_spec(tmp_path, SPHERE, "sphere_projection")
    assert Sphere.plan.schur_solve is not None
    x = torch.randn(6, 25) * 3
    x.requires_grad_(True)
    y, ok = Sphere()(x)
    assert ok.all()
    torch.testing.assert_close(y, x / x.norm(dim=-1, keepdim=True), rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    yd = y.detach()
    expected = (grad - yd * (yd * grad).sum(-1, keepdim=True)) / x.detach().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-12)
    direction = torch.randn_like(x)
    fd = directional_fd(lambda x_: (Sphere()(x_)[0] * grad).sum(), [x.detach()], [direction])
    assert agree((x.grad * direction).sum(), fd, 1e-6)


LOG_BARRIER_SIMPLEX = '''
import sympy as sp
from solvergen import Argmin
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
x = sp.IndexedBase("x", shape=(n,))
c = sp.IndexedBase("c", shape=(n,))
y = sp.IndexedBase("y", shape=(n,))
problem = Argmin("logbarrier_simplex", unknowns=[y], parameters=[x, c],
                 objective=sp.Sum(-c[i] * sp.log(y[i]) - x[i] * y[i], (i, 0, n - 1)),
                 equalities=[sp.Sum(y[i], (i, 0, n - 1)) - 1], init=[1 / n])
'''


def test_log_barrier_iterates_stay_where_the_log_is_defined(tmp_path):
    """min sum -c_i log y_i - x_i y_i on sum y = 1: the residual -c/y - x + mu is finite at y < 0,
    where the objective is not defined, so the compiler's domain conditions (y >= 0, from the log)
    keep the line searches there. Found by a helper: before, 2 of 16 rows returned ok with
    negative entries. Reference: y_i = c_i / (mu - x_i) with mu > max x solving sum y = 1."""
    Layer = compile_spec(tmp_path, LOG_BARRIER_SIMPLEX, "logbarrier_simplex")
    assert Layer.plan.domain is not None
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor([[4.82, 7.504, 4.333, -2.005, -3.599]]), 3 * torch.randn(31, 5, generator=gen)])
    c = torch.cat([torch.tensor([[1.125, 0.535, 0.746, 0.672, 0.535]]), 0.5 + torch.rand(31, 5, generator=gen)])
    y, ok = Layer()(x, c)
    lo, hi = x.amax(-1) + 1e-12, x.amax(-1) + c.sum(-1) + 1.0  # sum c / (mu - x) decreases from inf to < 1
    for _ in range(200):
        mu = 0.5 * (lo + hi)
        above = (c / (mu[:, None] - x)).sum(-1) > 1
        lo, hi = torch.where(above, mu, lo), torch.where(above, hi, mu)
    reference = c / (0.5 * (lo + hi))[:, None].sub(x)
    assert ok.all() and (y > 0).all()
    torch.testing.assert_close(y, reference, rtol=1e-9, atol=1e-12)
