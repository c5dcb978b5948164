"""Pure functions on images and displacement fields.

Conventions (see ``docs/design.md``):

* images are ``(B, C, D, H, W)``; flows are ``(B, 3, D, H, W)`` in **voxel units** of the fixed
  grid, channel ``k`` = displacement along array axis ``k``;
* a flow *pulls* from the moving image: ``warp(moving, flow)(x) = moving(x + flow(x))``;
* samples outside the volume are clamped to the nearest point of the enclosing cuboid
  (paper, Sec. III-A), inside they are trilinearly interpolated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "check_flow",
    "forward_differences",
    "det3",
    "identity_grid",
    "centered_grid",
    "sampling_grid",
    "warp",
    "warp_labels",
    "compose",
    "affine_flow",
    "jacobian_det",
    "sample_flow",
    "transport_points",
    "invert_points",
]


def check_flow(flow: torch.Tensor, name: str = "flow") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``flow`` is ``(B, 3, D, H, W)``."""
    if flow.dim() != 5 or flow.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, D, H, W), got {tuple(flow.shape)}")


def identity_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of a grid.

    Args:
        shape: spatial shape ``(D, H, W)``.

    Returns:
        ``(3, D, H, W)`` tensor; channel ``k`` holds the index along axis ``k``.
    """
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def _per_axis(values, device, dtype) -> torch.Tensor:
    """``(3, 1, 1, 1)`` tensor of per-axis constants, built on ``device`` without a host copy.

    ``torch.tensor(values, device="cuda")`` copies from pageable host memory and so waits for
    the GPU; ``torch.full`` launches a fill kernel instead. The values are the same float
    roundings either way.
    """
    if device is None or torch.device(device).type == "cpu":
        return torch.tensor(values, device=device, dtype=dtype).view(3, 1, 1, 1)
    return torch.stack([torch.full((), v, device=device, dtype=dtype)
                        for v in values]).view(3, 1, 1, 1)


def centered_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates centred on the volume centre, ``p - (L - 1) / 2`` per axis.

    Returns:
        ``(3, D, H, W)`` tensor in voxels.
    """
    grid = identity_grid(shape, device=device, dtype=dtype)
    return grid - _per_axis([(n - 1) / 2.0 for n in shape], device, dtype)


def _normalised_sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    """Absolute sampling positions ``x + flow(x)`` normalised for ``grid_sample``.

    Returns ``(B, D, H, W, 3)`` with the last dim ordered (W, H, D) as ``grid_sample`` expects.
    """
    shape = flow.shape[2:]
    pos = identity_grid(shape, device=flow.device, dtype=flow.dtype).unsqueeze(0) + flow
    scale = _per_axis([2.0 / max(n - 1, 1) for n in shape], flow.device, flow.dtype)
    norm = pos * scale - 1.0
    return norm.permute(0, 2, 3, 4, 1).flip(-1)


def sampling_grid(shape, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised identity grid of ``shape`` for ``warp(..., grid=)``, built once.

    Computed in float64, then cast: ``base = 2 x / (L - 1) - 1`` per axis and
    ``scale = 2 / (L - 1)``, both with the last dimension ordered (W, H, D) as ``grid_sample``
    expects (VoxelMorph passes its ``meshgrid`` the same way).

    Returns:
        ``(base (1, D, H, W, 3), scale (3,))``, plain tensors even under ``inference_mode``.
    """
    shape = tuple(int(s) for s in shape)
    with torch.inference_mode(False):
        scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=torch.float64)
        ident = identity_grid(shape, dtype=torch.float64)  # (3, D, H, W)
        base = (ident * scale.view(3, 1, 1, 1) - 1.0).permute(1, 2, 3, 0).flip(-1)
        return (base.unsqueeze(0).contiguous().to(device=device, dtype=dtype),
                scale.flip(0).to(device=device, dtype=dtype))


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
         grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Warp ``image`` with ``flow``: ``out(x) = image(x + flow(x))``.

    Args:
        image: ``(B, C, D, H, W)`` moving image (any channel count; a flow can be warped too).
        flow: ``(B, 3, D, H, W)`` displacement in voxels on the output (fixed) grid. The output
            grid may differ in size from ``image`` only if the flow was built for it; normally
            both share the spatial shape.
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.
        grid: ``(base, scale)`` of :func:`sampling_grid` for the flow's shape, computed once by
            the caller (the fast path keeps it as a buffer): the normalised positions are then
            ``base + flow * scale`` instead of ``(x + flow) * scale - 1``, equal up to float
            rounding (a few 1e-7 of the normalised coordinate). ``None``: built here.

    Returns:
        ``(B, C, D, H, W)`` warped image on the flow's grid, border-clamped.
    """
    check_flow(flow)
    if image.dim() != 5:
        raise ValueError(f"image must have shape (B, C, D, H, W), got {tuple(image.shape)}")
    if image.shape[0] != flow.shape[0]:
        raise ValueError(f"batch sizes differ: image {image.shape[0]} vs flow {flow.shape[0]}")
    if tuple(image.shape[2:]) != tuple(flow.shape[2:]):
        raise ValueError(
            f"image grid {tuple(image.shape[2:])} differs from flow grid {tuple(flow.shape[2:])}"
        )
    src = image if image.is_floating_point() else image.to(flow.dtype)
    if grid is None:
        pos = _normalised_sampling_grid(flow.to(src.dtype))
    else:
        base, scale = (t.to(src.dtype) for t in grid)
        if tuple(base.shape[1:4]) != tuple(flow.shape[2:]):
            raise ValueError(f"grid is for shape {tuple(base.shape[1:4])}, the flow's grid is "
                             f"{tuple(flow.shape[2:])}")
        pos = torch.addcmul(base, flow.to(src.dtype).permute(0, 2, 3, 4, 1).flip(-1), scale)
    return F.grid_sample(src, pos, mode=mode, padding_mode="border", align_corners=True)


def warp_labels(labels: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of an integer label map.

    Args:
        labels: ``(B, 1, D, H, W)`` integer (or float holding integers) labels.
        flow: ``(B, 3, D, H, W)`` displacement in voxels.

    Returns:
        Labels of the same dtype as ``labels`` on the flow's grid.
    """
    out = warp(labels.to(flow.dtype), flow, mode="nearest")
    return torch.round(out).to(labels.dtype)


def compose(g1: torch.Tensor, g2: torch.Tensor,
            grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Composition of flows (paper eq. 3): ``g1 * g2 = g2 + warp(g1, g2)``.

    ``warp(warp(I, g1), g2) == warp(I, compose(g1, g2))`` (eq. 4): first ``g1`` then ``g2``.

    Args:
        g1: ``(B, 3, D, H, W)`` flow applied first.
        g2: ``(B, 3, D, H, W)`` flow applied second.
        grid: optional precomputed grid of :func:`sampling_grid` (see :func:`warp`).
    """
    check_flow(g1, "g1")
    check_flow(g2, "g2")
    return g2 + warp(g1, g2, grid=grid)


def affine_flow(W: torch.Tensor, b: torch.Tensor, shape) -> torch.Tensor:
    """Dense flow of an affine transform about the volume centre (paper eq. 11).

    ``flow(p) = W p_c + b`` where ``p_c`` is the centred voxel coordinate, so the transform maps
    ``p_c`` to ``(I + W) p_c + b``.

    Args:
        W: ``(B, 3, 3)`` residual matrix (``A = I + W``), voxel units.
        b: ``(B, 3)`` translation in voxels.
        shape: spatial shape ``(D, H, W)``.

    Returns:
        ``(B, 3, D, H, W)`` flow in voxels.
    """
    if W.dim() != 3 or W.shape[1:] != (3, 3):
        raise ValueError(f"W must have shape (B, 3, 3), got {tuple(W.shape)}")
    if b.dim() != 2 or b.shape[1] != 3 or b.shape[0] != W.shape[0]:
        raise ValueError(f"b must have shape (B, 3) matching W, got {tuple(b.shape)}")
    pc = centered_grid(shape, device=W.device, dtype=W.dtype)
    flow = torch.einsum("bij,jdhw->bidhw", W, pc)
    return flow + b.view(-1, 3, 1, 1, 1)


def jacobian_det(flow: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of ``x -> x + flow(x)`` with forward differences.

    Follows the reference evaluation code: ``det(I + grad u)`` on the ``(D-1, H-1, W-1)`` grid,
    derivatives in voxels.

    Args:
        flow: ``(B, 3, D, H, W)`` displacement in voxels.

    Returns:
        ``(B, D-1, H-1, W-1)`` determinants (dimensionless).
    """
    check_flow(flow)
    d0, d1, d2 = forward_differences(flow)
    # on the (D-1, H-1, W-1) grid where all three differences exist
    du0 = d0[:, :, :, :-1, :-1]
    du1 = d1[:, :, :-1, :, :-1]
    du2 = d2[:, :, :-1, :-1, :]
    # J[i][j] = d x_i' / d x_j = delta_ij + d u_i / d x_j
    J = torch.stack([du0, du1, du2], dim=2)  # (B, i, j, ...)
    eye = torch.eye(3, dtype=flow.dtype, device=flow.device).view(1, 3, 3, 1, 1, 1)
    J = J + eye
    return det3(J.permute(0, 3, 4, 5, 1, 2))


def forward_differences(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward differences of a ``(B, C, D, H, W)`` tensor along the three spatial axes.

    Returns:
        ``(t[x + e_0] - t[x], t[x + e_1] - t[x], t[x + e_2] - t[x])`` where they exist:
        shapes ``(B, C, D-1, H, W)``, ``(B, C, D, H-1, W)``, ``(B, C, D, H, W-1)``; units of
        ``t`` per voxel.
    """
    if t.dim() != 5:
        raise ValueError(f"t must have shape (B, C, D, H, W), got {tuple(t.shape)}")
    return (t[:, :, 1:] - t[:, :, :-1],
            t[:, :, :, 1:] - t[:, :, :, :-1],
            t[:, :, :, :, 1:] - t[:, :, :, :, :-1])


def det3(M: torch.Tensor) -> torch.Tensor:
    """Determinant of ``(..., 3, 3)`` matrices by cofactor expansion along the first row
    (smooth everywhere, no pivoting): ``a(ei - fh) - b(di - fg) + c(dh - eg)``.

    Returns:
        ``(...)``.
    """
    if M.dim() < 2 or tuple(M.shape[-2:]) != (3, 3):
        raise ValueError(f"M must have shape (..., 3, 3), got {tuple(M.shape)}")
    a, b, c = M[..., 0, 0], M[..., 0, 1], M[..., 0, 2]
    d, e, f = M[..., 1, 0], M[..., 1, 1], M[..., 1, 2]
    g, h, i = M[..., 2, 0], M[..., 2, 1], M[..., 2, 2]
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _single_flow_and_points(flow: torch.Tensor, points: torch.Tensor, who: str) -> torch.Tensor:
    """Check a single flow ``(3, D, H, W)``/``(1, 3, D, H, W)`` and points ``(N, 3)``; returns
    the flow with its batch axis."""
    if flow.dim() == 4:
        flow = flow.unsqueeze(0)
    check_flow(flow)
    if flow.shape[0] != 1:
        raise ValueError(f"{who} takes a single flow (batch 1)")
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    return flow


def sample_flow(flow: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinearly sample a flow at continuous voxel positions (border clamp).

    Args:
        flow: ``(3, D, H, W)`` or ``(1, 3, D, H, W)`` displacement in voxels.
        points: ``(N, 3)`` voxel coordinates (array-axis order).

    Returns:
        ``(N, 3)`` displacement at the points, voxels.
    """
    flow = _single_flow_and_points(flow, points, "sample_flow")
    shape = flow.shape[2:]
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=flow.dtype,
                         device=flow.device)
    norm = (points.to(flow.dtype) * scale - 1.0).flip(-1).view(1, -1, 1, 1, 3)
    out = F.grid_sample(flow, norm, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(3, -1).t()


def transport_points(points: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Carry fixed-image points into the moving image: ``p + flow(p)``.

    Args:
        points: ``(N, 3)`` voxel coordinates in the fixed image.
        flow: ``(3, D, H, W)`` or ``(1, 3, D, H, W)`` displacement in voxels on the fixed grid.

    Returns:
        ``(N, 3)`` voxel coordinates in the moving image.
    """
    return points.to(flow.dtype) + sample_flow(flow, points)


def _forward_map_nearest(points: torch.Tensor, flow: torch.Tensor, chunk: int = 1 << 18):
    """For each point ``p`` the grid voxel ``x`` minimising ``||x + flow(x) - p||`` (brute force,
    ``chunk`` voxels at a time). ``flow`` is ``(1, 3, D, H, W)``; returns ``(N, 3)``."""
    shape = flow.shape[2:]
    pos = (identity_grid(shape, device=flow.device, dtype=flow.dtype) + flow[0]).reshape(3, -1).t()
    best = torch.full((points.shape[0],), float("inf"), dtype=flow.dtype, device=flow.device)
    arg = torch.zeros(points.shape[0], dtype=torch.long, device=flow.device)
    for start in range(0, pos.shape[0], chunk):
        d = torch.cdist(points, pos[start:start + chunk])
        v, i = d.min(dim=1)
        better = v < best
        best = torch.where(better, v, best)
        arg = torch.where(better, i + start, arg)
    grid = identity_grid(shape, device=flow.device, dtype=flow.dtype).reshape(3, -1).t()
    return grid[arg]


def invert_points(points: torch.Tensor, flow: torch.Tensor, iterations: int = 100,
                  tol: float = 1e-6, search: bool = False) -> torch.Tensor:
    """Positions ``y`` on the flow's grid with ``y + flow(y) = p`` (inverse point transport).

    ``flow`` maps a grid point ``y`` to ``y + flow(y)`` (the pull convention), so ``y`` is where
    the point ``p`` of the other image lands: the warped moving landmarks of a registration
    (paper Section V-B, ``p`` = moving landmarks, ``flow`` = fixed -> moving displacement) or the
    landmarks of an augmented moving image (:mod:`vtn.augment`).

    Solved by a damped Newton iteration on ``r(y) = y + flow(y) - p`` (``flow`` sampled
    trilinearly with border clamp, :func:`sample_flow`; its Jacobian by central differences with
    a half-voxel step; a step is halved up to 8 times until ``|r|`` decreases; where
    ``I + grad flow`` is singular the fixed-point step ``y <- p - flow(y)`` is used). The start is
    ``y = p``, or with ``search=True`` the grid voxel whose image ``x + flow(x)`` is nearest to
    ``p`` (for large deformations, e.g. flows with an affine part). Where the map is not
    invertible (folding) the iteration returns the point of smallest residual it found.

    Args:
        points: ``(N, 3)`` voxel positions (array-axis order) in the image the flow pulls from.
        flow: ``(3, D, H, W)`` or ``(1, 3, D, H, W)`` displacement in voxels.
        iterations: the most Newton steps.
        tol: stop when every residual component is below ``tol`` voxels.
        search: start from the nearest forward-mapped grid voxel (brute force over the grid).

    Returns:
        ``(N, 3)`` positions on the flow's grid (voxels, ``flow``'s dtype; may lie outside the
        grid, where the clamped flow is constant).
    """
    flow = _single_flow_and_points(flow, points, "invert_points")
    p = points.to(device=flow.device, dtype=flow.dtype)
    if p.shape[0] == 0:
        return p.clone()
    eye = torch.eye(3, dtype=flow.dtype, device=flow.device)
    h = 0.5

    def residual(y):
        return y + sample_flow(flow, y) - p

    y = _forward_map_nearest(p, flow) if search else p.clone()
    r = residual(y)
    for _ in range(iterations):
        if r.abs().max().item() < tol:
            break
        cols = [(sample_flow(flow, y + h * eye[k]) - sample_flow(flow, y - h * eye[k])) / (2 * h)
                for k in range(3)]
        J = eye + torch.stack(cols, dim=2)  # J[n, i, k] = delta_ik + d flow_i / d y_k
        ok = torch.linalg.det(J).abs() > 1e-6
        step = r.clone()
        if ok.any():
            step[ok] = torch.linalg.solve(J[ok], r[ok].unsqueeze(-1)).squeeze(-1)
        norm = r.norm(dim=1)
        lam = torch.ones_like(norm)
        accepted = torch.zeros_like(norm, dtype=torch.bool)
        y_new, r_new = y.clone(), r.clone()
        for _ in range(9):
            trial = y - lam.unsqueeze(1) * step
            r_trial = residual(trial)
            better = ~accepted & (r_trial.norm(dim=1) < norm)
            y_new[better], r_new[better] = trial[better], r_trial[better]
            accepted |= better
            if accepted.all():
                break
            lam = torch.where(accepted, lam, lam / 2)
        if not accepted.any():
            break
        y, r = y_new, r_new
    return y
