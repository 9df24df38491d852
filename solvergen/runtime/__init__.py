"""The solvergen runtime: what every generated solver runs on.

A generated module (generated/<problem>.py) holds only what is specific to its problem: the
printed coefficient and vector-Jacobian functions and index tables, handed over as one `Plan`,
and a `Solver` subclass that binds them. Everything else is here, in plain Python that imports
only torch and the standard library:

    plan.py          the Plan: a problem as data (what generated modules construct)
    solver.py        the Solver module: options, forward, select
    forward.py       the forward pass: coefficients, linear block, template stage, validity
    coefficients.py  coefficient functions: as printed, compiled, or level by level
    levelwise.py     the level-wise form of a printed function (traced), for small batches
    equations.py     evaluating h and dh/dx of a polynomial system at batches of points
    linear.py        the linear block's null space and the gauge
    template.py      template elimination (sparse plan or LAPACK), action matrix, read-off
    eig.py           eigenpairs: LAPACK, characteristic polynomial, closed form up to 4 x 4
    univariate.py    roots of univariate polynomials (Aberth-Ehrlich; closed form to degree 4)
    newton.py        Newton polishing
    dense.py         small dense linear algebra (closed-form inverses, Gram solves)
    ift.py           the backward: the implicit function theorem
    declarative.py   declarative layers (Argmin, Implicit): local forward, attach, IFT backward
    indexed.py       size-generic declarative layers: forward (Newton, dual Newton, interior point), IFT
    structured_kkt.py  their KKT solves by structure: diagonal elimination, Schur complement from patterns
    parallel.py      CPU chunks and threads; masking instead of host synchronization elsewhere
    compiled.py      compile=True: torch.compile per plan
"""
from .declarative import DeclarativeLayer
from .indexed import IndexedLayer
from .structured_kkt import place, take
from .plan import (
    INTERFACE,
    DeclarativePlan,
    Equations,
    IndexedPlan,
    Gauge,
    LinearBlock,
    Plan,
    SparseLevel,
    SparseLU,
    Template,
    require_interface,
)
from .solver import Solver

__all__ = [
    "INTERFACE",
    "DeclarativeLayer",
    "DeclarativePlan",
    "Equations",
    "IndexedLayer",
    "IndexedPlan",
    "Gauge",
    "LinearBlock",
    "Plan",
    "Solver",
    "SparseLevel",
    "SparseLU",
    "Template",
    "place",
    "require_interface",
    "take",
]
