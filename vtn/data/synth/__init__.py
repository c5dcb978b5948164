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

Modules: :mod:`~vtn.data.synth.transforms` (the transforms ``T_s``),
:mod:`~vtn.data.synth.anatomy` (the base anatomies), :mod:`~vtn.data.synth.generator`
(``vtn make-embedded``), :mod:`~vtn.data.synth.ground_truth` (``vtn ground-truth``); the figure
of a dataset is :func:`vtn.report.figures.figure_subjects`.

Outputs of :func:`make_embedded` in ``raw/``: ``<sid>_image.nii.gz`` (float32),
``<sid>_seg.nii.gz`` (uint8 labels), ``<sid>_landmarks.csv`` (``name,x,y,z`` RAS mm),
``<sid>_transform.npz`` (see :meth:`SubjectTransform.save`), ``subjects.csv``, ``labels.csv``
(``label,name``) and ``dataset.json`` (provenance, parameters, per-subject checks and timings).
"""

from __future__ import annotations

from vtn.data.synth.anatomy import LIVER_LABEL, Base, liver_landmarks, load_base, read_fcsv
from vtn.data.synth.generator import ORGANS, make_embedded, make_subject
from vtn.data.synth.generator import cli as cli_make_embedded
from vtn.data.synth.ground_truth import cli as cli_ground_truth
from vtn.data.synth.ground_truth import ground_truth, ground_truth_disp
from vtn.data.synth.transforms import BSplineField, SubjectTransform, random_transform

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
    "cli_make_embedded",
    "cli_ground_truth",
]
