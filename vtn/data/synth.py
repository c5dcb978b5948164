"""Embedded real-anatomy datasets: subjects made from one real anatomy by exactly known transforms.

These are **not** the paper's datasets (LiTS, SLIVER07, LPBA40 subjects, ADNI, ...), which no
registry ships; they are a stand-in built from the anatomy that pinned packages do ship (see
:mod:`vtn.data.resources`). Every subject ``s`` is the base anatomy pulled through a known
transform ``T_s`` (subject world point -> base world point, RAS mm)::

    z = M y + t                  affine (4x4 ``matrix``): rotation R and per-axis scale S about a
                                 centre c, plus a shift: M = R S, t = c - M c + shift
    T_s(y) = z + u(z)            u: cubic B-spline displacement (mm) on a control grid aligned with
                                 the base world axes (control spacing ~4-5 cm), defined in the base
                                 frame; |u| <= max |coefficient| per component

The B-spline coefficients are scaled so that the spectral norm of ``grad u`` stays <= 0.5 on a
dense sampling of the control domain, so ``z -> z + u(z)`` is a diffeomorphism (Jacobian
determinant ``det(M) det(I + grad u) > 0``, recorded as ``min_jacobian``) and its inverse is found
by the fixed-point iteration ``z <- b - u(z)`` (a contraction), then ``y = M^-1 (z - t)``.

Subject image = base image sampled at ``T_s(x)`` for every subject voxel ``x`` (trilinear, value
outside the base field of view = median of the base image's border voxels), subject labels = base
labels at ``T_s(x)`` (nearest neighbour, 0 outside), both on the base grid (same shape and
affine). Intensity changes are then applied to the image: a smooth multiplicative bias field
(exp of a random polynomial of degree 2), a gamma change, a contrast change about the mean and
Gaussian noise, all in the normalised intensity ``v = (I - lo) / (hi - lo)`` (liver: lo, hi =
-1024, 1024 HU; brain: 0, template maximum). Subject landmarks = ``T_s^-1(base landmark)``
(residual ``|T_s(l_s) - l_base|`` < 1e-6 mm is enforced). A draw whose landmarks leave the subject
grid is redrawn (same random stream, so still deterministic).

Base anatomies:

* **liver**: TotalSegmentator's ``example_ct.nii.gz`` (CT in HU, 122x101x112, 3 mm, RAS) and its
  model-predicted segmentation ``example_seg_fast_force_split.nii.gz``, written in full (61 labels,
  TotalSegmentator "total" ids: 1 spleen, 2 kidney_right, 3 kidney_left, 4 gallbladder, **5 liver**,
  6 stomach, 7 pancreas, 52 aorta, 63 inferior_vena_cava, 64 portal_vein_and_splenic_vein, ...;
  ``raw/labels.csv`` lists every id present with its name). Evaluation uses label 5 (liver). The
  top of the liver is cut by the CT's field of view. Landmarks (RAS mm, computed from the label
  map with the base affine; "extreme slab" = the liver voxels within 6 mm of the extreme
  coordinate along that world axis):

  - ``liver_centroid``: centroid of label 5;
  - ``liver_inferior_tip``: centroid of the most inferior (min z) slab of label 5;
  - ``liver_left_tip``: centroid of the leftmost (min x, RAS) slab of label 5 (left-lobe tip);
  - ``liver_right_lateral``: centroid of the rightmost (max x) slab of label 5;
  - ``liver_anterior``: centroid of the most anterior (max y) slab of label 5;
  - ``liver_posterior``: centroid of the most posterior (min y) slab of label 5;
  - ``gallbladder_centroid``: centroid of label 4;
  - ``kidney_right_centroid``: centroid of label 2;
  - ``portal_splenic_vein_centroid``: centroid of label 64.

  The liver superior extreme is not used (it lies on the field-of-view cut).
* **brain**: the CAT12 skull-stripped T1 template ``Template_05mm_bet.nii.gz`` (deepmriprep; MNI
  space, 0.5 mm) block-averaged by 3 to 1.5 mm (113x137x113), with the LPBA40 56-structure
  maximum-probability atlas (``lpba40.nii.gz``, 1 mm, original LPBA40 ids 21..182) resampled to
  that grid by nearest neighbour in world coordinates. Landmarks = the 32 AFIDs anatomical
  fiducials of autoafids' ``tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv`` (RAS mm,
  names from the file). The AFIDs were placed on MNI152NLin2009cAsym; the CAT12 template is in the
  same MNI frame but is a different template (its intensity correlates with MNI152NLin2009cAsym at
  r = 0.75 and peaks at zero shift), so a fiducial can sit ~1-3 mm off its anatomical structure
  in the base. This does not affect the ground truth: landmarks are carried by the exact
  transforms, so landmark errors measure registration error exactly, only the anatomical name of
  a point is approximate.

Outputs of :func:`make_embedded` in ``raw/``: ``<sid>_image.nii.gz`` (float32),
``<sid>_seg.nii.gz`` (uint8 labels), ``<sid>_landmarks.csv`` (``name,x,y,z`` RAS mm),
``<sid>_transform.npz`` (see :meth:`SubjectTransform.save`), ``subjects.csv``, ``labels.csv``
(``label,name``) and ``dataset.json`` (provenance, parameters, per-subject checks and timings).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vtn.io import (InputError, atomic_write, atomic_write_json, load_raw_landmarks, load_volume, read_pairs,
                    read_subjects, save_disp_l2r, save_volume)

__all__ = [
    "ORGANS",
    "LIVER_LABEL",
    "BSplineField",
    "SubjectTransform",
    "Base",
    "load_base",
    "liver_landmarks",
    "read_fcsv",
    "random_transform",
    "make_subject",
    "make_embedded",
    "ground_truth_disp",
    "ground_truth",
    "figure_subjects",
    "cli_make_embedded",
    "cli_ground_truth",
]

LIVER_LABEL = 5
_PAD = 3  # zero control points added on each side before cubic evaluation

#: Random-transform and intensity parameters per organ (angles in degrees, lengths in mm).
ORGANS = {
    "liver": {
        "rotation_deg": 18.0, "scale": (0.8, 1.2), "shift_mm": 20.0,
        "cp_spacing_mm": 50.0, "cp_sigma_mm": 4.0, "cp_max_mm": 10.0, "max_grad": 0.5,
        "bias": 0.05, "gamma": (0.97, 1.03), "contrast": (0.95, 1.05), "noise": (0.004, 0.008),
        "window": (-1024.0, 1024.0), "centre": "liver",
    },
    "brain": {
        "rotation_deg": 5.0, "scale": (0.95, 1.05), "shift_mm": 5.0,
        "cp_spacing_mm": 40.0, "cp_sigma_mm": 2.0, "cp_max_mm": 5.0, "max_grad": 0.5,
        "bias": 0.15, "gamma": (0.8, 1.25), "contrast": (0.9, 1.1), "noise": (0.01, 0.02),
        "window": None, "centre": "fov",
    },
}

LIVER_LANDMARKS = (
    "liver_centroid", "liver_inferior_tip", "liver_left_tip", "liver_right_lateral",
    "liver_anterior", "liver_posterior", "gallbladder_centroid", "kidney_right_centroid",
    "portal_splenic_vein_centroid",
)


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------

def _apply_affine(matrix, pts):
    """``(N, 3)`` points through a 4x4 homogeneous matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:3, :3].T + m[:3, 3]


@dataclass(frozen=True)
class BSplineField:
    """Cubic B-spline displacement field in world mm.

    ``u(p) = sum_k c_k B3((p - origin) / spacing - k)`` (tensor product, per component), with
    coefficients outside the control grid equal to zero.

    Attributes:
        coeffs: ``(3, nx, ny, nz)`` control-point displacements, mm (component k along world axis k).
        origin: ``(3,)`` world position (mm) of control point ``(0, 0, 0)``.
        spacing: ``(3,)`` control-point spacing, mm.
    """

    coeffs: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray

    def __call__(self, pts) -> np.ndarray:
        """Displacement at ``(N, 3)`` world points (mm); returns ``(N, 3)`` mm."""
        from scipy.ndimage import map_coordinates

        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        if not np.any(self.coeffs):
            return np.zeros_like(pts)
        coords = ((pts - self.origin) / self.spacing + _PAD).T
        padded = np.pad(self.coeffs, ((0, 0),) + ((_PAD, _PAD),) * 3)
        return np.stack([map_coordinates(padded[k], coords, order=3, prefilter=False,
                                         mode="nearest") for k in range(3)], axis=1)

    def jacobian_stats(self, step_fraction: float = 0.25):
        """Max spectral norm of ``grad u`` and min ``det(I + grad u)`` on a dense sampling.

        The field is sampled every ``step_fraction * spacing`` over the control grid extended by
        two spacings on each side (beyond that it is zero) and differentiated with central differences.

        Returns:
            ``(max_norm, min_det)``.
        """
        n = np.asarray(self.coeffs.shape[1:])
        step = self.spacing * step_fraction
        axes = [self.origin[k] + np.arange(-2 * self.spacing[k], (n[k] + 1) * self.spacing[k]
                                           + 1e-9, step[k]) for k in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        u = self(grid.reshape(-1, 3)).reshape(grid.shape)
        grads = np.stack(np.gradient(u, *step, axis=(0, 1, 2)), axis=-1)  # (..., comp, axis)
        grads = grads.reshape(-1, 3, 3)
        norm = float(np.linalg.norm(grads, ord=2, axis=(1, 2)).max())
        det = float(np.linalg.det(np.eye(3) + grads).min())
        return norm, det


@dataclass
class SubjectTransform:
    """The exactly known transform ``T_s``: subject world point -> base world point (RAS mm).

    ``T_s(y) = z + u(z)`` with ``z = matrix @ [y, 1]``.

    Attributes:
        matrix: 4x4 affine part (subject world mm -> intermediate world mm).
        bspline: displacement ``u`` defined in the base world frame.
        base_affine, base_shape: the base image grid (voxel -> RAS mm).
        subject_affine, subject_shape: the subject image grid.
    """

    matrix: np.ndarray
    bspline: BSplineField
    base_affine: np.ndarray
    base_shape: tuple
    subject_affine: np.ndarray
    subject_shape: tuple
    info: dict = field(default_factory=dict)

    def forward(self, pts) -> np.ndarray:
        """``T_s`` at ``(N, 3)`` subject world points (mm) -> ``(N, 3)`` base world points."""
        z = _apply_affine(self.matrix, np.asarray(pts, dtype=np.float64).reshape(-1, 3))
        return z + self.bspline(z)

    def inverse(self, pts, tol: float = 1e-6, max_iter: int = 200):
        """``T_s^-1`` at ``(N, 3)`` base world points (mm), by fixed-point iteration.

        Solves ``z + u(z) = b`` with ``z <- b - u(z)`` (a contraction: ``|grad u| <= 0.5``) until
        ``|z + u(z) - b| < tol`` for every point, then ``y = M^-1 (z - t)``.

        Returns:
            ``(y (N, 3) subject world mm, max residual |z + u(z) - b| in mm)``.

        Raises:
            RuntimeError: no convergence within ``max_iter`` iterations.
        """
        b = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        z = b.copy()
        active = np.arange(len(b))
        max_res = 0.0
        for _ in range(max_iter):
            if active.size == 0:
                break
            u = self.bspline(z[active])
            res = np.linalg.norm(z[active] + u - b[active], axis=1)
            done = res < tol
            if done.any():
                max_res = max(max_res, float(res[done].max()))
            todo = active[~done]
            z[todo] = b[todo] - u[~done]
            active = todo
        else:
            if active.size:
                raise RuntimeError(f"inverse transform did not converge for {active.size} points")
        if np.array_equal(self.matrix, np.eye(4)):
            return z, max_res
        return _apply_affine(np.linalg.inv(self.matrix), z), max_res

    def save(self, path) -> None:
        """Write everything needed to evaluate ``T_s`` and ``T_s^-1`` to an ``.npz`` file.

        Keys: ``matrix`` (4x4), ``bspline_coeffs`` (3, nx, ny, nz) mm, ``bspline_origin`` (3,)
        mm, ``bspline_spacing`` (3,) mm, ``bspline_order`` (3), ``base_affine``, ``base_shape``,
        ``subject_affine``, ``subject_shape``, ``convention`` (text), ``info`` (JSON text).
        """
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                matrix=np.asarray(self.matrix, dtype=np.float64),
                bspline_coeffs=np.asarray(self.bspline.coeffs, dtype=np.float64),
                bspline_origin=np.asarray(self.bspline.origin, dtype=np.float64),
                bspline_spacing=np.asarray(self.bspline.spacing, dtype=np.float64),
                bspline_order=np.int64(3),
                base_affine=np.asarray(self.base_affine, dtype=np.float64),
                base_shape=np.asarray(self.base_shape, dtype=np.int64),
                subject_affine=np.asarray(self.subject_affine, dtype=np.float64),
                subject_shape=np.asarray(self.subject_shape, dtype=np.int64),
                convention=np.array(
                    "T(y) = z + u(z), z = matrix @ [y,1]; y subject world RAS mm, T(y) base world "
                    "RAS mm; u(p) = sum_k c_k B3((p - bspline_origin)/bspline_spacing - k), "
                    "cubic B-spline, zero outside the control grid"),
                info=np.array(json.dumps(self.info, sort_keys=True, default=float)),
            )

    @classmethod
    def load(cls, path) -> "SubjectTransform":
        """Read a transform written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: transform file not found")
        try:
            with np.load(path) as d:
                bs = BSplineField(d["bspline_coeffs"], d["bspline_origin"], d["bspline_spacing"])
                return cls(d["matrix"], bs, d["base_affine"], tuple(int(v) for v in d["base_shape"]),
                           d["subject_affine"], tuple(int(v) for v in d["subject_shape"]),
                           json.loads(str(d["info"])))
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(f"{path}: not a subject transform ({exc})") from exc


def _rotation(angles_deg) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


def _control_grid(affine, shape, spacing_mm):
    """Origin and size of a world-aligned control grid covering an image with one extra point."""
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)], dtype=np.float64)
    world = _apply_affine(affine, corners)
    lo, hi = world.min(0), world.max(0)
    spacing = np.full(3, float(spacing_mm))
    size = np.ceil((hi - lo) / spacing).astype(int) + 3
    return lo - spacing, spacing, tuple(int(s) for s in size)


def random_transform(rng, params, base_affine, base_shape, centre) -> SubjectTransform:
    """Draw a random affine + B-spline transform (see the module docstring).

    Args:
        rng: ``numpy.random.Generator``.
        params: an entry of :data:`ORGANS`.
        base_affine, base_shape: base grid (the subject grid is the same).
        centre: ``(3,)`` world point (mm) about which rotation and scaling act.
    """
    angles = rng.uniform(-params["rotation_deg"], params["rotation_deg"], 3)
    scales = rng.uniform(*params["scale"], 3)
    shift = rng.uniform(-params["shift_mm"], params["shift_mm"], 3)
    lin = _rotation(angles) @ np.diag(scales)
    matrix = np.eye(4)
    matrix[:3, :3] = lin
    matrix[:3, 3] = centre - lin @ centre + shift
    origin, spacing, size = _control_grid(base_affine, base_shape, params["cp_spacing_mm"])
    coeffs = np.clip(rng.normal(0.0, params["cp_sigma_mm"], (3,) + size),
                     -params["cp_max_mm"], params["cp_max_mm"])
    bs = BSplineField(coeffs, origin, spacing)
    norm, det = bs.jacobian_stats()
    if norm > params["max_grad"]:
        bs = BSplineField(coeffs * (params["max_grad"] / norm), origin, spacing)
        norm, det = bs.jacobian_stats()
    if det <= 0:  # cannot happen with norm <= 0.5 < 1, kept as a guard
        raise RuntimeError(f"B-spline displacement folds (min det {det})")
    info = {"rotation_deg": angles.tolist(), "scale": scales.tolist(), "shift_mm": shift.tolist(),
            "centre_mm": np.asarray(centre, dtype=float).tolist(), "max_grad_u": norm,
            "min_det_I_plus_grad_u": det, "min_jacobian": det * float(np.linalg.det(lin)),
            "max_abs_u_bound_mm": float(np.abs(bs.coeffs).max())}
    return SubjectTransform(matrix, bs, np.asarray(base_affine, dtype=np.float64),
                            tuple(base_shape), np.asarray(base_affine, dtype=np.float64),
                            tuple(base_shape), info)


# --------------------------------------------------------------------------------------------
# base anatomies
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


def _voxel_world(affine, mask):
    idx = np.argwhere(mask).astype(np.float64)
    return _apply_affine(affine, idx)


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
        pts = _voxel_world(affine, labels == label)
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
        src = _apply_affine(np.linalg.inv(lab_aff) @ affine, grid.astype(np.float64))
        labels = _nearest(lab, src, 0).reshape(shape).astype(np.uint8)
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


# --------------------------------------------------------------------------------------------
# subjects
# --------------------------------------------------------------------------------------------

def _nearest(volume, coords, fill):
    """Nearest-neighbour lookup of ``volume`` at ``(N, 3)`` voxel coordinates (round half up)."""
    idx = np.floor(coords + 0.5).astype(np.int64)
    shape = np.asarray(volume.shape)
    inside = ((idx >= 0) & (idx < shape)).all(axis=1)
    out = np.full(len(coords), fill, dtype=volume.dtype)
    ii = idx[inside]
    out[inside] = volume[ii[:, 0], ii[:, 1], ii[:, 2]]
    return out


def _grid_world(affine, shape):
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"),
                    axis=-1).reshape(-1, 3)
    return _apply_affine(affine, grid)


def _intensity(image, rng, params, base_max):
    """Bias field, gamma, contrast and noise in normalised intensity (module docstring)."""
    lo, hi = params["window"] if params["window"] is not None else (0.0, float(base_max))
    shape = image.shape
    coords = [np.linspace(-1.0, 1.0, n).reshape([-1 if a == k else 1 for a in range(3)])
              for k, n in enumerate(shape)]
    field_ = np.zeros(shape)
    for i in range(3):
        for j in range(3 - i):
            for k in range(3 - i - j):
                if i + j + k:
                    field_ = field_ + rng.normal() * coords[0] ** i * coords[1] ** j * coords[2] ** k
    peak = np.abs(field_).max()
    amp = np.log1p(params["bias"]) * rng.uniform(0.5, 1.0)
    bias = np.exp(field_ * (amp / peak if peak > 0 else 0.0))
    gamma = rng.uniform(*params["gamma"])
    contrast = rng.uniform(*params["contrast"])
    sigma = rng.uniform(*params["noise"])
    v = np.clip((image.astype(np.float64) - lo) / (hi - lo), 0.0, None) ** gamma
    v = v * bias
    m = v.mean()
    v = m + contrast * (v - m)
    v = v + rng.normal(0.0, sigma, shape)
    v = np.clip(v, 0.0, None)
    out = (lo + v * (hi - lo)).astype(np.float32)
    return out, {"gamma": gamma, "contrast": contrast, "noise_sigma": sigma,
                 "bias_max_abs_log": float(amp), "window": [lo, hi]}


def _centre(base: Base, params) -> np.ndarray:
    if params["centre"] == "liver":
        return _voxel_world(base.affine, base.labels == LIVER_LABEL).mean(0)
    shape = np.asarray(base.image.shape, dtype=np.float64)
    return _apply_affine(base.affine, ((shape - 1) / 2.0)[None])[0]


def make_subject(base: Base, seed: int, index: int, params=None, max_draws: int = 20):
    """Generate one subject from ``base``.

    Args:
        base: base anatomy.
        seed: dataset seed; subject ``index`` draws from ``SeedSequence([seed, index])`` so a
            subject does not depend on how many others are generated.
        index: subject index.
        params: transform/intensity parameters (default ``ORGANS[base.organ]``).
        max_draws: redraws allowed when a landmark leaves the subject grid.

    Returns:
        dict with ``image`` (float32), ``labels`` (uint8), ``affine``, ``landmarks`` ((N, 3) mm),
        ``transform`` (:class:`SubjectTransform`), ``info``.
    """
    params = ORGANS[base.organ] if params is None else params
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    centre = _centre(base, params)
    shape = base.image.shape
    inv_aff = np.linalg.inv(base.affine)
    for draw in range(max_draws):
        tf = random_transform(rng, params, base.affine, shape, centre)
        lm, res = tf.inverse(base.landmarks, tol=1e-9)
        check = float(np.linalg.norm(tf.forward(lm) - base.landmarks, axis=1).max())
        vox = _apply_affine(inv_aff, lm)
        if ((vox >= 0) & (vox <= np.asarray(shape) - 1)).all():
            break
    else:
        raise RuntimeError(f"subject {index}: landmarks left the field of view in {max_draws} draws")
    if check > 1e-6:
        raise RuntimeError(f"subject {index}: landmark inverse residual {check} mm")
    from scipy.ndimage import map_coordinates

    src = _apply_affine(inv_aff, tf.forward(_grid_world(tf.subject_affine, shape)))
    image = map_coordinates(base.image, src.T, order=1, mode="constant", cval=base.fill)
    labels = _nearest(base.labels, src, 0).reshape(shape)
    image, inten = _intensity(image.reshape(shape), rng, params, float(base.image.max()))
    info = dict(tf.info)
    info.update({"draws": draw + 1, "landmark_residual_mm": check, "intensity": inten})
    tf.info = info
    return {"image": image, "labels": labels, "affine": tf.subject_affine, "landmarks": lm,
            "transform": tf, "info": info}


def _save_landmarks_mm(path, names, pts) -> None:
    import pandas as pd

    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    df = pd.DataFrame({"name": list(names), "x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]})
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, float_format="%.6f")


def make_embedded(organ: str, resources, n: int, seed: int, out, prefix: str | None = None,
                  figure=None, brain_factor: int = 3, params=None) -> list:
    """Generate an embedded dataset (see the module docstring for the files written).

    Args:
        organ: ``"liver"`` or ``"brain"``.
        resources: folder written by ``vtn fetch``.
        n: number of subjects.
        seed: random seed (same seed -> identical subjects).
        out: output folder (``raw/``).
        prefix: subject-id prefix (default ``organ``); ids are ``f"{prefix}{index:03d}"``.
        figure: optional PNG path for :func:`figure_subjects`.
        brain_factor: downsampling factor of the 0.5 mm brain template.
        params: override of ``ORGANS[organ]``.

    Returns:
        list of per-subject dicts (``subject``, ``seconds``, transform checks).
    """
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_base(organ, resources, brain_factor=brain_factor)
    params = dict(ORGANS[organ] if params is None else params)
    prefix = organ if prefix is None else prefix
    rows, records = [], []
    for index in range(n):
        sid = f"{prefix}{index:03d}"
        t0 = time.perf_counter()
        subj = make_subject(base, seed, index, params)
        save_volume(out / f"{sid}_image.nii.gz", subj["image"], subj["affine"])
        save_volume(out / f"{sid}_seg.nii.gz", subj["labels"], subj["affine"])
        _save_landmarks_mm(out / f"{sid}_landmarks.csv", base.landmark_names, subj["landmarks"])
        subj["transform"].save(out / f"{sid}_transform.npz")
        seconds = time.perf_counter() - t0
        rows.append({"subject": sid, "image": f"{sid}_image.nii.gz", "seg": f"{sid}_seg.nii.gz",
                     "landmarks": f"{sid}_landmarks.csv"})
        records.append({"subject": sid, "seconds": seconds, **subj["info"]})
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "subjects.csv", index=False)
    pd.DataFrame({"label": list(base.label_names), "name": list(base.label_names.values())}).to_csv(
        out / "labels.csv", index=False)
    atomic_write_json(out / "dataset.json", {
        "organ": organ, "seed": int(seed), "n": int(n), "prefix": prefix,
        "note": "embedded dataset made from one real anatomy by known transforms; "
                "not the paper's data",
        "base": {"sources": base.sources, "shape": list(base.image.shape),
                 "affine": base.affine.tolist(), "fill": base.fill,
                 "landmarks": dict(zip(base.landmark_names, base.landmarks.tolist())),
                 "evaluation_label": LIVER_LABEL if organ == "liver" else "all LPBA40 ids"},
        "params": params, "subjects": records,
    })
    if figure is not None:
        figure_subjects(out, figure)
    return records


# --------------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------------

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
    w_f = _apply_affine(g_f, x)
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


def _gt_pair(raw: Path, prep: Path, out: Path, subjects: dict, f: str, m: str, tol: float) -> dict:
    t0 = time.perf_counter()
    tf_f, aff_f, p2r_f, shape_f, prep_aff_f = _gt_subject(raw, prep, subjects, f)
    tf_m, aff_m, p2r_m, _, _ = _gt_subject(raw, prep, subjects, m)
    disp, res = ground_truth_disp(tf_f, tf_m, aff_f, aff_m, p2r_f, p2r_m, shape_f, tol=tol)
    save_disp_l2r(out / f"disp_{f}_{m}.nii.gz", disp, prep_aff_f)
    return {"fixed": f, "moving": m, "max_inverse_residual_mm": res,
            "seconds": time.perf_counter() - t0}


def ground_truth(raw, prep, pairs, out, tol: float = 1e-5, jobs: int = 1) -> list:
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
            futures = [pool.submit(_gt_pair, raw, prep, out, subjects, f, m, tol)
                       for f, m in pair_list]
            log = [fut.result() for fut in futures]
    else:
        log = [_gt_pair(raw, prep, out, subjects, f, m, tol) for f, m in pair_list]
    pd.DataFrame(log, columns=["fixed", "moving", "max_inverse_residual_mm", "seconds"]).to_csv(
        out / "ground_truth.csv", index=False)
    return log


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------

def figure_subjects(raw_dir, out_png, n: int = 4) -> Path:
    """Figure of the first ``n`` generated subjects: three orthogonal sections each.

    Sections pass through the mean of the subject's landmarks; label boundaries are drawn in
    colour (liver, label 5, in red for the liver dataset) and landmarks within 2 voxels of a
    section are marked. Images are shown in the closest canonical (RAS) orientation.
    """
    import nibabel as nib

    from vtn.report.figures import _plt, save_figure

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
            vox = _apply_affine(np.linalg.inv(img.affine), pts)
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


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def cli_make_embedded(argv=None) -> int:
    """``vtn make-embedded --organ liver|brain --resources R --n N --seed S --out raw/``."""
    p = argparse.ArgumentParser(prog="vtn make-embedded",
                                description="generate an embedded (real-anatomy) dataset")
    p.add_argument("--organ", required=True, choices=sorted(ORGANS))
    p.add_argument("--resources", required=True, help="folder written by `vtn fetch`")
    p.add_argument("--n", type=int, required=True, help="number of subjects")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output raw/ folder")
    p.add_argument("--prefix", default=None, help="subject id prefix (default: the organ)")
    p.add_argument("--figure", default=None, help="optional PNG of a few generated subjects")
    p.add_argument("--brain-factor", type=int, default=3,
                   help="block-averaging factor of the 0.5 mm brain template (default 3 = 1.5 mm)")
    a = p.parse_args(argv)
    try:
        recs = make_embedded(a.organ, a.resources, a.n, a.seed, a.out, prefix=a.prefix,
                             figure=a.figure, brain_factor=a.brain_factor)
    except (InputError, RuntimeError) as exc:
        print(f"vtn make-embedded: error: {exc}", file=sys.stderr)
        return 1
    secs = [r["seconds"] for r in recs]
    print(f"{len(recs)} {a.organ} subjects -> {a.out} ({np.mean(secs):.2f} s per subject)")
    return 0


def cli_ground_truth(argv=None) -> int:
    """``vtn ground-truth --raw raw/ --prep prep/ --pairs pairs.csv --out gt/``."""
    p = argparse.ArgumentParser(prog="vtn ground-truth",
                                description="ground-truth displacements of embedded test pairs")
    p.add_argument("--raw", required=True)
    p.add_argument("--prep", required=True)
    p.add_argument("--pairs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", type=int, default=1, help="pairs computed in parallel processes")
    a = p.parse_args(argv)
    try:
        log = ground_truth(a.raw, a.prep, a.pairs, a.out, jobs=a.jobs)
    except (InputError, RuntimeError) as exc:
        print(f"vtn ground-truth: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(log)} ground-truth displacements -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_make_embedded())
