"""The native backend: the forward of a solver in C, per instance, compiled at first use.

`Solver(backend="native")` runs, per instance, what runtime/forward.py runs batched in torch:
the coefficients (the generated function traced into C, runtime/ctrace.py), a natural
formulation's linear block (null space by QR, back to the declared unknowns and the gauge),
template elimination (the compile-time sparse plan as straight-line code where the template has
one, else LU with partial pivoting), action matrix, real eigenpairs (a Sturm sequence on the
characteristic polynomial up to basis STURM_MAX_BASIS, Francis QR above; native/sturm.h),
read-off and Newton polishing (native/stage.h). Validity and ordering stay in torch (a few
batched operations). Where a coefficient function cannot be traced, the kernel starts from the
coefficients computed in torch. The IFT backward needs only the solutions and the
coefficients, so it is unchanged.

The C source of a problem (`source`) is its plan's sizes and tables, native/sturm.h and
native/stage.h, then the generated straight-line functions; it is compiled with the system C
compiler (`$CC`, else cc, gcc or clang; -O3, the host's vector extensions, OpenMP where the
compiler has it: OMP_NUM_THREADS threads) into a shared library cached on disk under
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

from . import ctrace
from .plan import Equations, Plan, Template

HEADERS = [Path(__file__).parent / "native" / name for name in ("sturm.h", "stage.h")]
BACKENDS = ("torch", "native", "auto")
MAX_BASIS = 64
STURM_MAX_BASIS = 10  # real eigenvalues by a Sturm sequence up to this basis, by QR above (sturm.h)
GROWTH_LIMIT = 1e3  # largest |factor| of the sparse elimination (template.GROWTH_LIMIT in float64)


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
    """The problem's C source: its sizes and tables, native/sturm.h, native/stage.h, then the
    generated functions (the polish system's `evaluate`, the sparse elimination, the
    coefficients, a natural formulation's linear block)."""
    t: Template = plan.template
    e = polish_equations(plan)
    coefficients = traced(plan.coefficients, plan.num_parameters, "coefficients")
    block = plan.linear
    linear = None
    if block is not None and coefficients is not None:
        reduced = traced(block.reduced_coefficients, block.num_reduced_inputs, "reduced_coefficients")
        linear = None if reduced is None else (gauge_source(plan) + reduced
                                               + evaluate_source(plan.equations, "evaluate_declared", jacobian=False))
    native_coefficients = coefficients is not None and (block is None or linear is not None)
    rows, cols = t.shape
    defines = dict(ROWS=rows, COLS=cols, SQUARE=t.square, NRED=t.num_reduced, BASIS=t.basis, NREAD=t.num_read,
                   ACTION_READ=t.action_read, NUNK=t.unknowns, EVEN=int(t.even),
                   SLOTS=2 * t.basis if t.even else t.basis, NCOEF=len(e.term_equation), NPOS=len(t.positions),
                   NCONST=len(t.action_constant), NACT=len(t.action_rows), NPAIRS=len(t.read_monomial),
                   STURM_MAX_BASIS=STURM_MAX_BASIS, EIG_STURM=int(t.basis <= STURM_MAX_BASIS),
                   PN=e.unknowns, PK=e.equations, NATIVE_COEFFICIENTS=int(native_coefficients),
                   LINEAR_BLOCK=int(linear is not None), SPARSE_LU=int(t.sparse_lu is not None),
                   NPARAM=plan.num_parameters)
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
    if linear is not None:
        text += linear_tables(plan)
    generated = evaluate_source(e) + sparse_source(t)
    if native_coefficients:
        generated += coefficients + (linear or "")
    return text + "".join(header.read_text() for header in HEADERS) + generated


def traced(function, num_inputs: int, name: str) -> str | None:
    """A generated coefficient function in C (ctrace.py), or None where it cannot be traced
    (then the torch path computes it, and the kernel starts from the coefficients)."""
    try:
        return ctrace.coefficient_source(function, num_inputs, name)
    except ctrace.Unsupported:
        return None


def linear_tables(plan: Plan) -> str:
    """The sizes and tables of a natural formulation's linear block (stage.h's LINEAR_BLOCK)."""
    block = plan.linear
    gauge = block.gauge
    defines = dict(LN=len(block.block), LRANK=block.rank, LK=block.null_dim, LHOMOG=int(block.homogeneous),
                   NDECL=len(plan.equations.term_equation), NDUNK=plan.num_unknowns, NDEQ=plan.equations.equations,
                   NFREE=len(block.free),
                   NUSED=len(block.used_parameters), NMAT=len(block.matrix_positions),
                   NRHS=len(block.rhs_positions), GAUGE=int(gauge is not None),
                   GDEG=gauge.degree if gauge else 1, GCONST=gauge.constant if gauge else 0)
    order = block.block + block.free  # the declared unknowns from [block, free]
    text = "".join(f"#define {key} {value}\n" for key, value in defines.items())
    text += _array("int", "matrix_positions", block.matrix_positions)
    text += _array("int", "matrix_sources", block.matrix_sources)
    text += _array("int", "rhs_positions", block.rhs_positions) + _array("int", "rhs_sources", block.rhs_sources)
    text += _array("double", "null_mix", [v for row in block.null_mix for v in row])
    text += _array("int", "used_parameters", block.used_parameters)
    return text + _array("int", "assemble", sorted(range(len(order)), key=order.__getitem__))


def gauge_source(plan: Plan) -> str:
    """The gauge polynomial q(x) of a natural formulation (linear.rescale_to_gauge) as C:
    `gauge_value(c, x)` over the declared coefficients c and the block's unknowns x."""
    gauge = plan.linear.gauge
    if gauge is None:
        return ""
    e = gauge.equations
    parent, unknown = _monomials(e)
    lines = ["static double gauge_value(const double *c, const double *x) {", f"    double m[{len(parent)}];",
             "    m[0] = 1.0;"]
    lines += [f"    m[{k}] = m[{parent[k]}] * x[{unknown[k]}];" for k in range(1, len(parent))]
    terms = [f"c[{gauge.coefficients[j]}]" + ("" if monomial == 0 else f" * m[{monomial}]")
             for j, (equation, monomial) in enumerate(zip(e.term_equation, e.term_monomial)) if equation == 0]
    return "\n".join(lines + [f"    return {' + '.join(terms) or '0.0'};", "}"]) + "\n"


def _monomials(e: Equations):
    """The monomials of a system, 1 then degree by degree: each a parent times an unknown."""
    parent, unknown, start = [0], [0], 0
    for parents, unknowns in e.levels:
        parent += [start + p for p in parents]
        unknown += list(unknowns)
        start = len(parent) - len(parents)
    return parent, unknown


def sparse_source(t: Template) -> str:
    """The template's fixed-pivot sparse elimination (runtime/template.py's sparse_elimination)
    as straight-line C: `sparse_eliminate` (a stub returning 0 where the template has no plan).
    Within a level no update reads a value another one writes, so in order is as at once."""
    lines = ["static int sparse_eliminate(const double *c, double *reduced) {"]
    lu = t.sparse_lu
    if lu is None:
        return "\n".join(lines + ["    (void)c;", "    (void)reduced;", "    return 0;", "}"]) + "\n"
    lines += [f"    double v[{lu.slots + 1}], growth = 0.0, f;", "    memset(v, 0, sizeof(v));"]
    lines += [f"    v[{slot}] = c[{source}];" for slot, source in zip(lu.template_slots, t.sources)]
    levels = [(True, level) for level in lu.forward] + [(False, level) for level in lu.upward]
    for number, (forward, level) in enumerate(levels):
        for k, (pivot, column) in enumerate(zip(level.pivot, level.column)):
            lines.append(f"    const double f{number}_{k} = v[{column}] / v[{pivot}];")
            if forward:  # NaN propagates: untrusted
                lines.append(f"    f = fabs(f{number}_{k}); if (!(f <= growth)) growth = f;")
        lines += [f"    v[{target}] -= f{number}_{factor} * v[{source}];"
                  for factor, source, target in zip(level.factor, level.source, level.target)]
    lines.append(f"    if (!(growth <= {GROWTH_LIMIT!r})) return 0;")
    for i, numerator in enumerate(lu.numerators):
        lines.append(f"    reduced[{i}] = v[{numerator}] / v[{lu.denominators[i // t.basis]}];")
    lines += [f"    for (int i = 0; i < {len(lu.numerators)}; i++)", "        if (!isfinite(reduced[i])) return 0;",
              "    return 1;", "}"]
    return "\n".join(lines) + "\n"


def evaluate_source(e: Equations, name: str = "evaluate", jacobian: bool = True) -> str:
    """A polynomial system's evaluation as straight-line C, `name(c, x, h, scale, jac)`: at x,
    (if h) h and the size of its terms, (with `jacobian`, if jac) dh/dx [equations x unknowns].
    The same sums as the torch path's `equations.evaluate`, unrolled with the monomials,
    coefficients and factors as constants (a loop over the tables is about 1.5x slower: its
    scattered accumulations serialise). The polish system's is `evaluate`."""
    parent, unknown = _monomials(e)

    def term(coefficient, monomial, factor=1.0):
        value = f"c[{coefficient}]" if monomial == 0 else f"c[{coefficient}] * m[{monomial}]"
        return value if factor == 1.0 else f"{float(factor)!r} * {value}"

    lines = [f"static void {name}(const double *c, const double *x, double *h, double *scale"
             + (", double *jac) {" if jacobian else ") {"), f"    double m[{len(parent)}];", "    m[0] = 1.0;"]
    lines += [f"    m[{k}] = m[{parent[k]}] * x[{unknown[k]}];" for k in range(1, len(parent))]
    lines += ["    if (h) {", "        double t;"]
    for k in range(e.equations):
        lines.append(f"        h[{k}] = 0.0;")
        lines.append(f"        scale[{k}] = 0.0;")
        for j, (equation, monomial) in enumerate(zip(e.term_equation, e.term_monomial)):
            if equation == k:
                lines.append(f"        t = {term(j, monomial)}; h[{k}] += t; scale[{k}] += fabs(t);")
    lines.append("    }")
    if not jacobian:
        return "\n".join(lines + ["}"]) + "\n"
    lines.append("    if (jac) {")
    sums: dict = {}
    for position, coefficient, factor, monomial in zip(e.derivative_position, e.derivative_coefficient,
                                                       e.derivative_factor, e.derivative_monomial):
        sums.setdefault(position, []).append(term(coefficient, monomial, factor))
    for position in range(e.equations * e.unknowns):
        lines.append(f"        jac[{position}] = {' + '.join(sums.get(position, ['0.0']))};")
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


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


_ARGUMENTS = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_int]


def kernel(plan: Plan):
    """The loaded `solve_batch` of the plan (compiled or read from the cache once per process);
    `plan.cache["native_from_params"]` is its `solve_batch_from` where the kernel runs the whole
    forward from the parameters (else None)."""
    function = plan.cache.get("native_kernel")
    if function is None:
        reason = unsupported(plan)
        if reason is not None:
            raise NativeUnavailable(f"{plan.name}: the native backend does not support it: {reason}")
        library = ctypes.CDLL(str(library_path(plan)))
        function = library.solve_batch
        function.restype = None
        function.argtypes = _ARGUMENTS + [ctypes.c_void_p] * 3
        from_params = getattr(library, "solve_batch_from", None)
        if from_params is not None:
            from_params.restype = None
            from_params.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int, ctypes.c_double,
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        plan.cache["native_kernel"] = function
        plan.cache["native_from_params"] = from_params
        plan.cache["native_library"] = library  # keep it loaded
    return function


def solve_candidates(c, ok, plan: Plan, settings):
    """The template stage by the native kernel (as `template.solve_candidates`): coefficients
    c [B, n] on the CPU, rows `ok` [B] -> points [B, S, N], their relative residual [B, S] and
    which are candidates [B, S], in c's dtype (computed in float64)."""
    function = kernel(plan)
    batch = c.shape[0]
    coefficients = c.detach().to(torch.float64).contiguous()
    usable = ok.to(torch.uint8).contiguous()
    template = plan.template
    slots = 2 * template.basis if template.even else template.basis
    x = torch.empty(batch, slots, template.unknowns, dtype=torch.float64)
    error = torch.empty(batch, slots, dtype=torch.float64)
    candidate = torch.empty(batch, slots, dtype=torch.uint8)
    if batch:
        function(batch, coefficients.data_ptr(), usable.data_ptr(), settings.imag_tol, settings.newton_steps,
                 x.data_ptr(), error.data_ptr(), candidate.data_ptr())
    return x.to(c.dtype), error.to(c.dtype), candidate.bool()


def computes_coefficients(plan: Plan) -> bool:
    """Whether the plan's kernel starts from the parameters (`solve_from_params`)."""
    kernel(plan)
    return plan.cache["native_from_params"] is not None


def solve_from_params(a, plan: Plan, settings):
    """The whole forward by the native kernel (runtime/forward.py's `solve`): parameters a
    [B, M] on the CPU -> solutions [B, S, N] in the declared unknowns, valid [B, S] (valid ones
    first) and the declared coefficients [B, n]; in a's dtype (computed in float64)."""
    kernel(plan)
    batch = a.shape[0]
    params = a.detach().to(torch.float64).contiguous()
    template = plan.template
    slots = 2 * template.basis if template.even else template.basis
    c = torch.empty(batch, len(plan.equations.term_equation), dtype=torch.float64)
    x = torch.empty(batch, slots, plan.num_unknowns, dtype=torch.float64)
    valid = torch.empty(batch, slots, dtype=torch.uint8)
    if batch:
        plan.cache["native_from_params"](batch, params.data_ptr(), settings.imag_tol, settings.newton_steps,
                                         settings.residual_tol, c.data_ptr(), x.data_ptr(), valid.data_ptr())
    return x.to(a.dtype), valid.bool(), c.to(a.dtype)


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
