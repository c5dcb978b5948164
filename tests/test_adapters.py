"""Tests of vtn.data.adapters on small fake datasets in each layout."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from vtn.data import adapters as ad
from vtn.io import InputError, load_volume, read_subjects


def nii(path, arr, aff=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), np.eye(4) if aff is None else aff), str(path))
    return path


def test_lits_layout(tmp_path):
    d = tmp_path / "lits"
    for n in (0, 11):
        nii(d / "batch1" / f"volume-{n}.nii", np.zeros((4, 4, 4), np.int16))
        nii(d / "batch1" / f"segmentation-{n}.nii", np.ones((4, 4, 4), np.uint8))
    nii(d / "batch2" / "volume-3.nii.gz", np.zeros((4, 4, 4), np.int16))  # no segmentation
    out = tmp_path / "raw" / "subjects.csv"
    assert ad.cli(["--layout", "lits", "--path", str(d), "--out", str(out)]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert df["subject"].tolist() == ["lits0", "lits11", "lits3"]
    assert df["image"][1] == str((d / "batch1" / "volume-11.nii").resolve())
    assert df["seg"][1] == str((d / "batch1" / "segmentation-11.nii").resolve())
    assert df["seg"][2] == ""
    assert all(Path(p).is_absolute() for p in df["image"])


def test_sliver07_mhd_converted_with_geometry(tmp_path):
    d = tmp_path / "sliver"
    d.mkdir()
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(7, 6, 5)  # sitk array is (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-100.0, -120.0, 30.0))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, -1))
    sitk.WriteImage(img, str(d / "liver-orig001.mhd"))
    seg = sitk.GetImageFromArray((arr % 2).astype(np.uint8))
    seg.CopyInformation(img)
    sitk.WriteImage(seg, str(d / "liver-seg001.mhd"))
    sitk.WriteImage(img, str(d / "liver-orig002.mhd"))  # test-set scan without a segmentation
    out = tmp_path / "raw" / "subjects.csv"
    rows = ad.import_dataset("sliver07", d, out)
    assert [r["subject"] for r in rows] == ["sliver001", "sliver002"]
    assert rows[1]["seg"] == ""
    vol, aff = load_volume(rows[0]["image"], dtype=None)
    np.testing.assert_array_equal(vol, np.transpose(arr, (2, 1, 0)))
    # LPS (direction diag(1,-1,-1), origin) -> RAS: negate the x and y rows
    want = np.array([[-0.7, 0, 0, 100.0], [0, 0.8, 0, 120.0], [0, 0, -2.5, 30.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(aff, want, atol=1e-5)
    # a voxel's physical point in sitk (LPS) equals the nibabel world point with x, y negated
    p_lps = np.array(img.TransformIndexToPhysicalPoint((1, 2, 3)))
    p_ras = (aff @ [1, 2, 3, 1])[:3]
    np.testing.assert_allclose(p_ras, p_lps * [-1, -1, 1], atol=1e-5)
    s, _ = load_volume(rows[0]["seg"], dtype=None)
    assert s.dtype == np.int16 and set(np.unique(s)) == {0, 1}


@pytest.mark.parametrize("space", ["delineation", "native"])
def test_lpba40_layout(tmp_path, space):
    d = tmp_path / "LPBA40" / f"{space}_space"
    for s in ("S01", "S02"):
        sub = d / s
        sub.mkdir(parents=True)
        a = nib.AnalyzeImage(np.zeros((4, 5, 6), np.float32), np.diag([-1.0, 1.0, 1.0, 1.0]))
        if space == "delineation":
            nib.save(a, str(sub / f"{s}.delineation.skullstripped.img"))
            nib.save(nib.AnalyzeImage(np.ones((4, 5, 6), np.int16), None),
                     str(sub / f"{s}.delineation.structure.label.img"))
        else:
            nib.save(a, str(sub / f"{s}.native.mri.img"))
            nib.save(nib.AnalyzeImage(np.ones((4, 5, 6), np.int16), None), str(sub / f"{s}.native.label.img"))
    out = tmp_path / "raw" / "subjects.csv"
    rows = ad.import_dataset("lpba40", tmp_path / "LPBA40", out)
    assert [r["subject"] for r in rows] == ["S01", "S02"]
    assert rows[0]["image"].endswith(".hdr") and "label" in rows[0]["seg"]
    assert ("skullstripped" if space == "delineation" else "native.mri") in rows[0]["image"]
    vol, _ = load_volume(rows[0]["image"])
    assert vol.shape == (4, 5, 6)
    assert read_subjects(out)[1]["seg"].exists()


def test_lpba40_missing_image_is_an_error(tmp_path):
    (tmp_path / "S05").mkdir()
    with pytest.raises(InputError, match="S05"):
        ad.import_dataset("lpba40", tmp_path, tmp_path / "o" / "subjects.csv")


def test_t1_folder_recursive_and_landmarks_dir(tmp_path):
    d = tmp_path / "adni"
    nii(d / "site1" / "sub-01_T1w.nii.gz", np.zeros((3, 3, 3), np.float32))
    nii(d / "site2" / "sub-01_T1w.nii", np.zeros((3, 3, 3), np.float32))
    (d / "notes.txt").write_text("x")
    lmd = tmp_path / "lms"
    lmd.mkdir()
    pd.DataFrame([["AC", 1.0, 2.0, 3.0]], columns=["name", "x", "y", "z"]).to_csv(
        lmd / "site1-sub-01-T1w.csv", index=False)
    out = tmp_path / "raw" / "subjects.csv"
    assert ad.cli(["--layout", "t1_folder", "--path", str(d), "--out", str(out),
                   "--landmarks-dir", str(lmd)]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert df["subject"].tolist() == ["site1-sub-01-T1w", "site2-sub-01-T1w"]
    assert df["landmarks"][0] == str((lmd / "site1-sub-01-T1w.csv").resolve()) and df["landmarks"][1] == ""


def test_bad_landmark_file_in_dir(tmp_path):
    d = tmp_path / "t1"
    nii(d / "a.nii.gz", np.zeros((3, 3, 3), np.float32))
    lmd = tmp_path / "lms"
    lmd.mkdir()
    (lmd / "a.csv").write_text("name,i,j,k\nAC,1,2,3\n")
    with pytest.raises(InputError, match="a.csv"):
        ad.import_dataset("t1_folder", d, tmp_path / "o" / "subjects.csv", landmarks_dir=lmd)


def test_hdf5_reference_layout(tmp_path):
    f = tmp_path / "sliver_val.h5"
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, (8, 9, 10)).astype(np.uint8)
    seg = np.zeros((8, 9, 10), np.uint8)
    seg[2:5, 3:6, 4:8] = 255
    pts = -np.ones((6, 3))
    pts[0] = [1.0, 2.0, 3.0]
    pts[3] = [4.5, 5.0, 6.0]
    with h5py.File(f, "w") as h:
        g = h.create_group("yanx/1")
        g["volume"] = vol
        g["segmentation"] = seg
        g["point"] = pts
        h.create_group("yanx/2")["volume"] = vol
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [10, 20, 30]
    np.savetxt(tmp_path / "aff.txt", aff)
    out = tmp_path / "raw" / "subjects.csv"
    assert ad.cli(["--layout", "hdf5", "--path", str(f), "--out", str(out), "--affine", str(tmp_path / "aff.txt")]) == 0
    rows = read_subjects(out)
    assert [r["subject"] for r in rows] == ["sliver-val-yanx-1", "sliver-val-yanx-2"]
    v, a = load_volume(rows[0]["image"], dtype=None)
    np.testing.assert_array_equal(v, vol)
    np.testing.assert_allclose(a, aff)
    s, _ = load_volume(rows[0]["seg"], dtype=None)
    np.testing.assert_array_equal(s, seg.astype(np.int16))
    lm = pd.read_csv(rows[0]["landmarks"])
    assert lm["name"].tolist() == ["L1", "L4"]
    np.testing.assert_allclose(lm[["x", "y", "z"]].to_numpy(), [[12, 24, 36], [19, 30, 42]])
    assert rows[1]["seg"] is None and rows[1]["landmarks"] is None


def test_table_layout_resolves_and_checks(tmp_path):
    nii(tmp_path / "d" / "a.nii.gz", np.zeros((3, 3, 3), np.float32))
    pd.DataFrame([{"subject": "a", "image": "a.nii.gz", "seg": "", "landmarks": ""}]).to_csv(
        tmp_path / "d" / "t.csv", index=False)
    rows = ad.import_dataset("table", tmp_path / "d" / "t.csv", tmp_path / "raw" / "subjects.csv")
    assert rows[0]["image"] == str((tmp_path / "d" / "a.nii.gz").resolve())
    pd.DataFrame([{"subject": "b", "image": "missing.nii.gz", "seg": "", "landmarks": ""}]).to_csv(
        tmp_path / "d" / "t2.csv", index=False)
    with pytest.raises(InputError, match="missing.nii.gz"):
        ad.import_dataset("table", tmp_path / "d" / "t2.csv", tmp_path / "raw" / "s2.csv")


@pytest.mark.parametrize("layout", ad.LAYOUTS)
def test_missing_path_names_layout_and_path(tmp_path, layout, capsys):
    p = tmp_path / "nowhere"
    assert ad.cli(["--layout", layout, "--path", str(p), "--out", str(tmp_path / "o.csv")]) == 1
    err = capsys.readouterr().err
    assert f"layout {layout}" in err and str(p) in err


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no subjects"):
        ad.import_dataset("lits", tmp_path / "empty", tmp_path / "o.csv")
