"""Registration metrics of the paper (Section V) and of Learn2Reg, on NumPy arrays or torch tensors.

Definitions (the table in ``docs/design.md`` names the paper reference of each; where sources
differ, see ``/work/shared/conventions.md``):

* **IoU / Dice** of binary masks: ``|A∩B| / |A∪B|`` and ``2|A∩B| / (|A| + |B|)``. Masks are
  compared directly (the warped moving segmentation is produced by nearest-neighbour warping of
  the label map; the RCN code instead warps 0/255 masks trilinearly and thresholds at 128).
  Empty union (both masks empty): the score is undefined and returned as ``empty`` (default NaN),
  so that per-label means skip labels absent from both images.
* **Seg. IoU of the paper** (Section V, "the set of voxels the organ consists of"): one region,
  the liver mask, or for the brain every labelled voxel (label >= 1, :func:`vtn.labels.organ_mask`).
* **Per-structure overlap** (beyond the paper; RCN issue #42, Learn2Reg): per label, the
  unweighted mean over the labels present in the fixed segmentation (56 LPBA40 structures).
* **HD95** (Learn2Reg): per structure, the larger of the two directed 95th percentiles of the
  distances from the boundary voxels of one mask to the nearest boundary voxel of the other
  (:func:`hausdorff_distance`; boundary = the mask minus its 6-connected erosion, percentiles with
  linear interpolation as MONAI's ``compute_hausdorff_distance``). Learn2Reg's script weights
  surface elements by area (DeepMind ``surface_distance``); the voxel version differs from it
  by a fraction of a voxel. Voxels, or mm with the voxel size; NaN when either mask is empty.
* **Landmark distance**: mean Euclidean distance between predicted and true landmark positions,
  in voxels of the image the points live in (the paper's "Lm. Dist."), or in mm when the voxel
  spacing or the image affine is given (difference vectors are mapped through the affine's
  linear part, so oblique/anisotropic grids are handled).
* **Jacobian**: ``det(I + ∇u)`` with forward differences on the ``(D-1, H-1, W-1)`` grid
  (:func:`vtn.functional.jacobian_det`, the reference evaluation); the paper's "Std. Jacobian" is
  its standard deviation over voxels (population std, ``ddof=0`` like ``np.std`` in RCN).
  A central-difference variant (``np.gradient``: central inside, one-sided at the border) is
  available for cross-checks with ITK's ``DisplacementFieldJacobianDeterminantFilter``.
* **Folding** (paper Tables III/VII: "areas with negative Jacobian determinant"): share of
  voxels with ``det < 0`` (forward differences), a fraction in ``[0, 1]``; the tables report
  percent.
* **SDlogJ** (Learn2Reg): ``std(log(clip(J, 1e-9, 1e9)))`` with Learn2Reg's central differences
  and its 2-voxel border crop (:func:`sdlogj`). The Learn2Reg script adds an undocumented 3 to
  ``J`` before the log; ``shift=3`` reproduces that, the default is the published definition.
* **Non-diffeomorphic volume** (Liu et al., IJCV 2024, the ``digital-diffeomorphism`` package):
  the negative volume of the tetrahedra of both 5-tetrahedra decompositions of every grid cell,
  averaged over the two decompositions (:func:`non_diffeomorphic_volume`).
* **End-point error**: mean over voxels of ``||u - u_gt||_2`` in voxels of the fixed grid.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LPBA40_LABELS",
    "iou",
    "dice",
    "boundary",
    "hausdorff_distance",
    "voxel_size",
    "label_overlap",
    "mean_label_overlap",
    "landmark_errors",
    "landmark_distance",
    "jacobian_determinant",
    "jacobian_std",
    "folding_fraction",
    "sdlogj",
    "non_diffeomorphic_volume",
    "endpoint_error",
]

#: The 56 structures of the LPBA40 maximum-probability atlas (original LONI label ids).
LPBA40_LABELS = tuple(
    list(range(21, 35)) + list(range(41, 51)) + list(range(61, 69)) + list(range(81, 93))
    + [101, 102, 121, 122] + list(range(161, 167)) + [181, 182]
)


def _np(x) -> np.ndarray:
    """Torch tensor or array-like -> NumPy array (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _binary_pair(a, b):
    a = _np(a).astype(bool)
    b = _np(b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def iou(a, b, empty: float = float("nan")) -> float:
    """Intersection over union (Jaccard) of two binary masks.

    Args:
        a, b: masks of equal shape (any dims; non-zero = inside), NumPy or torch.
        empty: value returned when both masks are empty (union of size 0). Default NaN
            (undefined); pass ``1.0`` to score two empty masks as a perfect match.

    Returns:
        ``|A∩B| / |A∪B|`` in ``[0, 1]`` (dimensionless).
    """
    a, b = _binary_pair(a, b)
    union = np.logical_or(a, b).sum()
    if union == 0:
        return float(empty)
    return float(np.logical_and(a, b).sum() / union)


def dice(a, b, empty: float = float("nan")) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two binary masks.

    Args:
        a, b: masks of equal shape, NumPy or torch.
        empty: value when both masks are empty (default NaN).
    """
    a, b = _binary_pair(a, b)
    total = a.sum() + b.sum()
    if total == 0:
        return float(empty)
    return float(2.0 * np.logical_and(a, b).sum() / total)


def boundary(mask) -> np.ndarray:
    """Boundary voxels of a binary mask: the mask minus its erosion with the 6-neighbourhood
    (voxels outside the array count as background)."""
    from scipy import ndimage

    m = _np(mask).astype(bool)
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1),
                                       border_value=0)


def voxel_size(affine) -> np.ndarray:
    """Voxel size (mm) per array axis of a 4x4 voxel -> mm affine: its column norms."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def hausdorff_distance(a, b, percentile: float = 95.0, spacing=None) -> float:
    """Percentile Hausdorff distance between two binary masks (HD95 for ``percentile=95``).

    ``max(P(d(∂A, ∂B)), P(d(∂B, ∂A)))``: for each boundary voxel of one mask
    (:func:`boundary`) the Euclidean distance to the nearest boundary voxel of the other, ``P``
    the ``percentile``-th percentile of those distances (linear interpolation); ``100`` gives the
    Hausdorff distance. Computed on the bounding box of ``A ∪ B`` (exact: every boundary voxel
    lies inside it).

    Args:
        a, b: masks of equal shape (3-D), NumPy or torch.
        percentile: in ``[0, 100]``.
        spacing: voxel size per axis (scalar or 3 values, mm); ``None`` = voxels.

    Returns:
        distance in voxels (or mm); NaN when either mask is empty.
    """
    from scipy import ndimage

    a, b = _binary_pair(a, b)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if not a.any() or not b.any():
        return float("nan")
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, a.shape)
    box = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    ba, bb = boundary(a[box]), boundary(b[box])
    if spacing is not None:
        spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (a.ndim,))
    to_b = ndimage.distance_transform_edt(~bb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~ba, sampling=spacing)
    return float(max(np.percentile(to_b[ba], percentile), np.percentile(to_a[bb], percentile)))


def label_overlap(fixed_seg, warped_seg, labels=None, spacing=None):
    """Per-label IoU, Dice and HD95 of the warped moving segmentation against the fixed one.

    Args:
        fixed_seg: integer label map of the fixed image, e.g. ``(D, H, W)``.
        warped_seg: moving label map warped onto the fixed grid (same shape).
        labels: label ids to score; ``None`` = every label ``>= 1`` present in ``fixed_seg``.
        spacing: voxel size per axis (mm) of the grid, for ``hd95_mm`` (NaN when ``None``).

    Returns:
        ``pandas.DataFrame`` with columns ``label, iou, dice, hd95, hd95_mm, fixed_voxels,
        warped_voxels`` (one row per label; a label absent from both maps has NaN scores, one
        absent from either map a NaN HD95). ``hd95`` in voxels (:func:`hausdorff_distance`).
    """
    import pandas as pd

    f = _np(fixed_seg)
    w = _np(warped_seg)
    if f.shape != w.shape:
        raise ValueError(f"segmentations differ in shape: {f.shape} vs {w.shape}")
    f = np.rint(f).astype(np.int64)
    w = np.rint(w).astype(np.int64)
    if labels is None:
        labels = [int(v) for v in np.unique(f) if v >= 1]
    iso = None
    if spacing is not None:
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (f.ndim,))
        iso = float(sp[0]) if np.allclose(sp, sp[0]) else None
    rows = []
    for lab in labels:
        fa, wa = f == int(lab), w == int(lab)
        hd = hausdorff_distance(fa, wa)
        if spacing is None:
            hd_mm = float("nan")
        elif iso is not None:
            hd_mm = hd * iso
        else:
            hd_mm = hausdorff_distance(fa, wa, spacing=spacing)
        rows.append({"label": int(lab), "iou": iou(fa, wa), "dice": dice(fa, wa), "hd95": hd,
                     "hd95_mm": hd_mm, "fixed_voxels": int(fa.sum()),
                     "warped_voxels": int(wa.sum())})
    return pd.DataFrame(rows, columns=["label", "iou", "dice", "hd95", "hd95_mm", "fixed_voxels",
                                       "warped_voxels"])


def mean_label_overlap(fixed_seg, warped_seg, labels=None, spacing=None) -> dict:
    """Unweighted mean of per-label IoU/Dice/HD95 over the labels present in the fixed
    segmentation.

    Args:
        fixed_seg, warped_seg: label maps (see :func:`label_overlap`).
        labels: candidate label ids (e.g. :data:`LPBA40_LABELS`); only those present in
            ``fixed_seg`` are averaged. ``None`` = all labels ``>= 1`` of ``fixed_seg``.
        spacing: voxel size (mm) for ``hd95_mm``.

    Returns:
        ``{"iou", "dice", "hd95", "hd95_mm": float, "n_labels": int, "table": DataFrame}``
        (NaN means when no label is present; HD95 means skip NaN labels, as Learn2Reg's
        ``nanmean``).
    """
    f = np.rint(_np(fixed_seg)).astype(np.int64)
    present = set(int(v) for v in np.unique(f) if v >= 1)
    use = sorted(present if labels is None else present & {int(v) for v in labels})
    table = label_overlap(f, warped_seg, use, spacing=spacing)
    out: dict = {"n_labels": int(len(table)), "table": table}
    for k in ("iou", "dice", "hd95", "hd95_mm"):
        v = table[k].to_numpy(dtype=np.float64)
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return out


def _linear_part(spacing=None, affine=None, matrix=None) -> np.ndarray | None:
    mats = []
    if matrix is not None:
        m = np.asarray(matrix, dtype=np.float64)
        mats.append(m[:3, :3])
    if spacing is not None and affine is not None:
        raise ValueError("give either spacing or affine, not both")
    if spacing is not None:
        s = np.asarray(spacing, dtype=np.float64).reshape(-1)
        if s.size == 1:
            s = np.repeat(s, 3)
        mats.append(np.diag(s))
    if affine is not None:
        mats.append(np.asarray(affine, dtype=np.float64)[:3, :3])
    if not mats:
        return None
    out = np.eye(3)
    for m in mats:  # applied in order: first `matrix`, then spacing/affine
        out = m @ out
    return out


def landmark_errors(pred_pts, true_pts, spacing=None, affine=None, matrix=None) -> np.ndarray:
    """Per-landmark Euclidean error ``||L (pred - true)||``.

    Args:
        pred_pts: ``(N, 3)`` predicted positions (voxel indices, array-axis order).
        true_pts: ``(N, 3)`` true positions in the same image.
        spacing: optional voxel size (scalar or 3 values, mm) -> result in mm.
        affine: optional 4x4 voxel -> mm affine; its linear part maps the difference vectors
            (use instead of ``spacing`` for oblique grids) -> result in mm.
        matrix: optional 4x4 or 3x3 matrix whose linear part is applied to the difference vector
            first (the paper's correction for ANTs-pre-aligned methods: the linear part of the
            fixed image's aligned -> original voxel transform).

    Returns:
        ``(N,)`` distances (voxels, or mm when ``spacing``/``affine`` is given).
    """
    p = _np(pred_pts).astype(np.float64).reshape(-1, 3)
    t = _np(true_pts).astype(np.float64).reshape(-1, 3)
    if p.shape != t.shape:
        raise ValueError(f"landmark arrays differ in shape: {p.shape} vs {t.shape}")
    d = p - t
    lin = _linear_part(spacing, affine, matrix)
    if lin is not None:
        d = d @ lin.T
    return np.linalg.norm(d, axis=1)


def landmark_distance(pred_pts, true_pts, spacing=None, affine=None, matrix=None) -> float:
    """Mean landmark distance (the paper's "Lm. Dist."); see :func:`landmark_errors`.

    Returns:
        mean distance in voxels (no ``spacing``/``affine``) or mm; NaN for zero landmarks.
    """
    e = landmark_errors(pred_pts, true_pts, spacing=spacing, affine=affine, matrix=matrix)
    return float(e.mean()) if e.size else float("nan")


def _flow_np(flow) -> np.ndarray:
    f = _np(flow).astype(np.float64)
    if f.ndim == 5:
        if f.shape[0] != 1:
            raise ValueError("metrics take a single flow (batch 1)")
        f = f[0]
    if f.ndim != 4 or f.shape[0] != 3:
        raise ValueError(f"flow must have shape (3, D, H, W) or (1, 3, D, H, W), got {f.shape}")
    return f


def jacobian_determinant(flow, method: str = "forward") -> np.ndarray:
    """Jacobian determinant of ``x -> x + u(x)`` (dimensionless, derivatives per voxel).

    Args:
        flow: ``(3, D, H, W)`` or ``(1, 3, D, H, W)`` displacement in voxels (channel k along
            array axis k).
        method: ``"forward"`` (reference: :func:`vtn.functional.jacobian_det`, grid
            ``(D-1, H-1, W-1)``) or ``"central"`` (``np.gradient``: central differences inside,
            one-sided first-order at the border; grid ``(D, H, W)``).

    Returns:
        determinant array (float64).
    """
    f = _flow_np(flow)
    if method == "forward":
        import torch

        from vtn.functional import jacobian_det

        return jacobian_det(torch.from_numpy(f[None])).numpy()[0]
    if method == "central":
        grads = [np.gradient(f[i], axis=(0, 1, 2)) for i in range(3)]  # grads[i][j] = du_i/dx_j
        J = np.empty((3, 3) + f.shape[1:])
        for i in range(3):
            for j in range(3):
                J[i, j] = grads[i][j] + (1.0 if i == j else 0.0)
        return np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1)))
    raise ValueError(f"unknown Jacobian method {method!r} (forward|central)")


def jacobian_std(flow, method: str = "forward") -> float:
    """Standard deviation over voxels (``ddof=0``) of the Jacobian determinant ("Std. Jacobian").

    Args:
        flow: displacement ``(3, D, H, W)`` in voxels; ``method`` see :func:`jacobian_determinant`.
    """
    return float(np.std(jacobian_determinant(flow, method)))


def folding_fraction(flow, method: str = "forward") -> float:
    """Fraction (in ``[0, 1]``, not percent) of voxels with a negative Jacobian determinant.

    The paper's folding (Tables III/VII: "areas with negative Jacobian determinant"): ``det < 0``;
    a voxel with ``det == 0`` exactly is not counted.

    Args:
        flow: displacement ``(3, D, H, W)`` in voxels.
        method: difference scheme, see :func:`jacobian_determinant`.

    Returns:
        share of folding voxels; multiply by 100 for the paper's "Folding (%)".
    """
    return float((jacobian_determinant(flow, method) < 0).mean())


def sdlogj(flow, shift: float = 0.0, crop: int = 2) -> float:
    """Standard deviation of the log Jacobian determinant (Learn2Reg's SDlogJ).

    Follows the Learn2Reg evaluation script: central differences (``(u[i+1] - u[i-1]) / 2``,
    :func:`jacobian_determinant` ``method="central"``), ``crop`` voxels removed at every border
    (the script pads with zeros and drops 2), ``J + shift`` clipped to ``[1e-9, 1e9]`` before the
    log, population std (``ddof=0``). The script uses ``shift=3`` (undocumented); the default 0 is
    the published definition ``std(log J)``.

    Args:
        flow: ``(3, D, H, W)`` displacement in voxels (each side longer than ``2 * crop``).
        shift: added to ``J`` before clipping.
        crop: border voxels removed per side.

    Returns:
        SDlogJ (dimensionless).
    """
    det = jacobian_determinant(flow, "central")
    if crop:
        if min(det.shape) <= 2 * crop:
            raise ValueError(f"flow grid {det.shape} too small for a {crop}-voxel crop")
        det = det[crop:-crop, crop:-crop, crop:-crop]
    return float(np.std(np.log(np.clip(det + shift, 1e-9, 1e9))))


def _det_columns(c0, c1, c2) -> np.ndarray:
    """Determinant of 3x3 matrices given by their columns ``(3, ...)`` each."""
    return (c0[0] * (c1[1] * c2[2] - c1[2] * c2[1]) - c1[0] * (c0[1] * c2[2] - c0[2] * c2[1])
            + c2[0] * (c0[1] * c1[2] - c0[2] * c1[1]))


def non_diffeomorphic_volume(flow) -> tuple[float, float]:
    """Non-diffeomorphic volume of ``x -> x + u(x)`` (Liu et al., IJCV 2024, "digital
    diffeomorphism").

    Every grid cell is split into tetrahedra in both ways of its 5-tetrahedra decompositions
    (4 corner tetrahedra + 1 central one each; together its 8 corner and 2 central tetrahedra).
    A tetrahedron with edge vectors ``a, b, c`` (positively oriented for the identity) maps to
    signed volume ``det[φ(a) φ(b) φ(c)] / 6``; the non-diffeomorphic volume is the sum over all
    tetrahedra of the negative part ``max(-det, 0) / 6``, halved (the mean of the two
    decompositions). As in the package, tetrahedra are assigned to the voxel at their corner:
    voxel ``p`` carries the 8 corner tetrahedra with edges ``±e_0, ±e_1, ±e_2`` from ``p`` and
    the central tetrahedra with edges ``(-e0-e1, -e0-e2, -e1-e2)`` and ``(e0+e1, e1+e2,
    e0+e2)``; the displacement is edge-replicated one voxel beyond the grid, so cells on the
    border count too.

    Args:
        flow: ``(3, D, H, W)`` or ``(1, 3, D, H, W)`` displacement in voxels.

    Returns:
        ``(volume in voxels, percent of the grid's D*H*W voxels)``.
    """
    f = _flow_np(flow)
    shape = f.shape[1:]
    u = np.pad(f, ((0, 0), (1, 1), (1, 1), (1, 1)), mode="edge")
    axes = [np.arange(-1, n + 1, dtype=np.float64) for n in shape]
    phi = u + np.stack(np.meshgrid(*axes, indexing="ij"))

    def at(d0, d1, d2):
        return phi[:, 1 + d0:1 + d0 + shape[0], 1 + d1:1 + d1 + shape[1],
                   1 + d2:1 + d2 + shape[2]]

    centre = at(0, 0, 0)
    unit = np.eye(3, dtype=int)
    fwd = [at(*unit[k]) - centre for k in range(3)]
    bwd = [centre - at(*(-unit[k])) for k in range(3)]
    dets = [_det_columns(*[(fwd if s else bwd)[k] for k, s in enumerate(signs)])
            for signs in np.ndindex(2, 2, 2)]
    dets.append(_det_columns(at(-1, -1, 0) - centre, at(-1, 0, -1) - centre,
                             at(0, -1, -1) - centre))
    dets.append(_det_columns(at(1, 1, 0) - centre, at(0, 1, 1) - centre, at(1, 0, 1) - centre))
    volume = float(sum(np.maximum(-d, 0.0).sum() for d in dets) / 12.0)
    return volume, 100.0 * volume / float(np.prod(shape))


def endpoint_error(flow, gt, mask=None) -> float:
    """Mean end-point error ``mean_x ||u(x) - u_gt(x)||_2`` in voxels of the fixed grid.

    Args:
        flow: predicted displacement ``(3, D, H, W)`` (or batch 1) in voxels.
        gt: ground-truth displacement, same shape and convention.
        mask: optional ``(D, H, W)`` boolean mask; the mean is taken inside it only.
    """
    f, g = _flow_np(flow), _flow_np(gt)
    if f.shape != g.shape:
        raise ValueError(f"flow and ground truth differ in shape: {f.shape} vs {g.shape}")
    err = np.sqrt(((f - g) ** 2).sum(axis=0))
    if mask is not None:
        m = _np(mask).astype(bool)
        if m.shape != err.shape:
            raise ValueError(f"mask shape {m.shape} differs from the flow grid {err.shape}")
        if not m.any():
            return float("nan")
        return float(err[m].mean())
    return float(err.mean())
