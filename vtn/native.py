"""Registration results in the original image space ("native space").

Every method registers on the model grid (``S^3``, ``disp_<f>_<m>.nii.gz`` in model voxels);
the subjects' voxel maps ``G`` (model voxel -> original voxel: ``prep_to_raw`` of
``<sid>_prep.json``, times ``atlas_to_prep`` after atlas pre-alignment) carry that result back
to the original scans. For every voxel ``v`` of the original fixed scan (one implementation,
:func:`native_map`, used for the dense grid and for landmarks):

    x = G_f^-1 v                               model voxel of the fixed image
    u = flow(x)                                inside the model grid [0, S-1]^3 (trilinear, the
                                               interpolation of the network's own warp)
      = W (x - c) + b,  c = (S - 1) / 2        outside, when the method has an affine part
                                               (VTN cascades starting with ``A``; paper eq. 11)
      = 0                                      outside otherwise: the two crop boxes are mapped
                                               onto each other linearly ("identity" flow)
    w = G_m (x + u)                            voxel of the original moving scan

Written by :func:`write_native` (``<stem>`` = ``<fixed>_<moving>``), all on the fixed scan's
grid with its affine:

* ``warp_<stem>.nii.gz`` -- ANTs/ITK displacement transform: ``A_m w - A_f v`` in LPS mm, 5-D
  NIfTI, intent 1007 (:func:`vtn.io.save_itk_displacement`). ``antsApplyTransforms -r FIXED
  -i MOVING -t warp`` and SimpleITK's ``DisplacementFieldTransform`` apply it to the original
  moving scan.
* ``disp_<stem>.nii.gz`` -- Learn2Reg displacement ``w - v``: moving voxel index minus fixed
  voxel index, ``(X, Y, Z, 3)`` float32 (the Learn2Reg evaluation samples the moving scan at
  ``v + disp(v)``; on equal grids this is the usual voxel displacement).
* ``warped_<stem>.nii.gz`` -- the original moving scan at ``w``, trilinear, with ITK's boundary
  rule: a point within half a voxel of the moving image is clamped to it, further out the value
  is 0 (what ``antsApplyTransforms`` / ``sitk.Resample`` write with the ITK warp).
* ``warpedseg_<stem>.nii.gz`` -- moving labels, nearest neighbour (``floor(w + 0.5)``, ITK's
  rounding), 0 outside.
* ``landmarks_<stem>.csv`` -- fixed landmarks ``name,x,y,z`` (RAS mm) carried into the moving
  scan: ``A_m w(A_f^-1 p)``, RAS mm.

The dense fields are computed in slabs of the fixed grid (bounded temporary memory); the outputs
themselves are full-resolution float32 arrays (a 512 x 512 x 300 CT: 0.9 GB per displacement
field).

``vtn native-space --reg DIR --subjects CSV --pairs CSV --out DIR`` writes these files for every
pair of any method's registration folder (``disp_<f>_<m>.nii.gz`` on the model grid; the
subjects' ``<sid>_prep.json`` next to ``CSV``). A method with an affine part may leave
``affine_<f>_<m>.json`` (``{"W": 3x3, "b": 3}``, model voxels, paper eq. 11;
:func:`vtn.contract.write_affine_part`, written by ``vtn register`` for cascades with an affine
subnet) next to the displacement; without it the map continues with zero network flow outside
the crop box. ``OUT/native.json`` lists every pair with the rule used outside the crop box, the
share of the fixed scan inside it, seconds and files. Subjects pre-aligned to an atlas (the
star methods; ``atlas_to_prep`` in their records) are mapped through that affine too, so their
files are in the original space like every other method's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vtn.contract import read_affine_part
from vtn.functional import jacobian_det, sample_flow
from vtn.io import (InputError, atomic_write_json, load_disp_l2r, load_raw_landmarks, read_scan, save_disp_l2r,
                    save_itk_displacement, save_raw_landmarks, save_volume)

__all__ = ["NativeGrids", "OUTSIDE_RULES", "NATIVE_CONVENTIONS", "model_to_raw", "native_map", "folding_percent",
           "check_landmarks_inside", "write_native", "write_native_from_prep",
           "native_space_folder", "write_overlay", "cli"]

#: how the map is continued outside the model grid (the fixed crop box), as written to JSON
OUTSIDE_RULES = {
    "affine": "the affine part of the network (W (x - c) + b, paper eq. 11), extended "
              "analytically beyond the crop box",
    "identity": "zero network flow: the fixed crop box mapped linearly onto the moving crop box "
                "(the method has no affine part)",
}


#: what each file of :func:`write_native` holds, as written to JSON summaries
NATIVE_CONVENTIONS = {
    "itk_warp": "5-D NIfTI (X, Y, Z, 1, 3), intent 1007, LPS mm, fixed -> moving (resampling) "
                "convention, original fixed grid",
    "l2r_disp": "(X, Y, Z, 3) float32: moving voxel index minus fixed voxel index, original "
                "fixed grid",
    "warped": "original moving scan resampled on the original fixed grid, trilinear, 0 beyond "
              "half a voxel outside the moving scan (as antsApplyTransforms)",
    "warped_seg": "original moving labels, nearest neighbour, on the original fixed grid",
    "landmarks": "name,x,y,z RAS mm: the fixed landmarks carried into the moving scan",
}


@dataclass
class NativeGrids:
    """Geometry of one pair: original grids and their maps to the model grid.

    Attributes:
        fixed_shape / moving_shape: original array shapes ``(X, Y, Z)``.
        fixed_affine / moving_affine: original voxel -> RAS mm (4x4).
        fixed_map / moving_map: model voxel -> original voxel (4x4, ``G_f`` / ``G_m``).
        model_shape: the model grid ``(S, S, S)``.
    """

    fixed_shape: tuple
    fixed_affine: np.ndarray
    fixed_map: np.ndarray
    moving_shape: tuple
    moving_affine: np.ndarray
    moving_map: np.ndarray
    model_shape: tuple

    def __post_init__(self):
        for name in ("fixed_affine", "fixed_map", "moving_affine", "moving_map"):
            m = np.asarray(getattr(self, name), dtype=np.float64)
            if m.shape != (4, 4) or not np.isfinite(m).all() or abs(np.linalg.det(m[:3, :3])) < 1e-12:
                raise ValueError(f"{name} must be an invertible 4x4 matrix, got {m.tolist()}")
            setattr(self, name, m)
        self.fixed_shape = tuple(int(s) for s in self.fixed_shape)
        self.moving_shape = tuple(int(s) for s in self.moving_shape)
        self.model_shape = tuple(int(s) for s in self.model_shape)


def model_to_raw(meta: dict) -> np.ndarray:
    """``G`` of a ``<sid>_prep.json`` record: model voxel -> original voxel (4x4).

    ``prep_to_raw``, composed with ``atlas_to_prep`` (aligned voxel -> prep voxel) when the
    subject was pre-aligned to an atlas.
    """
    if "prep_to_raw" not in meta:
        raise InputError(f"prep record of {meta.get('subject', '?')} lacks 'prep_to_raw'")
    g = np.asarray(meta["prep_to_raw"], dtype=np.float64)
    if meta.get("atlas_to_prep") is not None:
        g = g @ np.asarray(meta["atlas_to_prep"], dtype=np.float64)
    return g


def _apply(m, pts):
    return pts @ m[:3, :3].T + m[:3, 3]


def native_map(grids: NativeGrids, flow, affine, points):
    """Original fixed voxels -> original moving voxels (module docstring).

    Args:
        grids: :class:`NativeGrids`.
        flow: ``(3, S, S, S)`` model-grid displacement in voxels (tensor or array).
        affine: ``(W (3, 3), b (3,))`` of the method's affine part, or ``None`` (zero flow
            outside the model grid).
        points: ``(N, 3)`` original fixed voxel coordinates.

    Returns:
        ``(w (N, 3) float64 original moving voxels, inside (N,) bool: x within the model grid)``.
    """
    flow = torch.as_tensor(flow).to(dtype=torch.float64, device="cpu")
    if flow.dim() != 4 or flow.shape[0] != 3 or tuple(flow.shape[1:]) != grids.model_shape:
        raise ValueError(f"flow must be (3, {', '.join(map(str, grids.model_shape))}), got "
                         f"{tuple(flow.shape)}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    x = _apply(np.linalg.inv(grids.fixed_map), pts)
    hi = np.asarray(grids.model_shape, dtype=np.float64) - 1
    tol = 1e-9
    inside = ((x >= -tol) & (x <= hi + tol)).all(axis=1)
    u = np.zeros_like(x)
    if inside.any():
        u[inside] = sample_flow(flow, torch.from_numpy(x[inside])).numpy()
    if affine is not None and not inside.all():
        W = np.asarray(affine[0], dtype=np.float64).reshape(3, 3)
        b = np.asarray(affine[1], dtype=np.float64).reshape(3)
        out = ~inside
        u[out] = (x[out] - hi / 2.0) @ W.T + b
    return _apply(grids.moving_map, x + u), inside


def folding_percent(flow) -> float:
    """Share (%) of model-grid voxels with ``det(I + grad u) <= 0`` (forward differences,
    :func:`vtn.functional.jacobian_det`, the paper's definition). The maps to the original grids
    are orientation-preserving in world space, so this is the folding of the native map inside
    the crop box too."""
    det = jacobian_det(torch.as_tensor(flow).double().reshape(1, 3, *flow.shape[-3:]))
    return float((det <= 0).double().mean() * 100.0)


def _sample_linear(image, pts):
    """ITK's linear interpolation of ``image`` at continuous indices; 0 beyond half a voxel."""
    from scipy import ndimage

    n = np.asarray(image.shape, dtype=np.float64)
    ok = ((pts >= -0.5) & (pts < n - 0.5)).all(axis=1)
    out = np.zeros(len(pts), dtype=np.float64)
    if ok.any():
        q = np.clip(pts[ok], 0.0, n - 1)
        out[ok] = ndimage.map_coordinates(image, q.T, order=1, mode="nearest", output=np.float64)
    return out


def _sample_nearest(labels, pts):
    """ITK's nearest neighbour (``floor(p + 0.5)``); 0 beyond half a voxel."""
    n = np.asarray(labels.shape)
    ok = ((pts >= -0.5) & (pts < n - 0.5)).all(axis=1)
    out = np.zeros(len(pts), dtype=labels.dtype)
    if ok.any():
        idx = np.clip(np.floor(pts[ok] + 0.5).astype(np.int64), 0, n - 1)
        out[ok] = labels[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def write_native(out_dir, stem, grids: NativeGrids, flow, moving_image, affine=None,
                 moving_seg=None, fixed_landmarks=None, chunk_voxels: int = 1 << 21,
                 log=None) -> dict:
    """Write the native-space files of one pair (module docstring).

    Args:
        out_dir: output folder (created).
        stem: ``<fixed>_<moving>``, used in every file name.
        grids: the pair's :class:`NativeGrids`.
        flow: ``(3, S, S, S)`` model-grid displacement (voxels).
        moving_image: ``(X_m, Y_m, Z_m)`` original moving scan (its intensities are warped).
        affine: ``(W, b)`` of the method's affine part, or ``None``.
        moving_seg: optional ``(X_m, Y_m, Z_m)`` integer labels of the moving scan.
        fixed_landmarks: optional ``(names, (N, 3) RAS mm)`` in the fixed scan; a point outside
            the fixed image is an :class:`InputError`.
        chunk_voxels: fixed voxels per slab.
        log: ``callable(str)`` for progress lines, or ``None``.

    Returns:
        dict: ``files`` (name -> path), ``outside`` (key of :data:`OUTSIDE_RULES`),
        ``outside_rule``, ``inside_crop_percent`` (fixed voxels mapped through the network's
        flow), ``seconds``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    moving_image = np.asarray(moving_image, dtype=np.float32)
    if moving_image.shape != grids.moving_shape:
        raise ValueError(f"moving image of shape {moving_image.shape}, grids say {grids.moving_shape}")
    if moving_seg is not None and np.asarray(moving_seg).shape != grids.moving_shape:
        raise ValueError(f"moving labels of shape {np.asarray(moving_seg).shape}, grids say "
                         f"{grids.moving_shape}")
    flow = torch.as_tensor(flow).to(dtype=torch.float64, device="cpu")
    X, Y, Z = grids.fixed_shape
    A_f, A_m = grids.fixed_affine, grids.moving_affine
    itk = np.empty((X, Y, Z, 3), np.float32)
    l2r = np.empty((X, Y, Z, 3), np.float32)
    warped = np.empty((X, Y, Z), np.float32)
    seg_out = np.empty((X, Y, Z), np.asarray(moving_seg).dtype) if moving_seg is not None else None
    lps = np.array([-1.0, -1.0, 1.0])
    rows = max(1, int(chunk_voxels) // (Y * Z))
    n_inside = 0
    yz = np.indices((Y, Z)).reshape(2, -1).T.astype(np.float64)
    last_report = -1
    for x0 in range(0, X, rows):
        x1 = min(X, x0 + rows)
        v = np.concatenate([np.c_[np.full(len(yz), float(i)), yz] for i in range(x0, x1)])
        w, inside = native_map(grids, flow, affine, v)
        n_inside += int(inside.sum())
        shp = (x1 - x0, Y, Z)
        l2r[x0:x1] = (w - v).reshape(*shp, 3)
        itk[x0:x1] = ((_apply(A_m, w) - _apply(A_f, v)) * lps).reshape(*shp, 3)
        warped[x0:x1] = _sample_linear(moving_image, w).reshape(shp)
        if seg_out is not None:
            seg_out[x0:x1] = _sample_nearest(np.asarray(moving_seg), w).reshape(shp)
        done = int(10 * x1 / X)
        if log is not None and done != last_report:
            last_report = done
            log(f"  native grid {x1}/{X} slices ({100.0 * x1 / X:.0f} %, "
                f"{time.perf_counter() - t0:.1f} s)")
    files = {"itk_warp": out_dir / f"warp_{stem}.nii.gz",
             "l2r_disp": out_dir / f"disp_{stem}.nii.gz",
             "warped": out_dir / f"warped_{stem}.nii.gz"}
    save_itk_displacement(files["itk_warp"], itk, A_f)
    del itk
    save_disp_l2r(files["l2r_disp"], np.moveaxis(l2r, -1, 0), A_f)
    del l2r
    save_volume(files["warped"], warped, A_f)
    if seg_out is not None:
        files["warped_seg"] = out_dir / f"warpedseg_{stem}.nii.gz"
        save_volume(files["warped_seg"], seg_out, A_f)
    if fixed_landmarks is not None:
        names, mm = fixed_landmarks
        files["landmarks"] = out_dir / f"landmarks_{stem}.csv"
        _write_landmarks(files["landmarks"], names, mm, grids, flow, affine)
    key = "affine" if affine is not None else "identity"
    return {"files": {k: str(p) for k, p in files.items()}, "outside": key,
            "outside_rule": OUTSIDE_RULES[key],
            "inside_crop_percent": 100.0 * n_inside / float(X * Y * Z),
            "seconds": time.perf_counter() - t0}


def check_landmarks_inside(source, names, mm, affine, shape):
    """Fixed voxel coordinates ``(N, 3)`` of RAS mm landmarks; a point more than half a voxel
    outside the fixed image is an :class:`InputError` naming ``source`` and the points."""
    from vtn.data.preprocess import world_to_voxel

    v = world_to_voxel(np.asarray(mm, dtype=np.float64).reshape(-1, 3), affine)
    hi = np.asarray(shape, dtype=np.float64) - 1
    bad = ((v < -0.5) | (v > hi + 0.5)).any(axis=1)
    if bad.any():
        lst = ", ".join(f"{n} at voxel {np.round(p, 1).tolist()}" for n, p, b in zip(names, v, bad) if b)
        raise InputError(f"{source}: landmark(s) outside the fixed image of shape "
                         f"{tuple(int(s) for s in shape)}: {lst} (coordinates must be RAS mm: "
                         f"negate x and y of LPS/ITK points)")
    return v


def _write_landmarks(path, names, mm, grids, flow, affine):
    v = check_landmarks_inside("fixed landmarks", names, mm, grids.fixed_affine, grids.fixed_shape)
    w, _ = native_map(grids, flow, affine, v)
    save_raw_landmarks(path, names, _apply(grids.moving_affine, w))


def write_native_from_prep(out_dir, fixed_meta: dict, moving_meta: dict, disp, affine=None,
                           labels: bool = True, landmarks: bool = True, log=None) -> dict:
    """Native-space files of any method's result on the model grid (``outputs: native_space``).

    Args:
        out_dir: output folder.
        fixed_meta / moving_meta: the two subjects' ``<sid>_prep.json`` records (dicts with
            ``subject``, ``raw_image``, ``raw_affine``, ``prep_to_raw`` [, ``atlas_to_prep``,
            ``raw_seg``, ``raw_landmarks``]).
        disp: the method's ``disp_<f>_<m>.nii.gz`` path, or a ``(3, S, S, S)`` flow.
        affine: ``(W, b)`` of the method's affine part, or ``None``.
        labels: also warp the moving subject's original label map (``raw_seg``) when it has one.
        landmarks: also carry the fixed subject's original landmarks (``raw_landmarks``).

    Returns:
        the dict of :func:`write_native`.
    """
    if isinstance(disp, (str, Path)):
        flow, _ = load_disp_l2r(disp)
    else:
        flow = np.asarray(disp)
    moving, m_aff = read_scan(moving_meta["raw_image"])
    grids = NativeGrids(
        fixed_shape=_raw_shape(fixed_meta), fixed_affine=np.asarray(fixed_meta["raw_affine"]),
        fixed_map=model_to_raw(fixed_meta), moving_shape=moving.shape, moving_affine=m_aff,
        moving_map=model_to_raw(moving_meta), model_shape=flow.shape[1:])
    if not np.allclose(m_aff, np.asarray(moving_meta["raw_affine"]), atol=1e-3):
        raise InputError(f"{moving_meta['raw_image']}: affine differs from its prep record "
                         f"(the raw file changed since preprocessing)")
    seg = None
    if labels and moving_meta.get("raw_seg"):
        seg, _ = read_scan(moving_meta["raw_seg"], labels=True)
    lms = None
    if landmarks and fixed_meta.get("raw_landmarks"):
        lms = load_raw_landmarks(fixed_meta["raw_landmarks"])
    stem = f"{fixed_meta['subject']}_{moving_meta['subject']}"
    return write_native(out_dir, stem, grids, flow, moving, affine=affine, moving_seg=seg,
                        fixed_landmarks=lms, log=log)


def _read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def native_space_folder(reg_dir, subjects_csv, pairs_csv, out_dir, log=print) -> list:
    """:func:`write_native_from_prep` for every pair of a method's registration folder.

    Args:
        reg_dir: the method's folder (``disp_<f>_<m>.nii.gz`` [+ ``affine_<f>_<m>.json``]).
        subjects_csv: the preprocessed ``subjects.csv`` the method registered (its
            ``<sid>_prep.json`` records sit next to it).
        pairs_csv: ``fixed,moving``.
        out_dir: output folder of the native-space files.

    Returns:
        the per-pair dicts of :func:`write_native`, with ``fixed`` and ``moving``.
    """
    from vtn.io import read_pairs, read_subjects

    reg_dir, out_dir = Path(reg_dir), Path(out_dir)
    known = {r["subject"] for r in read_subjects(subjects_csv)}
    pairs = read_pairs(pairs_csv)
    results = []
    t0 = time.perf_counter()
    for k, (f, m) in enumerate(pairs, 1):
        for sid in (f, m):
            if sid not in known:
                raise InputError(f"{pairs_csv}: subject {sid!r} is not listed in {subjects_csv}")
        metas = [_read_json(Path(subjects_csv).parent / f"{sid}_prep.json", "prep record")
                 for sid in (f, m)]
        disp = reg_dir / f"disp_{f}_{m}.nii.gz"
        if not disp.exists():
            raise InputError(f"{disp}: displacement of pair {f} <- {m} (listed in {pairs_csv}) "
                             f"not found")
        res = write_native_from_prep(out_dir, metas[0], metas[1], disp,
                                     affine=read_affine_part(reg_dir, f, m))
        results.append(dict(res, fixed=f, moving=m))
        rate = (time.perf_counter() - t0) / k
        log(f"{f} <- {m}: {res['seconds']:.1f} s, outside the crop box: {res['outside']} "
            f"[{k}/{len(pairs)}, ETA {rate * (len(pairs) - k):.0f} s]")
    atomic_write_json(out_dir / "native.json", {
        "registrations": str(reg_dir.resolve()),
        "subjects": str(Path(subjects_csv).resolve()),
        "conventions": NATIVE_CONVENTIONS,
        "pairs": [{k: r[k] for k in ("fixed", "moving", "outside", "outside_rule",
                                     "inside_crop_percent", "seconds", "files")} for r in results],
    })
    return results


def _raw_shape(meta):
    if "raw_shape" in meta:
        return tuple(int(s) for s in meta["raw_shape"])
    return read_scan(meta["raw_image"])[0].shape


def write_overlay(path, fixed, warped, fixed_affine, centre_voxel, title="", window=None) -> Path:
    """PNG of three orthogonal slices (axial, coronal, sagittal) through ``centre_voxel`` of
    the fixed scan: rows fixed, warped moving, and a colour overlay (fixed magenta, warped
    green: grey where they agree). Displayed in the closest RAS orientation with physical
    aspect ratios, patient right on the viewer's right (neurological view); intensities
    windowed to ``window`` ``(lo, hi)`` (e.g. a CT window in HU) or to each image's 1-99
    percentiles.
    """
    import nibabel.orientations as nio

    from vtn.data.preprocess import canonical_mapping
    from vtn.report.figures import _plt, save_figure

    ornt, canon_to_raw = canonical_mapping(fixed_affine, fixed.shape)
    f = nio.apply_orientation(np.asarray(fixed, dtype=np.float32), ornt)
    w = nio.apply_orientation(np.asarray(warped, dtype=np.float32), ornt)
    c = np.rint(np.linalg.solve(canon_to_raw, np.r_[np.asarray(centre_voxel, float), 1.0])[:3])
    c = np.clip(c, 0, np.asarray(f.shape) - 1).astype(int)
    zooms = np.linalg.norm((np.asarray(fixed_affine)[:3, :3] @ canon_to_raw[:3, :3]), axis=0)

    def norm(a):
        lo, hi = window if window is not None else np.percentile(a, [1, 99])
        return np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1)

    f, w = norm(f), norm(w)
    views = [("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2))]
    rows = ("fixed", "warped moving", "fixed (magenta) / warped (green)")
    plt = _plt()
    fig, axes = plt.subplots(3, 3, figsize=(9, 9))
    for col, (name, axis, (a, b)) in enumerate(views):
        sl = [slice(None)] * 3
        sl[axis] = c[axis]
        fs, ws = f[tuple(sl)].T, w[tuple(sl)].T
        for row, img in enumerate((fs, ws, np.stack([fs, ws, fs], axis=-1))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, origin="lower",
                      aspect=zooms[b] / zooms[a], vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{name} (voxel {c[axis]})", fontsize=9)
            if col == 0:
                ax.set_ylabel(rows[row], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def cli(argv=None) -> int:
    """``vtn native-space`` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="vtn native-space",
                                 description="a method's registrations in the original image space")
    ap.add_argument("--reg", required=True, help="the method's registration folder (disp_<f>_<m>.nii.gz)")
    ap.add_argument("--subjects", required=True, help="the preprocessed subjects.csv it registered")
    ap.add_argument("--pairs", required=True, help="pairs.csv (fixed,moving)")
    ap.add_argument("--out", required=True, help="output folder of the native-space files")
    a = ap.parse_args(argv)
    try:
        native_space_folder(a.reg, a.subjects, a.pairs, a.out, log=lambda s: print(s, file=sys.stderr))
    except InputError as exc:
        print(f"vtn native-space: error: {exc}", file=sys.stderr)
        return 1
    return 0
