"""Fundamental matrix and one radial distortion parameter from 8 correspondences: 16 solutions.

Both images share the division model of radial distortion: a distorted point (x, y) is the
undistorted homogeneous point (x, y, 1 + lam (x^2 + y^2)). With F normalised by F33 = 1, each
correspondence gives one epipolar constraint, linear in the 15 monomials
    f11 f12 f21 f22 f13 f23 lam*f13 lam*f23 | lam^2 lam*f31 lam*f32 lam f31 f32 1
(Kukelova and Pajdla, "A minimal solution to the autocalibration of radial distortion", CVPR
2007; Kukelova et al., "Automatic generator of minimal problem solvers", ECCV 2008). Gauss-Jordan
elimination of the 8 x 15 coefficient matrix A = [A_e | A_k] expresses the first eight
monomials through the last seven, m_e = -C m_k with C = A_e^-1 A_k. This spec's parameters are C
(8 x 7, row-major): compute it from the correspondences with `gauss_jordan_parameters` below
(a batched, differentiable torch.linalg.solve). The equations are what the eliminated monomials
must satisfy: lam * f13 = (lam*f13), lam * f23 = (lam*f23) and det F = 0.

Unknowns: lam, f31, f32 (F33 = 1; the other entries of F follow from C).
"""
import sympy as sp

from solvergen import Problem

lam, f31, f32 = sp.symbols("lam f31 f32")
C = sp.Matrix(8, 7, sp.symbols("C0:56"))
kept = sp.Matrix([lam**2, lam * f31, lam * f32, lam, f31, f32, 1])
f11, f12, f21, f22, f13, f23, lam_f13, lam_f23 = (-C * kept)
F = sp.Matrix([[f11, f12, f13], [f21, f22, f23], [f31, f32, 1]])
equations = [lam * f13 - lam_f13, lam * f23 - lam_f23, F.det()]



def sampler(rng):
    """A random two-view scene (points at depth 2..6, rotation up to 30 degrees, focal length
    0.3..0.6, lam in [-0.5, -0.05]): C and the true (lam, f31, f32), as floats. C is generic
    for any scene (three equations in three unknowns), so the compiler may use these too."""
    import numpy as np

    g = np.random.default_rng(rng.getrandbits(64))
    axis = g.normal(size=3)
    axis /= np.linalg.norm(axis)
    K_axis = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = g.uniform(-0.5, 0.5)
    R = np.eye(3) + np.sin(angle) * K_axis + (1 - np.cos(angle)) * K_axis @ K_axis
    t = g.normal(size=3)
    t /= np.linalg.norm(t)
    X = np.concatenate([g.uniform(-1.5, 1.5, size=(8, 2)), g.uniform(2, 6, size=(8, 1))], axis=1)
    focal, lam_ = g.uniform(0.3, 0.6), g.uniform(-0.5, -0.05)
    distorted = []
    for Y in (X, X @ R.T + t):
        u = focal * Y[:, :2] / Y[:, 2:]
        r = np.sum(u * u, axis=1)
        distorted.append(u * (2 / (1 + np.sqrt(1 - 4 * lam_ * r)))[:, None])  # division model
    (u1, v1), (u2, v2) = distorted[0].T, distorted[1].T
    r1, r2 = u1 * u1 + v1 * v1, u2 * u2 + v2 * v2
    A = np.stack([u2 * u1, u2 * v1, v2 * u1, v2 * v1, u2, v2, u2 * r1, v2 * r1,
                  r1 * r2, u1 * r2, v1 * r2, r1 + r2, u1, v1, np.ones(8)], axis=1)
    skew = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    Kinv = np.diag([1 / focal, 1 / focal, 1.0])
    F = Kinv @ skew @ R @ Kinv
    F /= F[2, 2]
    return list(np.linalg.solve(A[:, :8], A[:, 8:]).ravel()), [lam_, F[2, 0], F[2, 1]]


problem = Problem("relpose_8pt_radial", unknowns=[lam, f31, f32], parameters=C, equations=equations,
                  sampler=sampler)


def coefficient_matrix(x1, x2):
    """A [..., 8, 15] of the epipolar constraints, columns in the monomial order above.
    x1, x2 [..., 8, 2]: distorted points of the two images."""
    import torch

    u1, v1 = x1[..., 0], x1[..., 1]
    u2, v2 = x2[..., 0], x2[..., 1]
    r1, r2 = u1 * u1 + v1 * v1, u2 * u2 + v2 * v2
    one = torch.ones_like(u1)
    return torch.stack([u2 * u1, u2 * v1, v2 * u1, v2 * v1, u2, v2, u2 * r1, v2 * r1,
                        r1 * r2, u1 * r2, v1 * r2, r1 + r2, u1, v1, one], dim=-1)


def gauss_jordan_parameters(x1, x2):
    """This problem's parameters C [..., 56] from 8 correspondences x1, x2 [..., 8, 2]."""
    import torch

    A = coefficient_matrix(x1, x2)
    return torch.linalg.solve(A[..., :8], A[..., 8:]).flatten(-2)


def fundamental_matrix(C, solutions):
    """F [..., S, 3, 3] from the parameters [..., 56] and solutions [..., S, 3] (lam, f31, f32)."""
    import torch

    lam_, a, b = solutions.unbind(-1)
    kept_ = torch.stack([lam_ * lam_, lam_ * a, lam_ * b, lam_, a, b, torch.ones_like(a)], dim=-1)
    e = -torch.einsum("...sk,...ek->...se", kept_, C.unflatten(-1, (8, 7)))
    rows = [[e[..., 0], e[..., 1], e[..., 4]], [e[..., 2], e[..., 3], e[..., 5]], [a, b, torch.ones_like(a)]]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)
