"""Reading spec files: a Python file that defines a module-level `problem`."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

from .errors import SpecError
from .problem import Problem


def load_spec(path) -> Problem:
    """Execute a spec file and return its `problem`; any failure is a one-line SpecError."""
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
    sys.path.insert(0, str(path.resolve().parent))  # specs may import helpers beside them
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
    if not isinstance(problem, Problem):
        raise SpecError(f"`problem` is a {type(problem).__name__}, not a solvergen.Problem")
    return problem
