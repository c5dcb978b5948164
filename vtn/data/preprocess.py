"""Preprocessing as the paper describes it: crop around the organ, resample to ``S^3``, normalise
intensities, match histograms, carry labels and landmarks exactly.

Pipeline per subject (``preprocess_subject``):

1. read the raw image (any orientation) and reorient it to the closest canonical (RAS+) voxel
   order with :mod:`nibabel.orientations` — a pure permutation/flip of the array, recorded as the
   4x4 ``canonical_to_raw`` voxel mapping;
2. find the organ: liver -> the liver label of the segmentation (:func:`vtn.labels.organ_mask`:
   value ``--liver-label``, or ``any`` for LiTS/SLIVER/reference-HDF5 masks where liver = 1,
   tumour = 2, or 255), or,
   when the subject has no segmentation, the reference code's threshold-based liver finder
   (:func:`auto_liver_mask`, a faithful port of ``auto_liver_mask`` in ``demo.py``); brain ->
   ``labels > 0`` when a label map exists, otherwise an Otsu foreground (SimpleITK) keeping the
   largest 6-connected component;
3. bounding box of that mask plus a margin of ``max(int(0.1 * box size), 5)`` voxels per axis,
   clipped to the image (exactly ``crop_mask`` of the reference ``demo.py``);
4. resample the box to ``S^3`` (anisotropic), trilinear for the image, nearest for labels.
   **Convention (align corners):** prep voxel ``x`` (0..S-1) maps to canonical voxel
   ``c = lo + x * (hi - lo) / (S - 1)`` with ``lo``/``hi`` the first/last voxel of the box
   (inclusive), i.e. prep corner voxel centres coincide with the box corner voxel centres — the
   mapping of ``scipy.ndimage.zoom`` that the reference code uses. The full mapping to the
   *original* raw file's voxel indices is ``prep_to_raw = canonical_to_raw @ prep_to_canonical``
   and the prep NIfTI affine is ``raw_affine @ prep_to_raw`` (world coordinates are preserved);
5. intensities: liver CT window W = 290, L = 120 (HU -25..265) scaled to [0, 1] (reference
   ``wl_normalization``); brain robust min-max (0.5 / 99.5 percentiles inside the brain mask) to
   [0, 1];
6. histogram matching to the reference image (preprocessed through steps 1-5 itself) with
   SimpleITK's ``HistogramMatchingImageFilter`` (256 histogram levels, 15 match points,
   threshold at mean intensity, i.e. only the foreground above the mean is matched — the
   "foreground colour distribution" of the paper), result clipped to [0, 1];
7. landmarks ``name,x,y,z`` (RAS mm) -> raw voxel ``inv(raw_affine)`` -> prep voxel
   ``inv(prep_to_raw)``, written as ``name,i,j,k``. A landmark outside the raw image is an error;
   one inside the image but outside the organ crop box is dropped by default (listed in
   ``<sid>_prep.json`` ``landmarks_dropped``) or an error with ``--landmarks-outside-crop error``.

Bad input raises :class:`vtn.io.InputError` naming the file and the problem. With
``keep_going`` the other subjects still complete; failures are listed in ``prep/failed.csv``
(``subject,file,error``) and left out of ``prep/subjects.csv``. Exit status of the command: 1 on
the first failure without ``--keep-going``; with ``--keep-going`` 0 as long as at least one
subject succeeded (1 if none did). Every output file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vtn.io import (InputError, atomic_write, atomic_write_json, load_raw_landmarks, load_volume, read_pairs,
                    read_subjects, save_landmarks, save_volume)
from vtn.labels import check_liver_label, describe_mask, organ_mask

__all__ = [
    "LIVER_WINDOWS",
    "canonical_mapping",
    "auto_liver_mask",
    "brain_foreground_mask",
    "crop_box",
    "prep_to_box_matrix",
    "resample_box",
    "liver_window",
    "robust_minmax",
    "match_histogram",
    "matched_image",
    "world_to_voxel",
    "load_raw_subject",
    "preprocess_subject",
    "preprocess_dataset",
    "make_pairs",
    "cli",
]

#: HU windows tried in turn by the reference liver finder (``demo.py``: ``auto_liver_mask``).
LIVER_WINDOWS = [(80, 140), (110, 160), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50),
                 (20, 40), (10, 30), (140, 180), (160, 200)]

HIST_LEVELS = 256
HIST_MATCH_POINTS = 15
HIST_THRESHOLD_AT_MEAN = True


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------

def canonical_mapping(affine, shape):
    """Closest-canonical (RAS+) reorientation of a voxel grid.

    Args:
        affine: raw voxel -> RAS mm 4x4.
        shape: raw array shape (3,).

    Returns:
        ``(ornt, canonical_to_raw)``: the nibabel orientation array (for
        :func:`nibabel.orientations.apply_orientation`) and the 4x4 matrix mapping canonical voxel
        indices to raw voxel indices (a signed permutation plus integer offsets).
    """
    import nibabel.orientations as nio

    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    canon_to_raw = nio.inv_ornt_aff(ornt, tuple(int(s) for s in shape))
    return ornt, np.asarray(canon_to_raw, dtype=np.float64)


def _largest_component(mask):
    from scipy import ndimage

    lab, n = ndimage.label(mask)  # default structure = 6-connectivity in 3-D
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _binary_median_slices(bw, radius):
    """Slice-wise (axis 2) median filter of a boolean volume with a disk of ``radius`` voxels.

    For a binary image the median over the disk is a majority vote, computed here with an FFT
    convolution (edge padding as ``skimage.filters.median``'s ``mode='nearest'``).
    """
    from scipy.signal import fftconvolve

    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = ((xx ** 2 + yy ** 2) <= r * r).astype(np.float64)  # == skimage.morphology.disk(r)
    n = disk.sum()
    out = np.empty_like(bw, dtype=bool)
    step = 16
    for z0 in range(0, bw.shape[2], step):
        slab = bw[:, :, z0:z0 + step].astype(np.float64)
        pad = np.pad(slab, ((r, r), (r, r), (0, 0)), mode="edge")
        cnt = fftconvolve(pad, disk[:, :, None], mode="valid", axes=(0, 1))
        out[:, :, z0:z0 + step] = cnt > n / 2.0
    return out


def auto_liver_mask(volume_hu, windows=LIVER_WINDOWS, sigma=2.0, median_radius=35):
    """Threshold-based rough liver mask of a CT volume (port of the reference ``demo.py``).

    Gaussian smoothing (``sigma`` voxels), then for each HU window ``(lo, hi)`` in turn: the
    in-window voxels, a slice-wise (axial, array axis 2 of a canonical volume) binary median
    filter with a disk of ``median_radius`` voxels, and the largest 6-connected component; the
    window whose largest component is largest wins.

    Args:
        volume_hu: ``(X, Y, Z)`` CT in HU, canonical (RAS+) orientation.

    Returns:
        boolean mask ``(X, Y, Z)``.

    Raises:
        ValueError: no window yields any voxel.
    """
    from scipy import ndimage

    vol = ndimage.gaussian_filter(np.asarray(volume_hu, dtype=np.float32), sigma, mode="nearest",
                                  truncate=4.0)
    best = None
    max_area = 0
    for lo, hi in windows:
        bw = (vol >= lo) & (vol <= hi)
        if bw.sum() <= max_area:
            continue
        bw = _binary_median_slices(bw, median_radius)
        if bw.sum() <= max_area:
            continue
        comp = _largest_component(bw)
        area = int(comp.sum())
        if area <= max_area:
            continue
        max_area, best = area, comp
    if best is None:
        raise ValueError("the threshold-based liver finder found no liver-like region")
    return best


def brain_foreground_mask(volume):
    """Brain foreground: Otsu threshold (SimpleITK), largest 6-connected component, holes filled.

    Args:
        volume: ``(X, Y, Z)`` MR intensities.

    Returns:
        boolean mask ``(X, Y, Z)``.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    img = sitk.GetImageFromArray(np.asarray(volume, dtype=np.float32))
    # OtsuThreshold marks voxels <= threshold with insideValue: ask for 0 inside, 1 outside.
    fg = sitk.GetArrayFromImage(sitk.OtsuThreshold(img, 0, 1)).astype(bool)
    if not fg.any():
        raise ValueError("Otsu thresholding found no foreground")
    return ndimage.binary_fill_holes(_largest_component(fg))


def crop_box(mask):
    """Bounding box of a mask plus the reference margin, clipped to the array.

    Margin per axis ``max(int(0.1 * (hi - lo + 1)), 5)`` voxels (``crop_mask`` in ``demo.py``).

    Args:
        mask: boolean ``(X, Y, Z)``, not empty.

    Returns:
        ``(lo, hi)`` int arrays (3,), first and last voxel of the box, **inclusive**.
    """
    idx = np.array(np.nonzero(mask))
    lo, hi = idx.min(axis=1), idx.max(axis=1)
    pad = np.maximum((0.1 * (hi - lo + 1)).astype(np.int64), 5)
    lo = np.maximum(lo - pad, 0)
    hi = np.minimum(hi + pad, np.asarray(mask.shape) - 1)
    return lo.astype(np.int64), hi.astype(np.int64)


def prep_to_box_matrix(lo, hi, size):
    """4x4 mapping prep voxel ``x`` (0..size-1) -> source voxel ``lo + x * (hi - lo) / (size - 1)``
    (align-corners convention)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag((hi - lo) / (size - 1))
    m[:3, 3] = lo
    return m


def resample_box(array, prep_to_src, size, order):
    """Sample ``array`` on the ``size^3`` prep grid through an axis-aligned 4x4 mapping.

    Args:
        array: ``(X, Y, Z)`` source array.
        prep_to_src: 4x4, prep voxel -> source voxel (diagonal linear part).
        size: output edge length ``S``.
        order: 1 trilinear (images), 0 nearest (labels).

    Returns:
        ``(S, S, S)`` array (float32 for order 1, the input dtype for order 0).
    """
    from scipy import ndimage

    m = np.asarray(prep_to_src, dtype=np.float64)
    if not np.allclose(m[:3, :3], np.diag(np.diag(m[:3, :3]))):
        raise ValueError("resample_box expects an axis-aligned mapping")
    src = np.asarray(array, dtype=np.float32 if order else array.dtype)
    return ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3],
                                    output_shape=(size, size, size), order=order, mode="nearest")


# --------------------------------------------------------------------------------------------
# intensities
# --------------------------------------------------------------------------------------------

def liver_window(volume_hu, width=290.0, level=120.0):
    """CT window ``[level - width/2, level + width/2]`` (HU -25..265) scaled to [0, 1], clipped."""
    lo = level - width / 2.0
    return np.clip((np.asarray(volume_hu, dtype=np.float32) - lo) / width, 0.0, 1.0).astype(np.float32)


def robust_minmax(volume, mask, low_pct=0.5, high_pct=99.5):
    """Scale to [0, 1] between the ``low_pct``/``high_pct`` percentiles inside ``mask``, clipped.

    Returns:
        ``(scaled (X, Y, Z) float32, (vlo, vhi))``.
    """
    vals = np.asarray(volume, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    if vals.size == 0:
        raise ValueError("empty intensity mask")
    vlo, vhi = np.percentile(vals, [low_pct, high_pct])
    if not vhi > vlo:
        raise ValueError("constant intensities inside the brain mask")
    out = np.clip((np.asarray(volume, dtype=np.float64) - vlo) / (vhi - vlo), 0.0, 1.0)
    return out.astype(np.float32), (float(vlo), float(vhi))


def match_histogram(image, reference, levels=HIST_LEVELS, match_points=HIST_MATCH_POINTS,
                    threshold_at_mean=HIST_THRESHOLD_AT_MEAN):
    """SimpleITK ``HistogramMatchingImageFilter`` of ``image`` onto ``reference`` (no clipping).

    Args:
        image: ``(X, Y, Z)`` float array to adjust.
        reference: ``(X', Y', Z')`` float array whose histogram is the target.

    Returns:
        ``(X, Y, Z)`` float32, the filter output unchanged.
    """
    import SimpleITK as sitk

    f = sitk.HistogramMatchingImageFilter()
    f.SetNumberOfHistogramLevels(int(levels))
    f.SetNumberOfMatchPoints(int(match_points))
    f.SetThresholdAtMeanIntensity(bool(threshold_at_mean))
    src = sitk.GetImageFromArray(np.asarray(image, dtype=np.float32))
    ref = sitk.GetImageFromArray(np.asarray(reference, dtype=np.float32))
    return sitk.GetArrayFromImage(f.Execute(src, ref)).astype(np.float32)


def matched_image(image, reference, levels=HIST_LEVELS, match_points=HIST_MATCH_POINTS,
                  threshold_at_mean=HIST_THRESHOLD_AT_MEAN):
    """Step 6 as written to ``prep/``: :func:`match_histogram` clipped to [0, 1], float32."""
    out = match_histogram(image, reference, levels, match_points, threshold_at_mean)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# landmarks
# --------------------------------------------------------------------------------------------


def world_to_voxel(points_mm, affine):
    """RAS mm ``(N, 3)`` -> continuous voxel indices ``(N, 3)`` through ``inv(affine)``."""
    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    hom = np.c_[pts, np.ones(len(pts))]
    return (np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ hom.T).T[:, :3]


def _apply(m, pts):
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    return (np.asarray(m) @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]


def _check_inside(path, names, vox, shape, what):
    tol = 1e-6
    hi = np.asarray(shape, dtype=np.float64) - 1
    bad = ((vox < -tol) | (vox > hi + tol)).any(axis=1)
    if bad.any():
        lst = ", ".join(f"{n} at voxel {np.round(v, 2).tolist()}" for n, v, b in zip(names, vox, bad) if b)
        raise InputError(f"{path}: landmark(s) outside {what} of shape {tuple(int(s) for s in shape)}: {lst}")


# --------------------------------------------------------------------------------------------
# one subject
# --------------------------------------------------------------------------------------------

def _organ_mask(seg, organ, liver_label, seg_path):
    mask, what = organ_mask(seg, organ, liver_label), describe_mask(organ, liver_label)
    if not mask.any():
        raise InputError(f"{seg_path}: segmentation is empty: {what} absent")
    return mask, what


def load_raw_subject(image, seg=None):
    """Read a raw image and optional segmentation, checking that they are usable.

    Returns:
        ``(image (X, Y, Z) float32, affine, seg (X, Y, Z) int32 or None)``.

    Raises:
        InputError: unreadable/truncated file, NaN/Inf voxels, not 3-D, seg on another grid,
            non-integer labels.
    """
    img, aff = load_volume(image)
    segarr = None
    if seg is not None:
        s, saff = load_volume(seg, dtype=None)
        if s.shape != img.shape:
            raise InputError(f"{seg}: segmentation grid {s.shape} differs from its image {image} {img.shape}")
        if not np.allclose(saff, aff, atol=1e-3):
            raise InputError(f"{seg}: segmentation affine differs from the affine of its image {image}")
        if np.issubdtype(s.dtype, np.floating):
            if not np.isfinite(s).all():
                raise InputError(f"{seg}: segmentation contains NaN/Inf")
            r = np.rint(s)
            if np.abs(s - r).max() > 1e-3:
                raise InputError(f"{seg}: segmentation has non-integer values")
            s = r
        segarr = s.astype(np.int32)
    return img, aff, segarr


@dataclass
class PrepResult:
    """One preprocessed subject before histogram matching (arrays on the ``S^3`` grid)."""

    image: np.ndarray              # (S, S, S) float32 in [0, 1] (normalised, not yet matched)
    seg: np.ndarray | None         # (S, S, S) int16 labels
    affine: np.ndarray             # prep voxel -> RAS mm
    landmarks: tuple | None        # (names, (N, 3) prep voxel indices)
    meta: dict = field(default_factory=dict)


def preprocess_subject(image, organ, size, seg=None, landmarks=None, liver_label="5",
                       median_radius=35, seg_output="full", outside_crop="drop"):
    """Steps 1-5 and 7 of the module docstring for one subject (histogram matching is separate).

    Args:
        image: raw image path (NIfTI/Analyze readable by nibabel).
        organ: ``"liver"`` or ``"brain"``.
        size: output edge length ``S``.
        seg: optional raw label map path (same grid as the image).
        landmarks: optional raw landmark CSV (``name,x,y,z`` RAS mm).
        liver_label: liver label value (str of int) or ``"any"`` (:mod:`vtn.labels`).
        median_radius: disk radius (voxels) of the threshold liver finder (no-mask case).
        seg_output: ``"full"`` keeps the whole label map, ``"organ"`` writes 0/1 organ masks.
        outside_crop: a landmark inside the raw image but outside the organ crop box (e.g. a
            kidney landmark below the liver box) is dropped (``"drop"``, listed in
            ``meta["landmarks_dropped"]``) or an :class:`InputError` (``"error"``). A landmark
            outside the raw image is always an error.

    Returns:
        :class:`PrepResult`.
    """
    if organ not in ("liver", "brain"):
        raise ValueError(f"organ must be liver or brain, got {organ!r}")
    liver_label = check_liver_label(liver_label)
    import nibabel.orientations as nio

    img, aff, segarr = load_raw_subject(image, seg)
    if min(img.shape) < 2:
        raise InputError(f"{image}: image of shape {img.shape} is too small to resample")
    ornt, canon_to_raw = canonical_mapping(aff, img.shape)
    cimg = nio.apply_orientation(img, ornt)
    cseg = nio.apply_orientation(segarr, ornt) if segarr is not None else None

    if cseg is not None:
        mask, box_source = _organ_mask(cseg, organ, liver_label, seg)
    elif organ == "liver":
        try:
            mask = auto_liver_mask(cimg, median_radius=median_radius)
        except ValueError as exc:
            raise InputError(f"{image}: {exc}") from exc
        box_source = "threshold liver finder"
    else:
        try:
            mask = brain_foreground_mask(cimg)
        except ValueError as exc:
            raise InputError(f"{image}: {exc}") from exc
        box_source = "otsu foreground"
    lo, hi = crop_box(mask)
    if (hi - lo < 1).any():
        raise InputError(f"{seg or image}: organ bounding box {lo.tolist()}..{hi.tolist()} is degenerate")

    prep_to_canon = prep_to_box_matrix(lo, hi, size)
    prep_to_raw = canon_to_raw @ prep_to_canon
    prep_aff = aff @ prep_to_raw

    raw = resample_box(cimg, prep_to_canon, size, order=1)
    if organ == "liver":
        norm = liver_window(raw)
        intensity = {"method": "ct_window", "width": 290.0, "level": 120.0, "hu_range": [-25.0, 265.0]}
    else:
        pmask = resample_box(mask.astype(np.uint8), prep_to_canon, size, order=0) > 0
        if not pmask.any():
            pmask = np.ones_like(raw, dtype=bool)
        try:
            norm, (vlo, vhi) = robust_minmax(raw, pmask)
        except ValueError as exc:
            raise InputError(f"{image}: {exc}") from exc
        intensity = {"method": "robust_minmax", "low_pct": 0.5, "high_pct": 99.5, "low": vlo, "high": vhi}

    pseg = None
    if cseg is not None:
        src = mask.astype(np.int16) if seg_output == "organ" else cseg.astype(np.int16)
        pseg = resample_box(src, prep_to_canon, size, order=0).astype(np.int16)

    lms = None
    if landmarks is not None:
        names, mm = load_raw_landmarks(landmarks)
        rvox = world_to_voxel(mm, aff)
        _check_inside(landmarks, names, rvox, img.shape, f"the image {image}")
        pvox = _apply(np.linalg.inv(prep_to_raw), rvox)
        if outside_crop == "error":
            _check_inside(landmarks, names, pvox, (size,) * 3, "the organ crop box")
        inside = ((pvox >= -1e-6) & (pvox <= size - 1 + 1e-6)).all(axis=1)
        dropped = [n for n, ok in zip(names, inside) if not ok]
        lms = ([n for n, ok in zip(names, inside) if ok], pvox[inside])

    meta = {
        "landmarks_dropped": dropped if landmarks is not None else [],
        "organ": organ,
        "size": int(size),
        "raw_image": str(Path(image).resolve()),
        "raw_seg": str(Path(seg).resolve()) if seg is not None else None,
        "raw_landmarks": str(Path(landmarks).resolve()) if landmarks is not None else None,
        "raw_shape": [int(s) for s in img.shape],
        "raw_affine": aff.tolist(),
        "canonical_to_raw": canon_to_raw.tolist(),
        "crop_box": {"lo": lo.tolist(), "hi": hi.tolist(),
                     "space": "canonical (RAS+) voxel indices, inclusive"},
        "box_source": box_source,
        "median_radius": int(median_radius),
        "liver_label": liver_label if organ == "liver" else None,
        "seg_output": seg_output,
        "prep_to_raw": prep_to_raw.tolist(),
        "resampling": "align_corners: prep voxel x -> canonical voxel lo + x*(hi-lo)/(S-1); "
                      "image trilinear, labels nearest (scipy.ndimage.affine_transform)",
        "intensity": intensity,
    }
    return PrepResult(image=norm, seg=pseg, affine=prep_aff, landmarks=lms, meta=meta)


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------

def _atomic_csv(df, path):
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False)


def make_pairs(subjects, max_pairs=None, seed=0, listed=None):
    """The ordered test pairs ``(fixed, moving)`` of a dataset: all pairs ``fixed != moving`` in
    table order, or the ``listed`` ones (a Learn2Reg task's ``registration_val`` pairs, in
    their order) whose two subjects are both in ``subjects``; with ``max_pairs`` a deterministic
    random subset of them (``numpy.random.default_rng(seed)``), kept in order."""
    if listed is None:
        pairs = [(f, m) for f in subjects for m in subjects if f != m]
    else:
        have = set(subjects)
        pairs = [(f, m) for f, m in listed if f in have and m in have]
    if max_pairs is not None and 0 <= max_pairs < len(pairs):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(pairs), size=int(max_pairs), replace=False))
        pairs = [pairs[i] for i in keep]
    return pairs


def _error_file(exc, row):
    msg = str(exc)
    for key in ("image", "seg", "landmarks"):
        p = row.get(key)
        if p is not None and msg.startswith(str(p)):
            return str(p)
    return str(row.get("image"))


def preprocess_dataset(subjects, organ, size, reference, out, reference_seg=None, liver_label="5",
                       keep_going=False, pairs_out=None, max_pairs=None, seed=0,
                       median_radius=35, seg_output="full", outside_crop="drop", pairs_from=None,
                       log=print):
    """Preprocess every subject of a raw ``subjects.csv`` into ``out``.

    Args:
        subjects: raw ``subjects.csv``.
        organ: ``"liver"`` or ``"brain"``.
        size: edge length ``S``.
        reference: raw reference image for histogram matching (preprocessed the same way).
        out: output folder.
        reference_seg: optional label map of the reference (for its crop).
        keep_going: continue after a failed subject (listed in ``failed.csv``).
        pairs_out: optional ``pairs.csv`` of ordered pairs of the successful subjects.
        pairs_from: optional pair list (``fixed,moving[,split]``, e.g. the ``--pairs-out`` of
            ``vtn import --layout learn2reg``): ``pairs_out`` gets these pairs instead of all
            ordered pairs (:func:`make_pairs`); a listed subject missing from ``subjects`` is an
            error, pairs of failed subjects (``keep_going``) are left out and logged.

    Returns:
        dict with ``done`` (subject ids) and ``failed`` (list of ``(subject, file, error)``).

    Raises:
        InputError: a bad reference, or the first bad subject without ``keep_going``.
    """
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_subjects(subjects)
    listed = None
    if pairs_from is not None:
        listed = read_pairs(pairs_from)
        known = {r["subject"] for r in rows}
        for f, m in listed:
            for sid in (f, m):
                if sid not in known:
                    raise InputError(f"{pairs_from}: pair {f} <- {m} names subject {sid!r}, "
                                     f"which {subjects} does not list")
        if not listed:
            raise InputError(f"{pairs_from}: no pairs listed")
    t0 = time.perf_counter()
    ref = preprocess_subject(reference, organ, size, seg=reference_seg, liver_label=liver_label,
                             median_radius=median_radius)
    ref_img = ref.image
    log(f"reference {reference} preprocessed in {time.perf_counter() - t0:.1f} s")
    hist = {"filter": "SimpleITK.HistogramMatchingImageFilter", "reference": str(Path(reference).resolve()),
            "reference_seg": str(Path(reference_seg).resolve()) if reference_seg else None,
            "histogram_levels": HIST_LEVELS, "match_points": HIST_MATCH_POINTS,
            "threshold_at_mean_intensity": HIST_THRESHOLD_AT_MEAN, "clip": [0.0, 1.0]}

    done, table, failed = [], [], []
    for row in rows:
        sid = row["subject"]
        t1 = time.perf_counter()
        try:
            res = preprocess_subject(row["image"], organ, size, seg=row["seg"], landmarks=row["landmarks"],
                                     liver_label=liver_label, median_radius=median_radius,
                                     seg_output=seg_output, outside_crop=outside_crop)
            matched = matched_image(res.image, ref_img)
            save_volume(out / f"{sid}_image.nii.gz", matched, res.affine)
            rec = {"subject": sid, "image": f"{sid}_image.nii.gz", "seg": "", "landmarks": ""}
            if res.seg is not None:
                save_volume(out / f"{sid}_seg.nii.gz", res.seg.astype(np.int16), res.affine)
                rec["seg"] = f"{sid}_seg.nii.gz"
            if res.meta["landmarks_dropped"]:
                log(f"{sid}: landmarks outside the crop box dropped: {', '.join(res.meta['landmarks_dropped'])}")
            if res.landmarks is not None:
                save_landmarks(out / f"{sid}_landmarks.csv", *res.landmarks)
                rec["landmarks"] = f"{sid}_landmarks.csv"
            meta = dict(res.meta, subject=sid, histogram_matching=hist,
                        seconds=time.perf_counter() - t1)
            atomic_write_json(out / f"{sid}_prep.json", meta)
        except InputError as exc:
            if not keep_going:
                raise
            failed.append((sid, _error_file(exc, row), str(exc)))
            log(f"FAILED {sid}: {exc}")
            continue
        table.append(rec)
        done.append(sid)
        log(f"{sid}: {time.perf_counter() - t1:.1f} s")

    _atomic_csv(pd.DataFrame(table, columns=["subject", "image", "seg", "landmarks"]), out / "subjects.csv")
    if keep_going:
        _atomic_csv(pd.DataFrame(failed, columns=["subject", "file", "error"]), out / "failed.csv")
    if pairs_out is not None:
        pairs = make_pairs(done, max_pairs=max_pairs, seed=seed, listed=listed)
        if listed is not None:
            lost = [p for p in listed if p[0] not in done or p[1] not in done]
            if lost:
                log(f"{len(lost)} listed pair(s) of failed subjects left out: "
                    + ", ".join(f"{f} <- {m}" for f, m in lost))
        _atomic_csv(pd.DataFrame(pairs, columns=["fixed", "moving"]), pairs_out)
    return {"done": done, "failed": failed}


def cli(argv=None) -> int:
    """``vtn preprocess`` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="vtn preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", required=True, help="raw subjects.csv")
    p.add_argument("--organ", required=True, choices=["liver", "brain"])
    p.add_argument("--size", type=int, default=128, help="edge length S of the S^3 output grid")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference", help="raw reference image for histogram matching")
    ref.add_argument("--reference-subjects", metavar="CSV",
                     help="raw subjects.csv whose first subject (image and seg) is the reference")
    p.add_argument("--reference-seg", default=None, help="label map of the reference (for its crop)")
    p.add_argument("--out", required=True, help="output folder prep/")
    p.add_argument("--pairs-out", default=None, help="write ordered pairs fixed,moving here")
    p.add_argument("--max-pairs", type=int, default=None,
                   help="random subset of at most N pairs (0 or absent: all pairs)")
    p.add_argument("--pairs-from", default=None, metavar="CSV",
                   help="take the pairs from this list (fixed,moving[,split], e.g. a Learn2Reg "
                        "task's registration_val pairs from vtn import --pairs-out) instead of "
                        "all ordered pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair subset")
    p.add_argument("--liver-label", default="5",
                   help="liver label value (TotalSegmentator: 5) or 'any' (LiTS/SLIVER/HDF5 masks)")
    p.add_argument("--seg-output", choices=["full", "organ"], default="full",
                   help="full label map (default) or a 0/1 organ mask")
    p.add_argument("--median-radius", type=int, default=35,
                   help="disk radius (voxels) of the threshold liver finder (no segmentation)")
    p.add_argument("--landmarks-outside-crop", choices=["drop", "error"], default="drop",
                   help="landmarks inside the image but outside the organ crop box: drop (listed in "
                        "<sid>_prep.json 'landmarks_dropped') or fail")
    p.add_argument("--keep-going", action="store_true",
                   help="continue after a bad subject; failures go to OUT/failed.csv, exit 0 if any succeeded")
    a = p.parse_args(argv)
    if a.size < 2:
        p.error("--size must be >= 2")
    if not a.max_pairs:
        a.max_pairs = None
    try:
        if a.reference_subjects:
            first = read_subjects(a.reference_subjects)[0]
            a.reference = str(first["image"])
            if a.reference_seg is None and first["seg"] is not None:
                a.reference_seg = str(first["seg"])
        res = preprocess_dataset(a.subjects, a.organ, a.size, a.reference, a.out,
                                 reference_seg=a.reference_seg, liver_label=a.liver_label,
                                 keep_going=a.keep_going, pairs_out=a.pairs_out, max_pairs=a.max_pairs,
                                 seed=a.seed, median_radius=a.median_radius, seg_output=a.seg_output,
                                 outside_crop=a.landmarks_outside_crop, pairs_from=a.pairs_from,
                                 log=lambda s: print(s, file=sys.stderr))
    except (InputError, ValueError) as exc:
        print(f"vtn preprocess: error: {exc}", file=sys.stderr)
        return 1
    if res["failed"]:
        print(f"vtn preprocess: {len(res['failed'])} subject(s) failed, see {Path(a.out) / 'failed.csv'}",
              file=sys.stderr)
    return 0 if res["done"] or not res["failed"] else 1
