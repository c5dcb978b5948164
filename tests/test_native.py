"""Tests of vtn.native: the map from the original fixed scan to the original moving scan and
its writers, against closed forms and SimpleITK."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from test_preprocess import AFF, write_subject, write_table  # tests/ is on sys.path
from vtn import native as N
from vtn.data import preprocess as pp
from vtn.functional import affine_flow
from vtn.io import InputError, load_disp_l2r, read_scan, save_disp_l2r

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

S = 8
A_F = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS-ordered axes, 1 x 1 x 2 mm
A_F[:3, 3] = [12.0, 9.0, -20.0]
A_M = np.diag([1.5, 1.5, 1.5, 1.0])  # RAS, 1.5 mm iso
A_M[:3, 3] = [-25.0, -22.0, -19.0]
FIXED_SHAPE, MOVING_SHAPE = (20, 18, 14), (22, 20, 21)


def prep_map(lo, hi):
    return pp.prep_to_box_matrix(lo, hi, S)


def grids():
    g_f = prep_map([3, 2, 2], [15, 14, 10])
    # the moving map with a permutation/flip as a canonical reorientation would add
    flip = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 20], [0, 0, 0, 1]], float)
    g_m = flip @ prep_map([2, 4, 3], [17, 16, 18])
    return N.NativeGrids(FIXED_SHAPE, A_F, g_f, MOVING_SHAPE, A_M, g_m, (S, S, S))


W = np.array([[0.05, -0.1, 0.02], [0.08, 0.03, 0.0], [-0.02, 0.04, -0.06]])
B = np.array([0.7, -0.4, 0.3])


def affine_model_flow():
    return affine_flow(torch.tensor(W)[None], torch.tensor(B)[None], (S, S, S))[0]


def closed_form(g, v, affine=True, inside_only=False):
    """w = G_m (x + W (x - c) + b), x = G_f^-1 v (the affine flow is exact everywhere)."""
    x = (np.linalg.inv(g.fixed_map) @ np.c_[v, np.ones(len(v))].T).T[:, :3]
    y = x + ((x - (S - 1) / 2.0) @ W.T + B if affine else 0.0)
    return (g.moving_map @ np.c_[y, np.ones(len(y))].T).T[:, :3], x


def test_native_map_closed_form_inside_and_outside():
    g = grids()
    v = np.indices(FIXED_SHAPE).reshape(3, -1).T.astype(float)
    flow = affine_model_flow()
    w, inside = N.native_map(g, flow, (W, B), v)
    want, x = closed_form(g, v)
    assert 0.1 < inside.mean() < 0.9  # both regions are exercised
    np.testing.assert_allclose(w, want, atol=1e-9)
    np.testing.assert_array_equal(inside, ((x >= -1e-9) & (x <= S - 1 + 1e-9)).all(axis=1))
    # no affine part: zero network flow outside the crop box, the flow inside
    w0, _ = N.native_map(g, flow, None, v)
    np.testing.assert_allclose(w0[inside], want[inside], atol=1e-9)
    crop_only, _ = closed_form(g, v[~inside], affine=False)
    np.testing.assert_allclose(w0[~inside], crop_only, atol=1e-9)


def test_native_map_dense_flow_is_trilinear():
    g = grids()
    flow = torch.from_numpy(np.random.default_rng(0).normal(size=(3, S, S, S)))
    v = np.random.default_rng(1).uniform(0, np.array(FIXED_SHAPE) - 1, (500, 3))
    w, inside = N.native_map(g, flow, None, v)
    x = (np.linalg.inv(g.fixed_map) @ np.c_[v, np.ones(len(v))].T).T[:, :3]
    u = np.stack([ndimage.map_coordinates(flow[k].numpy(), x[inside].T, order=1) for k in range(3)], 1)
    want = (g.moving_map @ np.c_[x[inside] + u, np.ones(inside.sum())].T).T[:, :3]
    np.testing.assert_allclose(w[inside], want, atol=1e-9)


def _sitk(arr, aff, path):
    import SimpleITK as sitk

    nib.save(nib.Nifti1Image(arr, aff), str(path))
    return sitk.ReadImage(str(path))


def test_write_native_matches_closed_form_and_simpleitk(tmp_path):
    import SimpleITK as sitk

    g = grids()
    rng = np.random.default_rng(2)
    moving = ndimage.gaussian_filter(rng.normal(size=MOVING_SHAPE), 2).astype(np.float32) * 100
    labels = (ndimage.gaussian_filter(rng.normal(size=MOVING_SHAPE), 2) > 0).astype(np.int16) * 7
    v_lm = np.array([[5.0, 6.0, 4.0], [14.5, 3.2, 9.0]])
    lm_mm = (A_F @ np.c_[v_lm, np.ones(2)].T).T[:, :3]
    res = N.write_native(tmp_path, "f_m", g, affine_model_flow(), moving, affine=(W, B),
                         moving_seg=labels, fixed_landmarks=(["a", "b"], lm_mm), chunk_voxels=1000)
    assert res["outside"] == "affine" and 10 < res["inside_crop_percent"] < 90
    v = np.indices(FIXED_SHAPE).reshape(3, -1).T.astype(float)
    w, _ = closed_form(g, v)
    disp, daff = load_disp_l2r(tmp_path / "disp_f_m.nii.gz")
    np.testing.assert_allclose(daff, A_F)
    np.testing.assert_allclose(disp.reshape(3, -1).T, w - v, atol=1e-4)
    itk = nib.load(str(tmp_path / "warp_f_m.nii.gz"))
    assert itk.shape == (*FIXED_SHAPE, 1, 3) and int(itk.header["intent_code"]) == 1007
    world = (A_M @ np.c_[w, np.ones(len(w))].T).T[:, :3] - (A_F @ np.c_[v, np.ones(len(v))].T).T[:, :3]
    np.testing.assert_allclose(np.asarray(itk.dataobj)[:, :, :, 0, :].reshape(-1, 3),
                               world * [-1, -1, 1], atol=1e-4)
    # SimpleITK: the same world affine as an AffineTransform (LPS), and our ITK warp file
    lin = np.eye(4)
    lin[:3, :3], lin[:3, 3] = (np.eye(3) + W), B - W @ np.full(3, (S - 1) / 2.0)
    T = A_M @ g.moving_map @ lin @ np.linalg.inv(g.fixed_map) @ np.linalg.inv(A_F)  # RAS -> RAS
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    T_lps = lps @ T @ lps
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(T_lps[:3, :3].ravel().tolist())
    tx.SetTranslation(T_lps[:3, 3].tolist())
    fixed_img = _sitk(np.zeros(FIXED_SHAPE, np.float32), A_F, tmp_path / "fixed.nii.gz")
    moving_img = _sitk(moving, A_M, tmp_path / "moving.nii.gz")
    ref = sitk.GetArrayFromImage(sitk.Resample(moving_img, fixed_img, tx, sitk.sitkLinear, 0.0)).T
    ours = nib.load(str(tmp_path / "warped_f_m.nii.gz")).get_fdata()
    # everywhere but at exact ties with the half-voxel border (this geometry has some)
    edge = np.abs(np.abs(w - (np.array(MOVING_SHAPE) - 1) / 2.0) - np.array(MOVING_SHAPE) / 2.0)
    tie = (edge < 1e-6).any(axis=1).reshape(FIXED_SHAPE)
    assert tie.mean() < 0.01
    assert np.abs(ours - ref)[~tie].max() < 1e-3 * np.ptp(moving)  # boundary rule included
    assert (ours == 0).mean() > 0.02 and np.abs(ours).max() > 10  # partly outside, not trivial
    field = sitk.ReadImage(str(tmp_path / "warp_f_m.nii.gz"), sitk.sitkVectorFloat64)
    via_file = sitk.Resample(moving_img, fixed_img, sitk.DisplacementFieldTransform(field),
                             sitk.sitkLinear, 0.0)
    assert np.abs(sitk.GetArrayFromImage(via_file).T - ours)[~tie].max() < 1e-3 * np.ptp(moving)
    lab_img = _sitk(labels, A_M, tmp_path / "labels.nii.gz")
    lab_ref = sitk.GetArrayFromImage(sitk.Resample(lab_img, fixed_img, tx, sitk.sitkNearestNeighbor, 0)).T
    wseg = np.asarray(nib.load(str(tmp_path / "warpedseg_f_m.nii.gz")).dataobj)
    assert wseg.dtype == np.int16
    frac = np.abs(w - np.round(w)).reshape(*FIXED_SHAPE, 3)
    clear = (np.abs(frac - 0.5) > 1e-3).all(axis=-1)  # no rounding tie
    np.testing.assert_array_equal(wseg[clear], lab_ref[clear])
    lms = pd.read_csv(tmp_path / "landmarks_f_m.csv")
    np.testing.assert_allclose(lms[["x", "y", "z"]].to_numpy(),
                               (T @ np.c_[lm_mm, np.ones(2)].T).T[:, :3], atol=1e-5)
    with pytest.raises(InputError, match="outside the fixed image"):
        N.write_native(tmp_path / "x", "f_m", g, affine_model_flow(), moving,
                       fixed_landmarks=(["far"], [[500.0, 0.0, 0.0]]))


def test_write_native_from_prep_records(tmp_path):
    """Any method's result on the prep grid (here a constant shift, no affine part) written in the
    original space of two subjects preprocessed by vtn preprocess (different crops)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    world = (AFF @ np.r_[9.0, 8.0, 5.0, 1])[:3]
    recs = [write_subject(raw, f"s{i}", seed=i, landmarks=[["a", *world]]) for i in range(2)]
    # s1 on another grid: axes permuted and spacing changed, so its crop and map differ
    img = nib.load(str(raw / "s1.nii.gz"))
    aff1 = AFF[:, [1, 0, 2, 3]] * [1.2, 1.0, 0.8, 1.0]
    for name in ("s1.nii.gz", "s1_seg.nii.gz"):
        arr = np.asarray(nib.load(str(raw / name)).dataobj)
        nib.save(nib.Nifti1Image(arr.transpose(1, 0, 2).copy(), aff1), str(raw / name))
    table = write_table(raw, recs)
    prep = tmp_path / "prep"
    size = 16
    pp.preprocess_dataset(table, "liver", size, raw / "s0.nii.gz", prep, log=lambda s: None)
    fm = json.loads((prep / "s0_prep.json").read_text())
    mm = json.loads((prep / "s1_prep.json").read_text())
    shift = np.array([1.0, -2.0, 0.5])
    flow = np.broadcast_to(shift[:, None, None, None], (3, size, size, size)).astype(np.float32)
    save_disp_l2r(tmp_path / "disp_s0_s1.nii.gz", flow, np.eye(4))
    res = N.write_native_from_prep(tmp_path / "native", fm, mm, tmp_path / "disp_s0_s1.nii.gz")
    assert res["outside"] == "identity"
    assert set(res["files"]) == {"itk_warp", "l2r_disp", "warped", "warped_seg", "landmarks"}
    g_f, g_m = np.array(fm["prep_to_raw"]), np.array(mm["prep_to_raw"])
    assert not np.allclose(g_f, g_m)
    shape = tuple(fm["raw_shape"])
    v = np.indices(shape).reshape(3, -1).T.astype(float)
    x = (np.linalg.inv(g_f) @ np.c_[v, np.ones(len(v))].T).T[:, :3]
    inside = ((x >= -1e-6) & (x <= size - 1 + 1e-6)).all(axis=1)
    y = x + np.where(inside[:, None], shift, 0.0)
    w = (g_m @ np.c_[y, np.ones(len(y))].T).T[:, :3]
    disp, _ = load_disp_l2r(tmp_path / "native" / "disp_s0_s1.nii.gz")
    np.testing.assert_allclose(disp.reshape(3, -1).T, w - v, atol=1e-4)
    # labels follow: the warped s1 label map at w (nearest) is the raw s1 labels there
    seg1, _ = read_scan(raw / "s1_seg.nii.gz", labels=True)
    wseg = np.asarray(nib.load(str(tmp_path / "native" / "warpedseg_s0_s1.nii.gz")).dataobj).reshape(-1)
    idx = np.floor(w + 0.5).astype(int)
    ok = ((w >= -0.5) & (w < np.array(seg1.shape) - 0.5)).all(axis=1) & (np.abs(w - np.floor(w) - 0.5) > 1e-3).all(axis=1)
    np.testing.assert_array_equal(wseg[ok], seg1[idx[ok, 0], idx[ok, 1], idx[ok, 2]])
    assert (wseg == 5).any()
    # atlas pre-alignment composes its map: G = prep_to_raw @ atlas_to_prep
    a2p = np.eye(4)
    a2p[:3, 3] = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(N.model_to_raw(dict(fm, atlas_to_prep=a2p.tolist())), g_f @ a2p)


def test_native_space_command_for_a_method_folder(tmp_path, capsys):
    """``vtn native-space`` over a method's folder: one pair with an affine part (continued
    outside the crop box), one without (zero flow outside)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    recs = [write_subject(raw, f"s{i}", seed=i) for i in range(2)]
    table = write_table(raw, recs)
    prep = tmp_path / "prep"
    size = 16
    pp.preprocess_dataset(table, "liver", size, raw / "s0.nii.gz", prep,
                          pairs_out=tmp_path / "pairs.csv", log=lambda s: None)
    reg = tmp_path / "reg"
    Wk, bk = np.diag([0.05, -0.04, 0.03]), np.array([0.5, -0.5, 1.0])
    flow = affine_flow(torch.tensor(Wk)[None], torch.tensor(bk)[None], (size,) * 3)[0].numpy()
    save_disp_l2r(reg / "disp_s0_s1.nii.gz", flow, np.eye(4))
    save_disp_l2r(reg / "disp_s1_s0.nii.gz", flow, np.eye(4))
    (reg / "affine_s0_s1.json").write_text(json.dumps({"W": Wk.tolist(), "b": bk.tolist()}))
    from vtn.cli import main

    assert main(["native-space", "--reg", str(reg), "--subjects", str(prep / "subjects.csv"),
                 "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "native")]) == 0
    err = capsys.readouterr().err
    assert "s0 <- s1" in err and "outside the crop box: affine" in err
    assert "s1 <- s0" in err and "outside the crop box: identity" in err and "[2/2" in err
    for f, m, affine in (("s0", "s1", True), ("s1", "s0", False)):
        fm = json.loads((prep / f"{f}_prep.json").read_text())
        mm = json.loads((prep / f"{m}_prep.json").read_text())
        g_f, g_m = np.array(fm["prep_to_raw"]), np.array(mm["prep_to_raw"])
        v = np.indices(tuple(fm["raw_shape"])).reshape(3, -1).T.astype(float)
        x = (np.linalg.inv(g_f) @ np.c_[v, np.ones(len(v))].T).T[:, :3]
        inside = ((x >= -1e-6) & (x <= size - 1 + 1e-6)).all(axis=1)
        assert 0 < inside.mean() < 1
        u = (x - (size - 1) / 2.0) @ Wk.T + bk
        y = x + np.where(inside[:, None] | affine, u, 0.0)
        w = (g_m @ np.c_[y, np.ones(len(y))].T).T[:, :3]
        disp, _ = load_disp_l2r(tmp_path / "native" / f"disp_{f}_{m}.nii.gz")
        np.testing.assert_allclose(disp.reshape(3, -1).T, w - v, atol=1e-4)
    pd.DataFrame({"fixed": ["s0"], "moving": ["s9"]}).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["native-space", "--reg", str(reg), "--subjects", str(prep / "subjects.csv"),
                 "--pairs", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "n2")]) == 1
    assert "bad.csv: subject 's9' is not listed" in capsys.readouterr().err
