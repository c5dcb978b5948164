"""Tests of the embedded-dataset generator and ground truth (vtn.data.synth).

Small synthetic base anatomies are written into a fake resources folder, so nothing here needs
the real download except the tests marked slow. Transforms are re-evaluated with SimpleITK's
``BSplineTransform`` as an independent implementation of the cubic B-spline.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from vtn.data import synth
from vtn.functional import sample_flow
from vtn.io import InputError, load_disp_l2r

REAL_RESOURCES = Path(__file__).resolve().parents[1] / "resources"

# liver fake: 4 mm voxels, RAS, offset origin
LIVER_AFFINE = np.array([[4.0, 0, 0, -60.0], [0, 4.0, 0, -50.0], [0, 0, 4.0, -40.0], [0, 0, 0, 1]])
LIVER_SHAPE = (30, 26, 28)


def _ellipsoid(shape, centre, radii):
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return (((g - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def make_fake_liver_resources(root: Path) -> Path:
    d = root / "totalsegmentator"
    d.mkdir(parents=True)
    lab = np.zeros(LIVER_SHAPE, np.uint8)
    lab[_ellipsoid(LIVER_SHAPE, (17, 13, 15), (6, 5, 5))] = 5
    lab[_ellipsoid(LIVER_SHAPE, (12, 15, 12), (1.5, 1.5, 1.5))] = 4
    lab[_ellipsoid(LIVER_SHAPE, (20, 8, 10), (2, 2, 3))] = 2
    lab[_ellipsoid(LIVER_SHAPE, (11, 10, 15), (3, 1.2, 1.2))] = 64
    lab[_ellipsoid(LIVER_SHAPE, (8, 12, 18), (2, 3, 2))] = 1
    body = _ellipsoid(LIVER_SHAPE, (14.5, 12.5, 13.5), (13, 11, 40))
    hu = np.where(body, 20.0, -1000.0)
    hu = hu + np.where(lab == 5, 60, 0) + np.where(lab == 4, -10, 0) + np.where(lab == 2, 150, 0)
    hu = hu + np.where(lab == 64, 200, 0) + np.where(lab == 1, 90, 0)
    nib.save(nib.Nifti1Image(hu.astype(np.int32), LIVER_AFFINE), str(d / "example_ct.nii.gz"))
    nib.save(nib.Nifti1Image(lab, LIVER_AFFINE), str(d / "example_seg_fast_force_split.nii.gz"))
    (d / "map_to_binary.py").write_text(
        'class_map = {\n  "total_v1": {1: "x"},\n  "total": {1: "spleen", 2: "kidney_right", '
        '4: "gallbladder", 5: "liver", 64: "portal_vein_and_splenic_vein"},\n}\n')
    return root


def make_fake_brain_resources(root: Path) -> Path:
    d = root / "deepmriprep"
    d.mkdir(parents=True)
    tshape = (48, 54, 45)
    taff = np.array([[0.5, 0, 0, -12.0], [0, 0.5, 0, -14.0], [0, 0, 0.5, -11.0], [0, 0, 0, 1]])
    g = np.stack(np.meshgrid(*[np.arange(n) for n in tshape], indexing="ij"), -1)
    tpl = np.clip(200 - ((g - np.array([24, 27, 22])) ** 2).sum(-1) / 3.0, 0, 255).astype(np.uint8)
    img = nib.Nifti1Image(tpl, taff)
    img.header.set_slope_inter(1 / 255.0, 0.0)
    nib.save(img, str(d / "Template_05mm_bet.nii.gz"))
    # LPBA-like atlas on a 1 mm LAS grid, origin offset by 0.3 mm so no rounding ties arise
    lshape = (26, 29, 24)
    laff = np.array([[-1.0, 0, 0, 12.3], [0, 1.0, 0, -14.3], [0, 0, 1.0, -11.3], [0, 0, 0, 1]])
    lab = np.zeros(lshape, np.uint8)
    lab[2:12, 3:25, 4:20] = 21
    lab[12:24, 3:25, 4:20] = 22
    lab[8:16, 10:18, 8:14] = 161
    nib.save(nib.Nifti1Image(lab, laff), str(d / "lpba40.nii.gz"))
    (d / "lpba40.csv").write_text("ROIid;ROIabbr;ROIname;Vgm;Vwm;Vcsf;ROIbase\n"
                                  "21;a;Left A;1;1;0;\n22;b;Right B;1;1;0;\n161;c;Center C;1;1;0;\n")
    a = root / "autoafids"
    a.mkdir()
    (a / "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv").write_text(
        "# Markups fiducial file version = 4.6\n# CoordinateSystem = 0\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "n_1,0.5,1.0,-0.5,0,0,0,1,1,1,0,1,AC,vol\n"
        "n_2,-0.2,-3.0,0.4,0,0,0,1,1,1,0,2,PC,vol\n"
        "n_3,3.0,-1.0,2.0,0,0,0,1,1,1,0,3,R superior LMS,vol\n")
    return root


@pytest.fixture(scope="module")
def liver_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("liver")
    res = make_fake_liver_resources(root / "resources")
    out = root / "raw"
    synth.make_embedded("liver", res, 3, 7, out)
    return res, out


def _itk_forward(npz_path, pts):
    """Independent evaluation of T_s: affine from the npz, B-spline with SimpleITK."""
    with np.load(npz_path) as d:
        matrix, c = d["matrix"], d["bspline_coeffs"]
        o, s = d["bspline_origin"], d["bspline_spacing"]
    c = np.pad(c, ((0, 0),) + ((3, 3),) * 3)  # same field, domain large enough for every point
    o = o - 3 * s
    mesh = np.array(c.shape[1:]) - 3
    tx = sitk.BSplineTransform(3, 3)
    tx.SetTransformDomainOrigin((o + s).tolist())
    tx.SetTransformDomainPhysicalDimensions((mesh * s).tolist())
    tx.SetTransformDomainMeshSize([int(m) for m in mesh])
    tx.SetTransformDomainDirection(np.eye(3).ravel().tolist())
    tx.SetParameters(np.concatenate([c[k].ravel(order="F") for k in range(3)]).tolist())
    z = pts @ matrix[:3, :3].T + matrix[:3, 3]
    return np.array([tx.TransformPoint(p) for p in z.tolist()])


def test_bspline_matches_explicit_sum_and_simpleitk(tmp_path):
    rng = np.random.default_rng(0)
    n, s, o = (7, 8, 6), np.array([10.0, 12.0, 9.0]), np.array([-30.0, -40.0, -20.0])
    bs = synth.BSplineField(rng.normal(0, 3, (3,) + n), o, s)
    pts = rng.uniform(-40, 50, (300, 3))  # includes points outside the control grid
    got = bs(pts)
    # explicit tensor-product cubic B-spline with zero coefficients outside the grid
    t = (pts - o) / s
    i0 = np.floor(t).astype(int)
    f = t - i0

    def w(u):
        return np.stack([(1 - u) ** 3 / 6, (3 * u**3 - 6 * u**2 + 4) / 6,
                         (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6, u**3 / 6], -1)

    wx, wy, wz = w(f[:, 0]), w(f[:, 1]), w(f[:, 2])
    ref = np.zeros_like(pts)
    for a in range(4):
        for b in range(4):
            for c in range(4):
                idx = i0 + np.array([a, b, c]) - 1
                ok = ((idx >= 0) & (idx < np.array(n))).all(1)
                coef = np.zeros((len(pts), 3))
                coef[ok] = bs.coeffs[:, idx[ok, 0], idx[ok, 1], idx[ok, 2]].T
                ref += (wx[:, a] * wy[:, b] * wz[:, c])[:, None] * coef
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert np.abs(ref).max() > 1.0 and np.abs(ref).min() == 0.0
    # SimpleITK's BSplineTransform, through a saved transform file
    tf = synth.SubjectTransform(np.eye(4), bs, np.eye(4), (1, 1, 1), np.eye(4), (1, 1, 1))
    tf.save(tmp_path / "t.npz")
    np.testing.assert_allclose(_itk_forward(tmp_path / "t.npz", pts) - pts, ref, atol=1e-10)
    # inverse
    y, res = tf.inverse(tf.forward(pts), tol=1e-10)
    np.testing.assert_allclose(y, pts, atol=1e-8)
    assert res < 1e-10


def test_liver_landmark_definitions():
    aff = np.array([[2.0, 0, 0, 10], [0, 3.0, 0, -5], [0, 0, 4.0, 1], [0, 0, 0, 1]])
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[4:10, 5:12, 6:15] = 5  # box: x 18..28 (step 2), y 10..28 (step 3), z 25..57 (step 4)
    lab[15, 15, 15] = 4
    lab[16:18, 2, 2] = 2
    lab[1, 1, 1:4] = 64
    names, pts = synth.liver_landmarks(lab, aff)
    d = dict(zip(names, pts))
    np.testing.assert_allclose(d["liver_centroid"], [10 + 2 * 6.5, -5 + 3 * 8, 1 + 4 * 10])
    # slabs of 6 mm: inferior z <= 25+6 -> k = 6 (z=25) and 7 (z=29)
    np.testing.assert_allclose(d["liver_inferior_tip"], [23.0, 19.0, 27.0])
    np.testing.assert_allclose(d["liver_left_tip"], [21.0, 19.0, 41.0])       # x 18..24
    np.testing.assert_allclose(d["liver_right_lateral"], [25.0, 19.0, 41.0])  # x 22..28
    np.testing.assert_allclose(d["liver_anterior"], [23.0, 25.0, 41.0])       # y 22..28
    np.testing.assert_allclose(d["liver_posterior"], [23.0, 13.0, 41.0])      # y 10..16
    np.testing.assert_allclose(d["gallbladder_centroid"], [40.0, 40.0, 61.0])
    np.testing.assert_allclose(d["kidney_right_centroid"], [43.0, 1.0, 9.0])
    np.testing.assert_allclose(d["portal_splenic_vein_centroid"], [12.0, -2.0, 9.0])
    lab[lab == 4] = 0
    with pytest.raises(InputError, match="gallbladder"):
        synth.liver_landmarks(lab, aff)


def test_subject_labels_are_base_labels_pulled_through_transform(liver_raw):
    res, raw = liver_raw
    base_lab = np.asarray(nib.load(str(res / "totalsegmentator/example_seg_fast_force_split.nii.gz")).dataobj)
    for sid in ("liver000", "liver002"):
        seg_img = nib.load(str(raw / f"{sid}_seg.nii.gz"))
        seg = np.asarray(seg_img.dataobj)
        np.testing.assert_array_equal(seg_img.affine, LIVER_AFFINE)
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in LIVER_SHAPE], indexing="ij"), -1)
        world = grid.reshape(-1, 3) @ LIVER_AFFINE[:3, :3].T + LIVER_AFFINE[:3, 3]
        b = _itk_forward(raw / f"{sid}_transform.npz", world)
        vox = (b - LIVER_AFFINE[:3, 3]) / 4.0
        idx = np.floor(vox + 0.5).astype(int)
        inside = ((idx >= 0) & (idx < np.array(LIVER_SHAPE))).all(1)
        expect = np.zeros(len(idx), np.uint8)
        expect[inside] = base_lab[tuple(idx[inside].T)]
        np.testing.assert_array_equal(seg.reshape(-1), expect)
        assert (seg == 5).sum() > 100 and set(np.unique(seg)) <= {0, 1, 2, 4, 5, 64}
    # subjects differ from the base (the transform is not the identity)
    assert not np.array_equal(np.asarray(nib.load(str(raw / "liver000_seg.nii.gz")).dataobj), base_lab)


def test_subject_landmarks_map_to_base_landmarks(liver_raw):
    res, raw = liver_raw
    lab, aff = (np.asarray(nib.load(str(res / "totalsegmentator/example_seg_fast_force_split.nii.gz")).dataobj),
                LIVER_AFFINE)
    names, base_pts = synth.liver_landmarks(lab, aff)
    meta = json.loads((raw / "dataset.json").read_text())
    for k, sid in enumerate(["liver000", "liver001", "liver002"]):
        df = pd.read_csv(raw / f"{sid}_landmarks.csv")
        assert list(df.columns) == ["name", "x", "y", "z"] and list(df["name"]) == names
        pts = df[["x", "y", "z"]].to_numpy()
        np.testing.assert_allclose(_itk_forward(raw / f"{sid}_transform.npz", pts), base_pts,
                                   atol=1e-3)
        rec = meta["subjects"][k]
        assert rec["landmark_residual_mm"] < 1e-6 and rec["min_jacobian"] > 0
        assert rec["max_grad_u"] <= 0.5 + 1e-9
        assert all(-18 <= a <= 18 for a in rec["rotation_deg"])
        assert all(0.8 <= s <= 1.2 for s in rec["scale"])
    table = pd.read_csv(raw / "subjects.csv")
    assert list(table.columns) == ["subject", "image", "seg", "landmarks"]
    assert list(table["landmarks"]) == [f"liver00{i}_landmarks.csv" for i in range(3)]
    labels = pd.read_csv(raw / "labels.csv")
    assert dict(zip(labels["label"], labels["name"]))[5] == "liver"


def test_generator_is_deterministic_per_seed(liver_raw, tmp_path):
    res, raw = liver_raw
    synth.make_embedded("liver", res, 2, 7, tmp_path / "same", prefix="liver")
    synth.make_embedded("liver", res, 1, 8, tmp_path / "other")
    for sid in ("liver000", "liver001"):
        for kind in ("image", "seg"):
            a = np.asarray(nib.load(str(raw / f"{sid}_{kind}.nii.gz")).dataobj)
            b = np.asarray(nib.load(str(tmp_path / "same" / f"{sid}_{kind}.nii.gz")).dataobj)
            np.testing.assert_array_equal(a, b)
        assert (raw / f"{sid}_landmarks.csv").read_bytes() == \
            (tmp_path / "same" / f"{sid}_landmarks.csv").read_bytes()
        with np.load(raw / f"{sid}_transform.npz") as x, \
                np.load(tmp_path / "same" / f"{sid}_transform.npz") as y:
            for key in ("matrix", "bspline_coeffs", "bspline_origin"):
                np.testing.assert_array_equal(x[key], y[key])
    a = np.asarray(nib.load(str(raw / "liver000_image.nii.gz")).dataobj)
    c = np.asarray(nib.load(str(tmp_path / "other" / "liver000_image.nii.gz")).dataobj)
    assert not np.array_equal(a, c)
    assert (raw / "liver000_landmarks.csv").read_bytes() != \
        (tmp_path / "other" / "liver000_landmarks.csv").read_bytes()


def _write_prep(prep: Path, sid: str, p2r, size):
    prep.mkdir(parents=True, exist_ok=True)
    (prep / f"{sid}_prep.json").write_text(json.dumps(
        {"prep_to_raw": np.asarray(p2r).tolist(), "size": list(size), "raw_image": f"{sid}.nii.gz"}))


def _landmarks_vox(raw, sid, matrix):
    df = pd.read_csv(raw / f"{sid}_landmarks.csv")
    pts = df[["x", "y", "z"]].to_numpy()
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def test_ground_truth_transports_landmarks_identity_prep(liver_raw, tmp_path):
    res, raw = liver_raw
    prep = tmp_path / "prep"
    for sid in ("liver000", "liver001", "liver002"):
        _write_prep(prep, sid, np.eye(4), LIVER_SHAPE)
    pd.DataFrame({"fixed": ["liver000", "liver001"], "moving": ["liver001", "liver002"]}).to_csv(
        tmp_path / "pairs.csv", index=False)

    def gt(out, *extra):
        return synth.cli_ground_truth(["--raw", str(raw), "--prep", str(prep), "--pairs",
                                       str(tmp_path / "pairs.csv"), "--out", str(tmp_path / out),
                                       *extra])

    rc = gt("gt")
    assert rc == 0
    inv = np.linalg.inv(LIVER_AFFINE)
    for f, m in [("liver000", "liver001"), ("liver001", "liver002")]:
        disp, aff = load_disp_l2r(tmp_path / "gt" / f"disp_{f}_{m}.nii.gz")
        assert disp.shape == (3,) + LIVER_SHAPE
        np.testing.assert_allclose(aff, LIVER_AFFINE)
        pf, pm = _landmarks_vox(raw, f, inv), _landmarks_vox(raw, m, inv)
        moved = pf + sample_flow(torch.from_numpy(disp).double(), torch.from_numpy(pf)).numpy()
        err = np.linalg.norm(moved - pm, axis=1)
        assert err.max() < 0.05, err
        assert np.linalg.norm(pm - pf, axis=1).max() > 1.0  # the pair really is displaced
    log = pd.read_csv(tmp_path / "gt" / "ground_truth.csv")
    assert (log["max_inverse_residual_mm"] < 1e-4).all()
    # pairs computed in parallel processes give the same files
    rc = gt("gt2", "--jobs", "2")
    assert rc == 0
    for f, m in [("liver000", "liver001"), ("liver001", "liver002")]:
        a, _ = load_disp_l2r(tmp_path / "gt" / f"disp_{f}_{m}.nii.gz")
        b, _ = load_disp_l2r(tmp_path / "gt2" / f"disp_{f}_{m}.nii.gz")
        np.testing.assert_array_equal(a, b)
    # --disp-dtype int16: scaled integers, within the quantisation step of the float field
    rc = gt("gt16", "--disp-dtype", "int16")
    assert rc == 0
    for f, m in [("liver000", "liver001"), ("liver001", "liver002")]:
        a, _ = load_disp_l2r(tmp_path / "gt" / f"disp_{f}_{m}.nii.gz")
        b, _ = load_disp_l2r(tmp_path / "gt16" / f"disp_{f}_{m}.nii.gz")
        assert nib.load(str(tmp_path / "gt16" / f"disp_{f}_{m}.nii.gz")).get_data_dtype() == np.int16
        step = (a.max() - a.min()) / 65535
        assert np.abs(a - b).max() <= step and np.abs(a).max() > 1.0


def test_ground_truth_with_resampling_prep_matrices(liver_raw):
    res, raw = liver_raw
    tf_f = synth.SubjectTransform.load(raw / "liver000_transform.npz")
    tf_m = synth.SubjectTransform.load(raw / "liver001_transform.npz")
    p_f = np.array([[1.5, 0.1, 0, 1.0], [0, 1.4, 0, 2.0], [0, 0, 1.6, 0.5], [0, 0, 0, 1]])
    p_m = np.array([[1.2, 0, 0, 3.0], [0, 1.3, 0.05, 0.0], [0, 0, 1.1, 1.5], [0, 0, 0, 1]])
    shape = (18, 16, 16)
    disp, res_mm = synth.ground_truth_disp(tf_f, tf_m, LIVER_AFFINE, LIVER_AFFINE, p_f, p_m, shape)
    assert res_mm < 1e-4
    # the chain written out point by point
    rng = np.random.default_rng(1)
    idx = rng.integers(0, np.array(shape), (20, 3))
    x = np.c_[idx, np.ones(20)].astype(float)
    w_f = (LIVER_AFFINE @ p_f @ x.T).T[:, :3]
    w_m, _ = tf_m.inverse(tf_f.forward(w_f), tol=1e-9)
    x_m = (np.linalg.inv(p_m) @ np.linalg.inv(LIVER_AFFINE) @ np.c_[w_m, np.ones(20)].T).T[:, :3]
    np.testing.assert_allclose(disp[:, idx[:, 0], idx[:, 1], idx[:, 2]].T, x_m - idx, atol=1e-4)
    # landmarks in prep voxels
    lf = _landmarks_vox(raw, "liver000", np.linalg.inv(LIVER_AFFINE @ p_f))
    lm = _landmarks_vox(raw, "liver001", np.linalg.inv(LIVER_AFFINE @ p_m))
    ok = ((lf >= 0) & (lf <= np.array(shape) - 1)).all(1)
    assert ok.sum() >= 3
    moved = lf[ok] + sample_flow(torch.from_numpy(disp), torch.from_numpy(lf[ok])).numpy()
    assert np.linalg.norm(moved - lm[ok], axis=1).max() < 0.05


def test_identity_transforms_give_exactly_zero_displacement():
    aff = np.array([[0, -3.0, 0.2, 12.0], [2.9, 0, 0, -7.5], [0, 0.1, 3.1, 40.25], [0, 0, 0, 1]])
    shape = (9, 8, 7)
    bs = synth.BSplineField(np.zeros((3, 5, 5, 5)), np.array([-50.0, -40, -30]), np.full(3, 30.0))
    tf = synth.SubjectTransform(np.eye(4), bs, aff, shape, aff, shape)
    p2r = np.array([[1.3, 0, 0, 0.7], [0, 0.9, 0, 1.1], [0, 0, 1.7, 0.3], [0, 0, 0, 1]])
    disp, res_mm = synth.ground_truth_disp(tf, tf, aff, aff, p2r, p2r, (6, 7, 5))
    assert disp.shape == (3, 6, 7, 5)
    assert np.all(disp == 0.0) and res_mm == 0.0


def test_brain_base_and_subject(tmp_path):
    res = make_fake_brain_resources(tmp_path / "resources")
    base = synth.load_base("brain", res)
    assert base.image.shape == (16, 18, 15)
    np.testing.assert_allclose(base.affine[:3, :3], np.diag([1.5] * 3))
    np.testing.assert_allclose(base.affine[:3, 3], [-11.5, -13.5, -10.5])  # centre of block 0
    tpl = np.asarray(nib.load(str(res / "deepmriprep/Template_05mm_bet.nii.gz")).get_fdata())
    np.testing.assert_allclose(base.image[2, 3, 4], tpl[6:9, 9:12, 12:15].mean(), rtol=1e-6)
    # labels resampled with SimpleITK nearest neighbour as the reference
    ref_img = sitk.GetImageFromArray(np.zeros(base.image.shape[::-1], np.float32))
    ref_img.SetSpacing([1.5] * 3)
    ref_img.SetOrigin([11.5, 13.5, -10.5])              # RAS -> LPS
    ref_img.SetDirection([-1, 0, 0, 0, -1, 0, 0, 0, 1])
    lab = sitk.ReadImage(str(res / "deepmriprep/lpba40.nii.gz"))
    ref = sitk.GetArrayFromImage(sitk.Resample(lab, ref_img, sitk.Transform(),
                                               sitk.sitkNearestNeighbor, 0)).transpose(2, 1, 0)
    np.testing.assert_array_equal(base.labels, ref)
    assert set(np.unique(base.labels)) == {0, 21, 22, 161}
    assert base.landmark_names == ["AC", "PC", "R superior LMS"]
    out = tmp_path / "raw"
    rc = synth.cli_make_embedded(["--organ", "brain", "--resources", str(res), "--n", "1",
                                  "--seed", "3", "--out", str(out), "--prefix", "sub"])
    assert rc == 0
    df = pd.read_csv(out / "sub000_landmarks.csv")
    pts = df[["x", "y", "z"]].to_numpy()
    np.testing.assert_allclose(_itk_forward(out / "sub000_transform.npz", pts), base.landmarks,
                               atol=1e-3)
    rec = json.loads((out / "dataset.json").read_text())["subjects"][0]
    assert all(abs(a) <= 5 for a in rec["rotation_deg"]) and rec["min_jacobian"] > 0


def test_read_fcsv_lps(tmp_path):
    p = tmp_path / "a.fcsv"
    p.write_text("# CoordinateSystem = LPS\n# columns = id,x,y,z,label\nq,1,2,3,AC\nr,-4,5,6,PC\n")
    names, pts = synth.read_fcsv(p)
    assert names == ["AC", "PC"]
    np.testing.assert_array_equal(pts, [[-1, -2, 3], [4, -5, 6]])
    (tmp_path / "b.fcsv").write_text("1,2,3\n")
    with pytest.raises(InputError, match="b.fcsv"):
        synth.read_fcsv(tmp_path / "b.fcsv")


def test_cli_figure_and_missing_resources(liver_raw, tmp_path, capsys):
    res, raw = liver_raw
    from vtn.report.figures import figure_subjects

    png = figure_subjects(raw, tmp_path / "fig.png", n=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = synth.cli_make_embedded(["--organ", "liver", "--resources", str(tmp_path / "none"),
                                  "--n", "1", "--seed", "0", "--out", str(tmp_path / "r")])
    assert rc == 1
    assert "example_ct.nii.gz" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_RESOURCES / "totalsegmentator").is_dir()
                    or not (REAL_RESOURCES / "deepmriprep").is_dir(),
                    reason="real resources not fetched (vtn fetch --out resources)")
def test_real_resources_one_subject_each(tmp_path):
    base = synth.load_base("liver", REAL_RESOURCES)
    assert base.image.shape == (122, 101, 112) and len(base.landmarks) == 9
    assert len(base.label_names) == 61 and base.label_names[5] == "liver"
    subj = synth.make_subject(base, 0, 0)
    assert subj["info"]["landmark_residual_mm"] < 1e-6 and subj["info"]["min_jacobian"] > 0
    assert (subj["labels"] == 5).sum() > 20000
    brain = synth.load_base("brain", REAL_RESOURCES)
    assert brain.image.shape == (113, 137, 113) and len(brain.landmarks) == 32
    assert len(brain.label_names) == 56 and brain.landmark_names[:2] == ["AC", "PC"]
    subj = synth.make_subject(brain, 0, 0)
    assert subj["info"]["landmark_residual_mm"] < 1e-6
