"""Reading spec files: a Python file that defines a module-level `problem`."""
from __future__ import annotations

import hashlib
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from .declarative import Argmin, Implicit
from .errors import SpecError
from .problem import Problem

SPEC_KINDS = (Problem, Argmin, Implicit)

PACKAGE_DIR = Path(__file__).resolve().parent
_helper_names: set[str] = set()  # modules that specs read in this process imported from their folders


@dataclass(frozen=True)
class Spec:
    """A spec file, its problem, and the modules beside it that it imports (helpers)."""

    path: Path
    problem: Problem | Argmin | Implicit
    helpers: tuple[Path, ...]  # files of the local modules the spec uses, sorted

    def sha256(self) -> str:
        """Of the spec and its helpers: what the generated module was compiled from."""
        digest = hashlib.sha256(self.path.read_bytes())
        for helper in self.helpers:
            digest.update(b"\0" + helper.name.encode() + b"\0" + helper.read_bytes())
        return digest.hexdigest()


def load_spec(path) -> Problem | Argmin | Implicit:
    """Execute a spec file and return its `problem`; any failure is a one-line SpecError."""
    return read_spec(path).problem


def _local_file(module, folder: Path) -> Path | None:
    """The file of `module` if it lies in `folder` (and is not solvergen itself)."""
    name = getattr(module, "__file__", None)
    if not name:
        return None
    file = Path(name).resolve()
    if folder not in file.parents or PACKAGE_DIR in file.parents or "site-packages" in file.parts:
        return None
    return file


def read_spec(path) -> Spec:
    """`load_spec`, and the spec's helpers: the modules it imports from its own folder. They are
    imported afresh for each spec (a helper cached by an earlier spec, maybe from another folder
    with a module of the same name, would hide the current one)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("no such file")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the file ({exc})") from None
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise SpecError(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    namespace = {"__name__": "__solvergen_spec__", "__file__": str(path)}
    folder = path.resolve().parent
    for name in [name for name, module in sys.modules.items() if name in _helper_names or _local_file(module, folder)]:
        del sys.modules[name]
    before = set(sys.modules)
    sys.path.insert(0, str(folder))  # specs may import helpers beside them
    try:
        exec(code, namespace)
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything the user's code raises
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        where = f" at line {frames[-1].lineno}" if frames else ""
        raise SpecError(f"running the spec failed{where}: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.pop(0)
    if "problem" not in namespace:
        raise SpecError("the spec defines no module-level `problem`")
    problem = namespace["problem"]
    if not isinstance(problem, SPEC_KINDS):
        raise SpecError(f"`problem` is a {type(problem).__name__}, not a solvergen.Problem, Argmin or Implicit")
    helpers = {}
    for name in set(sys.modules) - before:
        file = _local_file(sys.modules[name], folder)
        if file is not None:
            helpers[name] = file
    _helper_names.update(helpers)
    return Spec(path, problem, tuple(sorted(set(helpers.values()))))
