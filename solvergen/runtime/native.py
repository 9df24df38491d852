"""The native backend: the forward of a solver in C, per instance, compiled at first use.

`Solver(backend="native")` runs, per instance, what runtime/forward.py runs batched in torch:
the coefficients (the generated function traced into C, runtime/ctrace.py), a natural
formulation's linear block (null space by QR, back to the declared unknowns and the gauge),
template elimination (the compile-time sparse plan as straight-line code where the template has
one, else LU with partial pivoting), action matrix, real eigenpairs (closed forms up to basis
CLOSED_FORM_MAX_BASIS, native/roots.h; a Sturm sequence on the characteristic polynomial up to
STURM_MAX_BASIS, native/sturm.h; Francis QR above),
read-off and Newton polishing, validity and order (native/stage.h). Where a coefficient
function cannot be traced, the kernel starts from the coefficients computed in torch. The IFT
backward needs only the solutions and the coefficients, so it is unchanged.

The source of a problem (`source`) is native/portable.h, its plan's sizes and tables,
native/sturm.h, native/roots.h and native/stage.h, then the generated straight-line functions. On the CPU it is
compiled with the system C compiler (`$CC`, else cc, gcc or clang; -O3, the host's vector
extensions, OpenMP where the compiler has it: OMP_NUM_THREADS threads) into a shared library
cached on disk under `$SOLVERGEN_CACHE` (default ~/.cache/solvergen) keyed by the source's and
the compiler's hash, and loaded with ctypes. On CUDA devices the same source is compiled by
NVRTC into a cubin for the device (cached the same way) and loaded with torch's launcher: one
instance per thread (portable.h says what differs). Supported: CPU and CUDA tensors, every
template but those with a partial sign symmetry (`fixed` unknowns), action matrices up to 64 x 64.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from . import ctrace
from .plan import Equations, Plan, Template

NATIVE = Path(__file__).parent / "native"
PORTABLE = NATIVE / "portable.h"  # first: the CPU / CUDA differences
HEADERS = [NATIVE / name for name in ("sturm.h", "roots.h", "stage.h")]  # after the sizes and tables
BACKENDS = ("torch", "native", "auto")
MAX_BASIS = 64
CLOSED_FORM_MAX_BASIS = 4  # every eigenvalue in closed form up to this basis (roots.h)
STURM_MAX_BASIS = 10  # real eigenvalues by a Sturm sequence up to this basis, by QR above (sturm.h)
GROWTH_LIMIT = 1e3  # largest |factor| of the sparse elimination (template.GROWTH_LIMIT in float64)


class NativeUnavailable(RuntimeError):
    """The native backend cannot run this solver here (the message says why, in one line)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SOLVERGEN_CACHE", Path.home() / ".cache" / "solvergen")) / "native"


def _program(variable: str, names) -> str | None:
    """$variable if set (None where it is not found), else the first of names on the PATH."""
    if os.environ.get(variable):
        return shutil.which(os.environ[variable])
    return next((path for path in map(shutil.which, names) if path), None)


def compiler() -> str | None:
    """The C compiler: $CC, else the first of cc, gcc, clang on the PATH (None: none)."""
    return _program("CC", ("cc", "gcc", "clang"))


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


def lanes(basis: int) -> int:
    """How many eigenpairs (and then candidates) the kernel takes together through inverse
    iteration and Newton's polish (stage.h's LANES, vectorised across them): about the number of
    real solutions an instance has. Measured on the shipped problems, one core, 2, 4 and 8 lanes:
    2 is fastest up to a basis of 4 (P3P 1.47 us per instance, 8 lanes 1.97), 4 up to 12 (5-point
    8.6, 8 lanes 9.1, 2 lanes 9.9), 8 above (6-point 27.9, 4 lanes 29.0; benchmarks/README.md)."""
    return 2 if basis <= 4 else 4 if basis <= 12 else 8


def eigenvector_lanes(basis: int) -> int:
    """How many eigenpairs the kernel takes together through inverse iteration (stage.h's EIG_LANES):
    as `lanes` but 8 from a basis of 10. Measured, one core, against 4: the 5-point (basis 10) 6.12
    against 6.27 us per instance (its 4.7 real eigenvalues on average often fill two groups of 4),
    gP3P (basis 8) 3.35 against 3.25 (benchmarks/README.md, "Native kernels")."""
    return 2 if basis <= 4 else 4 if basis <= 9 else 8


def _slots(t: Template) -> int:
    """Solutions per instance: one per eigenpair, two (x and -x) for an even template (SLOTS)."""
    return 2 * t.basis if t.even else t.basis


def _array(ctype: str, name: str, values) -> str:
    values = list(values) or [0]
    body = ", ".join(repr(float(v)) if ctype == "double" else str(int(v)) for v in values)
    return f"SG_TABLE {ctype} {name}[{len(values)}] = {{{body}}};\n"


GROUP_TEMPLATE_MAX = 2048  # template entries (square rows x columns) up to which the CPU batch takes four
# instances' eigenproblems at once (stage.h's eigenproblems_lanes): measured against one at a time (one
# core), the 8-point radial's 31 x 47 is 5% faster per instance, P3.5Pf's 97 x 113 7% slower (350 KB of lanes)


def source(plan: Plan) -> str:
    """The problem's C source: its sizes and tables, native/sturm.h, native/stage.h, then the
    generated functions (the polish system's `residual_lanes` and `jacobian_lanes`, the sparse
    elimination, the coefficients, a natural formulation's linear block, and for the CPU batch
    the coefficients of COEFFICIENT_LANES instances at once, `coefficients_lanes`, and a natural
    formulation's reduced coefficients, `reduced_coefficients_lanes`)."""
    t: Template = plan.template
    e = polish_equations(plan)
    coefficients = traced(plan.coefficients, plan.num_parameters, "coefficients")
    block = plan.linear
    linear = None
    if block is not None and coefficients is not None:
        reduced = traced(block.reduced_coefficients, block.num_reduced_inputs, "reduced_coefficients")
        linear = None if reduced is None else (gauge_source(plan) + reduced
                                               + declared_residual_source(plan.equations))
    native_coefficients = coefficients is not None and (block is None or linear is not None)
    grouped = None  # the CPU batch: COEFFICIENT_LANES instances' (reduced) coefficients at once (stage.h)
    if native_coefficients:
        grouped = traced(plan.coefficients, plan.num_parameters, "coefficients_lanes", "COEFFICIENT_LANES")
        if grouped is not None and linear is not None:
            reduced_lanes = traced(block.reduced_coefficients, block.num_reduced_inputs, "reduced_coefficients_lanes",
                                   "COEFFICIENT_LANES")
            grouped = None if reduced_lanes is None else grouped + reduced_lanes
    rows, cols = t.shape
    defines = dict(ROWS=rows, COLS=cols, SQUARE=t.square, NRED=t.num_reduced, BASIS=t.basis,
                   NREAD=t.num_read, ACTION_READ=t.action_read, NUNK=t.unknowns, EVEN=int(t.even),
                   SLOTS=_slots(t), NCOEF=len(e.term_equation),
                   NCONST=len(t.action_constant), NACT=len(t.action_rows),
                   STURM_MAX_BASIS=STURM_MAX_BASIS, EIG_STURM=int(t.basis <= STURM_MAX_BASIS),
                   EIG_CLOSED=int(t.basis <= CLOSED_FORM_MAX_BASIS),
                   PN=e.unknowns, PK=e.equations, NATIVE_COEFFICIENTS=int(native_coefficients),
                   LINEAR_BLOCK=int(linear is not None), GROUPED_COEFFICIENTS=int(grouped is not None),
                   SPARSE_LU=int(t.sparse_lu is not None),
                   GROUP_EIGENPROBLEMS=int(t.square * cols <= GROUP_TEMPLATE_MAX),
                   NPARAM=plan.num_parameters)
    text = f"/* solvergen native template stage: {plan.name} (generated from its plan; do not edit) */\n"
    text += PORTABLE.read_text()
    text += "".join(f"#define {key} {value}\n" for key, value in defines.items())
    # A GPU thread runs one instance on scalar registers: lanes would fill nothing there and
    # multiply the local memory (16 KB per thread for a basis of 16 in 8 lanes); one lane is the
    # same computation (tests/test_native.py).
    text += (f"#if defined(__CUDACC_RTC__)\n#define EIG_LANES 1\n#define LANES 1\n#else\n"
             f"#define EIG_LANES {eigenvector_lanes(t.basis)}\n#define LANES {lanes(t.basis)}\n#endif\n")
    text += dense_tables(t)
    text += _array("int", "const_row", [r for r, _, _ in t.action_constant])
    text += _array("int", "const_col", [c for _, c, _ in t.action_constant])
    text += _array("double", "const_value", [v for _, _, v in t.action_constant])
    text += _array("int", "action_rows", t.action_rows) + _array("int", "action_reduced", t.action_reduced)
    text += _array("double", "action_scale", t.action_scale)
    text += read_tables(t)
    n = t.unknowns  # an even template's read monomials x_i x_j, i <= j: their index per (i, j)
    upper = [(i, j) for i in range(n) for j in range(i, n)]
    text += _array("int", "gram_index", [upper.index((min(i, j), max(i, j))) for i in range(n) for j in range(n)])
    if linear is not None:
        text += linear_tables(plan)
    generated = evaluate_lanes_source(e) + sparse_source(t)
    if native_coefficients:
        generated += coefficients + (linear or "")
    if grouped is not None:
        generated += "#if !SG_CUDA\n" + grouped + "#endif\n"
    return text + "".join(header.read_text() for header in HEADERS) + generated


def read_tables(t: Template) -> str:
    """The read-off's pairs (basis entry, value) grouped by the monomial they read, in the
    template's order within each (read_basis, read_value; monomial q's are read_start[q] to
    read_start[q + 1]), so that the kernel sums each monomial in registers; the action monomial's
    are left out (it is read from the eigenvalue)."""
    start, basis, value = [0], [], []
    for q in range(t.num_read):
        for monomial, i, j in zip(t.read_monomial, t.read_basis, t.read_value):
            if monomial == q and q != t.action_read:
                basis.append(i)
                value.append(j)
        start.append(len(basis))
    return _array("int", "read_start", start) + _array("int", "read_basis", basis) + _array("int", "read_value", value)


def dense_tables(t: Template) -> str:
    """dense_eliminate's fill of the template's first SQUARE rows (row-major, COLS columns; the rows
    past SQUARE are dropped here, not tested per entry in the kernel: the 5-point's fill 1,380 -> 690
    cycles per instance). Where at least half the entries are nonzero, for each entry the coefficient
    it takes or -1 (dense_source: written in order, a gather that vectorises, the 5-point 1.7% faster);
    else the nonzero entries' positions and coefficients (DENSE_SCATTER: dense_positions,
    dense_sources; P3.5Pf's 97 x 113, a tenth nonzero, is 2% slower with the gather)."""
    rows, cols = t.shape
    kept = [(p, s) for p, s in zip(t.positions, t.sources) if p // cols < t.square]
    if 2 * len({p for p, _ in kept}) < t.square * cols:
        return ("#define DENSE_SCATTER 1\n" + f"#define NDENSE {len(kept)}\n"
                + _array("int", "dense_positions", [p for p, _ in kept]) + _array("int", "dense_sources", [s for _, s in kept]))
    source = [-1] * (t.square * cols)
    for p, s in kept:
        source[p] = s
    return "#define DENSE_SCATTER 0\n" + _array("int", "dense_source", source)


def traced(function, num_inputs: int, name: str, lanes: str | None = None) -> str | None:
    """A generated coefficient function in C (ctrace.py), or None where it cannot be traced
    (then the torch path computes it, and the kernel starts from the coefficients)."""
    try:
        return ctrace.coefficient_source(function, num_inputs, name, lanes)
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
    lines = ["SG_FN double gauge_value(const double *c, const double *x) {", f"    double m[{len(parent)}];",
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
    lines = ["SG_FN int sparse_eliminate(const double *c, double *reduced) {"]
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


def _term(coefficient: int, monomial: int, factor: float = 1.0, monomials: str = "m[{}]") -> str:
    """One term of a generated polynomial: c[coefficient] (times factor) times its monomial."""
    value = f"c[{coefficient}]" if monomial == 0 else f"c[{coefficient}] * " + monomials.format(monomial)
    return value if factor == 1.0 else f"{float(factor)!r} * {value}"


def declared_residual_source(e: Equations) -> str:
    """A natural formulation's declared equations at LANES points x (lane-minor, x[i LANES + r]) as
    straight-line C, `evaluate_declared_lanes(c, x, h, scale)`: h and the size of its terms (the
    same sums as the torch path's `equations.evaluate`, unrolled with the monomials and
    coefficients as constants: a loop over the tables is about 1.5x slower, its scattered
    accumulations serialise)."""
    return _residual_lanes(e, "evaluate_declared_lanes")


def _lanes_head(e: Equations, signature: str) -> list[str]:
    """A lane-form function's opening: the loop over the lanes and the monomials of x."""
    parent, unknown = _monomials(e)
    lines = [f"SG_FN void {signature} {{", "    for (int r = 0; r < LANES; r++) {", "        const double m0 = 1.0;"]
    return lines + [f"        const double m{k} = m{parent[k]} * x[{unknown[k]} * LANES + r];" for k in range(1, len(parent))]


def _residual_lanes(e: Equations, name: str) -> str:
    """`name(c, x, h, scale)`: e's equations h [equations x LANES] and the size of their terms at
    LANES points x, lane-minor, each lane's sums in the torch path's order."""
    lines = _lanes_head(e, f"{name}(const double *SG_RESTRICT c, const double *SG_RESTRICT x, double *SG_RESTRICT h, "
                           "double *SG_RESTRICT scale)")
    lines.append("        double t, value, size;")
    for k in range(e.equations):
        lines.append("        value = 0.0;")
        lines.append("        size = 0.0;")
        for j, (equation, monomial) in enumerate(zip(e.term_equation, e.term_monomial)):
            if equation == k:
                lines.append(f"        t = {_term(j, monomial, monomials='m{}')}; value += t; size += fabs(t);")
        lines.append(f"        h[{k} * LANES + r] = value;")
        lines.append(f"        scale[{k} * LANES + r] = size;")
    return "\n".join(lines + ["    }", "}"]) + "\n"


def evaluate_lanes_source(e: Equations) -> str:
    """The polish system's evaluation at LANES points at once (stage.h's `polish_lanes`), as
    straight-line C in a loop over the lanes that the compiler vectorises (given `restrict`
    arguments: without them gcc 12 leaves the residual's loop scalar):
    `residual_lanes(c, x, h, scale)` and `jacobian_lanes(c, x, jac)`, every array lane-minor
    (x[i LANES + r], h[k LANES + r], jac[(k PN + n) LANES + r]). Each lane's sums are those of
    the torch path's `equations.evaluate` and `jacobian`, in their order."""
    lines = _lanes_head(e, "jacobian_lanes(const double *SG_RESTRICT c, const double *SG_RESTRICT x, "
                           "double *SG_RESTRICT jac)")
    sums: dict = {}
    for position, coefficient, factor, monomial in zip(e.derivative_position, e.derivative_coefficient,
                                                       e.derivative_factor, e.derivative_monomial):
        sums.setdefault(position, []).append(_term(coefficient, monomial, factor, "m{}"))
    for position in range(e.equations * e.unknowns):
        lines.append(f"        jac[{position} * LANES + r] = {' + '.join(sums.get(position, ['0.0']))};")
    lines += ["    }", "}"]
    return _residual_lanes(e, "residual_lanes") + "\n".join(lines) + "\n"


def _compiler_id(cc: str) -> str:
    result = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    return result.stdout.splitlines()[0] if result.stdout else cc


def _flags(cc: str, emulate_cuda: bool = False) -> list[str]:
    flags = ["-O3", "-march=native", "-shared", "-fPIC"]
    if emulate_cuda:  # the source as C++ (as NVRTC reads it), the CUDA kernels run by emulate_*
        return flags + ["-x", "c++", "-DSG_EMULATE_CUDA"]
    probe = subprocess.run([cc, "-fopenmp", "-x", "c", "-E", "-", "-o", os.devnull], input="", capture_output=True,
                           text=True, timeout=30)
    return flags + ["-std=gnu99"] + (["-fopenmp"] if probe.returncode == 0 else [])


def cxx_compiler() -> str | None:
    """The C++ compiler of the CUDA emulation: $CXX, else the first of c++, g++, clang++."""
    return _program("CXX", ("c++", "g++", "clang++"))


def library_path(plan: Plan, emulate_cuda: bool = False) -> Path:
    """Compile the plan's source unless the cache has it: -> the shared library's path.
    emulate_cuda: the CUDA kernels compiled as C++ for the CPU instead (native/portable.h)."""
    cc = cxx_compiler() if emulate_cuda else compiler()
    if cc is None:
        raise NativeUnavailable("no C++ compiler found (set $CXX, or install c++, g++ or clang++)" if emulate_cuda
                                else "no C compiler found (set $CC, or install cc, gcc or clang)")
    text = source(plan)
    flags = _flags(cc, emulate_cuda)
    key = hashlib.sha256("\n".join([text, _compiler_id(cc), " ".join(flags)]).encode()).hexdigest()[:20]
    folder = cache_dir()
    path = folder / f"{plan.name}-{key}{'-emulated-cuda' if emulate_cuda else ''}.so"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        c_file = Path(scratch) / f"{plan.name}.{'cpp' if emulate_cuda else 'c'}"
        c_file.write_text(text)
        out = Path(scratch) / path.name
        result = subprocess.run([cc, *flags, str(c_file), "-o", str(out), "-lm"], capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no message)"])[0]
            raise NativeUnavailable(f"the {'C++' if emulate_cuda else 'C'} compiler failed on {plan.name}'s source: {first}")
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
    c [B, n] on the CPU or a CUDA device, rows `ok` [B] -> points [B, S, N], their relative
    residual [B, S] and which are candidates [B, S], in c's dtype (computed in float64)."""
    batch, device = c.shape[0], c.device
    coefficients = c.detach().to(torch.float64).contiguous()
    usable = ok.to(torch.uint8).contiguous()
    template = plan.template
    slots = _slots(template)
    x = torch.empty(batch, slots, template.unknowns, dtype=torch.float64, device=device)
    error = torch.empty(batch, slots, dtype=torch.float64, device=device)
    candidate = torch.empty(batch, slots, dtype=torch.uint8, device=device)
    if device.type == "cuda":
        _launch(cuda_kernels(plan, device)["solve_batch_kernel"], batch, coefficients, usable,
                float(settings.imag_tol), int(settings.newton_steps), x, error, candidate)
    elif batch:
        kernel(plan)(batch, coefficients.data_ptr(), usable.data_ptr(), settings.imag_tol, settings.newton_steps,
                     x.data_ptr(), error.data_ptr(), candidate.data_ptr())
    return x.to(c.dtype), error.to(c.dtype), candidate.bool()


def computes_coefficients(plan: Plan, device=None) -> bool:
    """Whether the plan's kernel starts from the parameters (`solve_from_params`) on `device`
    (default the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        return "solve_batch_from_kernel" in cuda_kernels(plan, torch.device(device))
    kernel(plan)
    return plan.cache["native_from_params"] is not None


def solve_from_params(a, plan: Plan, settings):
    """The whole forward by the native kernel (runtime/forward.py's `solve`): parameters a
    [B, M] on the CPU or a CUDA device -> solutions [B, S, N] in the declared unknowns, valid
    [B, S] (valid ones first) and the declared coefficients [B, n]; in a's dtype (computed in
    float64). On CUDA the kernel is launched on the current stream, with no host synchronisation."""
    batch, device = a.shape[0], a.device
    params = a.detach().to(torch.float64).contiguous()
    slots = _slots(plan.template)
    c = torch.empty(batch, len(plan.equations.term_equation), dtype=torch.float64, device=device)
    x = torch.empty(batch, slots, plan.num_unknowns, dtype=torch.float64, device=device)
    valid = torch.empty(batch, slots, dtype=torch.uint8, device=device)
    if device.type == "cuda":
        _launch(cuda_kernels(plan, device)["solve_batch_from_kernel"], batch, params, float(settings.imag_tol),
                int(settings.newton_steps), float(settings.residual_tol), c, x, valid)
    elif batch:
        kernel(plan)
        plan.cache["native_from_params"](batch, params.data_ptr(), settings.imag_tol, settings.newton_steps,
                                         settings.residual_tol, c.data_ptr(), x.data_ptr(), valid.data_ptr())
    return x.to(a.dtype), valid.bool(), c.to(a.dtype)


# -- CUDA: the same source through NVRTC ------------------------------------------------------

CUDA_BLOCK = 128  # threads per block, one instance per thread
CUDA_CHUNK = 1 << 30  # instances per launch (the kernels' batch argument is a C int)
NVRTC_OPTIONS = ("--std=c++17",)


def nvrtc_library() -> ctypes.CDLL:
    """NVRTC, loaded with ctypes: $SOLVERGEN_NVRTC (a path) if set, else the CUDA toolkit's
    libnvrtc (the one torch's CUDA builds use), else the nvidia-cuda-nvrtc wheel's."""
    names = [os.environ["SOLVERGEN_NVRTC"]] if os.environ.get("SOLVERGEN_NVRTC") else []
    if torch.version.cuda:
        names.append(f"libnvrtc.so.{torch.version.cuda.split('.')[0]}")
    names += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    for entry in sys.path:  # the pip wheel nvidia-cuda-nvrtc-cu12 (-cu13): nvidia/cuda_nvrtc/lib
        folder = Path(entry or ".") / "nvidia" / "cuda_nvrtc" / "lib"
        if folder.is_dir():
            names += sorted(str(path) for path in folder.glob("libnvrtc.so*") if "builtins" not in path.name)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise NativeUnavailable("NVRTC not found (the CUDA toolkit's libnvrtc, the pip wheel nvidia-cuda-nvrtc-cu12, "
                            "or $SOLVERGEN_NVRTC)")


def nvrtc_version(library) -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    library.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def nvrtc_compile(text: str, arch: str, name: str = "kernel.cu", library=None) -> bytes:
    """text compiled by NVRTC for `arch` (a GPU architecture: "sm_90") -> the cubin. No GPU is
    needed. NativeUnavailable with the compiler's first error where it fails."""
    nvrtc = library or nvrtc_library()
    program = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), text.encode(), name.encode(), 0, None, None) != 0:
        raise NativeUnavailable("NVRTC could not create a program")
    try:
        options = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in NVRTC_OPTIONS)]
        status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
        if status != 0:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            lines = [line for line in log.value.decode(errors="replace").splitlines() if "error" in line]
            raise NativeUnavailable(f"NVRTC failed on {name}: {(lines or ['(no message)'])[0].strip()}")
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
        binary = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetCUBIN(program, binary)
        return binary.raw
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def cubin_path(plan: Plan, arch: str, text: str) -> Path:
    """The plan's source `text` compiled by NVRTC for `arch` unless the cache has it: -> the
    cubin's path (the disk cache of the CPU build, keyed by the source, NVRTC's version and the
    options)."""
    reason = unsupported(plan)
    if reason is not None:
        raise NativeUnavailable(f"{plan.name}: the native backend does not support it: {reason}")
    nvrtc = nvrtc_library()
    key = hashlib.sha256("\n".join([text, nvrtc_version(nvrtc), arch, *NVRTC_OPTIONS]).encode()).hexdigest()[:20]
    folder = cache_dir()
    path = folder / f"{plan.name}-{key}-{arch}.cubin"
    if path.exists():
        return path
    binary = nvrtc_compile(text, arch, f"{plan.name}.cu", nvrtc)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, delete=False) as scratch:
        scratch.write(binary)
    os.replace(scratch.name, path)  # atomic, as the CPU build
    return path


def cuda_kernels(plan: Plan, device) -> dict:
    """The plan's CUDA kernels on `device` (compiled, or read from the disk cache, and loaded once
    per process and device): {"solve_batch_kernel": ..., "solve_batch_from_kernel": ...} (the
    second where the kernel computes the coefficients), torch's launchers."""
    if not torch.cuda.is_available():
        raise NativeUnavailable("torch has no CUDA device")
    device = torch.device(device)
    loaded = plan.cache.setdefault("native_cuda", {})
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in loaded:
        major, minor = torch.cuda.get_device_capability(index)
        text = source(plan)
        path = cubin_path(plan, f"sm_{major}{minor}", text)
        names = ["solve_batch_kernel"]
        if "#define NATIVE_COEFFICIENTS 1\n" in text:
            names.append("solve_batch_from_kernel")
        try:
            with torch.cuda.device(index):
                loaded[index] = torch.cuda._utils._cuda_load_module(path.read_bytes(), names)
        except Exception as error:  # a private torch API: any failure means "not here"
            raise NativeUnavailable(f"{plan.name}: loading its CUDA kernels failed: {str(error).splitlines()[0]}")
    return loaded[index]


def _launch(function, batch: int, *args):
    """One thread per instance on the current stream of the tensors' device; the batch in chunks
    of CUDA_CHUNK (tensor arguments are sliced per chunk along their first dimension)."""
    for start in range(0, batch, CUDA_CHUNK):
        count = min(CUDA_CHUNK, batch - start)
        chunk = [arg[start:start + count] if isinstance(arg, torch.Tensor) else arg for arg in args]
        with torch.cuda.device(args[0].device):  # (the first argument is the input tensor)
            function(grid=((count + CUDA_BLOCK - 1) // CUDA_BLOCK, 1, 1), block=(CUDA_BLOCK, 1, 1),
                     args=[count, *chunk])


def emulated_kernels(plan: Plan):
    """The CUDA kernels compiled as C++ for the CPU (portable.h's SG_EMULATE_CUDA) and loaded:
    `emulate_solve_batch(grid, block, <solve_batch_kernel's arguments>)` and, where the kernel
    computes the coefficients, `emulate_solve_batch_from(...)`. For tests: the kernels' own
    indexing and arguments, run where there is no GPU."""
    library = plan.cache.get("native_emulated")
    if library is None:
        library = ctypes.CDLL(str(library_path(plan, emulate_cuda=True)))
        plan.cache["native_emulated"] = library
    return library


def check_backend(solver, backend: str) -> str:
    """Check `Solver(backend=...)` in one-line errors; for "native", that this solver can run it
    (compiling the CPU kernel now, so that a failure shows at construction; where that fails but
    a CUDA device and NVRTC are there, the CUDA kernels are compiled at first use instead and CPU
    tensors get the one-line error then)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'torch', 'native' or 'auto', got {backend!r}")
    if backend != "torch" and solver.backward != "ift":
        if backend == "native":
            raise ValueError("backend='native' needs backward='ift' (the autograd baseline differentiates torch operations)")
        return backend
    if backend == "native":
        try:
            kernel(solver.plan)  # NativeUnavailable: unsupported problem, no compiler, compile error
        except NativeUnavailable:
            if unsupported(solver.plan) is not None or not _cuda_ready():
                raise
    return backend


def _cuda_ready() -> bool:
    """A CUDA device and NVRTC: the native backend can still run on CUDA tensors."""
    if not torch.cuda.is_available():
        return False
    try:
        nvrtc_library()
    except NativeUnavailable:
        return False
    return True


def runs_native(solver, device) -> bool:
    """Whether `solver` runs its template stage natively for tensors on `device`: backend
    "native" (on the CPU or a CUDA device; elsewhere, or where the CUDA kernels cannot be built, a
    one-line error), or "auto" where that works (else a one-line warning, once per solver class
    and reason, and the torch path)."""
    if solver.backend == "torch":
        return False
    if solver.backend == "native":
        if device.type == "cuda":
            cuda_kernels(solver.plan, device)  # NativeUnavailable: no NVRTC, a compile or load failure
        elif device.type == "cpu":
            kernel(solver.plan)  # (compiled at construction unless only CUDA could run it)
        else:
            raise NativeUnavailable(f"backend='native' runs on the CPU and on CUDA devices; these tensors are on "
                                    f"{device} (use backend='auto' or 'torch' there)")
        return True
    reason = None
    if device.type not in ("cpu", "cuda"):
        reason = f"tensors on {device} (the native backend runs on the CPU and on CUDA devices)"
    elif solver.backward != "ift":
        reason = "backward='autograd'"
    else:
        try:
            if device.type == "cuda":
                cuda_kernels(solver.plan, device)
            else:
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
