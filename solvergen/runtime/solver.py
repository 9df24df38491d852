"""The solver module that every generated solver class derives from."""
from __future__ import annotations

import math

import torch

from . import forward, ift, native
from .plan import Plan

BACKWARDS = ("ift", "autograd")
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def flat_params(params, m: int):
    """Check a module's `params` ([..., m], float32 or float64) in one-line errors: -> the rows
    [B, m] and the batch shape."""
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"params must be a torch.Tensor, got {type(params).__name__}")
    if params.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"params must be float32 or float64, got {params.dtype}")
    if params.dim() == 0 or params.shape[-1] != m:
        raise ValueError(f"params must have shape [..., {m}], got {list(params.shape)}")
    return params.reshape(-1, m), params.shape[:-1]


def checked_number(name, value, *, minimum=0.0, strict=True, integer=False, finite=True):
    """value as a float (an int where `integer`), or a one-line ValueError: a number above
    `minimum` (`strict`) or at least it, finite unless `finite` is False."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    valid = number > minimum if strict else number >= minimum  # (False for NaN)
    if valid and (finite or integer):
        valid = math.isfinite(number) and (not integer or number == int(number))
    if not valid:
        kind = "an integer" if integer else "a finite number" if finite else "a number"
        bound = f"above {minimum:g}" if strict else f"at least {minimum:g}"
        raise ValueError(f"{name} must be {kind} {bound}, got {value!r}")
    return int(number) if integer else number


class Solver(torch.nn.Module):
    """`solutions, valid = solver(params)`.

    params: [..., M] float32 or float64 tensor, any device.
    solutions: [..., S, N] with the dtype and device of params; invalid slots hold zeros and
        valid solutions come first.
    valid: [..., S] bool: real, finite and satisfying the equations (relative residual at most
        `residual_tol` after at most `newton_steps` Newton steps).

    backward="ift" (default) differentiates by the implicit function theorem; after each
    backward, `ill_conditioned` holds (as a tensor) the number of valid solutions with a
    non-zero incoming gradient left out of the gradient because their Jacobian was singular or
    worse conditioned than `cond_max`. Solutions whose incoming gradient is zero (all but the
    picked one after `select`) cost nothing in the backward.
    backward="autograd" differentiates through the forward computation itself (template
    solve, eigendecomposition, Newton steps): the baseline to compare against.
    precision="float64" (default) solves in float64 whatever the input dtype; "float32" solves
    in float32 (faster on GPUs; about 1e-5 relative error after polishing). residual_tol
    defaults to 1e-8 in float64 and 1e-4 in float32.
    eig="auto" uses LAPACK on the CPU and, on other devices, a method that never synchronizes
    with the host: for action matrices up to 4 x 4 the real eigenpairs in closed form
    (characteristic polynomial, closed-form real roots, adjugate eigenvectors; also with
    compile=True), else the characteristic polynomial with Aberth-Ehrlich roots. "lapack",
    "charpoly" or "closed_form" (4 x 4 at most) choose.
    compile=True runs the coefficient programs and the IFT backward through torch.compile
    (fused kernels; needs a C++ compiler on the CPU, Triton on GPUs), and for action matrices up
    to 4 x 4 with the closed-form eigenpairs also the template elimination, eigenpairs,
    read-off and Newton steps. The first call of each compiles them (seconds to minutes; torch
    caches the result on disk); only with backward="ift".
    backend="torch" (default) runs the template stage as batched torch operations; "native" runs
    the whole forward per instance in C (runtime/native.py: compiled at first use by the system C
    compiler for CPU tensors, by NVRTC for CUDA tensors, cached on disk; float64 inside;
    templates without a partial sign symmetry), and
    "auto" uses native where it can and otherwise the torch path after a one-line warning. The
    backward is the same; only with backward="ift".

    A generated module defines a subclass with its problem's `plan` (`solvergen.runtime.Plan`).
    """

    plan: Plan  # set by each generated subclass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        plan = cls.__dict__.get("plan")
        if plan is not None:
            cls.num_solutions = plan.num_solutions
            cls.unknown_names = plan.unknown_names
            cls.parameter_names = plan.parameter_names
            cls.template_shape = plan.template_shape
            cls.sign_gauge = plan.sign_gauge

    def __init__(
        self,
        backward="ift",
        newton_steps=2,
        residual_tol=None,
        imag_tol=1e-6,
        cond_max=1e10,
        precision="float64",
        eig="auto",
        compile=False,
        backend="torch",
    ):
        super().__init__()
        if getattr(type(self), "plan", None) is None:
            raise TypeError("solvergen.runtime.Solver is a base class: use a generated solver's Solver")
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be 'ift' or 'autograd', got {backward!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
        self._check_eig(eig)
        if compile not in (False, True):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        if compile and backward != "ift":
            raise ValueError("compile=True needs backward='ift' (the autograd baseline runs as written)")
        self.backward = backward
        self.newton_steps = checked_number("newton_steps", newton_steps, strict=False, integer=True)
        self.compute_dtype = PRECISIONS[precision]
        if residual_tol is None:
            residual_tol = 1e-8 if precision == "float64" else 1e-4
        self.residual_tol = checked_number("residual_tol", residual_tol, finite=False)  # inf: every root
        self.imag_tol = checked_number("imag_tol", imag_tol, strict=False, finite=False)  # inf: every root
        self.cond_max = checked_number("cond_max", cond_max, finite=False)
        self.eig = eig
        self.compile = compile
        self.ill_conditioned = None
        self.backend = native.check_backend(self, backend)

    def _check_eig(self, eig):
        if self.plan.closed_form_eig:
            if eig not in ("auto", "lapack", "charpoly", "closed_form"):
                raise ValueError(f"eig must be 'auto', 'lapack', 'charpoly' or 'closed_form', got {eig!r}")
        elif eig not in ("auto", "lapack", "charpoly"):
            detail = ""
            if eig == "closed_form":
                n = self.plan.template.basis
                detail = f" ('closed_form' needs an action matrix of at most 4 x 4; this one is {n} x {n})"
            raise ValueError(f"eig must be 'auto', 'lapack' or 'charpoly', got {eig!r}{detail}")

    def resolved_eig(self, device):
        """The eigen method used on `device`."""
        if self.eig != "auto":
            return self.eig
        if self.plan.closed_form_eig:
            return "lapack" if device.type == "cpu" and not self.compile else "closed_form"
        return "lapack" if device.type == "cpu" else "charpoly"

    def uses_native(self, device) -> bool:
        """Whether the template stage runs in the native kernel on `device` (runtime/native.py)."""
        return native.runs_native(self, device)

    def extra_repr(self):
        return (f"backward={self.backward!r}, newton_steps={self.newton_steps}, eig={self.eig!r}, compile={self.compile}, "
                f"backend={self.backend!r}")

    def forward(self, params):
        flat, batch_shape = flat_params(params, self.plan.num_parameters)
        if self.backward == "ift":
            x, valid = ift.ImplicitFunction.apply(flat, self)
        else:
            x, valid, _ = forward.solve(flat.to(self.compute_dtype), self)
            x, valid = forward.representable(x, valid, params.dtype)
            x = x.to(params.dtype)
        solutions = x.reshape(*batch_shape, self.num_solutions, self.plan.num_unknowns)
        return solutions, valid.reshape(*batch_shape, self.num_solutions)

    @classmethod
    def select(cls, solutions, valid, reference=None, score=None, up_to_sign=None):
        """Pick one solution per instance, differentiably: [..., S, N], [..., S] -> [..., N], [...].

        reference [..., N]: the valid solution closest to it; with `up_to_sign` (default: the
            problem's `sign_gauge`, True where solutions are defined up to sign) distances are
            taken up to sign and the pick is given the sign that aligns it with the reference.
            The sign flips the gauge's block of unknowns (`plan.sign_flip`: F, not a focal
            length beside it); for a problem without a sign gauge, every unknown.
        score: [..., S] (higher is better), or a callable solutions -> score: the best valid one.
        Gradients flow to the picked solution only. Instances without a valid solution get
        zeros, zero gradient and found = False.
        """
        if (reference is None) == (score is None):
            raise ValueError("give exactly one of reference= or score=")
        if solutions.shape[:-1] != valid.shape:
            raise ValueError(f"solutions [..., S, N] and valid [..., S] do not match: {list(solutions.shape)} and "
                             f"{list(valid.shape)}")
        batch, n = solutions.shape[:-2], solutions.shape[-1]
        if reference is not None:
            try:
                reference = reference.expand(*batch, n)
            except (RuntimeError, AttributeError):
                shape = list(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
                raise ValueError(f"reference must be a tensor of shape {list(batch) + [n]} (or one that broadcasts "
                                 f"to it), got {shape}") from None
        if score is not None and not callable(score) and getattr(score, "shape", None) != valid.shape:
            raise ValueError(f"score must be callable or a tensor shaped like valid {list(valid.shape)}, got "
                             f"{list(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
        if up_to_sign is None:
            up_to_sign = cls.sign_gauge
        flip = cls.plan.sign_flip or (-1.0,) * solutions.shape[-1]
        flip = torch.tensor(flip, dtype=solutions.dtype, device=solutions.device)
        with torch.no_grad():
            flipped = torch.zeros(valid.shape, dtype=torch.bool, device=solutions.device)
            if reference is not None:
                reference = reference.to(solutions.dtype).unsqueeze(-2)
                distance = (solutions - reference).norm(dim=-1)
                if up_to_sign:
                    other = (solutions * flip - reference).norm(dim=-1)
                    flipped = other < distance
                    distance = torch.minimum(distance, other)
                key = -distance
            else:
                key = score(solutions) if callable(score) else score
            key = torch.where(valid & ~torch.isnan(key), key, torch.full_like(key, -float("inf")))
            index = key.argmax(dim=-1, keepdim=True)
            found = valid.gather(-1, index).squeeze(-1)
            sign = torch.where(flipped.gather(-1, index), flip, torch.ones_like(flip))
        picked = solutions.gather(-2, index.unsqueeze(-1).expand(*index.shape, solutions.shape[-1]))
        picked = picked.squeeze(-2) * sign
        return torch.where(found.unsqueeze(-1), picked, torch.zeros_like(picked)), found
