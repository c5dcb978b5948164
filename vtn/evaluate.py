"""``vtn evaluate``: per-pair metrics of one registration method (paper Section V).

Reads the method's output-contract folder (``disp_<f>_<m>.nii.gz``, ``warpedseg_<f>_<m>.nii.gz``,
``landmarks_<f>_<m>.csv``, ``times.csv``; see ``docs/design.md``) and the preprocessed subjects,
and writes one row per test pair:

``study, method, fixed, moving, iou, dice, n_labels, lm_dist_vox, lm_dist_mm, n_landmarks,
jac_std, folding_pct, epe, seconds, device, threads, data_source``

* ``iou``/``dice``: liver = binary mask ``seg == liver_label`` (:func:`vtn.labels.organ_mask`:
  a binary 0/1 segmentation is used as it is; ``--liver-label any`` takes every label >= 1); brain = unweighted mean over the
  LPBA40 labels present in the fixed segmentation (all labels >= 1 when none of the fixed
  labels is an LPBA40 id).
* ``lm_dist_vox``: mean distance between the fixed landmarks transported into the moving image
  and the moving subject's landmarks (matched by name), voxels of the moving prep image;
  ``lm_dist_mm`` through the moving image's affine. With ``--prealigned`` (ANTs atlas-aligned
  inputs, the brain "★" methods) each difference vector is first mapped through the linear part
  of the FIXED subject's ``atlas_to_prep`` (aligned voxel -> original prep voxel; paper
  Section V-B), and mm use the fixed subject's original prep affine.
* ``jac_std``: std of the forward-difference Jacobian determinant; ``folding_pct``: percent of
  voxels with ``det <= 0`` (:mod:`vtn.metrics`).
* ``epe``: mean end-point error (voxels) against ``<gt>/disp_<f>_<m>.nii.gz`` when ``--gt``.
* ``seconds, device, threads``: from ``times.csv`` (registration wall time only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vtn import metrics
from vtn.io import (InputError, atomic_write, load_disp_l2r, load_landmarks, load_volume,
                    read_pairs, read_subjects)
from vtn.labels import organ_mask

__all__ = ["COLUMNS", "LABEL_COLUMNS", "evaluate_pair", "evaluate", "cli"]

COLUMNS = ["study", "method", "fixed", "moving", "iou", "dice", "n_labels", "lm_dist_vox",
           "lm_dist_mm", "n_landmarks", "jac_std", "folding_pct", "epe", "seconds", "device",
           "threads", "data_source"]
LABEL_COLUMNS = ["study", "method", "fixed", "moving", "label", "iou", "dice", "fixed_voxels",
                 "warped_voxels"]


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


def _orig_prep_affine(subjects_csv: Path, sid: str, rec: dict, orig_subjects: dict | None):
    """Affine (voxel -> mm) of the fixed subject's original (non-aligned) prep image."""
    if "prep_affine" in rec:
        return np.asarray(rec["prep_affine"], dtype=np.float64)
    if rec.get("prep_image"):
        p = Path(rec["prep_image"])
        if not p.is_absolute():
            p = subjects_csv.parent / p
        if p.exists():
            import nibabel as nib

            return np.asarray(nib.load(str(p)).affine, dtype=np.float64)
    if orig_subjects and sid in orig_subjects:
        import nibabel as nib

        return np.asarray(nib.load(str(orig_subjects[sid]["image"])).affine, dtype=np.float64)
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


def evaluate_pair(fixed: dict, moving: dict, reg: Path, *, organ: str = "liver",
                  liver_label="5", gt: Path | None = None, correction=None,
                  mm_affine=None) -> tuple[dict, list]:
    """Metrics of one registered pair.

    Args:
        fixed, moving: subject rows from :func:`vtn.io.read_subjects`.
        reg: the method's output folder.
        organ: ``"liver"`` (binary liver IoU) or ``"brain"`` (mean over LPBA40 labels).
        liver_label: see :func:`vtn.labels.organ_mask`.
        gt: folder with ground-truth ``disp_<f>_<m>.nii.gz`` (or ``None``).
        correction: 4x4 matrix whose linear part maps landmark difference vectors (pre-aligned
            methods: the fixed subject's ``atlas_to_prep``), or ``None``.
        mm_affine: affine whose linear part converts (corrected) difference vectors to mm;
            ``None`` = the moving image's affine (uncorrected case).

    Returns:
        ``(row dict of metrics, list of per-label dicts)``.
    """
    f, m = fixed["subject"], moving["subject"]
    reg = Path(reg)
    row: dict = {"fixed": f, "moving": m}
    flow, _ = load_disp_l2r(_require(reg / f"disp_{f}_{m}.nii.gz", "displacement file"))
    row["jac_std"] = metrics.jacobian_std(flow)
    row["folding_pct"] = 100.0 * metrics.folding_fraction(flow)

    labels_long: list = []
    row.update(iou=np.nan, dice=np.nan, n_labels=0)
    if fixed["seg"] is not None and moving["seg"] is not None:
        fseg, _ = load_volume(fixed["seg"], dtype=None)
        wpath = _require(reg / f"warpedseg_{f}_{m}.nii.gz", "warped segmentation")
        wseg, _ = load_volume(wpath, dtype=None)
        if fseg.shape != wseg.shape:
            raise InputError(f"{wpath}: shape {wseg.shape} differs from the fixed segmentation "
                             f"{fixed['seg']} {fseg.shape}")
        if organ == "brain":
            present = {int(v) for v in np.unique(np.rint(fseg)) if v >= 1}
            cand = metrics.LPBA40_LABELS if present & set(metrics.LPBA40_LABELS) else None
            res = metrics.mean_label_overlap(fseg, wseg, cand)
            row.update(iou=res["iou"], dice=res["dice"], n_labels=res["n_labels"])
            labels_long = res["table"].to_dict("records")
        else:
            fm, wm = (organ_mask(s, "liver", liver_label) for s in (fseg, wseg))
            row.update(iou=metrics.iou(fm, wm), dice=metrics.dice(fm, wm), n_labels=1)
            labels_long = [{"label": "liver", "iou": row["iou"], "dice": row["dice"],
                            "fixed_voxels": int(fm.sum()), "warped_voxels": int(wm.sum())}]

    row.update(lm_dist_vox=np.nan, lm_dist_mm=np.nan, n_landmarks=0)
    if fixed["landmarks"] is not None and moving["landmarks"] is not None:
        ppath = _require(reg / f"landmarks_{f}_{m}.csv", "transported landmark file")
        pnames, pred = load_landmarks(ppath)
        tnames, true = load_landmarks(moving["landmarks"])
        common = [n for n in pnames if n in set(tnames)]
        if not common:
            raise InputError(f"{ppath}: no landmark name in common with {moving['landmarks']}")
        pi = [pnames.index(n) for n in common]
        ti = [tnames.index(n) for n in common]
        pred, true = pred[pi], true[ti]
        row["lm_dist_vox"] = metrics.landmark_distance(pred, true, matrix=correction)
        if mm_affine is None and correction is None:
            _, mm_affine = load_volume(moving["image"])
        if mm_affine is not None:
            row["lm_dist_mm"] = metrics.landmark_distance(pred, true, affine=mm_affine,
                                                          matrix=correction)
        row["n_landmarks"] = len(common)

    row["epe"] = np.nan
    if gt is not None:
        gflow, _ = load_disp_l2r(_require(Path(gt) / f"disp_{f}_{m}.nii.gz",
                                          "ground-truth displacement"))
        row["epe"] = metrics.endpoint_error(flow, gflow)
    return row, labels_long


def evaluate(subjects_csv, pairs_csv, reg, method: str, study: str = "", *, organ="liver",
             liver_label="5", gt=None, prealigned: bool = False, data_source: str = "",
             orig_subjects_csv=None):
    """Evaluate every pair of ``pairs_csv``; returns ``(metrics DataFrame, long DataFrame)``."""
    import pandas as pd

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
    warned = False
    for f, m in pairs:
        for sid in (f, m):
            if sid not in subjects:
                raise InputError(f"{pairs_csv}: subject {sid} is not in {subjects_csv}")
        correction = mm_affine = None
        if prealigned:
            rec = _prep_json(subjects_csv, f)
            correction = _matrix(rec, "atlas_to_prep", str(subjects_csv.parent / f"{f}_prep.json"))
            mm_affine = _orig_prep_affine(subjects_csv, f, rec, orig)
            if mm_affine is None and not warned:
                print("vtn evaluate: no original prep affine for pre-aligned subjects "
                      "(prep_affine / prep_image in the prep JSON or --orig-subjects); "
                      "lm_dist_mm left empty", file=sys.stderr)
                warned = True
        row, long = evaluate_pair(subjects[f], subjects[m], reg, organ=organ,
                                  liver_label=liver_label, gt=gt, correction=correction,
                                  mm_affine=mm_affine)
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
                   help="subjects are atlas-aligned (brain star methods): correct landmark "
                        "difference vectors with the fixed subject's atlas_to_prep")
    p.add_argument("--orig-subjects", default=None,
                   help="original (non-aligned) prep subjects.csv, for mm with --prealigned when "
                        "the prep JSON has no prep_affine/prep_image")
    p.add_argument("--data-source", default="", help="data source text written to the table")
    return p


def cli(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        df, long = evaluate(args.subjects, args.pairs, args.reg, args.method, args.study,
                            organ=args.organ, liver_label=args.liver_label, gt=args.gt,
                            prealigned=args.prealigned, data_source=args.data_source,
                            orig_subjects_csv=args.orig_subjects)
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
          f"(mean IoU {df['iou'].mean():.4f}, mean Lm. Dist. {df['lm_dist_vox'].mean():.3f} vox)")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
