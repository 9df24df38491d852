"""What a generated module hands to the runtime: its problem as data.

A generated file holds the problem-specific part of a solver: the printed coefficient and
vector-Jacobian functions, and index tables. It passes them to the runtime as one `Plan`; the
runtime branches on the plan in ordinary Python (a linear block or not, a template or not, an
even template, a sparse elimination plan, a gauge, ...). Every field says what it is for; the
compiler passes that produce them are named in each class's docstring.

Shapes used throughout the runtime: B batch, S solutions, N unknowns, M parameters,
K equations, P monomials.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

# The interface between generated modules and this runtime. Bump it whenever a change here
# needs a generated module to change: `solvergen.load` then regenerates stale modules, and an
# older module refuses to load with a clear message instead of failing somewhere inside.
INTERFACE = 1


def require_interface(interface: int, spec: str) -> None:
    """Called first by every generated module: the runtime it was generated for."""
    if interface != INTERFACE:
        raise ImportError(
            f"this solver was generated from {spec} for solvergen runtime interface {interface}, "
            f"and the installed runtime has interface {INTERFACE}: regenerate it with "
            f"`solvergen generate {spec}`"
        )


@dataclass(frozen=True)
class Equations:
    """How h and dh/dx of one polynomial system are evaluated from its coefficient vector c
    (solvergen/jacobians.py, `EvaluationTables`). h_k(x) = sum_j c_j x^alpha_j over the terms j
    of equation k; monomials are built degree by degree."""

    unknowns: int
    equations: int
    # monomials by degree: per level, (parent in the previous level, unknown multiplied in)
    levels: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    term_equation: tuple[int, ...]  # equation of each term (one term per coefficient)
    term_monomial: tuple[int, ...]  # monomial of each term
    derivative_position: tuple[int, ...]  # dh/dx terms: flat (equation * N + unknown)
    derivative_coefficient: tuple[int, ...]  # dh/dx terms: coefficient
    derivative_factor: tuple[float, ...]  # dh/dx terms: exponent of the unknown
    derivative_monomial: tuple[int, ...]  # dh/dx terms: monomial x^(alpha - e_n)
    constants: tuple[tuple[int, float], ...]  # (coefficient, value) of the coefficients that are numbers


@dataclass(frozen=True)
class SparseLevel:
    """Independent elimination steps run as one (solvergen/sparse_lu.py): f = slot[column] /
    slot[pivot] per factor, then slot[target] -= f[factor] * slot[source] per update."""

    pivot: tuple[int, ...]
    column: tuple[int, ...]
    factor: tuple[int, ...]
    source: tuple[int, ...]
    target: tuple[int, ...]


@dataclass(frozen=True)
class SparseLU:
    """The template's fixed-pivot sparse elimination (solvergen/sparse_lu.py). Slots: the
    entries that are ever nonzero, slot `slots` a zero. X[t, b] = slot[numerators[t * basis +
    b]] / slot[denominators[t]]."""

    slots: int
    template_slots: tuple[int, ...]  # slot of each template entry
    forward: tuple[SparseLevel, ...]  # its factors are checked against the growth limit
    upward: tuple[SparseLevel, ...]
    numerators: tuple[int, ...]
    denominators: tuple[int, ...]


@dataclass(frozen=True)
class Template:
    """An elimination template and its action matrix (solvergen/template.py). Columns: the
    eliminated monomials, the `num_reduced` monomials reduced to the basis, then the `basis`
    basis monomials. [eliminated | reduced] (the first `square` columns) is solved against the
    basis block; the action matrix (row j: the action times basis monomial j, in the basis) is
    the constant entries minus the reduced rows of that solution."""

    unknowns: int  # the template system's unknowns
    shape: tuple[int, int]
    square: int
    num_reduced: int
    basis: int  # the action matrix is basis x basis
    positions: tuple[int, ...]  # flat (row * cols + column) position of each template entry
    sources: tuple[int, ...]  # coefficient index of each template entry
    action_constant: tuple[tuple[int, int, float], ...]  # (row, column, value)
    action_rows: tuple[int, ...]
    action_reduced: tuple[int, ...]
    action_scale: tuple[float, ...]
    # Read-off: monomial q = sum v_m v_(q m) / sum v_m^2 over the pairs (m, q m) of an
    # eigenvector v (basis monomials, then the reduced ones), for each read monomial q: the
    # unknowns, or for an even template the quadratic monomials x_i x_j (i <= j; see `fixed`).
    num_read: int
    read_monomial: tuple[int, ...]
    read_basis: tuple[int, ...]
    read_value: tuple[int, ...]
    action_read: int = -1  # the read monomial that is the eigenvalue (-1: none)
    # Even template: x and -x solve the system together and each eigenpair is one such pair
    # (the action is x_a^2 on the even part of the quotient ring). With `fixed`, only the other
    # unknowns are negated (a partial sign symmetry); the read monomials are then the quadratic
    # ones of the negated unknowns, then the fixed unknowns themselves.
    even: bool = False
    fixed: tuple[int, ...] = ()
    sparse_lu: Optional[SparseLU] = None  # where a fixed-pivot elimination pays (CPU)


@dataclass(frozen=True)
class Gauge:
    """The scale equation q(x) = c of a homogeneous linear block (q homogeneous of `degree`):
    the other equations are solved in the chart z_last = 1 and each solution is rescaled."""

    equation: int  # its index among the declared equations
    degree: int
    coefficients: tuple[int, ...]  # the declared coefficients of q's terms
    constant: int  # the declared coefficient of the x^0 term: the gauge is q(x) + c[constant] = 0
    equations: Equations  # q alone (without the constant term) over `coefficients`, in the block's unknowns


@dataclass(frozen=True)
class LinearBlock:
    """The declared equations linear in the unknowns, L x = b (solvergen/linear.py): eliminated
    with a batched QR null space, x = x_p + N z (x_p = 0 for a homogeneous block). x is the block
    of unknowns that the linear equations involve; the other unknowns are free: the reduced
    equations keep them, after the null-space coordinates."""

    rows: tuple[int, ...]  # the declared equations that form L
    block: tuple[int, ...]  # the unknowns of x, in declared order
    null_dim: int
    homogeneous: bool
    matrix_positions: tuple[int, ...]  # flat (row * block size + position in the block) of each entry of L
    matrix_sources: tuple[int, ...]  # coefficient index of each entry of L
    rhs_positions: tuple[int, ...]  # row of each entry of b = -(constant coefficient)
    rhs_sources: tuple[int, ...]
    null_mix: tuple[tuple[float, ...], ...]  # fixed columns G completing [L^T | G] for the QR (block x k)
    used_parameters: tuple[int, ...]  # declared parameters that the reduced equations use
    free: tuple[int, ...] = ()  # the other unknowns, in declared order
    gauge: Optional[Gauge] = None  # homogeneous blocks: solved in a chart, then rescaled
    # The remaining equations in the null-space coordinates (the template's system): their
    # printed coefficient function, whose inputs are [N flattened, x_p (inhomogeneous blocks),
    # the used parameters], and their evaluation tables. None when the linear block determines
    # every unknown.
    reduced_coefficients: Optional[Callable] = None
    reduced_equations: Optional[Equations] = None

    @property
    def num_reduced_inputs(self) -> int:
        n = len(self.null_mix)
        return n * self.null_dim + (0 if self.homogeneous else n) + len(self.used_parameters)

    @property
    def rank(self) -> int:
        return len(self.rows)


class Sizes:
    """The sizes a plan's name tuples give (Plan, DeclarativePlan)."""

    unknown_names: tuple[str, ...]
    parameter_names: tuple[str, ...]

    @property
    def num_unknowns(self) -> int:
        return len(self.unknown_names)

    @property
    def num_parameters(self) -> int:
        return len(self.parameter_names)


@dataclass(frozen=True, eq=False)
class Plan(Sizes):
    """Everything the runtime needs to solve and differentiate one problem."""

    name: str
    unknown_names: tuple[str, ...]
    parameter_names: tuple[str, ...]
    num_solutions: int
    coefficients: Callable  # the printed function c(a) of the declared equations: [B, M] -> [B, coefficients]
    equations: Equations  # the declared equations: Newton, validity and the IFT use them
    parameter_vjp: Callable  # (x [.., N], a [.., M], w [.., K]) -> sum_k w_k dh_k/da [.., M]
    linear: Optional[LinearBlock] = None
    template: Optional[Template] = None
    # Per process: tensors of the tables per (device, dtype), level-wise programs, and
    # torch.compile'd functions.
    cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.template is None and (self.linear is None or self.linear.reduced_equations is not None):
            raise ValueError(
                f"plan `{self.name}`: a template is needed unless the linear block determines every unknown"
            )

    @property
    def num_equations(self) -> int:
        return self.equations.equations

    @property
    def sign_gauge(self) -> bool:
        """Whether solutions are defined up to sign (an even-degree gauge)."""
        gauge = self.linear.gauge if self.linear else None
        return gauge is not None and gauge.degree % 2 == 0

    @property
    def sign_flip(self) -> Optional[tuple[float, ...]]:
        """For solutions defined up to sign: per unknown, the factor that gives the same solution
        with the other sign (-1 on the gauge's block, 1 on the free unknowns); None otherwise."""
        if not self.sign_gauge:
            return None
        return tuple(-1.0 if i in self.linear.block else 1.0 for i in range(self.num_unknowns))

    @property
    def template_shape(self) -> tuple[int, int]:
        return self.template.shape if self.template else (0, 0)

    @property
    def closed_form_eig(self) -> bool:
        """Whether the action matrix is small enough for closed-form eigenpairs (4 x 4 at most)."""
        return self.template is not None and self.template.basis <= 4


@dataclass(frozen=True, eq=False)
class DeclarativePlan(Sizes):
    """A declarative layer as data (solvergen/kkt.py): its sizes and printed functions.

    Implicit (F(y, a) = 0): `residual` F [B, K], `jacobian` dF/dy [B, K, N], `parameter_vjp`
    (y, a, w [B, K]) -> sum_k w_k dF_k/da [B, M].
    Argmin (min f s.t. c = (h, g), h = 0, g <= 0): `objective` [B], `gradient` df/dy [B, N],
    `constraints` c [B, E + I], `constraint_jacobian` [B, E + I, N], `lagrangian_hessian`
    (y, a, m [B, E + I]) -> [B, N, N], `parameter_vjp` (y, a, m, w [B, N + E + I]) -> [B, M]
    (the VJP of the KKT equations' parameter derivative).
    Both: `init` (a) -> the default start point [B, N]."""

    name: str
    kind: str  # "implicit" or "argmin"
    unknown_names: tuple[str, ...]
    parameter_names: tuple[str, ...]
    init: Callable
    parameter_vjp: Callable
    num_equations: int = 0
    num_equalities: int = 0
    num_inequalities: int = 0
    default_init: bool = False  # whether the spec gave init= (else `init` returns zeros)
    residual: Optional[Callable] = None
    jacobian: Optional[Callable] = None
    objective: Optional[Callable] = None
    gradient: Optional[Callable] = None
    constraints: Optional[Callable] = None
    constraint_jacobian: Optional[Callable] = None
    lagrangian_hessian: Optional[Callable] = None
    # The global forward: the Plan of the polynomial system whose solutions are the layer's
    # candidates (an Argmin's critical points: unknowns y, then the equality multipliers; an
    # Implicit's solutions). None: the local forward.
    critical_points: Optional[Plan] = None

    @property
    def num_constraints(self) -> int:
        return self.num_equalities + self.num_inequalities


@dataclass(frozen=True, eq=False)
class IndexedPlan:
    """A size-generic declarative layer as data (solvergen/indexed.py; run by runtime/indexed.py).

    Arrays are (name, shape) with each dimension a size name or an int. `rows`: the residual
    blocks; `columns`: the Newton variables (name, shape, "unknown" | "multiplier"); for an
    Argmin both are the unknowns then one multiplier array per equality family. `terms`: the
    Jacobian d rows / d columns as (row block, column block, coefficient letters, letter of each
    row dimension, letter of each column dimension): a letter shared by a row and a column
    dimension is a delta (the same element). Printed functions take (v, s): v maps names to
    tensors [B, *shape] (unknowns, parameters, multipliers, weights `_w<row>`), s maps size
    names to ints; `residuals` -> one tensor per row block, `jacobian_terms` -> one coefficient
    tensor [B, *letter sizes] per term, `parameter_gradient` -> -(sum_r w_r . d rows_r / d a)
    per parameter (the IFT's gradient for weights w), `init` -> the default start per declared unknown, `objective` -> [B, ] (an Argmin).
    `eliminated`: the unknown columns with a diagonal Hessian; `redundant`: the multiplier
    columns of which one entry is dropped (a dependent constraint); `size_sources`: size name
    -> (parameter, dimension) it is read from."""

    name: str
    kind: str
    unknowns: tuple
    parameters: tuple
    rows: tuple
    columns: tuple
    terms: tuple
    letter_sizes: dict
    size_sources: dict
    eliminated: tuple
    redundant: tuple
    residuals: Callable
    jacobian_terms: Callable
    parameter_gradient: Callable
    init: Callable
    objective: Optional[Callable] = None
    # auxiliary unknowns (solvergen/indexed.py, auxiliary_sums): (column, its family's column)
    # each, after the declared unknowns; `auxiliary_values` (v, s) -> the sums they stand for
    auxiliary: tuple = ()
    auxiliary_values: Optional[Callable] = None
    # the dual Newton forward (solvergen/indexed.py, closed_form_primal): (v, s) -> every unknown
    # column from the multipliers, in column order; None: Newton on the whole KKT system
    primal: Optional[Callable] = None
    # the KKT solve in closed form (solvergen/indexed.py, schur_solve): (v, s), with the
    # right-hand side as v["_g<column>"], -> the solution per column; None: the structured solve
    schur_solve: Optional[Callable] = None
    # where the expressions are defined (solvergen/indexed.py, domain_conditions): (v, s) -> arrays
    # whose every entry must be >= 0; None: everywhere
    domain: Optional[Callable] = None
