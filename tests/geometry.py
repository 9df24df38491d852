"""Synthetic ground truth: random scenes and the parameters/unknowns of each shipped problem.

Everything is numpy float64 and independent of solvergen (the null spaces come from numpy's
SVD, the truth from the scene). Each `<problem>_instances(n, rng)` returns (params [n, M],
truth [n, N]).
"""
from __future__ import annotations

import numpy as np


def random_rotation(rng, n):
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def skew(t):
    z = np.zeros(t.shape[:-1])
    return np.stack(
        [
            np.stack([z, -t[..., 2], t[..., 1]], -1),
            np.stack([t[..., 2], z, -t[..., 0]], -1),
            np.stack([-t[..., 1], t[..., 0], z], -1),
        ],
        axis=-2,
    )


def two_view_scene(rng, n, points):
    """Points in front of camera 1 (depth 2..6), camera 2 = (R, t) looking at them too.

    Returns homogeneous normalised image points q1, q2 [n, points, 3] and E = [t]x R [n, 3, 3].
    """
    R = _small_rotation(rng, n)
    t = rng.normal(size=(n, 3))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    X = np.concatenate([rng.uniform(-1.5, 1.5, size=(n, points, 2)), rng.uniform(2, 6, size=(n, points, 1))], -1)
    X2 = np.einsum("nij,npj->npi", R, X) + t[:, None, :]
    q1 = X / X[..., 2:3]
    q2 = X2 / X2[..., 2:3]
    return q1, q2, skew(t) @ R


def _small_rotation(rng, n):
    """Rotations up to about 30 degrees, so that both cameras see the points."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = rng.uniform(-0.5, 0.5, size=(n, 1, 1))
    K = skew(axis)
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * (K @ K)


def epipolar_null_space(q1, q2, dim):
    """Orthonormal basis [n, dim, 9] (row-major 3x3) of {F : q2^T F q1 = 0 for all points}."""
    rows = np.einsum("npi,npj->npij", q2, q1).reshape(q1.shape[0], q1.shape[1], 9)
    _, _, vt = np.linalg.svd(rows)
    return vt[:, -dim:, :]


def p3p_instances(n, rng):
    R = random_rotation(rng, n)
    t = rng.normal(size=(n, 3))
    A = rng.normal(size=(n, 3, 3)) * 2  # world points
    Xc = np.einsum("nij,npj->npi", R, A) + t[:, None, :]
    Xc[..., 2] = np.abs(Xc[..., 2]) + 1.0  # in front of the camera
    A = np.einsum("nji,npj->npi", R, Xc - t[:, None, :])  # world points consistent with Xc
    depth = Xc[..., 2]
    rays = Xc / depth[..., None]
    params = np.concatenate([A.reshape(n, 9), rays.reshape(n, 9)], axis=1)
    return params, depth


def relpose_5pt_nullspace_instances(n, rng):
    q1, q2, E = two_view_scene(rng, n, 5)
    N = epipolar_null_space(q1, q2, 4)
    c = np.einsum("nkj,nj->nk", N, E.reshape(n, 9))
    return N.reshape(n, 36), c[:, :3] / c[:, 3:4]


def fundamental_7pt_nullspace_instances(n, rng):
    q1, q2, E = two_view_scene(rng, n, 7)
    K1 = _random_calibration(rng, n)
    K2 = _random_calibration(rng, n)
    p1 = np.einsum("nij,npj->npi", K1, q1)
    p2 = np.einsum("nij,npj->npi", K2, q2)
    F = np.linalg.inv(K2).transpose(0, 2, 1) @ E @ np.linalg.inv(K1)
    N = epipolar_null_space(p1, p2, 2)
    c = np.einsum("nkj,nj->nk", N, F.reshape(n, 9))
    return N.reshape(n, 18), c[:, :1] / c[:, 1:2]


def _random_calibration(rng, n):
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = rng.uniform(0.7, 1.5, size=n)
    K[:, 0, 2], K[:, 1, 2] = rng.uniform(-0.1, 0.1, size=(2, n))
    K[:, 2, 2] = 1
    return K


def _shared_focal_scene(n, rng):
    """Six correspondences in pixels p1, p2 [n, 6, 3] with K = diag(f, f, 1), F [n, 9] with
    p2^T F p1 = 0 (F = K^-T E K^-1), and the focal lengths f [n]."""
    q1, q2, E = two_view_scene(rng, n, 6)
    f = rng.uniform(0.5, 2.0, size=n)
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = f
    K[:, 2, 2] = 1
    p1 = np.einsum("nij,npj->npi", K, q1)
    p2 = np.einsum("nij,npj->npi", K, q2)
    Kinv = np.linalg.inv(K)
    return p1, p2, (Kinv.transpose(0, 2, 1) @ E @ Kinv).reshape(n, 9), f


def relpose_6pt_shared_focal_instances(n, rng):
    p1, p2, F, f = _shared_focal_scene(n, rng)
    N = epipolar_null_space(p1, p2, 3)
    c = np.einsum("nkj,nj->nk", N, F)
    truth = np.stack([c[:, 0] / c[:, 2], c[:, 1] / c[:, 2], 1 / f**2], axis=1)
    return N.reshape(n, 27), truth


def implicit_example_instances(n, rng):
    x = rng.uniform(0.6, 1.8, size=n)
    y1 = 1 / x
    y2 = np.sqrt(4 - x**2 - y1**2)
    return x[:, None], np.stack([y1, y2], axis=1)


def relpose_6pt_shared_focal_natural_instances(n, rng):
    """Pixel correspondences and the truth [F / ||F|| (row-major), w = 1 / f^2]."""
    p1, p2, F, f = _shared_focal_scene(n, rng)
    F = F / np.linalg.norm(F, axis=1, keepdims=True)
    params = np.concatenate([p1[..., :2].reshape(n, 12), p2[..., :2].reshape(n, 12)], axis=1)
    return params, np.concatenate([F, 1 / f[:, None] ** 2], axis=1)


def relpose_5pt_instances(n, rng):
    q1, q2, E = two_view_scene(rng, n, 5)
    params = np.concatenate([q1[..., :2].reshape(n, 10), q2[..., :2].reshape(n, 10)], axis=1)
    E = E.reshape(n, 9)
    return params, E / np.linalg.norm(E, axis=1, keepdims=True)


def fundamental_7pt_instances(n, rng):
    q1, q2, E = two_view_scene(rng, n, 7)
    K1, K2 = _random_calibration(rng, n), _random_calibration(rng, n)
    p1 = np.einsum("nij,npj->npi", K1, q1)
    p2 = np.einsum("nij,npj->npi", K2, q2)
    F = (np.linalg.inv(K2).transpose(0, 2, 1) @ E @ np.linalg.inv(K1)).reshape(n, 9)
    params = np.concatenate([p1[..., :2].reshape(n, 14), p2[..., :2].reshape(n, 14)], axis=1)
    return params, F / np.linalg.norm(F, axis=1, keepdims=True)


def homography_4pt_instances(n, rng):
    H = np.eye(3) + 0.3 * rng.normal(size=(n, 3, 3))
    p = np.concatenate([rng.uniform(-1, 1, size=(n, 4, 2)), np.ones((n, 4, 1))], -1)
    p2 = np.einsum("nij,npj->npi", H, p)
    p2 = p2 / p2[..., 2:3]
    params = np.concatenate([p[..., :2].reshape(n, 8), p2[..., :2].reshape(n, 8)], axis=1)
    H = H.reshape(n, 9)
    return params, H / np.linalg.norm(H, axis=1, keepdims=True)


def gp3p_scene(n, rng):
    """A rig seeing three points along rays c_i + l_i d_i (rig frame): world points X [n, 3, 3],
    centres c, directions d (unit), depths l [n, 3], with rig point = R X + t."""
    R = random_rotation(rng, n)
    t = rng.normal(size=(n, 3))
    c = rng.normal(size=(n, 3, 3))
    d = rng.normal(size=(n, 3, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    depth = rng.uniform(1.0, 4.0, size=(n, 3))
    rig = c + depth[..., None] * d
    X = np.einsum("nji,npj->npi", R, rig - t[:, None, :])
    return X, c, d, depth


def gp3p_instances(n, rng):
    X, c, d, depth = gp3p_scene(n, rng)
    return np.concatenate([X.reshape(n, 9), c.reshape(n, 9), d.reshape(n, 9)], axis=1), depth


def p35pf_instances(n, rng):
    """Four world points in front of a camera P = diag(f, f, 1) [R | t]: parameters
    [X_1..X_4, u1 v1 u2 v2 u3 v3 u4] and the truth P / ||P|| (row-major)."""
    R = random_rotation(rng, n)
    f = rng.uniform(0.5, 2.0, size=n)
    t = np.concatenate([rng.uniform(-1, 1, size=(n, 2)), rng.uniform(4, 8, size=(n, 1))], axis=1)
    P = np.concatenate([R, t[:, :, None]], axis=2)
    P[:, :2] *= f[:, None, None]
    X = rng.uniform(-2, 2, size=(n, 4, 3))
    h = np.einsum("nij,npj->npi", P[:, :, :3], X) + P[:, None, :, 3]
    image = (h[..., :2] / h[..., 2:]).reshape(n, 8)
    P = P.reshape(n, 12)
    return np.concatenate([X.reshape(n, 12), image[:, :7]], axis=1), P / np.linalg.norm(P, axis=1, keepdims=True)


def radial_scene(n, rng):
    """Eight correspondences seen through one division-model distortion lam (shared): distorted
    points x1, x2 [n, 8, 2], lam [n], F [n, 3, 3] with F33 = 1 (on the undistorted points)."""
    q1, q2, E = two_view_scene(rng, n, 8)
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = rng.uniform(0.3, 0.6, size=n)
    K[:, 2, 2] = 1
    lam = rng.uniform(-0.5, -0.05, size=n)
    distorted = []
    for q in (q1, q2):
        u = np.einsum("nij,npj->npi", K, q)
        u = u[..., :2] / u[..., 2:]
        r = np.sum(u * u, axis=-1)
        # d = s u with s / (1 + lam s^2 r) = 1: the root of lam r s^2 - s + 1 = 0 near 1.
        s = 2 / (1 + np.sqrt(1 - 4 * lam[:, None] * r))
        distorted.append(u * s[..., None])
    Kinv = np.linalg.inv(K)
    F = Kinv.transpose(0, 2, 1) @ E @ Kinv
    return distorted[0], distorted[1], lam, F / F[:, 2:3, 2:3]


def radial_coefficients(x1, x2):
    """The 8 x 15 epipolar coefficient matrix of problems/relpose_8pt_radial.py (numpy)."""
    u1, v1, u2, v2 = x1[..., 0], x1[..., 1], x2[..., 0], x2[..., 1]
    r1, r2 = u1 * u1 + v1 * v1, u2 * u2 + v2 * v2
    return np.stack([u2 * u1, u2 * v1, v2 * u1, v2 * v1, u2, v2, u2 * r1, v2 * r1,
                     r1 * r2, u1 * r2, v1 * r2, r1 + r2, u1, v1, np.ones_like(u1)], axis=-1)


def relpose_8pt_radial_instances(n, rng):
    x1, x2, lam, F = radial_scene(n, rng)
    A = radial_coefficients(x1, x2)
    C = np.linalg.solve(A[..., :8], A[..., 8:]).reshape(n, 56)
    return C, np.stack([lam, F[:, 2, 0], F[:, 2, 1]], axis=1)


INSTANCES = {
    "p3p": p3p_instances,
    "relpose_5pt_nullspace": relpose_5pt_nullspace_instances,
    "fundamental_7pt_nullspace": fundamental_7pt_nullspace_instances,
    "relpose_6pt_shared_focal": relpose_6pt_shared_focal_instances,
    "implicit_example": implicit_example_instances,
    "relpose_5pt": relpose_5pt_instances,
    "relpose_6pt_shared_focal_natural": relpose_6pt_shared_focal_natural_instances,
    "fundamental_7pt": fundamental_7pt_instances,
    "homography_4pt": homography_4pt_instances,
    "gp3p": gp3p_instances,
    "p35pf": p35pf_instances,
    "relpose_8pt_radial": relpose_8pt_radial_instances,
}


def relative_errors(solutions, valid, truth, up_to_sign=None):
    """Per instance: min over valid solutions of |x - truth| / |truth| (inf if none). With
    `up_to_sign` (True, or per unknown the factor that gives the same solution with the other
    sign, such as a plan's `sign_flip`), also of |flip * x - truth|."""
    err = np.linalg.norm(solutions - truth[:, None, :], axis=-1)
    if up_to_sign is not None and up_to_sign is not False:
        flip = -1.0 if up_to_sign is True else np.asarray(up_to_sign)
        err = np.minimum(err, np.linalg.norm(solutions * flip - truth[:, None, :], axis=-1))
    err = err / np.linalg.norm(truth, axis=-1)[:, None]
    err = np.where(valid, err, np.inf)
    return err.min(axis=1)
