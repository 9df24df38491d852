"""Solver(compile=True): the runtime's hot functions through torch.compile, once per plan."""
from __future__ import annotations

import types

import torch

# torch.compile's backend. Tests also use "aot_eager": the same graph capture (dynamo and
# autograd tracing, guards, dynamic shapes, graph breaks) without inductor's code generation,
# which takes minutes per problem on the CPU.
BACKEND = "inductor"


def compiled(fn, settings, batch):
    """fn, or for solvers built with compile=True, torch.compile(fn): compiled once per function
    and plan (for any batch size: dynamic shapes) and shared by every solver of that plan.
    Batches of 0 or 1 run fn as written: torch.compile specializes those sizes (another
    compilation for nothing to gain), and its code for a batch of 1 fails in the backward's
    scatter (torch 2.13)."""
    if not settings.compile or batch <= 1:
        return fn
    functions = settings.plan.cache.setdefault("compiled", {})
    key = (fn, BACKEND)
    if key not in functions:
        functions[key] = torch.compile(_own_copy(fn), dynamic=True, backend=BACKEND)
    return functions[key]


def _own_copy(fn):
    """fn with a code object of its own. torch.compile keeps its compiled graphs, and their limit
    (torch._dynamo.config.recompile_limit, 8), per code object; the runtime's functions serve every
    plan, and each plan needs its own graphs."""
    code = fn.__code__.replace()
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    return copy
