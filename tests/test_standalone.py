"""`solvergen generate --standalone`: the generated files and a verbatim copy of the runtime run
in a fresh virtual environment that has torch and nothing of solvergen."""
from __future__ import annotations

import ast
import os
import subprocess
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

import geometry
import solvergen
import solvergen.runtime
from solvergen.generate import RUNTIME_DIR, STANDALONE_RUNTIME, generate, import_generated, is_stale

TORCH_SITE = Path(torch.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def torch_only_python(tmp_path_factory) -> Path:
    """A new virtual environment whose site-packages holds torch and what `import torch` needs
    (links to this environment's copies): no solvergen, sympy, jinja2 or numpy."""
    folder = tmp_path_factory.mktemp("venv")
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    for name in ("torch", "torchgen", "typing_extensions.py"):
        (site / name).symlink_to(TORCH_SITE / name)
    return python


def test_standalone_solvers_run_with_torch_only(tmp_path, torch_only_python, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    for name in ("p3p", "relpose_5pt"):
        generate(ROOT / "problems" / f"{name}.py", out, standalone=True)
    # The runtime is copied verbatim, never rendered.
    copy = out / STANDALONE_RUNTIME
    assert sorted(p.name for p in copy.glob("*.py")) == sorted(p.name for p in RUNTIME_DIR.glob("*.py"))
    for source in RUNTIME_DIR.glob("*.py"):
        assert (copy / source.name).read_bytes() == source.read_bytes()

    instances = {}
    for name in ("p3p", "relpose_5pt"):
        params, truth = geometry.INSTANCES[name](50, np.random.default_rng(41))
        instances[name] = (torch.from_numpy(params), torch.from_numpy(truth))
    torch.save(instances, tmp_path / "instances.pt")
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import torch
        assert all(importlib.util.find_spec(m) is None for m in ("solvergen", "sympy", "jinja2", "numpy"))
        sys.path.insert(0, {str(out)!r})
        import p3p, relpose_5pt
        for module in (p3p, relpose_5pt):
            params, truth = torch.load({str(tmp_path / "instances.pt")!r})[module.PLAN.name]
            params = params.clone().requires_grad_(True)
            solver = module.Solver()
            solutions, valid = solver(params)
            picked, found = solver.select(solutions, valid, reference=truth)
            picked.sum().backward()
            error = ((picked - truth).norm(dim=-1) / truth.norm(dim=-1)).max().item()
            print(module.PLAN.name, bool(found.all()), error, bool(torch.isfinite(params.grad).all()))
        print(sorted({{m.split(".")[0] for m in sys.modules if "solvergen" in m}}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([torch_only_python, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    for line in lines[:2]:
        name, found, error, finite = line.split()
        assert found == "True" and float(error) < 1e-9 and finite == "True", line
    (loaded,) = ast.literal_eval(lines[2])  # one runtime: the copy
    assert loaded.startswith(STANDALONE_RUNTIME + "_")


def test_load_standalone(tmp_path, monkeypatch):
    """load(..., standalone=True) writes the copy, and regenerates a module generated without it."""
    monkeypatch.chdir(ROOT)
    spec = ROOT / "problems" / "implicit_example.py"
    target = tmp_path / "implicit_example.py"
    generate(spec, tmp_path)
    assert not is_stale(spec, target) and is_stale(spec, target, standalone=True)
    solver = solvergen.load(spec, out_dir=tmp_path, standalone=True)
    assert (tmp_path / STANDALONE_RUNTIME / "__init__.py").is_file()
    assert not is_stale(spec, target, standalone=True)
    assert STANDALONE_RUNTIME in type(solver).__mro__[1].__module__
    module = import_generated(target)
    assert module.runtime.__name__.startswith(STANDALONE_RUNTIME + "_")
    assert module.runtime.Solver is not solvergen.runtime.Solver
