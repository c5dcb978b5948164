"""ANTs affine pre-alignment of preprocessed volumes to an atlas (the paper's "ANTs + D..." inputs).

``vtn prealign --subjects prep/subjects.csv --atlas IMG [--atlas-seg SEG] --out prep_atlas/
--threads T [--preset paper|fast]``

Every subject (moving) is registered to the atlas (fixed; an image on the same ``S^3`` grid, e.g.
a preprocessed test subject such as LPBA40 S01) with ``antsRegistration`` (through antspyx'
raw-argument mode) using the first two stages of the paper's ANTs command: ``Rigid[0.1]`` then
``Affine[0.1]``, both Mattes MI (32 bins, regular sampling 0.2 / 0.1), ``-c [2000x2000x2000,
1e-9,15] -s 2x1x0 -f 4x2x1``, ``-u 1 -w [0.025,0.975] -r [fixed,moving,1]`` (preset ``paper``;
``fast`` uses ``[100x50x25,1e-6,10]``). The thread count goes to ITK through
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` (set before ANTs is imported); ``--random-seed`` is fixed.

ANTs returns an affine in LPS physical space mapping atlas points to subject points,
``y = A (x - c) + t + c``. With ``V_atlas`` / ``V_prep`` the voxel -> LPS matrices of the two
images, the voxel mapping recorded as ``atlas_to_prep`` is
``inv(V_prep) @ T_lps @ V_atlas`` (aligned voxel -> original prep voxel). The aligned image and
label map are resampled *with that matrix* (trilinear / nearest, 0 outside), so image, labels and
landmarks are exactly consistent; landmarks map as ``q = inv(atlas_to_prep) @ p``.

Outputs in ``out/``: ``<sid>_image.nii.gz``, ``<sid>_seg.nii.gz``, ``<sid>_landmarks.csv`` (all
on the atlas grid, with the atlas affine), ``<sid>_prealign.mat`` (the ANTs transform),
``<sid>_prep.json`` (input json + ``atlas_to_prep``, ``prealign_seconds`` = wall time of the
registration itself, ``prealign`` details), ``subjects.csv``. A subject whose image equals the
atlas (same file or same voxels and affine) gets the identity without registration.
``--rows START:STOP`` aligns only those rows of the table (one job of the workflow per chunk of
subjects, put together by ``vtn gather --subjects``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vtn.io import InputError, atomic_write, atomic_write_json, load_landmarks, load_volume, read_subjects, save_landmarks, save_volume
from vtn.jobs import parse_rows
from vtn.progress import Progress, logger

__all__ = ["PRESETS", "ants_affine_args", "lps_affine_to_matrix", "ants_voxel_to_lps", "register_affine",
           "apply_voxel_affine", "prealign_dataset", "cli"]

PRESETS = {
    "paper": {"iterations": "2000x2000x2000", "convergence": "1e-9", "window": 15},
    "fast": {"iterations": "100x50x25", "convergence": "1e-6", "window": 10},
}

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _set_threads(threads):
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))


def ants_affine_args(fixed, moving, prefix, preset="paper", seed=1):
    """The raw ``antsRegistration`` argument list (Rigid then Affine, Mattes MI)."""
    p = PRESETS[preset]
    conv = f"[{p['iterations']},{p['convergence']},{p['window']}]"
    args = ["-d", "3", "-o", str(prefix), "-u", "1", "-w", "[0.025,0.975]",
            "-r", f"[{fixed},{moving},1]"]
    for kind, sampling in (("Rigid", 0.2), ("Affine", 0.1)):
        args += ["-t", f"{kind}[0.1]", "-m", f"MI[{fixed},{moving},1,32,Regular,{sampling}]",
                 "-c", conv, "-s", "2x1x0", "-f", "4x2x1"]
    args += ["--random-seed", str(int(seed)), "--float", "0", "-v", "0"]
    return args


def lps_affine_to_matrix(parameters, center):
    """ITK ``AffineTransform`` parameters (12: row-major A, then t) and centre -> 4x4 homogeneous
    matrix of ``y = A (x - c) + t + c`` (LPS mm, fixed -> moving)."""
    par = np.asarray(parameters, dtype=np.float64)
    a = par[:9].reshape(3, 3)
    t = par[9:12]
    c = np.asarray(center, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return m


def ants_voxel_to_lps(img):
    """4x4 voxel index -> LPS mm of an ``ants.ANTsImage`` (from its origin, spacing, direction)."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(img.direction, dtype=np.float64) @ np.diag(img.spacing)
    m[:3, 3] = img.origin
    return m


def register_affine(atlas_path, moving_path, workdir, preset="paper", seed=1):
    """Run the ANTs Rigid+Affine registration of ``moving_path`` to ``atlas_path``.

    Returns:
        ``(atlas_to_prep 4x4 voxel matrix, T_lps 4x4, seconds, mat file path, args)``.
    """
    import ants

    prefix = Path(workdir) / "reg_"
    args = ants_affine_args(atlas_path, moving_path, prefix, preset=preset, seed=seed)
    t0 = time.perf_counter()
    ants.registration(fixed=list(args), moving=None)
    seconds = time.perf_counter() - t0
    mat = Path(str(prefix) + "0GenericAffine.mat")
    if not mat.exists():
        raise RuntimeError(f"antsRegistration wrote no transform for {moving_path}")
    tx = ants.read_transform(str(mat))
    t_lps = lps_affine_to_matrix(tx.parameters, tx.fixed_parameters)
    v_atlas = ants_voxel_to_lps(ants.image_read(str(atlas_path)))
    v_prep = ants_voxel_to_lps(ants.image_read(str(moving_path)))
    a2p = np.linalg.inv(v_prep) @ t_lps @ v_atlas
    return a2p, t_lps, seconds, mat, args


def apply_voxel_affine(array, atlas_to_prep, shape, order):
    """Resample a prep-space array onto the atlas grid: ``out(x) = array(atlas_to_prep @ x)``,
    0 outside (order 1 trilinear for images, 0 nearest for labels)."""
    from scipy import ndimage

    m = np.asarray(atlas_to_prep, dtype=np.float64)
    src = np.asarray(array, dtype=np.float32 if order else array.dtype)
    return ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape),
                                    order=order, mode="constant", cval=0)


def _dice_mean(a, b):
    labels = [v for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    if not labels:
        return None
    d = [2.0 * np.logical_and(a == v, b == v).sum() / ((a == v).sum() + (b == v).sum()) for v in labels]
    return float(np.mean(d))


def prealign_dataset(subjects, atlas, out, threads=1, preset="paper", atlas_seg=None, seed=1, log=print,
                     rows=None):
    """Pre-align every subject of a preprocessed ``subjects.csv`` to ``atlas`` (see module doc).

    Args:
        rows: ``(start, stop)``: only these rows of the table (a chunk of the workflow, gathered
            by ``vtn gather --subjects``); none there gives an empty ``subjects.csv``.

    Returns:
        list of subject ids written.
    """
    import pandas as pd

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    _set_threads(threads)
    import ants  # noqa: F401  (after the thread variable)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = Path(subjects)
    table_rows = read_subjects(subjects)
    if rows is not None:
        log(f"rows {rows[0]}:{rows[1]} of {subjects} ({len(table_rows)} rows)")
        table_rows = table_rows[rows[0]:rows[1]]
    atlas = Path(atlas).resolve()
    a_img, a_aff = load_volume(atlas)
    a_seg = load_volume(atlas_seg, dtype=None)[0] if atlas_seg is not None else None
    if a_seg is not None and a_seg.shape != a_img.shape:
        raise InputError(f"{atlas_seg}: atlas segmentation grid {a_seg.shape} differs from the atlas {a_img.shape}")
    table = []
    progress = Progress(len(table_rows), unit="subject")
    for k, row in enumerate(table_rows, 1):
        sid = row["subject"]
        img, aff = load_volume(row["image"])
        seg = None
        if row["seg"] is not None:
            seg, saff = load_volume(row["seg"], dtype=None)
            if seg.shape != img.shape:
                raise InputError(f"{row['seg']}: segmentation grid {seg.shape} differs from its image {img.shape}")
        jpath = Path(row["image"]).parent / f"{sid}_prep.json"
        meta = json.loads(jpath.read_text()) if jpath.exists() else {}
        same = Path(row["image"]).resolve() == atlas or (
            img.shape == a_img.shape and np.allclose(aff, a_aff) and np.array_equal(img, a_img))
        with tempfile.TemporaryDirectory(prefix=f"prealign-{sid}-") as wd:
            if same:
                a2p, t_lps, seconds, args = np.eye(4), np.eye(4), 0.0, []
            else:
                try:
                    a2p, t_lps, seconds, mat, args = register_affine(atlas, Path(row["image"]).resolve(), wd,
                                                                     preset=preset, seed=seed)
                except RuntimeError as exc:
                    raise InputError(f"{row['image']}: ANTs registration to {atlas} failed ({exc})") from exc
                with atomic_write(out / f"{sid}_prealign.mat") as tmp:
                    shutil.copyfile(mat, tmp)
        aligned = apply_voxel_affine(img, a2p, a_img.shape, order=1)
        save_volume(out / f"{sid}_image.nii.gz", aligned.astype(np.float32), a_aff)
        rec = {"subject": sid, "image": f"{sid}_image.nii.gz", "seg": "", "landmarks": ""}
        info = {"atlas": str(atlas), "atlas_seg": str(Path(atlas_seg).resolve()) if atlas_seg else None,
                "preset": preset, "threads": int(threads), "random_seed": int(seed),
                "identity": bool(same), "ants_args": [str(a) for a in args],
                "ants_lps_fixed_to_moving": t_lps.tolist(), "antspyx_version": getattr(ants, "__version__", None)}
        if seg is not None:
            wseg = apply_voxel_affine(seg.astype(np.int16), a2p, a_img.shape, order=0).astype(np.int16)
            save_volume(out / f"{sid}_seg.nii.gz", wseg, a_aff)
            rec["seg"] = f"{sid}_seg.nii.gz"
            if a_seg is not None:
                info["mean_dice_to_atlas"] = _dice_mean(wseg, a_seg)
        if row["landmarks"] is not None:
            names, pts = load_landmarks(row["landmarks"])
            q = (np.linalg.inv(a2p) @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]
            hi = np.asarray(a_img.shape) - 1
            outside = [n for n, v in zip(names, q) if ((v < 0) | (v > hi)).any()]
            info["landmarks_outside_atlas_grid"] = outside
            save_landmarks(out / f"{sid}_landmarks.csv", names, q)
            rec["landmarks"] = f"{sid}_landmarks.csv"
        meta.update({"subject": sid, "atlas_to_prep": a2p.tolist(), "prealign_seconds": float(seconds),
                     "prealign": info})
        atomic_write_json(out / f"{sid}_prep.json", meta)
        table.append(rec)
        log(f"subject {progress.status(k)} | {sid}: registration {seconds:.1f} s")
    with atomic_write(out / "subjects.csv") as tmp:
        pd.DataFrame(table, columns=["subject", "image", "seg", "landmarks"]).to_csv(tmp, index=False)
    return [r["subject"] for r in table]


def cli(argv=None) -> int:
    """``vtn prealign`` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="vtn prealign", description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", required=True, help="preprocessed subjects.csv")
    p.add_argument("--atlas", required=True, help="atlas image on the same S^3 grid (fixed image)")
    p.add_argument("--atlas-seg", default=None, help="atlas label map (for a Dice check in prep.json)")
    p.add_argument("--out", required=True, help="output folder prep_atlas/")
    p.add_argument("--threads", type=int, default=1, help="ITK/ANTs threads")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--seed", type=int, default=1, help="antsRegistration --random-seed")
    p.add_argument("--rows", default=None, metavar="START:STOP",
                   help="only these rows of the subjects table (0-based, header excluded)")
    a = p.parse_args(argv)
    try:
        rows = parse_rows(a.rows) if a.rows is not None else None
    except ValueError as exc:
        p.error(str(exc))
    _set_threads(a.threads)
    try:
        prealign_dataset(a.subjects, a.atlas, a.out, threads=a.threads, preset=a.preset,
                         atlas_seg=a.atlas_seg, seed=a.seed, rows=rows,
                         log=logger("vtn prealign"))
    except InputError as exc:
        print(f"vtn prealign: error: {exc}", file=sys.stderr)
        return 1
    return 0
