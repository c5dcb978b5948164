"""Dataset adapters: list a user's dataset, left in place, as a raw ``subjects.csv``.

``vtn import --layout L --path P --out raw/subjects.csv [--landmarks-dir D] [--affine A.txt]``
writes ``subject,image,seg,landmarks`` with **absolute** paths (``seg``/``landmarks`` empty when
absent). Files that nibabel cannot read (MetaImage, HDF5) are converted into the folder of
``--out``. Layouts:

* ``lits`` — LiTS: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` anywhere under ``P``;
  subject ``litsN``. Labels: 0 background, 1 liver, 2 tumour (use ``--liver-label any``).
* ``sliver07`` — SLIVER07 / MICCAI'07: ``liver-origNNN.mhd`` with ``liver-segNNN.mhd``
  (optional: the test set has none) anywhere under ``P``; subject ``sliverNNN``. MetaImage is
  converted to NIfTI with SimpleITK (``<sid>_image.nii.gz``, ``<sid>_seg.nii.gz``), which keeps
  the geometry: ITK's LPS direction/origin/spacing become the RAS affine
  ``diag(-1, -1, 1) @ [direction @ diag(spacing) | origin]``.
* ``lpba40`` — LONI LPBA40: subject folders ``S01`` … ``S40`` anywhere under ``P``. In each the
  image is the first match of ``{S}.delineation.skullstripped.*``, ``{S}.native.mri.*``,
  ``{S}*mri*``, ``{S}*skullstripped*`` and the label map the first of
  ``{S}.delineation.structure.label.*``, ``{S}.native.label.*``, ``{S}*label*`` (extensions
  ``.hdr`` (Analyze, preferred), ``.img``, ``.img.gz``, ``.nii``, ``.nii.gz``). Subject ``S01`` ….
* ``t1_folder`` — ADNI / ABIDE / ADHD: every ``*.nii`` / ``*.nii.gz`` under ``P`` (recursively),
  no labels; subject = the relative path without extension, ``/`` and other non-alphanumerics
  replaced by ``-``.
* ``hdf5`` — the reference code's HDF5 files (``P`` a file or a folder of ``*.h5``): every group
  holding a ``volume`` dataset (``segmentation`` and ``point`` optional; ``point`` is ``(6, 3)``
  voxel coordinates with ``-1`` = missing). Converted to ``<sid>_image.nii.gz``,
  ``<sid>_seg.nii.gz`` and ``<sid>_landmarks.csv`` (names ``L1``…``L6`` by row, RAS mm through the
  affine: identity unless ``--affine`` gives a 4x4 text file). Subject = file stem + group path.
* ``table`` — an existing ``subjects.csv`` (``P``); paths are resolved and checked.
* ``learn2reg`` — a Learn2Reg task folder (``P``) with its ``<TASK>_dataset.json``
  (:mod:`vtn.data.learn2reg`): images, label maps, keypoints (voxel CSVs, converted to
  ``<sid>_landmarks.csv`` in RAS mm); ``--pairs-out`` writes its pair lists as
  ``fixed,moving,split``.

``--landmarks-dir D``: user landmark CSVs ``name,x,y,z`` (RAS mm) named ``<subject>.csv`` or
``<subject>_landmarks.csv``; they take precedence over landmarks found in the dataset.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from vtn.io import InputError, atomic_write, read_subjects, sitk_ras_affine

__all__ = ["LAYOUTS", "import_dataset", "subject_ids", "sitk_to_nifti", "cli"]

LAYOUTS = ("lits", "sliver07", "lpba40", "t1_folder", "hdf5", "table", "learn2reg")

_VOL_EXTS = (".hdr", ".img", ".img.gz", ".nii", ".nii.gz")


def _sanitize(s):
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-")


def _nii_stem(p: Path):
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return p.stem


def sitk_to_nifti(src, dst, label=False):
    """Convert any SimpleITK-readable volume (e.g. MetaImage ``.mhd``) to NIfTI, keeping geometry.

    Args:
        src: input file.
        dst: output ``.nii.gz`` (written atomically).
        label: cast to int16 (label maps).

    Returns:
        the 4x4 RAS affine of the written file.
    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(src))
    except RuntimeError as exc:
        raise InputError(f"{src}: cannot read volume ({exc})") from exc
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{src}: expected a 3-D scalar volume, got dimension {img.GetDimension()}")
    if label:
        img = sitk.Cast(img, sitk.sitkInt16)
    with atomic_write(dst) as tmp:
        sitk.WriteImage(img, str(tmp))
    return sitk_ras_affine(img)


def _require_dir(layout, path):
    path = Path(path)
    if not path.exists():
        raise InputError(f"layout {layout}: dataset path {path} does not exist")
    return path


def _lits(path):
    rows = []
    for vol in sorted(path.rglob("volume-*.nii*")):
        m = re.fullmatch(r"volume-(\d+)\.nii(\.gz)?", vol.name)
        if not m:
            continue
        n = m.group(1)
        segs = [vol.parent / f"segmentation-{n}.nii", vol.parent / f"segmentation-{n}.nii.gz"]
        seg = next((s for s in segs if s.exists()), None)
        rows.append({"subject": f"lits{int(n)}", "image": vol, "seg": seg, "landmarks": None})
    return rows


def _sliver(path, outdir):
    """``outdir`` None: list only (the MetaImage files, nothing converted)."""
    rows = []
    for orig in sorted(path.rglob("liver-orig*.mhd")):
        m = re.fullmatch(r"liver-orig(\d+)\.mhd", orig.name)
        if not m:
            continue
        n = m.group(1)
        sid = f"sliver{n}"
        segsrc = orig.parent / f"liver-seg{n}.mhd"
        if outdir is None:
            rows.append({"subject": sid, "image": orig, "seg": segsrc if segsrc.exists() else None,
                         "landmarks": None})
            continue
        img = outdir / f"{sid}_image.nii.gz"
        sitk_to_nifti(orig, img)
        seg = None
        if segsrc.exists():
            seg = outdir / f"{sid}_seg.nii.gz"
            sitk_to_nifti(segsrc, seg, label=True)
        rows.append({"subject": sid, "image": img, "seg": seg, "landmarks": None})
    return rows


def _first_match(folder, patterns):
    for pat in patterns:
        hits = [p for p in sorted(folder.glob(pat)) if p.name.endswith(_VOL_EXTS)]
        if hits:
            # prefer the Analyze header, then NIfTI, then the image file
            hits.sort(key=lambda p: next(i for i, e in enumerate(_VOL_EXTS) if p.name.endswith(e)))
            return hits[0]
    return None


def _lpba40(path):
    rows = []
    dirs = sorted({d for d in [path, *path.rglob("S*")] if d.is_dir() and re.fullmatch(r"S\d\d", d.name)},
                  key=lambda d: d.name)
    seen = set()
    for d in dirs:
        s = d.name
        if s in seen:
            raise InputError(f"layout lpba40: subject folder {s} found twice under {path}")
        seen.add(s)
        img = _first_match(d, [f"{s}.delineation.skullstripped.*", f"{s}.native.mri.*", f"{s}*mri*",
                               f"{s}*skullstripped*"])
        if img is None:
            raise InputError(f"layout lpba40: {d}: no MR image ({s}.delineation.skullstripped.* or {s}.native.mri.*)")
        seg = _first_match(d, [f"{s}.delineation.structure.label.*", f"{s}.native.label.*", f"{s}*label*"])
        rows.append({"subject": s, "image": img, "seg": seg, "landmarks": None})
    return rows


def _t1_folder(path):
    rows = []
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
    for f in files:
        rel = f.relative_to(path)
        sid = _sanitize(str(rel.parent / _nii_stem(f))) if str(rel.parent) != "." else _sanitize(_nii_stem(f))
        rows.append({"subject": sid, "image": f, "seg": None, "landmarks": None})
    return rows


def _hdf5(path, outdir, affine):
    """``outdir`` None: list only (the groups' subject ids, nothing converted)."""
    import h5py

    from vtn.io import save_raw_landmarks, save_volume

    files = [path] if path.is_file() else sorted(list(path.rglob("*.h5")) + list(path.rglob("*.hdf5")))
    rows = []
    for f in files:
        try:
            h = h5py.File(f, "r")
        except OSError as exc:
            raise InputError(f"{f}: cannot read HDF5 file ({exc})") from exc
        with h:
            groups = []
            h.visititems(lambda name, obj: groups.append(name)
                         if isinstance(obj, h5py.Group) and "volume" in obj else None)
            if "volume" in h:
                groups.insert(0, "")
            for g in groups:
                grp = h[g] if g else h
                sid = _sanitize(f"{f.stem}-{g}" if g else f.stem)
                if outdir is None:
                    rows.append({"subject": sid, "image": f, "seg": None, "landmarks": None})
                    continue
                vol = np.asarray(grp["volume"])
                if vol.ndim == 4 and vol.shape[-1] == 1:
                    vol = vol[..., 0]
                if vol.ndim != 3:
                    raise InputError(f"{f}: group {g or '/'}: volume has shape {vol.shape}, expected 3-D")
                img = outdir / f"{sid}_image.nii.gz"
                save_volume(img, vol, affine)
                seg = None
                if "segmentation" in grp:
                    s = np.asarray(grp["segmentation"])
                    if s.ndim == 4 and s.shape[-1] == 1:
                        s = s[..., 0]
                    if s.shape != vol.shape:
                        raise InputError(f"{f}: group {g or '/'}: segmentation shape {s.shape} != volume {vol.shape}")
                    seg = outdir / f"{sid}_seg.nii.gz"
                    save_volume(seg, np.rint(s).astype(np.int16), affine)
                lm = None
                if "point" in grp:
                    pts = np.asarray(grp["point"], dtype=np.float64).reshape(-1, 3)
                    keep = (pts >= 0).all(axis=1)
                    if keep.any():
                        names = [f"L{i + 1}" for i in np.nonzero(keep)[0]]
                        mm = (affine @ np.c_[pts[keep], np.ones(keep.sum())].T).T[:, :3]
                        lm = outdir / f"{sid}_landmarks.csv"
                        save_raw_landmarks(lm, names, mm)
                rows.append({"subject": sid, "image": img, "seg": seg, "landmarks": lm})
    return rows


def _table(path):
    rows = read_subjects(path)
    for r in rows:
        for key in ("image", "seg", "landmarks"):
            if r[key] is not None and not Path(r[key]).exists():
                raise InputError(f"{path}: subject {r['subject']}: {key} file {r[key]} not found")
    return rows


def _rows(layout, path, outdir, affine):
    """The rows of a non-Learn2Reg layout (``outdir`` None: listed, nothing converted)."""
    if layout == "lits":
        return _lits(path)
    if layout == "sliver07":
        return _sliver(path, outdir)
    if layout == "lpba40":
        return _lpba40(path)
    if layout == "t1_folder":
        return _t1_folder(path)
    if layout == "hdf5":
        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise InputError(f"HDF5 affine must be 4x4, got {aff.shape}")
        return _hdf5(path, outdir, aff)
    return _table(path)


def subject_ids(layout, path) -> list:
    """The subject ids ``vtn import`` lists for a dataset, found without converting anything:
    the workflow counts a user dataset's subjects when it builds the DAG (:mod:`vtn.jobs`)."""
    if layout not in LAYOUTS or layout == "learn2reg":
        raise InputError(f"layout {layout!r}: subjects cannot be listed without importing")
    path = _require_dir(layout, path)
    return [r["subject"] for r in _rows(layout, path, None, None)]


def import_dataset(layout, path, out, landmarks_dir=None, affine=None, pairs_out=None,
                   subset="all", log=None):
    """List (and where needed convert) a dataset as a raw ``subjects.csv``.

    Args:
        layout: one of :data:`LAYOUTS`.
        path: dataset folder (or file for ``hdf5``/``table``).
        out: the ``subjects.csv`` to write; conversions go to its folder.
        landmarks_dir: optional folder of user landmark CSVs (``name,x,y,z`` RAS mm).
        affine: 4x4 voxel -> RAS mm for HDF5 volumes (default identity).
        pairs_out: ``learn2reg`` only: write the task's pairs (``fixed,moving,split``) here.
        subset: ``learn2reg`` only: ``all``, ``train``, ``val`` or ``test`` images.
        log: optional ``callable(str)`` for notes.

    Returns:
        list of row dicts (absolute paths).
    """
    import pandas as pd

    from vtn.io import load_raw_landmarks

    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    path = _require_dir(layout, path)
    if layout != "learn2reg" and (pairs_out is not None or subset != "all"):
        raise InputError(f"layout {layout} defines no registration pairs or subsets "
                         f"(--pairs-out and --subset are for learn2reg)")
    out = Path(out)
    outdir = out.parent
    outdir.mkdir(parents=True, exist_ok=True)
    pairs = None
    if layout == "learn2reg":
        from vtn.data.learn2reg import import_learn2reg

        rows, pairs = import_learn2reg(path, outdir, subset=subset, log=log)
    else:
        rows = _rows(layout, path, outdir, affine)
    if not rows:
        raise InputError(f"layout {layout}: no subjects found under {path}")
    ids = [r["subject"] for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"layout {layout}: duplicate subject ids under {path}: {', '.join(dup)}")
    if landmarks_dir is not None:
        ld = Path(landmarks_dir)
        if not ld.is_dir():
            raise InputError(f"landmark folder {ld} does not exist")
        for r in rows:
            for cand in (ld / f"{r['subject']}.csv", ld / f"{r['subject']}_landmarks.csv"):
                if cand.exists():
                    load_raw_landmarks(cand)  # validates name,x,y,z
                    r["landmarks"] = cand
                    break
    table = [{"subject": r["subject"],
              **{k: (str(Path(r[k]).resolve()) if r[k] is not None else "") for k in ("image", "seg", "landmarks")}}
             for r in rows]
    with atomic_write(out) as tmp:
        pd.DataFrame(table, columns=["subject", "image", "seg", "landmarks"]).to_csv(tmp, index=False)
    if pairs_out is not None:
        with atomic_write(pairs_out) as tmp:
            pd.DataFrame(pairs, columns=["fixed", "moving", "split"]).to_csv(tmp, index=False)
    return table


def cli(argv=None) -> int:
    """``vtn import`` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="vtn import", description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", required=True, choices=LAYOUTS)
    p.add_argument("--path", required=True, help="dataset folder (a file for hdf5/table)")
    p.add_argument("--out", required=True, help="raw subjects.csv to write")
    p.add_argument("--landmarks-dir", default=None, help="folder of <subject>.csv landmark files (name,x,y,z mm)")
    p.add_argument("--affine", default=None, help="4x4 text file: voxel -> RAS mm of HDF5 volumes (default identity)")
    p.add_argument("--pairs-out", default=None,
                   help="learn2reg: write the task's registration pairs (fixed,moving,split) here")
    p.add_argument("--subset", default="all", choices=["all", "train", "val", "test"],
                   help="learn2reg: training images outside the val/test pairs (train), the "
                        "registration_val images (val), the test images (test), or all")
    a = p.parse_args(argv)
    try:
        aff = None
        if a.affine is not None:
            try:
                aff = np.loadtxt(a.affine).reshape(4, 4)
            except (OSError, ValueError) as exc:
                raise InputError(f"{a.affine}: cannot read a 4x4 affine ({exc})") from exc
        rows = import_dataset(a.layout, a.path, a.out, landmarks_dir=a.landmarks_dir, affine=aff,
                              pairs_out=a.pairs_out, subset=a.subset,
                              log=lambda s: print(s, file=sys.stderr))
    except InputError as exc:
        print(f"vtn import: error: {exc}", file=sys.stderr)
        return 1
    print(f"vtn import: {len(rows)} subjects -> {a.out}", file=sys.stderr)
    return 0
