"""``vtn evaluate``: per-pair metrics of one registration method (paper Section V, Learn2Reg).

Reads the method's output-contract folder (``disp_<f>_<m>.nii.gz``, ``warpedseg_<f>_<m>.nii.gz``,
``times.csv``; see ``docs/design.md``) and the preprocessed subjects, and writes one row per test
pair (:data:`COLUMNS`). Every landmark measure is computed from the displacement file, so it is
the same for every method (VTN, VoxelMorph, ANTs, Elastix). Columns:

* ``iou``/``dice`` -- the paper's Seg. IoU (Section V: "the set of voxels the organ consists
  of"): liver = binary mask ``seg == liver_label`` (a binary 0/1 segmentation is used as it is;
  ``--liver-label any`` takes every label >= 1); brain = the whole brain as one region, every
  labelled voxel (label >= 1; both by :func:`vtn.labels.organ_mask`).
* ``iou_structures``, ``dice_structures``, ``hd95_structures`` (voxels), ``hd95_structures_mm``,
  ``n_labels`` -- beyond the paper (Learn2Reg): unweighted means over the structures, brain =
  the LPBA40 labels present in the fixed segmentation (all labels >= 1 when none is an LPBA40
  id), liver = the liver mask; per structure in ``--labels-out`` (:data:`LABEL_COLUMNS`). HD95
  in mm through the evaluation grid's voxel size (★: the atlas grid).
* ``lm_dist_vox``/``lm_dist_mm`` -- the paper's Lm. Dist. (Section V-B): the moving landmarks
  warped onto the fixed grid (``y`` with ``y + u(y) = p_moving``,
  :func:`vtn.functional.invert_points`) against the fixed landmarks, matched by name. The
  difference ``y - p_fixed`` lives on the fixed grid: voxels of the fixed prep image, mm through
  its affine. With ``--prealigned`` (★ methods: both images ANTs-aligned to an atlas) the
  difference is on the aligned fixed grid and is first mapped through the linear part of the
  FIXED subject's ``atlas_to_prep`` (aligned voxel -> original prep voxel), which is the inverse
  of the linear part of the transform aligning the fixed image to the atlas (the paper's
  correction), so it is in the fixed subject's original prep voxels; mm through that image's
  affine (``prep_affine``/``prep_image`` of the prep JSON or ``--orig-subjects``).
* ``lm_ref_vox``/``lm_ref_mm`` -- the reference code's measure: the fixed landmarks carried into
  the moving image (``p_fixed + u(p_fixed)``, as ``landmarks_<f>_<m>.csv``) against the moving
  landmarks, a difference on the moving grid: voxels/mm of the moving prep image (★: through the
  MOVING subject's ``atlas_to_prep`` and original prep affine).
* ``jac_std`` (paper "Std. Jacobian", forward differences), ``folding_pct`` (percent of voxels
  with ``det < 0``), ``sdlogj`` (Learn2Reg SDlogJ), ``ndv_pct`` (non-diffeomorphic volume in
  percent of the grid; :mod:`vtn.metrics`).
* ``epe``: mean end-point error (voxels) against ``<gt>/disp_<f>_<m>.nii.gz`` when ``--gt``.
* ``seconds, device, threads``: from ``times.csv`` (registration wall time only).

``--jobs N`` evaluates N pairs at a time in worker processes (the rows and their order do not
change); one progress line per pair on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vtn import metrics
from vtn.io import (InputError, atomic_write, load_disp_l2r, load_landmarks, load_volume,
                    read_pairs, read_subjects)
from vtn.labels import organ_mask

__all__ = ["COLUMNS", "LABEL_COLUMNS", "Frame", "image_frame", "landmark_measures",
           "evaluate_pair", "evaluate", "cli"]

COLUMNS = ["study", "method", "fixed", "moving", "iou", "dice", "iou_structures",
           "dice_structures", "hd95_structures", "hd95_structures_mm", "n_labels", "lm_dist_vox",
           "lm_dist_mm", "lm_ref_vox", "lm_ref_mm", "n_landmarks", "jac_std", "folding_pct",
           "sdlogj", "ndv_pct", "epe", "seconds", "device", "threads", "data_source"]
LABEL_COLUMNS = ["study", "method", "fixed", "moving", "label", "iou", "dice", "hd95", "hd95_mm",
                 "fixed_voxels", "warped_voxels"]
#: residual (voxels) above which an inverted landmark is reported as not exactly invertible
INVERSION_TOL = 0.01


class Frame(NamedTuple):
    """Where a landmark difference measured on a subject's evaluation grid is reported.

    ``to_prep``: 3x3/4x4 matrix whose linear part maps the difference to the subject's original
    prep voxels (★: its ``atlas_to_prep``), ``None`` = the grid is the prep image itself;
    ``affine``: voxel -> mm affine of those prep voxels, ``None`` = mm unknown (NaN).
    """

    to_prep: np.ndarray | None
    affine: np.ndarray | None


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    return path


def _prep_json(subjects_csv: Path, sid: str) -> dict:
    path = subjects_csv.parent / f"{sid}_prep.json"
    if not path.exists():
        raise InputError(f"{path}: preprocessing record of subject {sid} not found "
                         "(needed for --prealigned)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from exc


def _matrix(rec: dict, key: str, path_hint: str) -> np.ndarray:
    if key not in rec:
        raise InputError(f"{path_hint}: lacks '{key}'")
    m = np.asarray(rec[key], dtype=np.float64)
    if m.shape not in {(4, 4), (3, 3), (3, 4)}:
        raise InputError(f"{path_hint}: '{key}' must be a 4x4 matrix, got shape {m.shape}")
    return m


def _header_affine(path) -> np.ndarray:
    """The voxel -> mm affine of a NIfTI file (header only)."""
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).affine, dtype=np.float64)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the image header ({exc})") from exc


def _orig_prep_affine(subjects_csv: Path, sid: str, rec: dict, orig_subjects: dict | None):
    """Affine (voxel -> mm) of a pre-aligned subject's original (non-aligned) prep image."""
    if "prep_affine" in rec:
        return np.asarray(rec["prep_affine"], dtype=np.float64)
    if rec.get("prep_image"):
        p = Path(rec["prep_image"])
        if not p.is_absolute():
            p = subjects_csv.parent / p
        if p.exists():
            return _header_affine(p)
    if orig_subjects and sid in orig_subjects:
        return _header_affine(orig_subjects[sid]["image"])
    return None


def _load_times(reg: Path) -> dict:
    import pandas as pd

    path = _require(reg / "times.csv", "timing table times.csv of the method")
    df = pd.read_csv(path, dtype={"fixed": str, "moving": str})
    need = {"fixed", "moving", "seconds"}
    if not need <= set(df.columns):
        raise InputError(f"{path}: needs columns {sorted(need)} (+ device, threads)")
    out = {}
    for rec in df.to_dict("records"):
        out[(rec["fixed"], rec["moving"])] = rec
    return out


def image_frame(row: dict) -> Frame:
    """The frame of a plain (not pre-aligned) subject: its prep image's voxels and affine."""
    return Frame(None, _header_affine(_require(Path(row["image"]), "image")))


def _prealigned_frame(subjects_csv: Path, sid: str, orig_subjects: dict | None, warn) -> Frame:
    rec = _prep_json(subjects_csv, sid)
    a2p = _matrix(rec, "atlas_to_prep", str(subjects_csv.parent / f"{sid}_prep.json"))
    affine = _orig_prep_affine(subjects_csv, sid, rec, orig_subjects)
    if affine is None:
        warn()
    return Frame(a2p, affine)


def _distance(pred, true, frame: Frame) -> tuple[float, float]:
    vox = metrics.landmark_distance(pred, true, matrix=frame.to_prep)
    mm = (metrics.landmark_distance(pred, true, affine=frame.affine, matrix=frame.to_prep)
          if frame.affine is not None else float("nan"))
    return vox, mm


def landmark_measures(flow, fixed_pts, moving_pts, fixed_frame: Frame,
                      moving_frame: Frame) -> dict:
    """Both landmark distances of one pair from its displacement.

    Args:
        flow: ``(3, D, H, W)`` displacement (voxels, fixed grid, pulls from the moving image).
        fixed_pts, moving_pts: ``(N, 3)`` matched landmarks (voxels of the fixed / moving
            evaluation grids).
        fixed_frame, moving_frame: see :class:`Frame`.

    Returns:
        ``{"lm_dist_vox", "lm_dist_mm"}`` (paper: warped moving landmarks vs fixed landmarks,
        fixed frame), ``{"lm_ref_vox", "lm_ref_mm"}`` (reference code: transported fixed
        landmarks vs moving landmarks, moving frame) and ``max_residual`` (voxels) of the
        inversion ``y + u(y) = p_moving``.
    """
    import torch

    from vtn.functional import invert_points, transport_points

    u = torch.as_tensor(np.asarray(flow), dtype=torch.float64)
    pf = torch.as_tensor(np.asarray(fixed_pts), dtype=torch.float64)
    pm = torch.as_tensor(np.asarray(moving_pts), dtype=torch.float64)
    warped = invert_points(pm, u, search=True)
    residual = float((transport_points(warped, u) - pm).norm(dim=1).max()) if len(pm) else 0.0
    carried = transport_points(pf, u)
    out = dict(zip(("lm_dist_vox", "lm_dist_mm"), _distance(warped.numpy(), pf.numpy(),
                                                            fixed_frame)))
    out.update(zip(("lm_ref_vox", "lm_ref_mm"), _distance(carried.numpy(), pm.numpy(),
                                                          moving_frame)))
    out["max_residual"] = residual
    return out


def evaluate_pair(fixed: dict, moving: dict, reg: Path, *, organ: str = "liver",
                  liver_label="5", gt: Path | None = None, fixed_frame: Frame | None = None,
                  moving_frame: Frame | None = None) -> tuple[dict, list]:
    """Metrics of one registered pair (the columns of :data:`COLUMNS`, see the module doc).

    Args:
        fixed, moving: subject rows from :func:`vtn.io.read_subjects`.
        reg: the method's output folder.
        organ: ``"liver"`` (liver mask) or ``"brain"`` (whole brain; LPBA40 structures).
        liver_label: see :func:`vtn.labels.organ_mask`.
        gt: folder with ground-truth ``disp_<f>_<m>.nii.gz`` (or ``None``).
        fixed_frame, moving_frame: landmark frames (:class:`Frame`); ``None`` = the subject's
            prep image (:func:`image_frame`).

    Returns:
        ``(row dict of metrics, list of per-label dicts)``.
    """
    f, m = fixed["subject"], moving["subject"]
    reg = Path(reg)
    row: dict = {"fixed": f, "moving": m}
    flow, _ = load_disp_l2r(_require(reg / f"disp_{f}_{m}.nii.gz", "displacement file"))
    row["jac_std"] = metrics.jacobian_std(flow)
    row["folding_pct"] = 100.0 * metrics.folding_fraction(flow)
    row["sdlogj"] = metrics.sdlogj(flow) if min(flow.shape[1:]) > 4 else np.nan
    row["ndv_pct"] = metrics.non_diffeomorphic_volume(flow)[1]

    labels_long: list = []
    row.update({k: np.nan for k in ("iou", "dice", "iou_structures", "dice_structures",
                                    "hd95_structures", "hd95_structures_mm")}, n_labels=0)
    if fixed["seg"] is not None and moving["seg"] is not None:
        fseg, faff = load_volume(fixed["seg"], dtype=None)
        wpath = _require(reg / f"warpedseg_{f}_{m}.nii.gz", "warped segmentation")
        wseg, _ = load_volume(wpath, dtype=None)
        if fseg.shape != wseg.shape:
            raise InputError(f"{wpath}: shape {wseg.shape} differs from the fixed segmentation "
                             f"{fixed['seg']} {fseg.shape}")
        spacing = metrics.voxel_size(faff)
        fm, wm = (organ_mask(s, organ, liver_label) for s in (fseg, wseg))
        if organ == "brain":
            present = {int(v) for v in np.unique(np.rint(fseg)) if v >= 1}
            cand = metrics.LPBA40_LABELS if present & set(metrics.LPBA40_LABELS) else None
            res = metrics.mean_label_overlap(fseg, wseg, cand, spacing=spacing)
            table = res["table"]
        else:
            res = metrics.mean_label_overlap(fm.astype(np.int8), wm.astype(np.int8), [1],
                                             spacing=spacing)
            table = res["table"].assign(label="liver")
        row.update(iou=metrics.iou(fm, wm), dice=metrics.dice(fm, wm),
                   iou_structures=res["iou"], dice_structures=res["dice"],
                   hd95_structures=res["hd95"], hd95_structures_mm=res["hd95_mm"],
                   n_labels=res["n_labels"])
        labels_long = table.to_dict("records")

    row.update(lm_dist_vox=np.nan, lm_dist_mm=np.nan, lm_ref_vox=np.nan, lm_ref_mm=np.nan,
               n_landmarks=0)
    if fixed["landmarks"] is not None and moving["landmarks"] is not None:
        fnames, fpts = load_landmarks(fixed["landmarks"])
        mnames, mpts = load_landmarks(moving["landmarks"])
        common = [n for n in fnames if n in set(mnames)]
        if not common:
            raise InputError(f"{moving['landmarks']}: no landmark name in common with "
                             f"{fixed['landmarks']}")
        fpts = fpts[[fnames.index(n) for n in common]]
        mpts = mpts[[mnames.index(n) for n in common]]
        lm = landmark_measures(flow, fpts, mpts, fixed_frame or image_frame(fixed),
                               moving_frame or image_frame(moving))
        if lm.pop("max_residual") > INVERSION_TOL:
            print(f"vtn evaluate: {f}/{m}: a moving landmark has no exact pre-image under the "
                  f"displacement (not invertible there); the closest point found is used",
                  file=sys.stderr)
        row.update(lm, n_landmarks=len(common))

    row["epe"] = np.nan
    if gt is not None:
        gflow, _ = load_disp_l2r(_require(Path(gt) / f"disp_{f}_{m}.nii.gz",
                                          "ground-truth displacement"))
        row["epe"] = metrics.endpoint_error(flow, gflow)
    return row, labels_long


def evaluate(subjects_csv, pairs_csv, reg, method: str, study: str = "", *, organ="liver",
             liver_label="5", gt=None, prealigned: bool = False, data_source: str = "",
             orig_subjects_csv=None, jobs: int = 1, log=None):
    """Evaluate every pair of ``pairs_csv``; returns ``(metrics DataFrame, long DataFrame)``.

    ``jobs``: pairs evaluated at a time in worker processes (same result); ``log``: a
    ``callable(str)`` for one progress line per pair."""
    import pandas as pd

    from vtn.progress import Progress

    if organ not in {"liver", "brain"}:
        raise ValueError(f"organ must be liver or brain, got {organ!r}")
    subjects_csv, reg = Path(subjects_csv), Path(reg)
    if not reg.is_dir():
        raise InputError(f"{reg}: registration folder not found")
    subjects = {r["subject"]: r for r in read_subjects(subjects_csv)}
    orig = ({r["subject"]: r for r in read_subjects(orig_subjects_csv)}
            if orig_subjects_csv else None)
    pairs = read_pairs(pairs_csv)
    times = _load_times(reg)
    rows, longs = [], []
    warned = []
    frames: dict = {}

    def warn():
        if not warned:
            print("vtn evaluate: no original prep affine for pre-aligned subjects "
                  "(prep_affine / prep_image in the prep JSON or --orig-subjects); "
                  "lm_dist_mm / lm_ref_mm left empty", file=sys.stderr)
            warned.append(True)

    def frame(sid):
        if sid not in frames:
            frames[sid] = (_prealigned_frame(subjects_csv, sid, orig, warn) if prealigned
                           else image_frame(subjects[sid]))
        return frames[sid]

    for f, m in pairs:
        for sid in (f, m):
            if sid not in subjects:
                raise InputError(f"{pairs_csv}: subject {sid} is not in {subjects_csv}")
    args = [((subjects[f], subjects[m], reg),
             dict(organ=organ, liver_label=liver_label, gt=gt, fixed_frame=frame(f),
                  moving_frame=frame(m))) for f, m in pairs]
    progress = Progress(len(pairs), unit="pair")
    if jobs > 1 and len(pairs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a forked child of a process whose OpenMP pool ran (torch) can hang
        with ProcessPoolExecutor(max_workers=min(jobs, len(pairs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(evaluate_pair, *a, **kw) for a, kw in args]
            results = []
            for k, fut in enumerate(futures, 1):
                results.append(fut.result())
                if log:
                    log(f"pair {progress.status(k)} | {pairs[k - 1][0]} <- {pairs[k - 1][1]}")
    else:
        results = []
        for k, (a, kw) in enumerate(args, 1):
            results.append(evaluate_pair(*a, **kw))
            if log:
                log(f"pair {progress.status(k)} | {pairs[k - 1][0]} <- {pairs[k - 1][1]}")
    for (f, m), (row, long) in zip(pairs, results):
        t = times.get((f, m))
        row["seconds"] = float(t["seconds"]) if t is not None else np.nan
        row["device"] = str(t.get("device", "")) if t is not None else ""
        row["threads"] = t.get("threads", np.nan) if t is not None else np.nan
        row.update(study=study, method=method, data_source=data_source)
        rows.append(row)
        for rec in long:
            longs.append({"study": study, "method": method, "fixed": f, "moving": m, **rec})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df, pd.DataFrame(longs, columns=LABEL_COLUMNS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vtn evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--subjects", required=True, help="prep subjects.csv the method registered")
    p.add_argument("--pairs", required=True, help="pairs.csv (fixed,moving)")
    p.add_argument("--reg", required=True, help="the method's registration folder")
    p.add_argument("--method", required=True, help="method name written to the table")
    p.add_argument("--study", default="", help="study name written to the table")
    p.add_argument("--out", required=True, help="per-pair metrics CSV")
    p.add_argument("--labels-out", default=None, help="optional per-pair, per-label CSV")
    p.add_argument("--gt", default=None, help="folder of ground-truth disp_<f>_<m>.nii.gz")
    p.add_argument("--organ", choices=["liver", "brain"], default="liver")
    p.add_argument("--liver-label", default="5",
                   help="liver label id (default 5) or 'any' for labels >= 1; binary 0/1 "
                        "segmentations are used as they are")
    p.add_argument("--prealigned", action="store_true",
                   help="subjects are atlas-aligned (brain star methods): map landmark "
                        "differences back through the subject's atlas_to_prep (fixed subject "
                        "for lm_dist, moving subject for lm_ref)")
    p.add_argument("--orig-subjects", default=None,
                   help="original (non-aligned) prep subjects.csv, for mm with --prealigned when "
                        "the prep JSON has no prep_affine/prep_image")
    p.add_argument("--data-source", default="", help="data source text written to the table")
    p.add_argument("--jobs", type=int, default=1, help="pairs evaluated at a time (processes)")
    return p


def cli(argv=None) -> int:
    args = _parser().parse_args(argv)
    from vtn.progress import logger

    try:
        df, long = evaluate(args.subjects, args.pairs, args.reg, args.method, args.study,
                            organ=args.organ, liver_label=args.liver_label, gt=args.gt,
                            prealigned=args.prealigned, data_source=args.data_source,
                            orig_subjects_csv=args.orig_subjects, jobs=max(1, args.jobs),
                            log=logger("vtn evaluate"))
    except InputError as exc:
        print(f"vtn evaluate: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    with atomic_write(out) as tmp:
        df.to_csv(tmp, index=False)
    if args.labels_out:
        lo = Path(args.labels_out)
        lo.parent.mkdir(parents=True, exist_ok=True)
        long.to_csv(lo, index=False)
    print(f"vtn evaluate: {len(df)} pairs of {args.method} -> {out} "
          f"(mean Seg. IoU {df['iou'].mean():.4f}, mean Lm. Dist. "
          f"{df['lm_dist_vox'].mean():.3f} vox)")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
