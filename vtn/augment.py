"""Random B-spline spatial augmentation of the moving image (training only).

Follows the reference code (RCN ``free_form_fields`` + ``sample_power``; reference-facts §5.4):

* a ``5 x 5 x 5`` control grid of random displacements, 3 components each, drawn with the
  "power" law: ``t ~ U(-r, r)`` with ``r = 0.4 ** (1/3)``, value ``sign(t) |t| ** 3`` (in
  ``[-0.4, 0.4]``, concentrated near 0), multiplied by ``size // 4`` of the axis the component
  points along -- at 128^3 every control point moves at most ``0.4 * 32 = 12.8`` voxels per axis
  (the paper's "maximum displacement 12");
* the control grid is zero-padded by one point on every side (``7^3``) and interpolated with the
  uniform **cubic B-spline** to the dense voxel grid: ``4`` intervals per axis, voxel ``i`` of an
  axis of length ``L`` sits at spline parameter ``t = 4 (i + 0.5) / L`` (for ``L = 128``: 32
  voxels per interval, basis evaluated at ``u = (i + 0.5) / 32`` as in the reference);
* the dense field is a displacement in **voxels** (channel ``k`` along array axis ``k``) that
  *pulls*: the augmented moving image is ``moving(x + field(x))`` (:func:`vtn.functional.warp`,
  trilinear, border clamp); a segmentation is warped with the same field (nearest neighbour here,
  so labels stay labels), landmarks are carried to the point ``y`` with ``y + field(y) = p``
  (:func:`vtn.functional.invert_points`).

Only the moving image is augmented (as in the reference; issue #29 notes the fixed could be too).
Random numbers come from a CPU :class:`torch.Generator` (a few hundred numbers per batch), so a
given generator state gives the same field on every device.
"""

from __future__ import annotations

import functools

import torch

from vtn.device import to_device
from vtn.functional import invert_points, warp, warp_labels

__all__ = [
    "sample_power",
    "random_control_points",
    "bspline_basis_matrix",
    "bspline_field",
    "random_bspline_field",
    "augment_moving",
    "max_displacement",
]

#: control points per axis (before zero padding), as in the reference
CONTROL_POINTS = 5
#: largest control displacement as a fraction of ``size // 4``
MAX_FRACTION = 0.4
#: exponent of the power law
POWER = 3


def sample_power(shape, generator: torch.Generator | None = None, bound: float = MAX_FRACTION,
                 k: int = POWER) -> torch.Tensor:
    """Reference ``sample_power(-bound, bound, k)``: ``sign(t)|t|^k`` with ``t ~ U(-r, r)``.

    Args:
        shape: output shape.
        generator: CPU generator (``None``: torch's default generator).
        bound: the largest absolute value (reached when ``|t| = r = bound ** (1/k)``).
        k: the exponent.

    Returns:
        float32 CPU tensor of ``shape`` with values in ``[-bound, bound]``.
    """
    r = bound ** (1.0 / k)
    t = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * r
    return (torch.sign(t) * t.abs() ** k).to(torch.float32)


def random_control_points(batch: int, shape, generator: torch.Generator | None = None,
                          n: int = CONTROL_POINTS, bound: float = MAX_FRACTION) -> torch.Tensor:
    """Random control displacements ``(B, 3, n, n, n)`` in voxels.

    Component ``k`` is ``sample_power`` times ``shape[k] // 4``, so ``|value| <= bound *
    (shape[k] // 4)`` (12.8 voxels at 128).
    """
    scale = torch.tensor([s // 4 for s in shape], dtype=torch.float32).view(1, 3, 1, 1, 1)
    return sample_power((batch, 3, n, n, n), generator, bound) * scale


def bspline_basis_matrix(length: int, n_points: int, dtype=torch.float32,
                         device=None) -> torch.Tensor:
    """Cubic B-spline weights of ``n_points`` padded control points at every voxel of an axis.

    The ``n_points - 3`` spline intervals span the axis uniformly; voxel ``i`` sits at
    ``t = (n_points - 3) (i + 0.5) / length``, interval ``s = floor(t)``, ``u = t - s``, and gets
    weights ``(1-u)^3/6, (3u^3 - 6u^2 + 4)/6, (-3u^3 + 3u^2 + 3u + 1)/6, u^3/6`` on control points
    ``s .. s+3``.

    Returns:
        ``(length, n_points)`` matrix; each row sums to 1.
    """
    n_int = n_points - 3
    if n_int < 1:
        raise ValueError(f"need at least 4 control points per axis, got {n_points}")
    t = (torch.arange(length, dtype=torch.float64) + 0.5) * n_int / length
    s = torch.clamp(torch.floor(t), 0, n_int - 1).long()
    u = t - s
    w = torch.stack([
        (1 - u) ** 3 / 6,
        (3 * u ** 3 - 6 * u ** 2 + 4) / 6,
        (-3 * u ** 3 + 3 * u ** 2 + 3 * u + 1) / 6,
        u ** 3 / 6,
    ], dim=1)
    mat = torch.zeros(length, n_points, dtype=torch.float64)
    rows = torch.arange(length).unsqueeze(1).expand(-1, 4)
    cols = s.unsqueeze(1) + torch.arange(4).unsqueeze(0)
    mat[rows, cols] = w
    return to_device(mat, device, dtype)


@functools.lru_cache(maxsize=64)
def _cached_basis(length: int, n_points: int, dtype, device) -> torch.Tensor:
    """:func:`bspline_basis_matrix`, built and copied to ``device`` once per argument set."""
    return bspline_basis_matrix(length, n_points, dtype, device)


def bspline_field(control: torch.Tensor, shape) -> torch.Tensor:
    """Dense displacement from control displacements by cubic B-spline interpolation.

    Args:
        control: ``(B, 3, n, n, n)`` control displacements in voxels (unpadded; one ring of
            zero control points is added around them, as in the reference).
        shape: dense spatial shape ``(D, H, W)``.

    Returns:
        ``(B, 3, D, H, W)`` displacement in voxels on ``control``'s device and dtype. It is a
        convex combination of control values, so ``|field| <= max |control|`` per component.
    """
    if control.dim() != 5 or control.shape[1] != 3:
        raise ValueError(f"control must be (B, 3, n, n, n), got {tuple(control.shape)}")
    padded = torch.nn.functional.pad(control, (1, 1, 1, 1, 1, 1))
    mats = [_cached_basis(int(L), int(padded.shape[2 + a]), control.dtype, control.device)
            for a, L in enumerate(shape)]
    out = torch.einsum("bcijk,xi->bcxjk", padded, mats[0])
    out = torch.einsum("bcxjk,yj->bcxyk", out, mats[1])
    out = torch.einsum("bcxyk,zk->bcxyz", out, mats[2])
    return out.contiguous()


def random_bspline_field(batch: int, shape, generator: torch.Generator | None = None,
                         device=None, dtype=torch.float32) -> torch.Tensor:
    """A random augmentation field ``(B, 3, D, H, W)`` in voxels (see the module docstring).

    The control points are drawn on the CPU from ``generator`` (so a seed gives the same field
    on every device) and then copied to ``device`` without a host synchronisation.
    """
    control = random_control_points(batch, shape, generator)
    return bspline_field(to_device(control, device, dtype), shape)


def augment_moving(moving: torch.Tensor, seg: torch.Tensor | None = None,
                   landmarks: list | None = None, generator: torch.Generator | None = None,
                   field: torch.Tensor | None = None):
    """Warp a batch of moving images (and segmentations/landmarks) with random B-spline fields.

    Args:
        moving: ``(B, 1, D, H, W)`` float moving images.
        seg: optional ``(B, 1, D, H, W)`` label maps (warped nearest neighbour).
        landmarks: optional list of ``B`` tensors ``(N_b, 3)`` (voxel positions) or ``None``.
        generator: CPU generator for the control points.
        field: use this ``(B, 3, D, H, W)`` field instead of drawing one.

    Returns:
        dict with ``moving`` (augmented images), ``field`` (voxels), and ``seg`` / ``landmarks``
        when given.
    """
    if moving.dim() != 5:
        raise ValueError(f"moving must be (B, C, D, H, W), got {tuple(moving.shape)}")
    shape = tuple(moving.shape[2:])
    if field is None:
        field = random_bspline_field(moving.shape[0], shape, generator,
                                     device=moving.device, dtype=torch.float32)
    out = {"moving": warp(moving, field.to(moving.dtype)), "field": field}
    if seg is not None:
        out["seg"] = warp_labels(seg, field)
    if landmarks is not None:
        out["landmarks"] = [None if p is None else invert_points(p, field[b:b + 1])
                            for b, p in enumerate(landmarks)]
    return out


def max_displacement(size: int) -> float:
    """The largest control displacement (voxels) at image size ``size``: ``0.4 * (size // 4)``."""
    return MAX_FRACTION * (size // 4)

