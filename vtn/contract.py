"""The output contract shared by every registration method (``vtn register``, ANTs, Elastix).

Per pair ``(f, m)`` in the method's folder: ``disp_<f>_<m>.nii.gz`` (Learn2Reg, voxels, fixed
grid), ``warped_<f>_<m>.nii.gz`` (fixed affine), ``warpedseg_<f>_<m>.nii.gz`` (nearest
neighbour, when the moving subject has a segmentation), ``landmarks_<f>_<m>.csv`` (the fixed
landmarks carried into the moving image, when the fixed subject has landmarks); once per method
``times.csv`` (``fixed,moving,seconds,device,threads``). See ``docs/design.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vtn.functional import transport_points, warp_labels
from vtn.io import InputError, load_landmarks, load_volume, save_disp_l2r, save_landmarks, save_volume

__all__ = ["write_pair", "write_times", "write_affine_part", "read_affine_part", "TIMES_COLUMNS"]

TIMES_COLUMNS = ["fixed", "moving", "seconds", "device", "threads"]


def write_pair(out_dir, fixed_id: str, moving_id: str, flow: torch.Tensor, warped, fixed_affine,
               moving_seg=None, fixed_landmarks=None, disp_dtype: str = "float32") -> None:
    """Write the per-pair files of the contract.

    Args:
        out_dir: the method's folder.
        fixed_id, moving_id: subject ids (file names).
        flow: ``(1, 3, D, H, W)`` displacement in voxels on the fixed grid (any device).
        warped: ``(D, H, W)`` moving image warped onto the fixed grid.
        fixed_affine: the fixed image's affine (voxel -> RAS mm), used for every volume written.
        moving_seg: path of the moving segmentation, or ``None``.
        fixed_landmarks: path of the fixed landmark CSV (``name,i,j,k``), or ``None``.
        disp_dtype: on-disk type of ``disp_<f>_<m>.nii.gz`` (:data:`vtn.io.DISP_DTYPES`); the
            label warp and the landmarks use the float32 flow either way.
    """
    out_dir = Path(out_dir)
    stem = f"{fixed_id}_{moving_id}"
    flow = flow.float()
    save_disp_l2r(out_dir / f"disp_{stem}.nii.gz", flow[0].cpu().numpy(), fixed_affine,
                  dtype=disp_dtype)
    save_volume(out_dir / f"warped_{stem}.nii.gz", np.asarray(warped, dtype=np.float32),
                fixed_affine)
    if moving_seg is not None:
        seg, _ = load_volume(moving_seg, dtype=None)
        if seg.shape != tuple(flow.shape[2:]):
            raise InputError(f"{moving_seg}: segmentation of shape {seg.shape}, expected "
                             f"{tuple(flow.shape[2:])}")
        if not np.issubdtype(seg.dtype, np.integer):
            seg = np.rint(seg).astype(np.int32)
        lab = torch.from_numpy(seg.astype(np.int64)).view(1, 1, *seg.shape).to(flow.device)
        wl = warp_labels(lab, flow)[0, 0].cpu().numpy().astype(seg.dtype)
        save_volume(out_dir / f"warpedseg_{stem}.nii.gz", wl, fixed_affine)
    if fixed_landmarks is not None:
        names, pts = load_landmarks(fixed_landmarks)
        moved = transport_points(torch.from_numpy(pts), flow[0].double().cpu())
        save_landmarks(out_dir / f"landmarks_{stem}.csv", names, moved.numpy())


def write_times(out_dir, rows) -> Path:
    """Write ``times.csv`` (``fixed,moving,seconds,device,threads``) atomically."""
    import pandas as pd

    from vtn.io import atomic_write

    path = Path(out_dir) / "times.csv"
    with atomic_write(path) as tmp:
        pd.DataFrame(rows, columns=TIMES_COLUMNS).to_csv(tmp, index=False)
    return path


def write_affine_part(out_dir, fixed_id: str, moving_id: str, W, b) -> Path:
    """Write ``affine_<f>_<m>.json``: the affine part of a method's flow (paper eq. 11),
    ``{"W": 3x3, "b": 3}`` in voxels of the fixed (model) grid, ``flow(p) = W (p - c) + b`` with
    ``c`` the volume centre. :mod:`vtn.native` continues the map with it outside the model grid.

    Args:
        W: ``(3, 3)`` (tensor or array).
        b: ``(3,)``.
    """
    from vtn.io import atomic_write_json

    W = np.asarray(torch.as_tensor(W).detach().double().cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(b).detach().double().cpu(), dtype=np.float64)
    if W.shape != (3, 3) or b.shape != (3,) or not (np.isfinite(W).all() and np.isfinite(b).all()):
        raise ValueError(f"affine part must be finite W (3, 3) and b (3,), got {W.shape}, {b.shape}")
    path = Path(out_dir) / f"affine_{fixed_id}_{moving_id}.json"
    atomic_write_json(path, {"W": W.tolist(), "b": b.tolist(),
                             "definition": "flow(p) = W (p - c) + b, voxels of the fixed model "
                                           "grid, c = (size - 1) / 2 (paper eq. 11)"})
    return path


def read_affine_part(reg_dir, fixed_id: str, moving_id: str):
    """``(W (3, 3), b (3,))`` float64 from ``affine_<f>_<m>.json`` of a method's folder, or
    ``None`` when the method wrote none (no affine part).

    Raises:
        InputError: unreadable JSON or wrong shapes (names the file).
    """
    import json

    path = Path(reg_dir) / f"affine_{fixed_id}_{moving_id}.json"
    if not path.exists():
        return None
    try:
        a = json.loads(path.read_text())
        W = np.asarray(a["W"], dtype=np.float64)
        b = np.asarray(a["b"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not an affine part {{W: 3x3, b: 3}} ({exc})") from exc
    if W.shape != (3, 3) or b.shape != (3,) or not (np.isfinite(W).all() and np.isfinite(b).all()):
        raise InputError(f"{path}: W must be finite 3x3 and b 3 numbers, got shapes {W.shape}, "
                         f"{b.shape}")
    return W, b
