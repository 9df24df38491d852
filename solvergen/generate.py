"""Spec file -> generated module on disk, and `load()` for training code."""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .compiler import compile_problem
from .declarative import Argmin, Implicit
from .errors import SpecError
from .progress import Progress
from .indexed import derive_indexed
from .kkt import derive
from .render import render, templates_dir
from .render_declarative import describe, render_declarative
from .render_indexed import render_indexed
from .render_indexed import summary as indexed_summary
from .runtime import INTERFACE
from .spec import Spec, read_spec
from .template import DEFAULT_TIME_LIMIT, DEFAULT_WORK, SearchBudget, SearchReport

DEFAULT_OUT_DIR = "generated"
RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
# The folder of the runtime copy that `generate(..., standalone=True)` writes next to the
# generated files: named with the version, so that copies of different versions never collide.
STANDALONE_RUNTIME = "solvergen_runtime_" + __version__.replace(".", "_")


@dataclass(frozen=True)
class Generated:
    name: str
    path: Path
    description: str  # solutions, linear elimination, template
    seconds: float
    search: SearchReport | None = None  # None when the linear pass leaves no template

    def summary(self) -> str:
        text = f"{self.name}: {self.description}, {self.seconds:.1f} s -> {self.path}"
        if self.search is not None:
            text += f"\n  template search: {self.search.describe()}"
        return text


def spec_label(path: Path) -> str:
    """How the header names the spec: relative to the working directory when inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def compiler_sources() -> list[Path]:
    """Everything in solvergen that shapes a generated module's text: the compiler's modules, the
    runtime's plan classes (rendered as literals) and the templates. (The rest of the runtime
    is imported, not rendered: a generated module runs on whichever runtime is installed.)"""
    package = Path(__file__).resolve().parent
    return sorted(package.glob("*.py")) + [package / "runtime" / "plan.py"] + sorted(templates_dir().glob("*.jinja"))


def compiler_fingerprint(sources=None) -> str:
    """sha256 of the compiler's sources (`compiler_sources`), names and contents."""
    digest = hashlib.sha256()
    for source in compiler_sources() if sources is None else sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_search_options(budget, time_limit) -> None:
    """A one-line ValueError unless the template search's budget is a positive finite number and
    its time limit one too (or None)."""
    for name, value in (("budget", budget), ("time_limit", time_limit)):
        if value is None and name == "time_limit":
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def generate(spec_path, out_dir=DEFAULT_OUT_DIR, standalone: bool = False, budget: float = DEFAULT_WORK,
             time_limit: float | None = DEFAULT_TIME_LIMIT, progress: Progress | None = None) -> Generated:
    """Compile one spec file into `out_dir/<name>.py`. Raises SpecError for bad specs; nothing is
    written then.

    standalone: the generated file imports a copy of the runtime that is written next to it
    (`write_runtime_copy`) instead of the installed `solvergen.runtime`, so that it runs where
    only torch is installed.
    budget: the template search's work budget (`template.SearchBudget`); the output is
    deterministic for a given spec and budget. time_limit: its wall-clock safety limit in
    seconds (None: none). progress: told each stage (`progress.progress_for`; silent default)."""
    spec_path = Path(spec_path)
    check_search_options(budget, time_limit)
    start = time.perf_counter()
    progress = Progress() if progress is None else progress
    spec = read_spec(spec_path)
    if (Path(out_dir) / f"{spec.problem.name}.py").resolve() == spec_path.resolve():
        raise SpecError(f"the generated module would overwrite the spec itself: choose another --out folder "
                        f"(or name) than {spec_path}")
    budget_limits = SearchBudget(work=budget, seconds=time_limit)
    if isinstance(spec.problem, (Argmin, Implicit)):
        return _generate_declarative(spec, spec_path, out_dir, standalone, budget_limits, budget_option(budget),
                                     progress, start)
    compiled = compile_problem(spec.problem, budget=budget_limits, progress=progress)
    with progress.stage("rendering"):
        text = render(
            compiled, spec_label(spec_path), spec.sha256(), compiler_fingerprint(),
            STANDALONE_RUNTIME if standalone else None, budget_option(budget),
        )
    target = Path(out_dir) / f"{spec.problem.name}.py"
    if standalone:
        write_runtime_copy(target.parent)
    _write_atomically(target, text)
    search = compiled.elimination.search if compiled.elimination is not None else None
    return Generated(spec.problem.name, target, compiled.describe(), time.perf_counter() - start, search)


def _generate_declarative(spec: Spec, spec_path: Path, out_dir, standalone: bool, budget: SearchBudget,
                          budget_text: str | None, progress: Progress, start: float) -> Generated:
    """`generate` for an Argmin or Implicit spec: derivatives (solvergen/kkt.py), the global
    forward's elimination template where the spec is polynomial, then the module. A polynomial
    system the template compiler refuses (e.g. infinitely many critical points) leaves the
    local forward, and the summary says why."""
    if spec.problem.is_indexed:
        return _generate_indexed(spec, spec_path, out_dir, standalone, budget_text, progress, start)
    with progress.stage("deriving"):
        system = derive(spec.problem)
    critical, refused = None, None
    if system.critical_points is not None:
        try:
            critical = compile_problem(system.critical_points, budget=budget, progress=progress)
        except SpecError as exc:
            refused = str(exc)
    with progress.stage("rendering"):
        text = render_declarative(system, spec_label(spec_path), spec.sha256(), compiler_fingerprint(),
                                  STANDALONE_RUNTIME if standalone else None, critical, refused, budget_text)
    target = Path(out_dir) / f"{spec.problem.name}.py"
    if standalone:
        write_runtime_copy(target.parent)
    _write_atomically(target, text)
    search = critical.elimination.search if critical is not None and critical.elimination is not None else None
    return Generated(spec.problem.name, target, describe(system, critical, refused), time.perf_counter() - start,
                     search)


def _generate_indexed(spec: Spec, spec_path: Path, out_dir, standalone: bool, budget_text: str | None,
                      progress: Progress, start: float) -> Generated:
    """`generate` for a size-generic Argmin or Implicit (solvergen/indexed.py)."""
    with progress.stage("deriving"):
        system = derive_indexed(spec.problem)
    with progress.stage("rendering"):
        text = render_indexed(system, spec_label(spec_path), spec.sha256(), compiler_fingerprint(),
                              STANDALONE_RUNTIME if standalone else None, budget_text)
    target = Path(out_dir) / f"{spec.problem.name}.py"
    if standalone:
        write_runtime_copy(target.parent)
    _write_atomically(target, text)
    return Generated(spec.problem.name, target, indexed_summary(system), time.perf_counter() - start)


def write_runtime_copy(out_dir) -> Path:
    """Copy the runtime package, verbatim, to `out_dir/STANDALONE_RUNTIME/` (its Python files and
    the native backend's C header; each written atomically, so that a reader never sees half a
    file)."""
    folder = Path(out_dir) / STANDALONE_RUNTIME
    for source in sorted(RUNTIME_DIR.glob("*.py")) + sorted(RUNTIME_DIR.glob("native/*.h")):
        target = folder / source.relative_to(RUNTIME_DIR)
        data = source.read_text(encoding="utf-8")
        if not target.is_file() or target.read_text(encoding="utf-8") != data:
            _write_atomically(target, data)
    return folder


def _header_fields(path: Path) -> dict[str, str]:
    fields = {}
    try:
        with path.open(encoding="utf-8") as f:
            for _ in range(8):
                line = f.readline()
                if line.startswith("# Regenerate with: "):
                    words = line.split()
                    fields["budget"] = words[words.index("--budget") + 1] if "--budget" in words else None
                elif line.startswith("# Generated by solvergen "):
                    fields["version"] = line.split()[4]
                elif line.startswith("# spec sha256: "):
                    fields["sha256"] = line.split()[-1]
                elif line.startswith("# compiler sha256: "):
                    fields["compiler"] = line.split()[-1]
                elif line.startswith("# runtime interface: "):
                    fields["interface"] = line.split()[3].rstrip(",")
                    fields["standalone"] = "copy in" in line
    except OSError:
        pass
    return fields


def stale_reason(spec: Spec, target: Path, standalone: bool = False, budget: float = DEFAULT_WORK) -> str | None:
    """Why `target` must be (re)generated from `spec`, or None if it is current: it is missing,
    or was generated from another spec (or other helper modules), by another compiler (sources
    or version), for another runtime interface, with another search budget, or (`standalone`)
    without its runtime copy."""
    fields = _header_fields(target)
    if not fields:
        return "not generated yet"
    if fields.get("sha256") != spec.sha256():
        return "the spec or a module it imports changed"
    if fields.get("version") != __version__ or fields.get("compiler") != compiler_fingerprint():
        return "the compiler changed"
    if fields.get("interface") != str(INTERFACE):
        return f"generated for runtime interface {fields.get('interface')}, the runtime has {INTERFACE}"
    if fields.get("budget") != budget_option(budget):
        return "another template search budget"
    if fields.get("standalone", False) != standalone:
        return "standalone requested" if standalone else "not standalone"
    if standalone and not (target.parent / STANDALONE_RUNTIME / "__init__.py").is_file():
        return "its runtime copy is missing"
    return None


def budget_option(budget: float) -> str | None:
    """How the header's regenerate command gives a non-default budget (None: the default)."""
    return None if budget == DEFAULT_WORK else f"{budget:g}"


def is_stale(spec_path, target: Path, standalone: bool = False, budget: float = DEFAULT_WORK) -> bool:
    """Whether `load` would regenerate `target` from `spec_path` (see `stale_reason`)."""
    return stale_reason(read_spec(spec_path), Path(target), standalone, budget) is not None


def import_generated(path: Path):
    """Import a generated file as a module (a fresh module object each call)."""
    path = Path(path)
    module_name = f"_solvergen_generated_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load(spec_path, out_dir=None, standalone: bool = False, budget: float = DEFAULT_WORK, **kwargs):
    """Generate `spec_path` if its module is missing or stale, import it, and return
    `Solver(**kwargs)`. `out_dir` defaults to `generated/` in the working directory;
    `standalone` and `budget` as for `generate`."""
    spec_path = Path(spec_path)
    check_search_options(budget, DEFAULT_TIME_LIMIT)
    try:
        spec = read_spec(spec_path)
    except SpecError as exc:
        raise SpecError(f"{spec_path}: {exc}") from None
    target = Path(out_dir or DEFAULT_OUT_DIR) / f"{spec.problem.name}.py"
    reason = stale_reason(spec, target, standalone, budget)
    if reason is not None:
        print(f"solvergen: generating {target} from {spec_path} ({reason})", file=sys.stderr, flush=True)
        try:
            generate(spec_path, target.parent, standalone=standalone, budget=budget)
        except SpecError as exc:
            raise SpecError(f"{spec_path}: {exc}") from None
    module = import_generated(target)
    return (module.Layer if hasattr(module, "Layer") else module.Solver)(**kwargs)
