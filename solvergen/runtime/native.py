"""The native backend: the template stage of a solver in C, compiled at first use.

`Solver(backend="native")` runs, per instance, what `template.polished_candidates` runs batched
in torch: template elimination, action matrix, real eigenpairs, read-off and Newton polishing
(native/stage.h). The coefficients before it, and the linear block, validity and ordering after
it, stay in torch: they are a few batched tensor operations, while the template stage is
thousands of small ones (and one LAPACK call per matrix). The IFT backward needs only the
solutions, so it is unchanged.

The C source of a problem is its plan's sizes and tables (`source`) followed by native/stage.h;
it is compiled with the system C compiler (`$CC`, else cc, gcc or clang; -O3, the host's vector
extensions, OpenMP where the compiler has it) into a shared library cached on disk under
`$SOLVERGEN_CACHE` (default ~/.cache/solvergen) keyed by the source's and the compiler's hash,
and loaded with ctypes. Supported: CPU tensors, every template but those with a partial sign
symmetry (`fixed` unknowns), action matrices up to 64 x 64.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from .plan import Equations, Plan, Template

HEADER = Path(__file__).parent / "native" / "stage.h"
BACKENDS = ("torch", "native", "auto")
MAX_BASIS = 64


class NativeUnavailable(RuntimeError):
    """The native backend cannot run this solver here (the message says why, in one line)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SOLVERGEN_CACHE", Path.home() / ".cache" / "solvergen")) / "native"


def compiler() -> str | None:
    """The C compiler: $CC, else the first of cc, gcc, clang on the PATH (None: none)."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def unsupported(plan: Plan) -> str | None:
    """Why the native backend cannot run this plan's template stage, or None."""
    template = plan.template
    if template is None:
        return "it has no elimination template"
    if template.fixed:
        return "its template has a partial sign symmetry, which only the torch path reads off"
    if template.basis > MAX_BASIS:
        return f"its action matrix is {template.basis} x {template.basis} (at most {MAX_BASIS})"
    read = template.unknowns * (template.unknowns + 1) // 2 if template.even else template.unknowns
    if polish_equations(plan).unknowns != template.unknowns or template.num_read != read:
        return "its polish system's unknowns are not the template's read-off"
    return None


def polish_equations(plan: Plan) -> Equations:
    """The system the template stage polishes on: the declared equations, or the linear
    block's reduced ones (runtime/forward.py)."""
    block = plan.linear
    return block.reduced_equations if block is not None else plan.equations


def _array(ctype: str, name: str, values) -> str:
    values = list(values) or [0]
    body = ", ".join(repr(float(v)) if ctype == "double" else str(int(v)) for v in values)
    return f"static const {ctype} {name}[{len(values)}] = {{{body}}};\n"


def source(plan: Plan) -> str:
    """The problem's C source: its sizes and tables, then native/stage.h."""
    t: Template = plan.template
    e = polish_equations(plan)
    # Monomials: 1, then degree by degree; each is a parent (absolute index) times an unknown.
    parent, unknown, start = [0], [0], 0
    for parents, unknowns in e.levels:
        parent += [start + p for p in parents]
        unknown += list(unknowns)
        start = len(parent) - len(parents)
    rows, cols = t.shape
    defines = dict(ROWS=rows, COLS=cols, SQUARE=t.square, NRED=t.num_reduced, BASIS=t.basis, NREAD=t.num_read,
                   ACTION_READ=t.action_read, NUNK=t.unknowns, EVEN=int(t.even),
                   SLOTS=2 * t.basis if t.even else t.basis, NCOEF=len(e.term_equation), NPOS=len(t.positions),
                   NCONST=len(t.action_constant), NACT=len(t.action_rows), NPAIRS=len(t.read_monomial),
                   PN=e.unknowns, PK=e.equations, PM=len(parent), PT=len(e.term_equation),
                   PD=len(e.derivative_position))
    text = f"/* solvergen native template stage: {plan.name} (generated from its plan; do not edit) */\n"
    text += "".join(f"#define {key} {value}\n" for key, value in defines.items())
    text += _array("int", "positions", t.positions) + _array("int", "sources", t.sources)
    text += _array("int", "const_row", [r for r, _, _ in t.action_constant])
    text += _array("int", "const_col", [c for _, c, _ in t.action_constant])
    text += _array("double", "const_value", [v for _, _, v in t.action_constant])
    text += _array("int", "action_rows", t.action_rows) + _array("int", "action_reduced", t.action_reduced)
    text += _array("double", "action_scale", t.action_scale)
    text += _array("int", "read_monomial", t.read_monomial) + _array("int", "read_basis", t.read_basis)
    text += _array("int", "read_value", t.read_value)
    n = t.unknowns  # an even template's read monomials x_i x_j, i <= j: their index per (i, j)
    upper = [(i, j) for i in range(n) for j in range(i, n)]
    text += _array("int", "gram_index", [upper.index((min(i, j), max(i, j))) for i in range(n) for j in range(n)])
    text += _array("int", "mono_parent", parent) + _array("int", "mono_unknown", unknown)
    text += _array("int", "term_equation", e.term_equation) + _array("int", "term_monomial", e.term_monomial)
    text += _array("int", "deriv_position", e.derivative_position)
    text += _array("int", "deriv_coefficient", e.derivative_coefficient)
    text += _array("double", "deriv_factor", e.derivative_factor)
    text += _array("int", "deriv_monomial", e.derivative_monomial)
    return text + HEADER.read_text()


def _compiler_id(cc: str) -> str:
    result = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    return result.stdout.splitlines()[0] if result.stdout else cc


def _flags(cc: str) -> list[str]:
    flags = ["-O3", "-march=native", "-shared", "-fPIC", "-std=gnu99"]
    probe = subprocess.run([cc, "-fopenmp", "-x", "c", "-E", "-", "-o", os.devnull], input="", capture_output=True,
                           text=True, timeout=30)
    return flags + (["-fopenmp"] if probe.returncode == 0 else [])


def library_path(plan: Plan) -> Path:
    """Compile the plan's source unless the cache has it: -> the shared library's path."""
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set $CC, or install cc, gcc or clang)")
    text = source(plan)
    flags = _flags(cc)
    key = hashlib.sha256("\n".join([text, _compiler_id(cc), " ".join(flags)]).encode()).hexdigest()[:20]
    folder = cache_dir()
    path = folder / f"{plan.name}-{key}.so"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        c_file = Path(scratch) / f"{plan.name}.c"
        c_file.write_text(text)
        out = Path(scratch) / path.name
        result = subprocess.run([cc, *flags, str(c_file), "-o", str(out), "-lm"], capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no message)"])[0]
            raise NativeUnavailable(f"the C compiler failed on {plan.name}'s source: {first}")
        os.replace(out, path)  # atomic: a concurrent process sees the whole file or none
    return path


def kernel(plan: Plan):
    """The loaded `solve_batch` of the plan (compiled or read from the cache once per process)."""
    function = plan.cache.get("native_kernel")
    if function is None:
        reason = unsupported(plan)
        if reason is not None:
            raise NativeUnavailable(f"{plan.name}: the native backend does not support it: {reason}")
        library = ctypes.CDLL(str(library_path(plan)))
        function = library.solve_batch
        function.restype = None
        function.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_int,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        plan.cache["native_kernel"] = function
        plan.cache["native_library"] = library  # keep it loaded
    return function


def solve_candidates(c, ok, plan: Plan, settings):
    """The template stage by the native kernel (as `template.solve_candidates`): coefficients
    c [B, n] on the CPU, rows `ok` [B] -> points [B, S, N], their relative residual [B, S] and
    which are candidates [B, S], in c's dtype (computed in float64)."""
    function = kernel(plan)
    template = plan.template
    batch = c.shape[0]
    coefficients = c.detach().to(torch.float64).contiguous()
    usable = ok.to(torch.uint8).contiguous()
    slots = 2 * template.basis if template.even else template.basis
    x = torch.empty(batch, slots, template.unknowns, dtype=torch.float64)
    error = torch.empty(batch, slots, dtype=torch.float64)
    candidate = torch.empty(batch, slots, dtype=torch.uint8)
    if batch:
        function(batch, coefficients.data_ptr(), usable.data_ptr(), settings.imag_tol, settings.newton_steps,
                 x.data_ptr(), error.data_ptr(), candidate.data_ptr())
    return x.to(c.dtype), error.to(c.dtype), candidate.bool()


def check_backend(solver, backend: str) -> str:
    """Check `Solver(backend=...)` in one-line errors; for "native", that this solver can run it
    (compiling it now, so that a failure shows at construction)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'torch', 'native' or 'auto', got {backend!r}")
    if backend != "torch" and solver.backward != "ift":
        if backend == "native":
            raise ValueError("backend='native' needs backward='ift' (the autograd baseline differentiates torch operations)")
        return backend
    if backend == "native":
        kernel(solver.plan)  # NativeUnavailable: unsupported problem, no compiler, compile error
    return backend


def runs_native(solver, device) -> bool:
    """Whether `solver` runs its template stage natively for tensors on `device`: backend
    "native" (on the CPU; elsewhere a one-line error), or "auto" where that works (else a
    one-line warning, once per solver class and reason, and the torch path)."""
    if solver.backend == "torch":
        return False
    if solver.backend == "native":
        if device.type != "cpu":
            raise NativeUnavailable(f"backend='native' runs on the CPU; these tensors are on {device} "
                                    "(use backend='auto' or 'torch' there)")
        return True
    reason = None
    if device.type != "cpu":
        reason = f"tensors on {device} (the native backend is CPU only for now)"
    elif solver.backward != "ift":
        reason = "backward='autograd'"
    else:
        try:
            kernel(solver.plan)
        except NativeUnavailable as error:
            reason = str(error)
    if reason is None:
        return True
    warned = solver.plan.cache.setdefault("native_warned", set())
    if reason not in warned:
        warned.add(reason)
        warnings.warn(f"solvergen: {solver.plan.name} runs its template stage in torch: {reason}", stacklevel=4)
    return False
