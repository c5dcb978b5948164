"""``vtn figures``: the paper's Figures 6/7 (liver) and 8 (brain) plus training curves.

``vtn figures --spec study.json --metrics CSV [CSV ...] --reg-root results/registrations/<study>
--subjects prep/subjects.csv [--prealigned-subjects prep_atlas/subjects.csv]
--models results/models/<study> --out DIR [--liver-label 5] [--axis 2]``

Written (headless, matplotlib Agg):

* ``figure6_methods.png`` (liver) / ``figure8_methods.png`` (brain): one test pair, the one
  whose IoU under the main method is the median over pairs. Rows: sections through the fixed
  image at the height (array axis ``--axis``, default 2) of three fixed landmarks; columns: the
  fixed image, the moving image, then for each method its warped image (title: the pair's
  landmark distance) and its warped segmentation (white = fixed, semi-transparent red = warped;
  title: the pair's IoU). Yellow crosses: fixed landmarks; red: the moving landmark (moving
  column) or the moving landmark carried into the fixed frame (warped columns), drawn at
  ``p_fixed - (p_pred - p_moving)``, i.e. displaced by the residual the landmark distance
  measures. Pre-aligned (★) methods are resampled back from the atlas-aligned frame to the
  original fixed image with the fixed subject's ``atlas_to_prep`` (as in the paper's Figure 8).
* ``figure7_cascades.png`` (liver) / ``figure8b_cascades.png`` (brain): the same for the
  cascade variants (and the invertibility variant).
* ``figure1_rendering.png``: the paper's Figure 1 for the same pair and the main method:
  3-D renderings (:mod:`vtn.report.render`) of the fixed and moving images, the deformation as a
  skewed grid, and the warped moving image.
* ``training_curves.png``: ``total`` and each loss term against the step, one panel per model
  (``<models>/<model>/train_log.csv``).

:func:`figure_subjects` draws the figure of an embedded dataset (``vtn make-embedded --figure``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vtn.io import InputError, load_landmarks, load_raw_landmarks, load_volume, read_subjects
from vtn.labels import organ_mask

__all__ = ["save_figure", "median_pair", "method_panels", "method_figure", "training_curves", "make_figures",
           "figure_subjects", "cli"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png, dpi: int = 90) -> Path:
    """``tight_layout``, create the folder, write ``out_png`` and close ``fig``; returns the path."""
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    _plt().close(fig)
    return out_png


def median_pair(df, metric: str = "iou"):
    """``(fixed, moving)`` of the pair whose ``metric`` is closest to the median over pairs
    (ties: the first in file order); falls back to the first pair when the metric is all NaN."""
    vals = df[metric].to_numpy(dtype=float) if metric in df.columns else np.full(len(df), np.nan)
    if len(df) == 0:
        raise InputError("no pairs in the metrics table")
    if not np.isfinite(vals).any():
        i = 0
    else:
        med = np.nanmedian(vals)
        i = int(np.nanargmin(np.abs(vals - med)))
    return str(df["fixed"].iloc[i]), str(df["moving"].iloc[i])


def _mask(seg, organ, liver_label):
    return None if seg is None else organ_mask(seg, organ, liver_label)


def _resample_back(vol, a2p, order):
    """Volume on the aligned grid -> original fixed grid: ``out(p) = vol(inv(A) p)``."""
    from scipy import ndimage

    inv = np.linalg.inv(np.asarray(a2p, dtype=np.float64))
    return ndimage.affine_transform(vol, inv[:3, :3], offset=inv[:3, 3], order=order,
                                    mode="nearest")


def method_panels(name, reg_dir, f, m, fixed_pts, moving_pts, correction=None):
    """Warped image, warped segmentation and red-cross positions of one method for one pair.

    Args:
        name: method name (for messages).
        reg_dir: the method's registration folder.
        f, m: fixed and moving subject ids.
        fixed_pts: ``{name: (3,)}`` fixed landmarks (original fixed frame).
        moving_pts: ``{name: (3,)}`` moving landmarks (in the frame the method registered).
        correction: fixed ``atlas_to_prep`` for pre-aligned methods (resample back), or ``None``.

    Returns:
        dict with ``image``, ``seg`` (or ``None``), ``red`` ``{landmark: (3,)}``.
    """
    reg_dir = Path(reg_dir)
    img, _ = load_volume(reg_dir / f"warped_{f}_{m}.nii.gz")
    seg = None
    sp = reg_dir / f"warpedseg_{f}_{m}.nii.gz"
    if sp.exists():
        seg, _ = load_volume(sp, dtype=None)
    if correction is not None:
        img = _resample_back(img, correction, 1)
        seg = _resample_back(seg, correction, 0) if seg is not None else None
    red = {}
    lp = reg_dir / f"landmarks_{f}_{m}.csv"
    if lp.exists() and moving_pts:
        names, pred = load_landmarks(lp)
        lin = np.eye(3) if correction is None else np.asarray(correction, float)[:3, :3]
        for n, p in zip(names, pred):
            if n in moving_pts and n in fixed_pts:
                red[n] = fixed_pts[n] - lin @ (p - moving_pts[n])
    return {"image": img, "seg": seg, "red": red}


def _slice(vol, axis, k):
    k = int(np.clip(round(k), 0, vol.shape[axis] - 1))
    return np.take(vol, k, axis=axis).T  # x = first remaining axis, y = second


def _cross(ax, p, axis, color):
    rest = [d for d in range(3) if d != axis]
    ax.plot(p[rest[0]], p[rest[1]], marker="+", color=color, markersize=10, mew=2)


def method_figure(columns, fixed, moving, lm_names, out_png, axis=2, title=""):
    """Draw the grid of sections.

    Args:
        columns: list of ``(label, panel dict from method_panels, lm_text, iou_text)``.
        fixed: dict ``image, mask, pts {name: (3,)}``; moving: same (``mask`` unused).
        lm_names: the (up to three) landmark names defining the section heights.
        out_png: output path.
    """
    plt = _plt()
    ncol = 2 + 2 * len(columns)
    nrow = max(1, len(lm_names))
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.9 * ncol, 2.0 * nrow + 0.6), squeeze=False)
    for r, lname in enumerate(lm_names):
        k = fixed["pts"][lname][axis]
        panels = [("fixed", fixed["image"], None, None, None),
                  ("moving", moving["image"], None, moving["pts"].get(lname), None)]
        for label, pan, lm_txt, iou_txt in columns:
            panels.append((f"{label}\nLm. {lm_txt}", pan["image"], None, pan["red"].get(lname),
                           None))
            panels.append((f"{label}\nIoU {iou_txt}", None, pan["seg"], None, True))
        for c, (ttl, img, seg, red, is_seg) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if is_seg:
                fm = fixed["mask"]
                base = _slice(fm.astype(float), axis, k) if fm is not None else None
                if base is not None:
                    ax.imshow(base, cmap="gray", origin="lower", vmin=0, vmax=1)
                if seg is not None:
                    wm = _slice(fixed["mask_fn"](seg).astype(float), axis, k)
                    rgba = np.zeros(wm.shape + (4,))
                    rgba[..., 0] = 1.0
                    rgba[..., 3] = 0.45 * wm
                    ax.imshow(rgba, origin="lower")
            else:
                ax.imshow(_slice(img, axis, k), cmap="gray", origin="lower")
                _cross(ax, fixed["pts"][lname], axis, "yellow")
                if red is not None:
                    _cross(ax, red, axis, "red")
            if r == 0:
                ax.set_title(ttl, fontsize=7)
            if c == 0:
                ax.set_ylabel(lname, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, out_png)


def training_curves(models_dir, names, out_png) -> list:
    """Plot ``train_log.csv`` of each model: the loss terms and the total vs ``step``, the total
    smoothed as the plateau check smooths it (mean over windows of 10 % of the steps,
    :mod:`vtn.report.convergence`), the probe's values (red points, where logged), the last
    10 % shaded, and the check's drops in the title.

    Returns:
        the names of the models that had a log.
    """
    import pandas as pd

    from vtn.report import convergence

    plt = _plt()
    logs = {}
    for n in names:
        p = Path(models_dir) / n / "train_log.csv"
        if p.exists():
            df = pd.read_csv(p)
            if "step" in df.columns and len(df):
                logs[n] = df
    if not logs:
        return []
    ncol = min(3, len(logs))
    nrow = (len(logs) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    skip = {"step", "epoch", "lr", "seconds", "probe"}
    for i, (n, df) in enumerate(logs.items()):
        ax = axes[i // ncol, i % ncol]
        for col in df.columns:
            if col in skip or not np.issubdtype(df[col].dtype, np.number):
                continue
            ax.plot(df["step"], df[col], lw=0.6 if col == "total" else 0.8, label=col,
                    alpha=0.5 if col == "total" else 1.0)
        title = n
        if "total" in df.columns and len(df) >= 2:
            k = max(1, int(np.ceil(convergence.WINDOW * len(df))))
            smooth = df["total"].rolling(k, min_periods=1).mean()
            ax.plot(df["step"], smooth, lw=1.6, color="black", label="total, smoothed")
            ax.axvspan(df["step"].iloc[-k], df["step"].iloc[-1], color="0.85", zorder=0)
            res = convergence.verdict(df)
            if res["basis"] == "probe":
                pts = df.dropna(subset=["probe"])
                ax.plot(pts["step"], pts["probe"], "o-", ms=3, lw=1.0, color="tab:red",
                        label="probe (fixed pairs)")
                title += (f"\nprobe drop over the last 10 %: {res['probe_drop_pct']:.1f} % "
                          f"({'flat' if res['flat'] else 'still falling'}); smoothed log "
                          f"{res['drop_pct']:.1f} ± {res['drop_se_pct']:.1f} %")
            else:
                title += (f"\nsmoothed loss drop over the last 10 %: {res['drop_pct']:.1f} "
                          f"± {res['drop_se_pct']:.1f} % "
                          f"({'flat' if res['flat'] else 'still falling'})")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    for j in range(len(logs), nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    save_figure(fig, out_png)
    return list(logs)


def figure_subjects(raw_dir, out_png, n: int = 4) -> Path:
    """Figure of the first ``n`` generated subjects: three orthogonal sections each.

    Sections pass through the mean of the subject's landmarks; label boundaries are drawn in
    colour (liver, label 5, in red for the liver dataset) and landmarks within 2 voxels of a
    section are marked. Images are shown in the closest canonical (RAS) orientation.
    """
    import nibabel as nib

    from vtn.data.synth.anatomy import LIVER_LABEL
    from vtn.data.synth.transforms import apply_affine

    plt = _plt()

    raw_dir = Path(raw_dir)
    rows = read_subjects(raw_dir / "subjects.csv")[:n]
    meta_path = raw_dir / "dataset.json"
    organ = json.loads(meta_path.read_text()).get("organ", "") if meta_path.exists() else ""
    fig, axes = plt.subplots(len(rows), 3, figsize=(11, 3.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        img = nib.as_closest_canonical(nib.load(str(row["image"])))
        data = np.asarray(img.dataobj, dtype=np.float32)
        seg = (np.asarray(nib.as_closest_canonical(nib.load(str(row["seg"]))).dataobj)
               if row["seg"] else np.zeros(data.shape, np.uint8))
        if row["landmarks"]:
            names, pts = load_raw_landmarks(row["landmarks"])
            vox = apply_affine(np.linalg.inv(img.affine), pts)
        else:
            vox = np.zeros((0, 3))
        centre = (np.clip(np.rint(vox.mean(0)), 0, np.asarray(data.shape) - 1).astype(int)
                  if len(vox) else np.asarray(data.shape) // 2)
        if organ == "liver":
            vmin, vmax = -200.0, 300.0
        else:
            vmin, vmax = np.percentile(data, [0.5, 99.5])
        zooms = img.header.get_zooms()[:3]
        for c, (axis, title) in enumerate([(0, "sagittal"), (1, "coronal"), (2, "axial")]):
            ax = axes[r, c]
            sl = [slice(None)] * 3
            sl[axis] = centre[axis]
            im2, lab2 = data[tuple(sl)].T, seg[tuple(sl)].T
            other = [a for a in range(3) if a != axis]
            aspect = zooms[other[1]] / zooms[other[0]]
            ax.imshow(im2, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect)
            edge = np.zeros(lab2.shape, bool)
            edge[1:, :] |= lab2[1:, :] != lab2[:-1, :]
            edge[:, 1:] |= lab2[:, 1:] != lab2[:, :-1]
            ax.imshow(np.ma.masked_where(~edge | (lab2 == 0), lab2 % 20), cmap="tab20",
                      vmin=0, vmax=19, origin="lower", aspect=aspect, interpolation="nearest")
            if organ == "liver" and (lab2 == LIVER_LABEL).any():
                ax.contour((lab2 == LIVER_LABEL).astype(float), levels=[0.5], colors="red",
                           linewidths=1.2)
            near = np.abs(vox[:, axis] - centre[axis]) <= 2.0 if len(vox) else np.zeros(0, bool)
            if near.any():
                ax.plot(vox[near, other[0]], vox[near, other[1]], "x", color="yellow", ms=6, mew=1.5)
            ax.set_title(f"{row['subject']} {title}" + (
                "\nembedded dataset (not the paper's data)" if c == 1 else ""), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"embedded {organ} dataset (not the paper's data): generated subjects, label "
                 "boundaries, landmarks (x); RAS display (patient right on the right, anterior "
                 "and superior up)", fontsize=9)
    return save_figure(fig, out_png)


def make_figures(spec, metrics_dir, reg_root, subjects_csv, out_dir, models_dir=None,
                 prealigned_csv=None, liver_label="5", axis=2) -> dict:
    """Write the study's figures; returns ``{"written": [paths], "notes": [...]}``."""
    from vtn.report.tables import fmt, load_metrics

    organ = spec["organ"]
    t = spec.get("tables", {})
    metrics, _, notes = load_metrics(metrics_dir, list(spec["methods"]))
    subjects = {r["subject"]: r for r in read_subjects(subjects_csv)}
    pre = {r["subject"]: r for r in read_subjects(prealigned_csv)} if prealigned_csv else None
    written = []

    main = spec.get("main") if spec.get("main") in metrics else None
    if main is None:
        main = next((n for n in t.get("methods", []) if n in metrics
                     and spec["methods"].get(n, {}).get("kind") == "vtn"), None)
    main = main or next(iter(metrics), None)

    inv = [n for n in t.get("methods", []) if spec["methods"].get(n, {}).get("inv")]
    groups = [("figure6_methods" if organ == "liver" else "figure8_methods",
               list(t.get("methods", []))),
              ("figure7_cascades" if organ == "liver" else "figure8b_cascades",
               inv + [n for n in reversed(t.get("cascades", [])) if n not in inv])]
    if main is not None:
        f, m = median_pair(metrics[main])
        fs, ms = subjects.get(f), subjects.get(m)
        if fs is None or ms is None:
            raise InputError(f"{subjects_csv}: pair {f}/{m} of {main} not in the subject table")
        fimg, _ = load_volume(fs["image"])
        mimg, _ = load_volume(ms["image"])
        fseg = load_volume(fs["seg"], dtype=None)[0] if fs["seg"] else None
        fpts = dict(zip(*load_landmarks(fs["landmarks"]))) if fs["landmarks"] else {}
        mpts = dict(zip(*load_landmarks(ms["landmarks"]))) if ms["landmarks"] else {}
        names = list(spec.get("figures", {}).get("landmarks") or list(fpts)[:3])
        names = [n for n in names if n in fpts][:3]
        if not names:  # no landmarks: three sections through the centre
            c = (np.asarray(fimg.shape) - 1) / 2.0
            for q, frac in zip(("z25%", "z50%", "z75%"), (0.25, 0.5, 0.75)):
                p = c.copy()
                p[axis] = frac * (fimg.shape[axis] - 1)
                fpts[q] = p
            names = ["z25%", "z50%", "z75%"]
        mask_fn = (lambda s: _mask(s, organ, liver_label))
        fixed = {"image": fimg, "mask": _mask(fseg, organ, liver_label), "pts": fpts,
                 "mask_fn": mask_fn}
        moving = {"image": mimg, "pts": mpts}
        for stem, meths in groups:
            cols = []
            for n in dict.fromkeys(meths):
                if n not in metrics:
                    continue
                entry = spec["methods"].get(n, {})
                reg = Path(reg_root) / n
                corr, mp = None, mpts
                if entry.get("star"):
                    if pre is None:
                        notes.append(f"{stem}: {n} is pre-aligned but --prealigned-subjects "
                                     f"was not given - left out")
                        continue
                    rec = json.loads((Path(prealigned_csv).parent / f"{f}_prep.json").read_text())
                    corr = np.asarray(rec["atlas_to_prep"], dtype=np.float64)
                    mp = (dict(zip(*load_landmarks(pre[m]["landmarks"])))
                          if pre.get(m, {}).get("landmarks") else {})
                try:
                    pan = method_panels(n, reg, f, m, fpts, mp, corr)
                except InputError as exc:
                    notes.append(f"{stem}: {n}: {exc} - left out")
                    continue
                row = metrics[n][(metrics[n]["fixed"].astype(str) == f)
                                 & (metrics[n]["moving"].astype(str) == m)]
                lm = float(row["lm_dist_vox"].iloc[0]) if len(row) else float("nan")
                io = float(row["iou"].iloc[0]) if len(row) else float("nan")
                label = (entry.get("display") or n) + ("★" if entry.get("star") else "")
                cols.append((label, pan, fmt(lm, digits=2), fmt(io, digits=4)))
            if not cols:
                notes.append(f"{stem}: no method output for pair {f}/{m} - not drawn")
                continue
            out = Path(out_dir) / f"{stem}.png"
            src = spec.get("data_source") or "data source not stated"
            method_figure(cols, fixed, moving, names, out, axis,
                          title=f"{spec['study']}: fixed {f}, moving {m} (median-IoU pair of "
                                f"{main}). Data: {src[:90]}")
            written.append(out)
        fig1 = _figure1(spec, main, Path(reg_root) / main, f, m, fimg, mimg, Path(out_dir), notes)
        if fig1 is not None:
            written.append(fig1)
    if models_dir is not None:
        models = [n for n, e in spec["methods"].items() if e.get("kind") in {"vtn", "voxelmorph"}]
        out = Path(out_dir) / "training_curves.png"
        if training_curves(models_dir, models, out):
            written.append(out)
        else:
            notes.append("training curves: no train_log.csv found")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "notes.txt").write_text("\n".join(notes) + ("\n" if notes else ""))
    return {"written": written, "notes": notes}


def _figure1(spec, main, reg, f, m, fimg, mimg, out_dir, notes):
    """Figure 1 (3-D renderings) of the main method's median pair, or ``None`` with a note."""
    from vtn.io import load_disp_l2r
    from vtn.report.render import figure1_rendering

    entry = spec["methods"].get(main, {})
    if entry.get("star"):
        notes.append(f"figure1_rendering: {main} registers pre-aligned images - not drawn")
        return None
    disp_p, warped_p = reg / f"disp_{f}_{m}.nii.gz", reg / f"warped_{f}_{m}.nii.gz"
    if not (disp_p.exists() and warped_p.exists()):
        notes.append(f"figure1_rendering: {disp_p.name} or {warped_p.name} missing in {reg} - "
                     "not drawn")
        return None
    flow, _ = load_disp_l2r(disp_p)
    warped, _ = load_volume(warped_p)
    label = entry.get("display") or main
    src = spec.get("data_source") or "data source not stated"
    return figure1_rendering(fimg, mimg, flow, warped, out_dir / "figure1_rendering.png",
                             title=f"{spec['study']}: {label}, fixed {f}, moving {m} (Figure 1 "
                                   f"style: 3-D renderings)\nData: {src[:150]}")


def _parser():
    p = argparse.ArgumentParser(prog="vtn figures", description="the paper's figures")
    p.add_argument("--spec", required=True)
    p.add_argument("--metrics", required=True, nargs="+",
                   help="<method>.csv files (or their folder)")
    p.add_argument("--reg-root", required=True, help="results/registrations/<study>")
    p.add_argument("--subjects", required=True, help="prep subjects.csv of the test set")
    p.add_argument("--prealigned-subjects", default=None,
                   help="atlas-aligned subjects.csv (for the star methods)")
    p.add_argument("--models", default=None, help="results/models/<study> (training curves)")
    p.add_argument("--out", required=True)
    p.add_argument("--liver-label", default="5")
    p.add_argument("--axis", type=int, default=2, choices=[0, 1, 2],
                   help="array axis of the section 'height' (default 2)")
    return p


def cli(argv=None) -> int:
    from vtn.report.tables import load_spec

    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        res = make_figures(spec, args.metrics, args.reg_root, args.subjects, args.out,
                           args.models, args.prealigned_subjects, args.liver_label, args.axis)
    except InputError as exc:
        print(f"vtn figures: {exc}", file=sys.stderr)
        return 1
    for n in res["notes"]:
        print(f"vtn figures: note: {n}", file=sys.stderr)
    for p in res["written"]:
        print(f"vtn figures: wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
