"""Tests of vtn.data.learn2reg: a fake Learn2Reg task folder laid out as the challenge releases
are (``<TASK>_dataset.json``, ``imagesTr``/``labelsTr``/``masksTr``/``keypointsTr``, file names
``<TASK>_<case>_<modality>.nii.gz``, header-less voxel keypoint CSVs)."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from vtn.data import adapters
from vtn.data.learn2reg import import_learn2reg, pair_stem, read_keypoints
from vtn.io import InputError, load_raw_landmarks, read_pairs, read_subjects

# an oblique, anisotropic grid: keypoint conversion must use the whole affine
THETA = 0.4
AFF = np.eye(4)
AFF[:3, :3] = np.array([[np.cos(THETA), -np.sin(THETA), 0], [np.sin(THETA), np.cos(THETA), 0],
                        [0, 0, 1]]) @ np.diag([1.5, 0.8, 2.0])
AFF[:3, 3] = [-30.0, 12.5, 40.0]
SHAPE = (12, 10, 8)
PHANTOM_SHAPE = (36, 32, 26)


def _img(path, seed, label=False):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 7, SHAPE).astype(np.int16) if label else rng.normal(size=SHAPE).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, AFF), str(path))


def phantom(path_image, path_label, path_mask, case, shape=PHANTOM_SHAPE):
    """A tiny abdominal CT of one case (HU): air, a body (the mask), a textured liver (label 6,
    its centre and size varying with the case) and a spleen (label 1), on the oblique grid
    ``AFF``. Returns the liver centre and radii (voxels)."""
    rng = np.random.default_rng(100 + case)
    g = np.indices(shape).astype(np.float64)
    c = np.array(shape) / 2.0 + rng.uniform(-1.0, 1.0, 3)
    r = np.array(shape) * rng.uniform(0.17, 0.21, 3)
    body = sum(((g[k] - np.array(shape)[k] / 2.0) / (0.48 * shape[k])) ** 2 for k in range(3)) < 1
    liver = sum(((g[k] - c[k]) / r[k]) ** 2 for k in range(3)) < 1
    spleen = sum(((g[k] - (c[k] + (1.4 * r[k] if k == 0 else 0))) / (0.4 * r[k])) ** 2
                 for k in range(3)) < 1
    tex = 20 * np.sin(g[0] / 1.7) * np.cos(g[1] / 2.3) + 10 * np.sin(g[2] / 1.9)
    img = np.where(liver, 110 + tex, np.where(spleen, 60 + 0.5 * tex, np.where(body, 30, -1000)))
    img = img + rng.normal(0, 5, shape)
    lab = np.where(liver, 6, np.where(spleen & body, 1, 0)).astype(np.int16)
    for path, arr in ((path_image, img.astype(np.float32)), (path_label, lab),
                      (path_mask, body.astype(np.uint8))):
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, AFF), str(path))
    return c, r


def make_task(root, task="AbdomenCTCT", keypoints_in_json=False, nii_named_keypoints=False,
              cases=("0001", "0002", "0003"), val_pairs=(("0001", "0002"), ("0003", "0001")),
              phantoms=False):
    """A task folder as the challenge releases it. Default: training cases 0001-0003 (random
    images, labels and masks), 0031 test image present, 0032 listed but not released;
    keypoints for 0001/0002 (voxel coordinates, no header). With ``phantoms``: every training
    case is a :func:`phantom` CT with keypoints at fixed positions relative to its liver (so
    that keypoints of two cases correspond by row)."""
    root.mkdir(parents=True, exist_ok=True)
    training, kps = [], {}
    for k, case in enumerate(cases):
        name = f"{task}_{case}_0000.nii.gz"
        if phantoms:
            c, r = phantom(root / "imagesTr" / name, root / "labelsTr" / name,
                           root / "masksTr" / name, int(case))
            vox = c + r * np.array([[0, 0, 0], [0.5, 0, 0], [0, -0.5, 0], [0, 0, 0.5],
                                    [-0.4, 0.3, -0.3]])
        else:
            _img(root / "imagesTr" / name, k)
            _img(root / "labelsTr" / name, 10 + k, label=True)
            _img(root / "masksTr" / name, 20 + k, label=True)
            vox = np.random.default_rng(30 + k).uniform(0, 7, (5, 3))
        entry = {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}",
                 "mask": f"./masksTr/{name}"}
        if phantoms or case in ("0001", "0002"):
            (root / "keypointsTr").mkdir(exist_ok=True)
            np.savetxt(root / "keypointsTr" / f"{task}_{case}_0000.csv", vox, delimiter=",",
                       fmt="%.5f")
            kps[f"{task}_{case}_0000"] = vox
            if keypoints_in_json:
                suffix = ".nii.gz" if nii_named_keypoints else ".csv"
                entry["keypoints"] = f"./keypointsTr/{task}_{case}_0000{suffix}"
        training.append(entry)
    _img(root / "imagesTs" / f"{task}_0031_0000.nii.gz", 40)
    spec = {
        "name": task, "release": "1.1", "description": "fake", "licence": "none",
        "pairings": "unpaired", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen", "6": "liver"},
        "tensorImageSize": {"0": "3D"}, "tensorImageShape": {"0": list(SHAPE)},
        "numTraining": len(cases), "numTest": 2, "training": training,
        "test": [{"image": f"./imagesTs/{task}_0031_0000.nii.gz"},
                 {"image": f"./imagesTs/{task}_0032_0000.nii.gz"}],
        "numRegistration_val": len(val_pairs),
        "registration_val": [{"fixed": f"./imagesTr/{task}_{f}_0000.nii.gz",
                              "moving": f"./imagesTr/{task}_{m}_0000.nii.gz"}
                             for f, m in val_pairs],
        "numRegistration_test": 1,
        "registration_test": [
            {"fixed": f"./imagesTs/{task}_0031_0000.nii.gz", "moving": f"./imagesTs/{task}_0032_0000.nii.gz"}],
    }
    (root / f"{task}_dataset.json").write_text(json.dumps(spec, indent=4))
    return root, kps


@pytest.mark.parametrize("variant", ["folder", "json", "json-nii-name"])
def test_import_task_subjects_keypoints_pairs(tmp_path, variant):
    root, kps = make_task(tmp_path / "AbdomenCTCT", keypoints_in_json=variant != "folder",
                          nii_named_keypoints=variant == "json-nii-name")
    out = tmp_path / "raw" / "subjects.csv"
    notes = []
    assert adapters.cli(["--layout", "learn2reg", "--path", str(root), "--out", str(out),
                         "--pairs-out", str(tmp_path / "raw" / "pairs.csv")]) == 0
    rows = read_subjects(out)
    ids = [r["subject"] for r in rows]
    assert ids == ["AbdomenCTCT_0001_0000", "AbdomenCTCT_0002_0000", "AbdomenCTCT_0003_0000",
                   "AbdomenCTCT_0031_0000"]
    by = {r["subject"]: r for r in rows}
    assert by["AbdomenCTCT_0002_0000"]["seg"] == (root / "labelsTr" / "AbdomenCTCT_0002_0000.nii.gz").resolve()
    assert by["AbdomenCTCT_0031_0000"]["seg"] is None and by["AbdomenCTCT_0003_0000"]["landmarks"] is None
    for sid, vox in kps.items():
        names, mm = load_raw_landmarks(by[sid]["landmarks"])
        assert names == [f"kp{i:04d}" for i in range(1, 6)]
        expected = (AFF @ np.c_[vox, np.ones(len(vox))].T).T[:, :3]  # voxel -> RAS mm
        np.testing.assert_allclose(mm, expected, atol=1e-5)
        assert np.abs(mm - vox).max() > 5  # the conversion is not trivial
    pairs = pd.read_csv(tmp_path / "raw" / "pairs.csv", dtype=str)
    assert pairs.values.tolist() == [
        ["AbdomenCTCT_0001_0000", "AbdomenCTCT_0002_0000", "registration_val"],
        ["AbdomenCTCT_0003_0000", "AbdomenCTCT_0001_0000", "registration_val"]]
    assert read_pairs(tmp_path / "raw" / "pairs.csv")[0] == ("AbdomenCTCT_0001_0000", "AbdomenCTCT_0002_0000")
    _, _ = import_learn2reg(root, tmp_path / "again", log=notes.append)
    assert any("0032" in n and "skipped" in n for n in notes)  # unreleased test image: said so
    assert any("liver label 6" in n for n in notes)


def test_subsets_split_training_from_validation(tmp_path):
    root, _ = make_task(tmp_path / "AbdomenCTCT")
    ids = {}
    for subset in ("train", "val", "test", "all"):
        rows, pairs = import_learn2reg(root, tmp_path / subset, subset=subset)
        ids[subset] = [r["subject"] for r in rows]
        assert all(f in ids[subset] and m in ids[subset] for f, m, _ in pairs)
        # keypoints are converted for the kept subjects only
        assert {p.name for p in (tmp_path / subset).glob("*_landmarks.csv")} == {
            f"{r['subject']}_landmarks.csv" for r in rows if r["landmarks"] is not None}
    # registration_val uses 0001, 0002, 0003: nothing left to train on but nothing shared
    assert ids["val"] == [f"AbdomenCTCT_000{k}_0000" for k in (1, 2, 3)]
    assert ids["train"] == [] and ids["test"] == ["AbdomenCTCT_0031_0000"]
    assert sorted(ids["all"]) == sorted(ids["val"] + ids["test"])
    spec = json.loads((root / "AbdomenCTCT_dataset.json").read_text())
    spec["registration_val"] = spec["registration_val"][:1]  # 0001 -> 0002 only
    (root / "AbdomenCTCT_dataset.json").write_text(json.dumps(spec))
    rows, pairs = import_learn2reg(root, tmp_path / "t2", subset="train")
    assert [r["subject"] for r in rows] == ["AbdomenCTCT_0003_0000"] and pairs == []


def test_bad_task_folders_name_the_problem(tmp_path):
    root, _ = make_task(tmp_path / "T")
    (root / "imagesTr" / "AbdomenCTCT_0002_0000.nii.gz").unlink()
    with pytest.raises(InputError, match=r"AbdomenCTCT_dataset\.json: training image .*0002_0000.* not found"):
        import_learn2reg(root, tmp_path / "o")
    root, _ = make_task(tmp_path / "U")
    spec = json.loads((root / "AbdomenCTCT_dataset.json").read_text())
    spec["registration_val"].append({"fixed": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz",
                                     "moving": "./imagesTr/AbdomenCTCT_0099_0000.nii.gz"})
    (root / "AbdomenCTCT_dataset.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="0099_0000.*not an image"):
        import_learn2reg(root, tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no <TASK>_dataset.json"):
        import_learn2reg(empty, tmp_path / "o")
    bad = tmp_path / "kp.csv"
    bad.write_text("1,2\n3,4\n")
    with pytest.raises(InputError, match=r"kp\.csv: keypoints need 3 columns"):
        read_keypoints(bad, np.eye(4))
    with pytest.raises(InputError, match="no registration pairs or subsets"):
        adapters.import_dataset("lits", tmp_path, tmp_path / "s.csv", pairs_out=tmp_path / "p.csv")


def test_pair_stem_follows_learn2reg_naming():
    assert pair_stem("a/AbdomenCTCT_0001_0000.nii.gz", "b/AbdomenCTCT_0002_0000.nii.gz") == "0001_0002"
    assert pair_stem("NLST_0004_0000.nii.gz", "NLST_0004_0001.nii.gz") == "0004_0004"
    # other modality pairs: the long form of the Learn2Reg evaluation
    assert pair_stem("ThoraxCBCT_0011_0001.nii.gz", "ThoraxCBCT_0011_0000.nii.gz") == "0011_0001_0011_0000"
    assert pair_stem("x/fixed.mha", "y/dicom_folder") == "fixed_dicom_folder"
    assert pair_stem("A_0001_0000.nii.gz", "B_0002_0000.nii.gz") == "A_0001_0000_B_0002_0000"
