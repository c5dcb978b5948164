"""File formats shared by every stage: NIfTI volumes, landmark CSVs, subject tables, displacement
files (Learn2Reg voxel fields and ANTs/ITK physical warps).

Every reader raises :class:`InputError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

__all__ = [
    "InputError",
    "load_volume",
    "save_volume",
    "load_landmarks",
    "load_raw_landmarks",
    "save_landmarks",
    "save_raw_landmarks",
    "read_subjects",
    "read_pairs",
    "save_disp_l2r",
    "load_disp_l2r",
    "DISP_DTYPES",
    "disp_voxel_to_ras_mm",
    "disp_ras_mm_to_voxel",
    "save_itk_warp",
    "save_itk_displacement",
    "load_itk_warp",
    "atomic_write",
    "atomic_write_json",
    "expand_files",
    "NIFTI_SUFFIXES",
    "scan_stem",
    "sitk_ras_affine",
    "read_scan",
]


class InputError(ValueError):
    """A bad input file: the message names the file and the problem."""


@contextlib.contextmanager
def atomic_write(path):
    """Write ``path`` all at once: yields a temporary path beside it (``.tmp-<name>``, same
    suffix, so writers that infer the format from the name still work) that replaces ``path``
    when the block ends without an exception; on an exception the temporary file is removed and
    ``path`` is left as it was. The folder is created.

    Example: ``with atomic_write(out) as tmp: df.to_csv(tmp)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def load_volume(path, *, allow_nonfinite: bool = False, dtype=np.float32):
    """Read a 3-D NIfTI volume.

    Args:
        path: ``.nii`` / ``.nii.gz`` file.
        allow_nonfinite: accept NaN/Inf voxels (otherwise an :class:`InputError`).
        dtype: dtype of the returned array (``None`` keeps the stored dtype).

    Returns:
        ``(array (X, Y, Z), affine 4x4 voxel -> RAS mm)``.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated/garbled files
        raise InputError(f"{path}: cannot read volume ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if not allow_nonfinite and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise InputError(f"{path}: {n} voxels are NaN or Inf")
    return data, np.asarray(img.affine, dtype=np.float64)


def save_volume(path, array, affine, store_dtype=None) -> None:
    """Write a volume as NIfTI (written to a temporary file, then renamed).

    Args:
        store_dtype: on-disk type when it differs from the array's, e.g. ``"int16"`` for float
            data: nibabel then stores ``scl_slope``/``scl_inter`` fitted to the data's range
            (every NIfTI reader applies them).
    """
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    if store_dtype is not None:
        img.set_data_dtype(np.dtype(store_dtype))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_write(path) as tmp:
        nib.save(img, str(tmp))


def _read_points(path, columns, what):
    """Read a CSV of named points: ``(names, (N, 3) float64)`` with one clear error per problem."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: landmark file not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read landmark CSV ({exc})") from exc
    missing = {"name", *columns} - set(df.columns)
    if missing:
        raise InputError(f"{path}: landmark CSV lacks columns {sorted(missing)} (expects "
                         f"name,{','.join(columns)}: {what})")
    try:
        pts = df[list(columns)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: non-numeric landmark coordinates ({exc})") from exc
    if not np.isfinite(pts).all():
        raise InputError(f"{path}: landmark coordinates contain NaN/Inf")
    return [str(n) for n in df["name"]], pts


def load_landmarks(path, shape=None):
    """Read a landmark CSV ``name,i,j,k`` (voxel indices along array axes 0, 1, 2).

    Args:
        path: CSV file.
        shape: optional image shape; a landmark outside ``[0, n-1]`` on any axis is an error.

    Returns:
        ``(names list, array (N, 3) float64)``.
    """
    names, pts = _read_points(path, ("i", "j", "k"), "voxel indices")
    if shape is not None:
        hi = np.asarray(shape, dtype=np.float64) - 1
        bad = ((pts < 0) | (pts > hi)).any(axis=1)
        if bad.any():
            out = ", ".join(n for n, b in zip(names, bad) if b)
            raise InputError(f"{path}: landmark(s) {out} outside the image of shape {tuple(shape)}")
    return names, pts


def load_raw_landmarks(path):
    """Read a raw landmark CSV ``name,x,y,z`` (RAS world mm); returns ``(names, (N, 3) mm)``."""
    return _read_points(path, ("x", "y", "z"), "RAS world mm")


def save_landmarks(path, names, points) -> None:
    """Write a landmark CSV ``name,i,j,k`` (through :func:`atomic_write`)."""
    import pandas as pd

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    df = pd.DataFrame({"name": list(names), "i": pts[:, 0], "j": pts[:, 1], "k": pts[:, 2]})
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")


def save_raw_landmarks(path, names, points_mm) -> None:
    """Write a raw landmark CSV ``name,x,y,z`` (RAS world mm, through :func:`atomic_write`)."""
    import pandas as pd

    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    df = pd.DataFrame({"name": list(names), "x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]})
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")


def read_subjects(path):
    """Read a dataset's ``subjects.csv`` (``subject,image,seg,landmarks``).

    Relative paths are resolved against the CSV's folder; empty ``seg``/``landmarks`` become
    ``None``.

    Returns:
        list of dicts with keys ``subject, image, seg, landmarks`` (paths as :class:`Path`).
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: subject table not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"subject", "image"} - set(df.columns)
    if missing:
        raise InputError(f"{path}: subject table lacks columns {sorted(missing)}")
    rows = []
    for rec in df.to_dict("records"):
        row = {"subject": rec["subject"]}
        for key in ("image", "seg", "landmarks"):
            val = rec.get(key, "") or ""
            row[key] = (path.parent / val) if val else None
        rows.append(row)
    if len({r["subject"] for r in rows}) != len(rows):
        raise InputError(f"{path}: duplicate subject ids")
    return rows


def read_pairs(path):
    """Read ``pairs.csv`` (``fixed,moving``) as a list of ``(fixed, moving)`` subject ids."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: pair list not found")
    df = pd.read_csv(path, dtype=str)
    if not {"fixed", "moving"} <= set(df.columns):
        raise InputError(f"{path}: pair list needs columns fixed,moving")
    return list(zip(df["fixed"], df["moving"]))


#: on-disk types of displacement files: float32, or int16 scaled by ``scl_slope`` (16 bits;
#: NIfTI-1 has no float16): largest error (max - min) / 131070 voxels, e.g. 0.001 voxel for
#: displacements within +-64 voxels; about half the size gzipped (docs: config/README.md)
DISP_DTYPES = ("float32", "int16")


def save_disp_l2r(path, flow, affine, dtype: str = "float32") -> None:
    """Write a Learn2Reg displacement: ``(D, H, W, 3)`` voxels on the fixed grid.

    Args:
        flow: ``(3, D, H, W)`` array (channels-first, as in the core) in voxels.
        affine: the fixed image's affine (stored for viewing only).
        dtype: one of :data:`DISP_DTYPES` (:func:`load_disp_l2r` reads both as float32).
    """
    if dtype not in DISP_DTYPES:
        raise ValueError(f"dtype must be one of {DISP_DTYPES}, got {dtype!r}")
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 4 or flow.shape[0] != 3:
        raise ValueError(f"flow must be (3, D, H, W), got {flow.shape}")
    save_volume(path, np.moveaxis(flow, 0, -1), affine,
                store_dtype=None if dtype == "float32" else dtype)


def load_disp_l2r(path):
    """Read a Learn2Reg displacement (float32, or scaled integers such as the ``int16`` of
    :func:`save_disp_l2r`); returns ``((3, D, H, W) float32 voxels, affine)``."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: displacement file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).astype(np.float32)
    except Exception as exc:
        raise InputError(f"{path}: cannot read displacement ({exc})") from exc
    if data.ndim == 5:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[-1] != 3:
        raise InputError(f"{path}: expected a (D, H, W, 3) displacement, got {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: displacement contains NaN/Inf")
    return np.ascontiguousarray(np.moveaxis(data, -1, 0)), np.asarray(img.affine, dtype=np.float64)


def disp_voxel_to_ras_mm(flow, affine):
    """Voxel displacement ``(3, ...)`` -> RAS mm displacement ``(3, ...)`` (linear part only)."""
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    return np.einsum("ij,j...->i...", lin, np.asarray(flow, dtype=np.float64))


def disp_ras_mm_to_voxel(disp_mm, affine):
    """RAS mm displacement ``(3, ...)`` -> voxel displacement ``(3, ...)``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3])
    return np.einsum("ij,j...->i...", inv, np.asarray(disp_mm, dtype=np.float64))


def save_itk_warp(path, flow, affine, moving_affine=None) -> None:
    """Write an ANTs/ITK displacement-field transform from a voxel flow.

    Resampling convention: the world point of fixed voxel ``p`` maps to the world point of moving
    voxel ``p + u(p)``; written with :func:`save_itk_displacement`.

    Args:
        flow: ``(3, X, Y, Z)`` displacement in voxels on the fixed grid (into the moving grid).
        affine: the fixed image's affine (voxel -> RAS mm).
        moving_affine: the moving image's affine; ``None`` means the same as ``affine``. Needed
            whenever the two grids differ (e.g. different crops), since the world displacement is
            ``A_m (p + u) - A_f p``.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if moving_affine is None or np.allclose(moving_affine, affine):
        disp_ras = disp_voxel_to_ras_mm(flow, affine)
    else:
        A_f = np.asarray(affine, dtype=np.float64)
        A_m = np.asarray(moving_affine, dtype=np.float64)
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in flow.shape[1:]], indexing="ij"))
        tgt = grid + flow
        world_m = np.einsum("ij,j...->i...", A_m[:3, :3], tgt) + A_m[:3, 3].reshape(3, 1, 1, 1)
        world_f = np.einsum("ij,j...->i...", A_f[:3, :3], grid) + A_f[:3, 3].reshape(3, 1, 1, 1)
        disp_ras = world_m - world_f
    disp_lps = np.moveaxis(disp_ras, 0, -1) * np.array([-1.0, -1.0, 1.0])
    save_itk_displacement(path, disp_lps, affine)


def save_itk_displacement(path, disp_lps, affine) -> None:
    """Write an ANTs/ITK displacement-field transform: 5-D NIfTI ``(X, Y, Z, 1, 3)`` float32,
    intent 1007 (vector), physical mm in **LPS**, resampling convention (fixed -> moving), the
    fixed image's affine in the header (written to a temporary file, then renamed).

    Args:
        disp_lps: ``(X, Y, Z, 3)`` displacement in LPS mm at every fixed voxel (a float32 C-order
            array is written without a copy).
        affine: the fixed image's affine (voxel -> RAS mm).
    """
    import nibabel as nib

    disp = np.asarray(disp_lps, dtype=np.float32)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError(f"disp_lps must be (X, Y, Z, 3), got {disp.shape}")
    img = nib.Nifti1Image(disp.reshape(*disp.shape[:3], 1, 3), np.asarray(affine, dtype=np.float64))
    img.header.set_intent(1007, (), "")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_write(path) as tmp:
        nib.save(img, str(tmp))


def load_itk_warp(path):
    """Read an ANTs/ITK 5-D warp; returns ``((3, X, Y, Z) voxel displacement, affine)``."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.float64)
    if data.ndim != 5 or data.shape[3] != 1 or data.shape[4] != 3:
        raise InputError(f"{path}: expected an (X, Y, Z, 1, 3) ITK warp, got {data.shape}")
    lps = np.moveaxis(data[:, :, :, 0, :], -1, 0)
    ras = lps.copy()
    ras[0] *= -1.0
    ras[1] *= -1.0
    return disp_ras_mm_to_voxel(ras, img.affine).astype(np.float32), np.asarray(img.affine)


def expand_files(paths, pattern: str):
    """The files a command was given: a list of files, or one folder standing for its files
    that match ``pattern`` (a glob such as ``"*.csv"``; ``"**/*.tsv"`` searches sub-folders).

    Returns:
        ``(sorted list of paths, the folder or None)``.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        return sorted(paths[0].glob(pattern)), paths[0]
    return sorted(paths), None


def atomic_write_json(path, obj) -> None:
    """Write JSON through :func:`atomic_write` so a killed job leaves no half-written file."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))


# ---------------------------------------------------------------------------------------------
# scans in any format (register-images)
# ---------------------------------------------------------------------------------------------

#: files read with nibabel (as every stage of the workflow does); anything else, and DICOM
#: folders, with SimpleITK
NIFTI_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".img.gz")
_SCAN_SUFFIXES = NIFTI_SUFFIXES + (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".mgz", ".mgh")


def scan_stem(path) -> str:
    """File name without its image suffix (``a/b.nii.gz`` -> ``b``); a folder's own name."""
    name = Path(path).name
    for suf in _SCAN_SUFFIXES:
        if name.lower().endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def sitk_ras_affine(img) -> np.ndarray:
    """4x4 voxel -> RAS mm affine of a 3-D SimpleITK image (ITK is LPS:
    ``diag(-1, -1, 1) @ [direction @ diag(spacing) | origin]``), for the array transposed to
    ``(x, y, z)`` index order."""
    d = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = d @ np.diag(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


def _check_scan_shape(path, shape, what="image"):
    """One clear error for anything that is not a single 3-D volume."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) == 1):
        raise InputError(f"{path}: a 2-D {what} (shape {shape}); registration needs a 3-D volume")
    if len(shape) == 4:
        raise InputError(f"{path}: a 4-D series of {shape[3]} volumes (shape {shape}); pass one "
                         f"3-D volume (e.g. extract a time point or phase first)")
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {shape}")
    return shape


def read_scan(path, *, labels: bool = False):
    """Read one 3-D scan: NIfTI/Analyze with nibabel (the reader of every workflow stage);
    MetaImage, NRRD, MGH and a DICOM series (a folder holding one series) with SimpleITK.

    Args:
        path: file or DICOM folder.
        labels: a label map: integer values are required (an integer dtype is kept, float
            labels become int32); otherwise float32.

    Returns:
        ``(array (X, Y, Z), affine 4x4 voxel -> RAS mm)``; array axis ``k`` is ITK index ``k``.

    Raises:
        InputError: missing/unreadable, 2-D, a 4-D series, multi-component (RGB/vector) pixels,
            NaN/Inf voxels, non-integer labels, a folder with no or several DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        try:
            shape = nib.load(str(path)).shape
        except Exception as exc:
            raise InputError(f"{path}: cannot read volume ({type(exc).__name__}: {exc})") from exc
        _check_scan_shape(path, shape, "label map" if labels else "image")
        data, affine = load_volume(path, dtype=None)
    else:
        import SimpleITK as sitk

        try:
            if path.is_dir():
                ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
                if not ids:
                    raise InputError(f"{path}: folder holds no DICOM series")
                if len(ids) > 1:
                    raise InputError(f"{path}: folder holds {len(ids)} DICOM series "
                                     f"({', '.join(ids)}); put one series per folder")
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0]))
                img = reader.Execute()
            else:
                img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot read volume ({exc})") from exc
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per "
                             f"voxel (RGB or vector image); registration needs a scalar volume")
        _check_scan_shape(path, img.GetSize(), "label map" if labels else "image")
        if img.GetDimension() == 4:  # (X, Y, Z, 1)
            img = img[:, :, :, 0]
        data = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))
        affine = sitk_ras_affine(img)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise InputError(f"{path}: {n} voxels are NaN or Inf")
    if labels:
        if np.issubdtype(data.dtype, np.floating):
            r = np.rint(data)
            if np.abs(data - r).max() > 1e-3:
                raise InputError(f"{path}: label map has non-integer values")
            data = r.astype(np.int32)
        return data, affine
    return data.astype(np.float32, copy=False), affine
