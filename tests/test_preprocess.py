"""Tests of vtn.data.preprocess: exact geometry, intensities, histogram matching, bad input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from vtn.data import preprocess as pp
from vtn.io import InputError, load_landmarks, load_volume, read_pairs, read_subjects

# raw grid: axis 0 runs along -y (1.5 mm), axis 1 along +x (2 mm), axis 2 along +z (3 mm)
SHAPE = (22, 26, 20)
AFF = np.array([[0.0, 2.0, 0.0, -10.0],
                [-1.5, 0.0, 0.0, 40.0],
                [0.0, 0.0, 3.0, 5.0],
                [0.0, 0.0, 0.0, 1.0]])
# liver block in RAW voxel indices (inclusive)
BLOCK = ((4, 13), (3, 17), (2, 11))


def raw_to_canon(v):
    """Analytic canonical voxel of a raw voxel for AFF: (v1, n0-1-v0, v2)."""
    v = np.asarray(v, dtype=np.float64)
    return np.array([v[1], SHAPE[0] - 1 - v[0], v[2]])


def make_ct(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.uniform(-20.0, 260.0, SHAPE).astype(np.float32)  # inside the liver window: linear
    seg = np.zeros(SHAPE, np.int16)
    (a0, b0), (a1, b1), (a2, b2) = BLOCK
    seg[a0:b0 + 1, a1:b1 + 1, a2:b2 + 1] = 5
    seg[0:2, 0:2, 0:2] = 3  # another organ outside the liver
    return img, seg


def write(path, arr, aff=AFF):
    nib.save(nib.Nifti1Image(np.asarray(arr), aff), str(path))
    return path


def write_subject(tmp, sid, seed=0, landmarks=None, aff=AFF):
    img, seg = make_ct(seed)
    write(tmp / f"{sid}.nii.gz", img, aff)
    write(tmp / f"{sid}_seg.nii.gz", seg, aff)
    rec = {"subject": sid, "image": f"{sid}.nii.gz", "seg": f"{sid}_seg.nii.gz", "landmarks": ""}
    if landmarks is not None:
        pd.DataFrame(landmarks, columns=["name", "x", "y", "z"]).to_csv(tmp / f"{sid}_lm.csv", index=False)
        rec["landmarks"] = f"{sid}_lm.csv"
    return rec


def write_table(tmp, recs):
    pd.DataFrame(recs, columns=["subject", "image", "seg", "landmarks"]).to_csv(tmp / "subjects.csv", index=False)
    return tmp / "subjects.csv"


def expected_canon_box():
    (a0, b0), (a1, b1), (a2, b2) = BLOCK
    lo = np.array([a1, SHAPE[0] - 1 - b0, a2])
    hi = np.array([b1, SHAPE[0] - 1 - a0, b2])
    cshape = np.array([SHAPE[1], SHAPE[0], SHAPE[2]])
    pad = np.maximum((0.1 * (hi - lo + 1)).astype(int), 5)
    return np.maximum(lo - pad, 0), np.minimum(hi + pad, cshape - 1)


def test_canonical_mapping_is_exact():
    arr = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    ornt, c2r = pp.canonical_mapping(AFF, SHAPE)
    can = nib.orientations.apply_orientation(arr, ornt)
    assert can.shape == (SHAPE[1], SHAPE[0], SHAPE[2])
    rng = np.random.default_rng(1)
    for _ in range(50):
        c = np.array([rng.integers(0, n) for n in can.shape])
        r = (c2r @ np.r_[c, 1])[:3]
        np.testing.assert_array_equal(r, [SHAPE[0] - 1 - c[1], c[0], c[2]])
        assert can[tuple(c)] == arr[tuple(r.astype(int))]


def test_crop_box_margin_rule():
    m = np.zeros((40, 40, 120), bool)
    m[10:30, 3:8, 20:81] = True  # sizes 20, 5, 61 -> margins 5, 5, 6
    lo, hi = pp.crop_box(m)
    np.testing.assert_array_equal(lo, [5, 0, 14])
    np.testing.assert_array_equal(hi, [34, 12, 86])


def test_prep_corners_map_to_raw_box_corners(tmp_path):
    rec = write_subject(tmp_path, "s1")
    S = 16
    res = pp.preprocess_subject(tmp_path / rec["image"], "liver", S, seg=tmp_path / rec["seg"])
    p2r = np.array(res.meta["prep_to_raw"])
    corners = np.array([[i, j, k, 1] for i in (0, S - 1) for j in (0, S - 1) for k in (0, S - 1)], float)
    got = {tuple(np.round((p2r @ c)[:3], 9)) for c in corners}
    # expected raw box: liver bbox in raw voxels + margin max(int(0.1*size), 5), clipped
    lo = np.array([b[0] for b in BLOCK])
    hi = np.array([b[1] for b in BLOCK])
    pad = np.maximum((0.1 * (hi - lo + 1)).astype(int), 5)
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, np.array(SHAPE) - 1)
    want = {(float(x), float(y), float(z)) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])}
    assert got == want
    clo, chi = expected_canon_box()
    assert res.meta["crop_box"]["lo"] == clo.tolist() and res.meta["crop_box"]["hi"] == chi.tolist()
    # the prep affine keeps world coordinates: prep affine == raw affine @ prep_to_raw
    np.testing.assert_allclose(res.affine, AFF @ p2r, atol=1e-12)


def test_landmark_through_crop_and_resample_is_analytic(tmp_path):
    v_raw = np.array([9.25, 7.5, 4.0])  # a raw voxel inside the box
    world = (AFF @ np.r_[v_raw, 1])[:3]
    rec = write_subject(tmp_path, "s1", landmarks=[["apex", *world]])
    write_table(tmp_path, [rec])
    S = 16
    res = pp.preprocess_subject(tmp_path / rec["image"], "liver", S, seg=tmp_path / rec["seg"],
                                landmarks=tmp_path / rec["landmarks"])
    clo, chi = expected_canon_box()
    want = (raw_to_canon(v_raw) - clo) * (S - 1) / (chi - clo)
    names, pts = res.landmarks
    assert names == ["apex"]
    np.testing.assert_allclose(pts[0], want, atol=1e-9)
    np.testing.assert_allclose((res.affine @ np.r_[pts[0], 1])[:3], world, atol=1e-9)


def test_image_resampling_equals_scipy_zoom_and_labels_nearest(tmp_path):
    rec = write_subject(tmp_path, "s1")
    S = 16
    res = pp.preprocess_subject(tmp_path / rec["image"], "liver", S, seg=tmp_path / rec["seg"])
    img, seg = make_ct()
    ornt, _ = pp.canonical_mapping(AFF, SHAPE)
    can = nib.orientations.apply_orientation(img, ornt)
    cseg = nib.orientations.apply_orientation(seg, ornt)
    lo, hi = expected_canon_box()
    crop = can[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1].astype(np.float64)
    ref = ndimage.zoom(crop, np.array([S] * 3) / np.array(crop.shape), order=1)
    # values lie inside the CT window, so the window is the linear map (hu + 25) / 290
    np.testing.assert_allclose(res.image, (ref + 25.0) / 290.0, atol=2e-6)
    cropseg = cseg[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
    refseg = ndimage.zoom(cropseg, np.array([S] * 3) / np.array(cropseg.shape), order=0)
    assert res.seg.dtype == np.int16
    np.testing.assert_array_equal(res.seg, refseg)
    assert set(np.unique(res.seg)) <= {0, 3, 5}


def test_liver_window_values():
    hu = np.array([-1000.0, -25.0, 120.0, 265.0, 3000.0])
    np.testing.assert_allclose(pp.liver_window(hu), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)


def test_robust_minmax():
    v = np.arange(1001, dtype=np.float64).reshape(1001, 1, 1)
    out, (lo, hi) = pp.robust_minmax(v, np.ones_like(v, bool))
    assert (lo, hi) == (5.0, 995.0)
    assert out[5, 0, 0] == 0.0 and out[995, 0, 0] == 1.0 and out[500, 0, 0] == pytest.approx(0.5)


def test_binary_median_equals_scipy_median_filter():
    rng = np.random.default_rng(3)
    bw = ndimage.binary_opening(rng.random((30, 28, 5)) > 0.45)
    r = 3
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx ** 2 + yy ** 2) <= r * r
    ref = ndimage.median_filter(bw.astype(np.uint8), footprint=disk[:, :, None], mode="nearest") > 0
    np.testing.assert_array_equal(pp._binary_median_slices(bw, r), ref)


def test_auto_liver_mask_picks_the_large_liver_like_region():
    vol = np.full((40, 40, 24), -1000.0, np.float32)
    vol[5:25, 5:30, 4:20] = 110.0        # large "liver"
    vol[30:37, 30:37, 8:14] = 110.0      # small blob with the same HU
    vol[26:29, 2:38, 2:22] = 300.0       # bright bone-like slab
    mask = pp.auto_liver_mask(vol, median_radius=2)
    assert mask.any()
    assert not mask[30:37, 30:37, :].any()
    lab, n = ndimage.label(mask)
    assert n == 1
    idx = np.array(np.nonzero(mask))
    assert (idx.min(axis=1) >= [5, 5, 4]).all() and (idx.max(axis=1) <= [24, 29, 19]).all()
    assert mask[15, 17, 12]


def test_brain_without_seg_uses_otsu_box(tmp_path):
    vol = np.zeros((30, 30, 30), np.float32)
    vol[8:20, 6:25, 10:22] = 100.0 + np.random.default_rng(0).uniform(0, 50, (12, 19, 12))
    write(tmp_path / "b.nii.gz", vol, np.eye(4))
    res = pp.preprocess_subject(tmp_path / "b.nii.gz", "brain", 16)
    assert res.meta["box_source"] == "otsu foreground"
    assert res.meta["crop_box"]["lo"] == [3, 1, 5] and res.meta["crop_box"]["hi"] == [24, 29, 26]
    assert res.image.min() == 0.0 and res.image.max() == 1.0


def test_dataset_histogram_matching_is_simpleitk_and_outputs(tmp_path):
    import SimpleITK as sitk

    raw = tmp_path / "raw"
    raw.mkdir()
    world = (AFF @ np.r_[9.0, 8.0, 5.0, 1])[:3]
    recs = [write_subject(raw, f"s{i}", seed=i, landmarks=[["a", *world]]) for i in range(3)]
    table = write_table(raw, recs)
    out = tmp_path / "prep"
    S = 16
    rc = pp.cli(["--subjects", str(table), "--organ", "liver", "--size", str(S),
                 "--reference", str(raw / "s0.nii.gz"), "--reference-seg", str(raw / "s0_seg.nii.gz"),
                 "--out", str(out), "--pairs-out", str(tmp_path / "pairs.csv")])
    assert rc == 0
    rows = read_subjects(out / "subjects.csv")
    assert [r["subject"] for r in rows] == ["s0", "s1", "s2"]
    assert len(read_pairs(tmp_path / "pairs.csv")) == 6
    ref = pp.preprocess_subject(raw / "s0.nii.gz", "liver", S, seg=raw / "s0_seg.nii.gz").image
    sub = pp.preprocess_subject(raw / "s2.nii.gz", "liver", S, seg=raw / "s2_seg.nii.gz").image
    f = sitk.HistogramMatchingImageFilter()
    f.SetNumberOfHistogramLevels(256)
    f.SetNumberOfMatchPoints(15)
    f.ThresholdAtMeanIntensityOn()
    direct = sitk.GetArrayFromImage(f.Execute(sitk.GetImageFromArray(sub), sitk.GetImageFromArray(ref)))
    got, aff = load_volume(out / "s2_image.nii.gz")
    np.testing.assert_array_equal(got, np.clip(direct, 0, 1).astype(np.float32))
    assert not np.array_equal(got, sub)  # matching changed something
    assert got.shape == (S, S, S) and got.min() >= 0 and got.max() <= 1
    seg, _ = load_volume(out / "s2_seg.nii.gz", dtype=None)
    assert seg.dtype == np.int16
    names, pts = load_landmarks(out / "s2_landmarks.csv", shape=(S, S, S))
    np.testing.assert_allclose((aff @ np.r_[pts[0], 1])[:3], world, atol=1e-4)
    import json
    meta = json.loads((out / "s2_prep.json").read_text())
    for key in ("prep_to_raw", "raw_image", "size", "organ", "crop_box", "intensity",
                "histogram_matching", "seconds", "canonical_to_raw", "raw_affine"):
        assert key in meta
    assert meta["histogram_matching"]["match_points"] == 15
    np.testing.assert_allclose(np.array(meta["raw_affine"]) @ np.array(meta["prep_to_raw"]), aff, atol=1e-5)
    assert not list(out.glob(".tmp-*"))


def test_make_pairs_subset_deterministic():
    ids = [f"s{i}" for i in range(6)]
    allp = pp.make_pairs(ids)
    assert len(allp) == 30 and all(f != m for f, m in allp) and len(set(allp)) == 30
    a = pp.make_pairs(ids, max_pairs=7, seed=3)
    assert a == pp.make_pairs(ids, max_pairs=7, seed=3) and len(a) == 7 and set(a) <= set(allp)
    assert a == [p for p in allp if p in set(a)]  # table order kept


def test_pairs_from_a_list(tmp_path):
    """A Learn2Reg task's registration_val pairs (``--pairs-from``) replace the ordered pairs:
    kept in the list's order, only pairs of preprocessed subjects, max_pairs a subset of them."""
    ids = [f"s{i}" for i in range(4)]
    listed = [("s2", "s0"), ("s3", "s9"), ("s1", "s3")]
    assert pp.make_pairs(ids, listed=listed) == [("s2", "s0"), ("s1", "s3")]
    sub = pp.make_pairs(ids, max_pairs=1, seed=0, listed=listed)
    assert len(sub) == 1 and sub[0] in (("s2", "s0"), ("s1", "s3"))
    raw = tmp_path / "raw"
    raw.mkdir()
    table = write_table(raw, [write_subject(raw, f"s{i}", seed=i) for i in range(3)])
    pd.DataFrame([["s2", "s0", "registration_val"], ["s0", "s1", "registration_val"]],
                 columns=["fixed", "moving", "split"]).to_csv(tmp_path / "listed.csv", index=False)
    assert pp.cli(["--subjects", str(table), "--organ", "liver", "--size", "16", "--reference",
                   str(raw / "s0.nii.gz"), "--out", str(tmp_path / "prep"), "--pairs-out",
                   str(tmp_path / "pairs.csv"), "--pairs-from", str(tmp_path / "listed.csv")]) == 0
    got = pd.read_csv(tmp_path / "pairs.csv", dtype=str)
    assert list(got.columns) == ["fixed", "moving"]
    assert got.values.tolist() == [["s2", "s0"], ["s0", "s1"]]  # not all 6 ordered pairs
    pd.DataFrame({"fixed": ["s0"], "moving": ["s7"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"bad\.csv: pair s0 <- s7 names subject 's7'"):
        pp.preprocess_dataset(table, "liver", 16, raw / "s0.nii.gz", tmp_path / "p2",
                              pairs_out=tmp_path / "p2.csv", pairs_from=tmp_path / "bad.csv",
                              log=lambda s: None)


# ---------------------------------------------------------------------------- bad input

def _bad_cases(tmp):
    img, seg = make_ct()
    cases = {}
    p = tmp / "garbage.nii.gz"
    p.write_bytes(b"this is not a nifti file at all" * 10)
    cases["unreadable"] = (dict(image=p), str(p), "cannot read")
    good = write(tmp / "good.nii.gz", img)
    data = good.read_bytes()
    p = tmp / "trunc.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    cases["truncated"] = (dict(image=p), str(p), "cannot read")
    bad = img.copy()
    bad[3, 3, 3] = np.nan
    bad[4, 4, 4] = np.inf
    p = write(tmp / "nan.nii.gz", bad)
    cases["nan"] = (dict(image=p), str(p), "NaN or Inf")
    p = write(tmp / "flat.nii.gz", img[:, :, 0])
    cases["2d"] = (dict(image=p), str(p), "3-D")
    p = write(tmp / "four.nii.gz", np.stack([img, img], -1))
    cases["4d"] = (dict(image=p), str(p), "3-D")
    gs = write(tmp / "goodseg.nii.gz", seg)
    p = write(tmp / "smallseg.nii.gz", seg[:-1])
    cases["seg_shape"] = (dict(image=good, seg=p), str(p), "differs")
    aff2 = AFF.copy()
    aff2[0, 3] += 4.0
    p = write(tmp / "shiftseg.nii.gz", seg, aff2)
    cases["seg_affine"] = (dict(image=good, seg=p), str(p), "affine differs")
    p = write(tmp / "emptyseg.nii.gz", np.where(seg == 5, 0, seg).astype(np.int16))
    cases["empty_mask"] = (dict(image=good, seg=p), str(p), "liver label 5 absent")
    p = tmp / "lm_out.csv"
    far = (AFF @ np.r_[-3.0, 5.0, 5.0, 1])[:3]
    pd.DataFrame([["out", *far]], columns=["name", "x", "y", "z"]).to_csv(p, index=False)
    cases["landmark_outside"] = (dict(image=good, seg=gs, landmarks=p), str(p), "outside the image")
    p = tmp / "lm_crop.csv"
    edge = (AFF @ np.r_[21.0, 25.0, 19.0, 1])[:3]  # inside the image, outside the crop box
    pd.DataFrame([["edge", *edge]], columns=["name", "x", "y", "z"]).to_csv(p, index=False)
    cases["landmark_outside_crop"] = (dict(image=good, seg=gs, landmarks=p), str(p), "crop box")
    return cases


@pytest.mark.parametrize("case", ["unreadable", "truncated", "nan", "2d", "4d", "seg_shape", "seg_affine",
                                  "empty_mask", "landmark_outside", "landmark_outside_crop"])
def test_bad_input_names_file(tmp_path, case):
    kwargs, fname, words = _bad_cases(tmp_path)[case]
    with pytest.raises(InputError) as ei:
        pp.preprocess_subject(organ="liver", size=8, outside_crop="error", **kwargs)
    assert fname in str(ei.value)
    assert words in str(ei.value)


def test_keep_going_completes_other_subjects(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    recs = [write_subject(raw, "s0"), write_subject(raw, "s1", seed=1), write_subject(raw, "s2", seed=2)]
    img, _ = make_ct()
    img[1, 1, 1] = np.nan
    write(raw / "s1.nii.gz", img)
    table = write_table(raw, recs)
    base = ["--subjects", str(table), "--organ", "liver", "--size", "8",
            "--reference", str(raw / "s0.nii.gz"), "--reference-seg", str(raw / "s0_seg.nii.gz")]
    assert pp.cli(base + ["--out", str(tmp_path / "a")]) == 1
    assert not (tmp_path / "a" / "subjects.csv").exists()
    rc = pp.cli(base + ["--out", str(tmp_path / "b"), "--keep-going", "--pairs-out", str(tmp_path / "p.csv")])
    assert rc == 0
    done = pd.read_csv(tmp_path / "b" / "subjects.csv")
    assert done["subject"].tolist() == ["s0", "s2"]
    failed = pd.read_csv(tmp_path / "b" / "failed.csv")
    assert failed.columns.tolist() == ["subject", "file", "error"]
    assert failed["subject"].tolist() == ["s1"]
    assert failed["file"].iloc[0] == str(raw / "s1.nii.gz")
    assert "NaN" in failed["error"].iloc[0]
    assert read_pairs(tmp_path / "p.csv") == [("s0", "s2"), ("s2", "s0")]
    assert (tmp_path / "b" / "s2_image.nii.gz").exists() and not (tmp_path / "b" / "s1_image.nii.gz").exists()


def test_landmark_outside_crop_dropped_by_default(tmp_path):
    kwargs = _bad_cases(tmp_path)["landmark_outside_crop"][0]
    p = kwargs["landmarks"]
    inside = (AFF @ np.r_[9.0, 8.0, 5.0, 1])[:3]
    df = pd.read_csv(p)
    df.loc[1] = ["in", *inside]
    df.to_csv(p, index=False)
    res = pp.preprocess_subject(organ="liver", size=8, **kwargs)
    assert res.meta["landmarks_dropped"] == ["edge"]
    assert res.landmarks[0] == ["in"] and res.landmarks[1].shape == (1, 3)


def test_liver_without_seg_uses_threshold_finder(tmp_path):
    vol = np.full((40, 40, 24), -1000.0, np.float32)
    vol[5:25, 5:30, 4:20] = 110.0
    write(tmp_path / "ct.nii.gz", vol, np.eye(4))
    res = pp.preprocess_subject(tmp_path / "ct.nii.gz", "liver", 8, median_radius=2)
    assert res.meta["box_source"] == "threshold liver finder"
    lo, hi = np.array(res.meta["crop_box"]["lo"]), np.array(res.meta["crop_box"]["hi"])
    assert (lo <= [5, 5, 4]).all() and (hi >= [24, 29, 19]).all()
    assert (lo >= 0).all() and (hi <= [39, 39, 23]).all()


def test_brain_with_labels_keeps_lpba_ids(tmp_path):
    rng = np.random.default_rng(5)
    vol = np.zeros((30, 30, 30), np.float32)
    vol[6:24, 5:25, 7:23] = rng.uniform(50, 150, (18, 20, 16))
    lab = np.zeros((30, 30, 30), np.int16)
    lab[8:15, 8:20, 9:20] = 21
    lab[15:22, 8:20, 9:20] = 182
    write(tmp_path / "t1.nii.gz", vol, np.eye(4))
    write(tmp_path / "lab.nii.gz", lab, np.eye(4))
    res = pp.preprocess_subject(tmp_path / "t1.nii.gz", "brain", 16, seg=tmp_path / "lab.nii.gz")
    assert res.meta["box_source"] == "brain labels (> 0)"
    assert res.meta["crop_box"]["lo"] == [3, 3, 4] and res.meta["crop_box"]["hi"] == [26, 24, 24]
    assert set(np.unique(res.seg)) == {0, 21, 182}
    assert res.image.min() == 0.0 and res.image.max() == 1.0
    assert res.meta["intensity"]["method"] == "robust_minmax"
