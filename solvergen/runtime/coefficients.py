"""A system's coefficients from its inputs: the generated straight-line function, its level-wise
form for small batches (`levelwise`), or its torch.compile'd form."""
from __future__ import annotations

import torch

from . import compiled as compilation
from . import levelwise

LEVELWISE_BATCH = 1024  # coefficient programs run level by level up to this batch


def coefficients_of(a, straight, program, settings):
    """straight(a), a printed straight-line coefficient function: compiled into fused kernels
    with compile=True (see `compiled.compiled`); otherwise, where `program` (its level-wise form,
    as `program_tensors`) is given, by `by_size`."""
    compiled = compilation.compiled(straight, settings, len(a))
    if compiled is not straight:
        return compiled(a)
    if program is not None:
        return by_size(a, straight, program)
    return straight(a)


def program_tensors(function, num_inputs, cache: dict, device, dtype) -> dict | None:
    """The level-wise program of a coefficient function as tensors on `device`, or None where
    it has none that pays (`levelwise.level_program`). The program is traced once per function
    (`cache`: the plan's)."""
    programs = cache.setdefault("level_programs", {})
    if function not in programs:
        programs[function] = levelwise.level_program(function, num_inputs)
    program = programs[function]
    if program is None:
        return None

    def long(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    def scale(values):
        return None if values is None else torch.tensor(values, dtype=dtype, device=device).unsqueeze(-1)

    steps = [
        (step.kind == "mul", step.start, long(step.left), long(step.right),
         scale(step.left_scale), scale(step.right_scale))
        for step in program.steps
    ]
    return dict(rows=program.rows, steps=steps, outputs=long(program.outputs), scale=scale(program.output_scale))


def by_size(a, straight, program):
    """straight(a) (the printed straight-line function) for large batches, where its vectors stay
    in cache; the same program level by level for small ones (at most LEVELWISE_BATCH), where
    one vectorized step per level beats thousands of tiny operations. Not under autograd: the
    backward of its gathers and block writes passes the whole value table per step (for the
    5-point at batch 1024: 179 ms against 27 ms for the straight-line code's backward)."""
    if a.shape[0] > LEVELWISE_BATCH or (a.requires_grad and torch.is_grad_enabled()):
        return straight(a)
    values = a.new_empty(program["rows"], a.shape[0])
    values[: a.shape[1]] = a.t()
    values[a.shape[1]] = 1
    for multiply, start, left, right, left_scale, right_scale in program["steps"]:
        x, y = values.index_select(0, left), values.index_select(0, right)
        if multiply:
            result = x * y
        else:
            result = (x if left_scale is None else x * left_scale) + (y if right_scale is None else y * right_scale)
        values[start : start + len(left)] = result
    return (values.index_select(0, program["outputs"]) * program["scale"]).t().contiguous()
