"""Solver(compile=True): the runtime's hot functions through torch.compile, once per plan."""
from __future__ import annotations

import types

import torch


def compiled(fn, settings, batch):
    """fn, or for solvers built with compile=True, torch.compile(fn): compiled once per function
    and plan (for any batch size: dynamic shapes) and shared by every solver of that plan.
    Batches of 0 or 1 run fn as written: torch.compile specializes those sizes (another
    compilation for nothing to gain), and its code for a batch of 1 fails in the backward's
    scatter (torch 2.13)."""
    if not settings.compile or batch <= 1:
        return fn
    functions = settings.plan.cache.setdefault("compiled", {})
    if fn not in functions:
        functions[fn] = torch.compile(_own_copy(fn), dynamic=True)
    return functions[fn]


def _own_copy(fn):
    """fn with a code object of its own. torch.compile keeps its compiled graphs, and their limit
    (torch._dynamo.config.recompile_limit, 8), per code object; the runtime's functions serve every
    plan, and each plan needs its own graphs."""
    code = fn.__code__.replace()
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    return copy
