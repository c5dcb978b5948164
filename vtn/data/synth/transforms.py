"""Exactly known subject transforms of the embedded datasets (see :mod:`vtn.data.synth`).

``T_s(y) = z + u(z)``, ``z = M y + t``: the affine part, the cubic B-spline displacement
:class:`BSplineField`, their inverse by fixed-point iteration, the ``.npz`` file of
:class:`SubjectTransform`, the random draw :func:`random_transform`, and the point helpers
:func:`apply_affine` and :func:`nearest`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vtn.io import InputError, atomic_write

__all__ = ["BSplineField", "SubjectTransform", "apply_affine", "nearest", "random_transform"]

_PAD = 3  # zero control points added on each side before cubic evaluation


def apply_affine(matrix, pts):
    """``(N, 3)`` points through a 4x4 homogeneous matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:3, :3].T + m[:3, 3]


@dataclass(frozen=True)
class BSplineField:
    """Cubic B-spline displacement field in world mm.

    ``u(p) = sum_k c_k B3((p - origin) / spacing - k)`` (tensor product, per component), with
    coefficients outside the control grid equal to zero.

    Attributes:
        coeffs: ``(3, nx, ny, nz)`` control-point displacements, mm (component k along world axis k).
        origin: ``(3,)`` world position (mm) of control point ``(0, 0, 0)``.
        spacing: ``(3,)`` control-point spacing, mm.
    """

    coeffs: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray

    def __call__(self, pts) -> np.ndarray:
        """Displacement at ``(N, 3)`` world points (mm); returns ``(N, 3)`` mm."""
        from scipy.ndimage import map_coordinates

        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        if not np.any(self.coeffs):
            return np.zeros_like(pts)
        coords = ((pts - self.origin) / self.spacing + _PAD).T
        padded = np.pad(self.coeffs, ((0, 0),) + ((_PAD, _PAD),) * 3)
        return np.stack([map_coordinates(padded[k], coords, order=3, prefilter=False,
                                         mode="nearest") for k in range(3)], axis=1)

    def jacobian_stats(self, step_fraction: float = 0.25):
        """Max spectral norm of ``grad u`` and min ``det(I + grad u)`` on a dense sampling.

        The field is sampled every ``step_fraction * spacing`` over the control grid extended by
        two spacings on each side (beyond that it is zero) and differentiated with central differences.

        Returns:
            ``(max_norm, min_det)``.
        """
        n = np.asarray(self.coeffs.shape[1:])
        step = self.spacing * step_fraction
        axes = [self.origin[k] + np.arange(-2 * self.spacing[k], (n[k] + 1) * self.spacing[k]
                                           + 1e-9, step[k]) for k in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        u = self(grid.reshape(-1, 3)).reshape(grid.shape)
        grads = np.stack(np.gradient(u, *step, axis=(0, 1, 2)), axis=-1)  # (..., comp, axis)
        grads = grads.reshape(-1, 3, 3)
        norm = float(np.linalg.norm(grads, ord=2, axis=(1, 2)).max())
        det = float(np.linalg.det(np.eye(3) + grads).min())
        return norm, det


@dataclass
class SubjectTransform:
    """The exactly known transform ``T_s``: subject world point -> base world point (RAS mm).

    ``T_s(y) = z + u(z)`` with ``z = matrix @ [y, 1]``.

    Attributes:
        matrix: 4x4 affine part (subject world mm -> intermediate world mm).
        bspline: displacement ``u`` defined in the base world frame.
        base_affine, base_shape: the base image grid (voxel -> RAS mm).
        subject_affine, subject_shape: the subject image grid.
    """

    matrix: np.ndarray
    bspline: BSplineField
    base_affine: np.ndarray
    base_shape: tuple
    subject_affine: np.ndarray
    subject_shape: tuple
    info: dict = field(default_factory=dict)

    def forward(self, pts) -> np.ndarray:
        """``T_s`` at ``(N, 3)`` subject world points (mm) -> ``(N, 3)`` base world points."""
        z = apply_affine(self.matrix, np.asarray(pts, dtype=np.float64).reshape(-1, 3))
        return z + self.bspline(z)

    def inverse(self, pts, tol: float = 1e-6, max_iter: int = 200):
        """``T_s^-1`` at ``(N, 3)`` base world points (mm), by fixed-point iteration.

        Solves ``z + u(z) = b`` with ``z <- b - u(z)`` (a contraction: ``|grad u| <= 0.5``) until
        ``|z + u(z) - b| < tol`` for every point, then ``y = M^-1 (z - t)``.

        Returns:
            ``(y (N, 3) subject world mm, max residual |z + u(z) - b| in mm)``.

        Raises:
            RuntimeError: no convergence within ``max_iter`` iterations.
        """
        b = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        z = b.copy()
        active = np.arange(len(b))
        max_res = 0.0
        for _ in range(max_iter):
            if active.size == 0:
                break
            u = self.bspline(z[active])
            res = np.linalg.norm(z[active] + u - b[active], axis=1)
            done = res < tol
            if done.any():
                max_res = max(max_res, float(res[done].max()))
            todo = active[~done]
            z[todo] = b[todo] - u[~done]
            active = todo
        else:
            if active.size:
                raise RuntimeError(f"inverse transform did not converge for {active.size} points")
        if np.array_equal(self.matrix, np.eye(4)):
            return z, max_res
        return apply_affine(np.linalg.inv(self.matrix), z), max_res

    def save(self, path) -> None:
        """Write everything needed to evaluate ``T_s`` and ``T_s^-1`` to an ``.npz`` file.

        Keys: ``matrix`` (4x4), ``bspline_coeffs`` (3, nx, ny, nz) mm, ``bspline_origin`` (3,)
        mm, ``bspline_spacing`` (3,) mm, ``bspline_order`` (3), ``base_affine``, ``base_shape``,
        ``subject_affine``, ``subject_shape``, ``convention`` (text), ``info`` (JSON text).
        """
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                matrix=np.asarray(self.matrix, dtype=np.float64),
                bspline_coeffs=np.asarray(self.bspline.coeffs, dtype=np.float64),
                bspline_origin=np.asarray(self.bspline.origin, dtype=np.float64),
                bspline_spacing=np.asarray(self.bspline.spacing, dtype=np.float64),
                bspline_order=np.int64(3),
                base_affine=np.asarray(self.base_affine, dtype=np.float64),
                base_shape=np.asarray(self.base_shape, dtype=np.int64),
                subject_affine=np.asarray(self.subject_affine, dtype=np.float64),
                subject_shape=np.asarray(self.subject_shape, dtype=np.int64),
                convention=np.array(
                    "T(y) = z + u(z), z = matrix @ [y,1]; y subject world RAS mm, T(y) base world "
                    "RAS mm; u(p) = sum_k c_k B3((p - bspline_origin)/bspline_spacing - k), "
                    "cubic B-spline, zero outside the control grid"),
                info=np.array(json.dumps(self.info, sort_keys=True, default=float)),
            )

    @classmethod
    def load(cls, path) -> "SubjectTransform":
        """Read a transform written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: transform file not found")
        try:
            with np.load(path) as d:
                bs = BSplineField(d["bspline_coeffs"], d["bspline_origin"], d["bspline_spacing"])
                return cls(d["matrix"], bs, d["base_affine"], tuple(int(v) for v in d["base_shape"]),
                           d["subject_affine"], tuple(int(v) for v in d["subject_shape"]),
                           json.loads(str(d["info"])))
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(f"{path}: not a subject transform ({exc})") from exc


def _rotation(angles_deg) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


def _control_grid(affine, shape, spacing_mm):
    """Origin and size of a world-aligned control grid covering an image with one extra point."""
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)], dtype=np.float64)
    world = apply_affine(affine, corners)
    lo, hi = world.min(0), world.max(0)
    spacing = np.full(3, float(spacing_mm))
    size = np.ceil((hi - lo) / spacing).astype(int) + 3
    return lo - spacing, spacing, tuple(int(s) for s in size)


def random_transform(rng, params, base_affine, base_shape, centre) -> SubjectTransform:
    """Draw a random affine + B-spline transform (see the module docstring).

    Args:
        rng: ``numpy.random.Generator``.
        params: an entry of :data:`vtn.data.synth.generator.ORGANS`.
        base_affine, base_shape: base grid (the subject grid is the same).
        centre: ``(3,)`` world point (mm) about which rotation and scaling act.
    """
    angles = rng.uniform(-params["rotation_deg"], params["rotation_deg"], 3)
    scales = rng.uniform(*params["scale"], 3)
    shift = rng.uniform(-params["shift_mm"], params["shift_mm"], 3)
    lin = _rotation(angles) @ np.diag(scales)
    matrix = np.eye(4)
    matrix[:3, :3] = lin
    matrix[:3, 3] = centre - lin @ centre + shift
    origin, spacing, size = _control_grid(base_affine, base_shape, params["cp_spacing_mm"])
    coeffs = np.clip(rng.normal(0.0, params["cp_sigma_mm"], (3,) + size),
                     -params["cp_max_mm"], params["cp_max_mm"])
    bs = BSplineField(coeffs, origin, spacing)
    norm, det = bs.jacobian_stats()
    if norm > params["max_grad"]:
        bs = BSplineField(coeffs * (params["max_grad"] / norm), origin, spacing)
        norm, det = bs.jacobian_stats()
    if det <= 0:  # cannot happen with norm <= 0.5 < 1, kept as a guard
        raise RuntimeError(f"B-spline displacement folds (min det {det})")
    info = {"rotation_deg": angles.tolist(), "scale": scales.tolist(), "shift_mm": shift.tolist(),
            "centre_mm": np.asarray(centre, dtype=float).tolist(), "max_grad_u": norm,
            "min_det_I_plus_grad_u": det, "min_jacobian": det * float(np.linalg.det(lin)),
            "max_abs_u_bound_mm": float(np.abs(bs.coeffs).max())}
    return SubjectTransform(matrix, bs, np.asarray(base_affine, dtype=np.float64),
                            tuple(base_shape), np.asarray(base_affine, dtype=np.float64),
                            tuple(base_shape), info)


def nearest(volume, coords, fill):
    """Nearest-neighbour lookup of ``volume`` at ``(N, 3)`` voxel coordinates (round half up)."""
    idx = np.floor(coords + 0.5).astype(np.int64)
    shape = np.asarray(volume.shape)
    inside = ((idx >= 0) & (idx < shape)).all(axis=1)
    out = np.full(len(coords), fill, dtype=volume.dtype)
    ii = idx[inside]
    out[inside] = volume[ii[:, 0], ii[:, 1], ii[:, 2]]
    return out
