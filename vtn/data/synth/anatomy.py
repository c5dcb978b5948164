"""Base anatomies of the embedded datasets: the real image, labels and landmarks shipped in
registry packages (TotalSegmentator example CT; CAT12 template with LPBA40 labels and AFIDs).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vtn.data.synth.transforms import apply_affine, nearest
from vtn.io import InputError, load_volume

__all__ = ["LIVER_LABEL", "LIVER_LANDMARKS", "Base", "load_base", "liver_landmarks", "read_fcsv"]

LIVER_LABEL = 5

LIVER_LANDMARKS = (
    "liver_centroid", "liver_inferior_tip", "liver_left_tip", "liver_right_lateral",
    "liver_anterior", "liver_posterior", "gallbladder_centroid", "kidney_right_centroid",
    "portal_splenic_vein_centroid",
)


# --------------------------------------------------------------------------------------------


@dataclass
class Base:
    """A base anatomy: image, full label map and landmarks, on one grid.

    Attributes:
        organ: ``"liver"`` or ``"brain"``.
        image: ``(X, Y, Z)`` float32 intensities (HU for liver).
        labels: ``(X, Y, Z)`` uint8 label map.
        affine: voxel -> RAS mm.
        landmark_names, landmarks: names and ``(N, 3)`` RAS mm.
        label_names: ``{id: name}`` for the ids present.
        fill: intensity used outside the base field of view.
        sources: provenance (files used).
    """

    organ: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    landmark_names: list
    landmarks: np.ndarray
    label_names: dict
    fill: float
    sources: dict


def voxel_world(affine, mask):
    idx = np.argwhere(mask).astype(np.float64)
    return apply_affine(affine, idx)


def liver_landmarks(labels, affine, slab_mm: float = 6.0):
    """The liver dataset's landmarks from a TotalSegmentator "total" label map.

    See the module docstring for the definitions.

    Args:
        labels: ``(X, Y, Z)`` integer label map.
        affine: voxel -> RAS mm.
        slab_mm: thickness of the extreme slabs.

    Returns:
        ``(names, (N, 3) RAS mm)`` in the order of :data:`LIVER_LANDMARKS`.

    Raises:
        InputError: a needed label is absent.
    """
    def pts_of(label, what):
        pts = voxel_world(affine, labels == label)
        if len(pts) == 0:
            raise InputError(f"base segmentation has no voxel of label {label} ({what})")
        return pts

    liver = pts_of(LIVER_LABEL, "liver")

    def slab(axis, largest):
        c = liver[:, axis]
        sel = c >= c.max() - slab_mm if largest else c <= c.min() + slab_mm
        return liver[sel].mean(0)

    pts = [liver.mean(0), slab(2, False), slab(0, False), slab(0, True), slab(1, True),
           slab(1, False), pts_of(4, "gallbladder").mean(0), pts_of(2, "kidney_right").mean(0),
           pts_of(64, "portal_vein_and_splenic_vein").mean(0)]
    return list(LIVER_LANDMARKS), np.stack(pts)


def read_fcsv(path):
    """Read a 3D Slicer markups ``.fcsv`` file.

    Returns:
        ``(names, (N, 3) RAS mm)``; LPS files (``CoordinateSystem = 1`` or ``LPS``) are converted.
        Names come from ``label``, or from ``desc`` when every ``label`` is a number (the AFIDs
        files number the fiducials in ``label`` and name them in ``desc``: AC, PC, ...).
    """
    import io as _io

    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: landmark file not found")
    text = path.read_text()
    columns, lps = None, False
    body = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, val = line[1:].partition("=")
            key, val = key.strip().lower(), val.strip()
            if key == "columns":
                columns = [c.strip() for c in val.split(",")]
            elif key == "coordinatesystem":
                lps = val.upper() in {"1", "LPS"}
        elif line.strip():
            body.append(line)
    if columns is None or not {"x", "y", "z", "label"} <= set(columns):
        raise InputError(f"{path}: not a markups fiducial file (no columns header with x,y,z,label)")
    df = pd.read_csv(_io.StringIO("\n".join(body)), header=None, names=columns,
                     usecols=range(len(columns)))
    pts = df[["x", "y", "z"]].to_numpy(dtype=np.float64)
    if lps:
        pts[:, :2] *= -1.0
    if not np.isfinite(pts).all() or len(pts) == 0:
        raise InputError(f"{path}: no valid fiducials")
    labels = [str(v).strip() for v in df["label"]]
    if "desc" in df.columns and all(v.isdigit() for v in labels):
        # AFIDs files put the fiducial number in `label` and its name in `desc`
        descs = [str(v).strip() for v in df["desc"]]
        if all(d and d != "nan" for d in descs):
            return descs, pts
    return labels, pts


def _totalseg_names(path) -> dict:
    """``{id: name}`` of TotalSegmentator's "total" task from its ``map_to_binary.py``."""
    tree = ast.parse(Path(path).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map"
                                                for t in node.targets):
            for key, val in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value == "total":
                    return {int(k): str(v) for k, v in ast.literal_eval(val).items()}
    raise InputError(f"{path}: no class_map['total'] found")


def _border_median(image) -> float:
    faces = [image[0], image[-1], image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]]
    return float(np.median(np.concatenate([f.ravel() for f in faces])))


def _need(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"{path}: resource missing (run `vtn fetch --out {path.parent.parent}`)")
    return path


def load_base(organ: str, resources, brain_factor: int = 3) -> Base:
    """Load the base anatomy of ``organ`` from a resources folder written by ``vtn fetch``.

    Args:
        organ: ``"liver"`` or ``"brain"``.
        resources: folder with ``totalsegmentator/`` (liver) or ``deepmriprep/`` and
            ``autoafids/`` (brain).
        brain_factor: block-averaging factor applied to the 0.5 mm brain template (3 -> 1.5 mm).
    """
    res = Path(resources)
    if organ == "liver":
        d = res / "totalsegmentator"
        ct_path, seg_path = _need(d / "example_ct.nii.gz"), _need(d / "example_seg_fast_force_split.nii.gz")
        image, affine = load_volume(ct_path, dtype=np.float32)
        labels, seg_aff = load_volume(seg_path, dtype=None)
        if labels.shape != image.shape or not np.allclose(seg_aff, affine, atol=1e-4):
            raise InputError(f"{seg_path}: grid differs from {ct_path}")
        labels = np.rint(labels).astype(np.uint8)
        names_all = _totalseg_names(_need(d / "map_to_binary.py"))
        present = [int(v) for v in np.unique(labels) if v != 0]
        label_names = {i: names_all.get(i, f"label_{i}") for i in present}
        lm_names, lm = liver_landmarks(labels, affine)
        sources = {"image": str(ct_path), "labels": str(seg_path)}
    elif organ == "brain":
        d = res / "deepmriprep"
        tpl_path = _need(d / "Template_05mm_bet.nii.gz")
        lab_path, csv_path = _need(d / "lpba40.nii.gz"), _need(d / "lpba40.csv")
        fcsv = _need(res / "autoafids" / "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv")
        tpl, tpl_aff = load_volume(tpl_path, dtype=np.float32)
        f = int(brain_factor)
        shape = tuple(s // f for s in tpl.shape)
        crop = tpl[:shape[0] * f, :shape[1] * f, :shape[2] * f]
        image = crop.reshape(shape[0], f, shape[1], f, shape[2], f).mean(axis=(1, 3, 5))
        image = image.astype(np.float32)
        down = np.diag([f, f, f, 1.0]).astype(np.float64)
        down[:3, 3] = (f - 1) / 2.0
        affine = tpl_aff @ down
        lab, lab_aff = load_volume(lab_path, dtype=None)
        lab = np.rint(lab).astype(np.int64)
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
        src = apply_affine(np.linalg.inv(lab_aff) @ affine, grid.astype(np.float64))
        labels = nearest(lab, src, 0).reshape(shape).astype(np.uint8)
        import pandas as pd

        table = pd.read_csv(csv_path, sep=";")
        names_all = {int(r.ROIid): str(r.ROIname) for r in table.itertuples()}
        present = [int(v) for v in np.unique(labels) if v != 0]
        label_names = {i: names_all.get(i, f"label_{i}") for i in present}
        lm_names, lm = read_fcsv(fcsv)
        sources = {"image": str(tpl_path), "labels": str(lab_path), "landmarks": str(fcsv),
                   "brain_factor": f}
    else:
        raise InputError(f"unknown organ {organ!r} (liver or brain)")
    return Base(organ, image, labels, affine, lm_names, lm, label_names, _border_median(image),
                sources)
