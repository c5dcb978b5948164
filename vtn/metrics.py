"""Registration metrics of the paper (Section V) on NumPy arrays or torch tensors.

Definitions (and where they differ from other sources, see ``/work/shared/conventions.md``):

* **IoU / Dice** of binary masks: ``|A∩B| / |A∪B|`` and ``2|A∩B| / (|A| + |B|)``. Masks are
  compared directly (the warped moving segmentation is produced by nearest-neighbour warping of
  the label map; the RCN code instead warps 0/255 masks trilinearly and thresholds at 128).
  Empty union (both masks empty): the score is undefined and returned as ``empty`` (default NaN),
  so that per-label means skip labels absent from both images.
* **Multi-label overlap** (brain): per label, the unweighted mean over labels present in the fixed
  segmentation (RCN issue #42; 56 LPBA40 structures).
* **Landmark distance**: mean Euclidean distance between predicted and true landmark positions,
  in voxels of the image the points live in (the paper's "Lm. Dist."), or in mm when the voxel
  spacing or the image affine is given (difference vectors are mapped through the affine's
  linear part, so oblique/anisotropic grids are handled).
* **Jacobian**: ``det(I + ∇u)`` with forward differences on the ``(D-1, H-1, W-1)`` grid
  (:func:`vtn.functional.jacobian_det`, the reference evaluation); the paper's "Std. Jacobian" is
  its standard deviation over voxels (population std, ``ddof=0`` like ``np.std`` in RCN).
  A central-difference variant (``np.gradient``: central inside, one-sided at the border) is
  available for cross-checks with ITK's ``DisplacementFieldJacobianDeterminantFilter``.
* **Folding**: share of voxels with ``det <= 0`` (``strict=True`` counts only ``det < 0``),
  returned as a fraction in ``[0, 1]``; the metric tables report it in percent.
* **End-point error**: mean over voxels of ``||u - u_gt||_2`` in voxels of the fixed grid.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LPBA40_LABELS",
    "iou",
    "dice",
    "label_overlap",
    "mean_label_overlap",
    "landmark_errors",
    "landmark_distance",
    "jacobian_determinant",
    "jacobian_std",
    "folding_fraction",
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


def label_overlap(fixed_seg, warped_seg, labels=None):
    """Per-label IoU and Dice of the warped moving segmentation against the fixed one.

    Args:
        fixed_seg: integer label map of the fixed image, e.g. ``(D, H, W)``.
        warped_seg: moving label map warped onto the fixed grid (same shape).
        labels: label ids to score; ``None`` = every label ``>= 1`` present in ``fixed_seg``.

    Returns:
        ``pandas.DataFrame`` with columns ``label, iou, dice, fixed_voxels, warped_voxels`` (one
        row per label; a label absent from both maps has NaN scores).
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
    rows = []
    for lab in labels:
        fa, wa = f == int(lab), w == int(lab)
        rows.append({"label": int(lab), "iou": iou(fa, wa), "dice": dice(fa, wa),
                     "fixed_voxels": int(fa.sum()), "warped_voxels": int(wa.sum())})
    return pd.DataFrame(rows, columns=["label", "iou", "dice", "fixed_voxels", "warped_voxels"])


def mean_label_overlap(fixed_seg, warped_seg, labels=None) -> dict:
    """Unweighted mean of per-label IoU/Dice over the labels present in the fixed segmentation.

    Args:
        fixed_seg, warped_seg: label maps (see :func:`label_overlap`).
        labels: candidate label ids (e.g. :data:`LPBA40_LABELS`); only those present in
            ``fixed_seg`` are averaged. ``None`` = all labels ``>= 1`` of ``fixed_seg``.

    Returns:
        ``{"iou": float, "dice": float, "n_labels": int, "table": DataFrame}`` (NaN means when no
        label is present).
    """
    f = np.rint(_np(fixed_seg)).astype(np.int64)
    present = set(int(v) for v in np.unique(f) if v >= 1)
    use = sorted(present if labels is None else present & {int(v) for v in labels})
    table = label_overlap(f, warped_seg, use)
    if len(table) == 0:
        return {"iou": float("nan"), "dice": float("nan"), "n_labels": 0, "table": table}
    return {"iou": float(table["iou"].mean()), "dice": float(table["dice"].mean()),
            "n_labels": int(len(table)), "table": table}


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


def folding_fraction(flow, method: str = "forward", strict: bool = False) -> float:
    """Fraction (in ``[0, 1]``, not percent) of voxels whose Jacobian determinant folds.

    Args:
        flow: displacement ``(3, D, H, W)`` in voxels.
        method: difference scheme, see :func:`jacobian_determinant`.
        strict: count ``det < 0`` only; default counts ``det <= 0`` (zero volume is also folding).

    Returns:
        share of folding voxels; multiply by 100 for the paper's "Folding (%)".
    """
    det = jacobian_determinant(flow, method)
    fold = det < 0 if strict else det <= 0
    return float(fold.mean())


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
