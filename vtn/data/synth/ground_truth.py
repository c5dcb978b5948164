"""Ground-truth displacements of embedded test pairs (``vtn ground-truth``): the exact
displacement of each (fixed, moving) pair on the fixed preprocessed grid, from the two known
subject transforms (see :mod:`vtn.data.synth`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vtn.data.synth.transforms import SubjectTransform, apply_affine
from vtn.io import DISP_DTYPES, InputError, read_pairs, read_subjects, save_disp_l2r

__all__ = ["ground_truth_disp", "ground_truth", "cli"]


def ground_truth_disp(tf_fixed: SubjectTransform, tf_moving: SubjectTransform, raw_affine_fixed,
                      raw_affine_moving, prep_to_raw_fixed, prep_to_raw_moving, shape,
                      tol: float = 1e-5):
    """Exact displacement of a (fixed, moving) pair on the fixed preprocessed grid.

    For each prep voxel ``x`` of the fixed image: ``w_f = A_f P_f x`` (raw affine ``A``, prep ->
    raw voxel matrix ``P``), ``b = T_f(w_f)``, ``w_m = T_m^-1(b)``, ``x_m = (A_m P_m)^-1 w_m`` and
    ``disp(x) = x_m - x``. It is evaluated as ``(C - I) x + c + L (w_m - w_f)`` with
    ``C = (A_m P_m)^-1 A_f P_f`` (``C = I`` exactly when both grids coincide) and ``L`` the linear
    part of ``(A_m P_m)^-1``, so identical transforms give exactly zero.

    Args:
        tf_fixed, tf_moving: subject transforms.
        raw_affine_fixed, raw_affine_moving: raw image affines (voxel -> RAS mm).
        prep_to_raw_fixed, prep_to_raw_moving: 4x4 prep voxel -> raw voxel.
        shape: fixed prep grid ``(D, H, W)``.
        tol: inverse-iteration tolerance, mm.

    Returns:
        ``(disp (3, D, H, W) float64 in fixed-prep voxels, max inverse residual in mm)``.
    """
    g_f = np.asarray(raw_affine_fixed, dtype=np.float64) @ np.asarray(prep_to_raw_fixed, dtype=np.float64)
    g_m = np.asarray(raw_affine_moving, dtype=np.float64) @ np.asarray(prep_to_raw_moving, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    x = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"),
                 axis=-1).reshape(-1, 3)
    w_f = apply_affine(g_f, x)
    w_m, res = tf_moving.inverse(tf_fixed.forward(w_f), tol=tol)
    g_m_inv = np.linalg.inv(g_m)
    c = np.eye(4) if np.array_equal(g_f, g_m) else g_m_inv @ g_f
    disp = x @ (c[:3, :3] - np.eye(3)).T + c[:3, 3] + (w_m - w_f) @ g_m_inv[:3, :3].T
    return np.ascontiguousarray(disp.T.reshape((3,) + shape)), res


def _prep_info(prep: Path, sid: str, raw_affine):
    """prep_to_raw, prep grid shape and prep affine of one subject."""
    import nibabel as nib

    jpath = prep / f"{sid}_prep.json"
    if not jpath.exists():
        raise InputError(f"{jpath}: preprocessing record not found")
    try:
        meta = json.loads(jpath.read_text())
        p2r = np.asarray(meta["prep_to_raw"], dtype=np.float64)
    except (ValueError, KeyError) as exc:
        raise InputError(f"{jpath}: no valid 'prep_to_raw' ({exc})") from exc
    if p2r.shape != (4, 4):
        raise InputError(f"{jpath}: prep_to_raw must be 4x4, got {p2r.shape}")
    ipath = prep / f"{sid}_image.nii.gz"
    if ipath.exists():
        img = nib.load(str(ipath))
        return p2r, tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
    size = meta.get("size")
    if size is None:
        raise InputError(f"{jpath}: no 'size' and no {ipath.name} to read the prep grid from")
    shape = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    return p2r, shape, np.asarray(raw_affine) @ p2r


def _gt_subject(raw: Path, prep: Path, subjects: dict, sid: str):
    import nibabel as nib

    if sid not in subjects:
        raise InputError(f"{raw / 'subjects.csv'}: no subject {sid!r}")
    tf = SubjectTransform.load(raw / f"{sid}_transform.npz")
    raw_aff = np.asarray(nib.load(str(subjects[sid]["image"])).affine, dtype=np.float64)
    if not np.allclose(raw_aff, tf.subject_affine, atol=1e-5):
        raise InputError(f"{subjects[sid]['image']}: affine differs from the one in "
                         f"{sid}_transform.npz")
    return (tf, raw_aff) + _prep_info(prep, sid, raw_aff)


def _gt_pair(raw: Path, prep: Path, out: Path, subjects: dict, f: str, m: str, tol: float,
             disp_dtype: str = "float32") -> dict:
    t0 = time.perf_counter()
    tf_f, aff_f, p2r_f, shape_f, prep_aff_f = _gt_subject(raw, prep, subjects, f)
    tf_m, aff_m, p2r_m, _, _ = _gt_subject(raw, prep, subjects, m)
    disp, res = ground_truth_disp(tf_f, tf_m, aff_f, aff_m, p2r_f, p2r_m, shape_f, tol=tol)
    save_disp_l2r(out / f"disp_{f}_{m}.nii.gz", disp, prep_aff_f, dtype=disp_dtype)
    return {"fixed": f, "moving": m, "max_inverse_residual_mm": res,
            "seconds": time.perf_counter() - t0}


def ground_truth(raw, prep, pairs, out, tol: float = 1e-5, jobs: int = 1,
                 disp_dtype: str = "float32") -> list:
    """Write ``out/disp_<f>_<m>.nii.gz`` for every pair of ``pairs.csv`` (Learn2Reg format).

    Args:
        raw: embedded raw folder (``subjects.csv`` and ``<sid>_transform.npz``).
        prep: preprocessed folder (``<sid>_prep.json``, ``<sid>_image.nii.gz``).
        pairs: ``pairs.csv`` (``fixed,moving``).
        out: output folder; also gets ``ground_truth.csv`` (per-pair residual and seconds).
        jobs: pairs computed in parallel processes (each pair is independent; ~30 s per pair
            at 128^3 on one core).
    """
    import pandas as pd

    raw, prep, out = Path(raw), Path(prep), Path(out)
    subjects = {r["subject"]: r for r in read_subjects(raw / "subjects.csv")}
    pair_list = read_pairs(pairs)
    for f, m in pair_list:  # fail before any work on an unknown subject
        for sid in (f, m):
            if sid not in subjects:
                raise InputError(f"{pairs}: subject {sid!r} is not in {raw / 'subjects.csv'}")
    out.mkdir(parents=True, exist_ok=True)
    if jobs > 1 and len(pair_list) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_gt_pair, raw, prep, out, subjects, f, m, tol, disp_dtype)
                       for f, m in pair_list]
            log = [fut.result() for fut in futures]
    else:
        log = [_gt_pair(raw, prep, out, subjects, f, m, tol, disp_dtype) for f, m in pair_list]
    pd.DataFrame(log, columns=["fixed", "moving", "max_inverse_residual_mm", "seconds"]).to_csv(
        out / "ground_truth.csv", index=False)
    return log


def cli(argv=None) -> int:
    """``vtn ground-truth --raw raw/ --prep prep/ --pairs pairs.csv --out gt/``."""
    p = argparse.ArgumentParser(prog="vtn ground-truth",
                                description="ground-truth displacements of embedded test pairs")
    p.add_argument("--raw", required=True)
    p.add_argument("--prep", required=True)
    p.add_argument("--pairs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", type=int, default=1, help="pairs computed in parallel processes")
    p.add_argument("--disp-dtype", choices=DISP_DTYPES, default="float32",
                   help="on-disk type of the displacements (int16: scaled, ~4x smaller)")
    a = p.parse_args(argv)
    try:
        log = ground_truth(a.raw, a.prep, a.pairs, a.out, jobs=a.jobs, disp_dtype=a.disp_dtype)
    except (InputError, RuntimeError) as exc:
        print(f"vtn ground-truth: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(log)} ground-truth displacements -> {a.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
