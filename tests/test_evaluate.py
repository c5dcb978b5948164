"""vtn evaluate on tiny hand-made registration folders with known metric values."""

import json

import numpy as np
import pandas as pd
import pytest

from vtn import evaluate as ev
from vtn.io import InputError, save_disp_l2r, save_landmarks, save_volume
from vtn.labels import organ_mask

S = 12


def _subject(folder, sid, seg, lms, affine):
    rng = np.random.default_rng(int(sid[1:]))
    save_volume(folder / f"{sid}_image.nii.gz", rng.random((S, S, S)).astype(np.float32), affine)
    save_volume(folder / f"{sid}_seg.nii.gz", seg.astype(np.int16), affine)
    save_landmarks(folder / f"{sid}_landmarks.csv", [f"L{i}" for i in range(len(lms))], lms)
    return {"subject": sid, "image": f"{sid}_image.nii.gz", "seg": f"{sid}_seg.nii.gz",
            "landmarks": f"{sid}_landmarks.csv"}


def _setup(tmp_path, fixed_seg, moving_seg, shift=(0.0, 3.0, 4.0), spacing=2.0,
           folder="prep"):
    prep = tmp_path / folder
    prep.mkdir()
    aff = np.diag([spacing, spacing, spacing, 1.0])
    lms = np.array([[2.0, 3, 4], [6, 6, 6], [8.5, 2, 9]])
    rows = [_subject(prep, "s1", fixed_seg, lms, aff),
            _subject(prep, "s2", moving_seg, lms + 0.5, aff)]
    pd.DataFrame(rows).to_csv(prep / "subjects.csv", index=False)
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"fixed": ["s1"], "moving": ["s2"]}).to_csv(pairs, index=False)
    reg = tmp_path / "reg"
    reg.mkdir()
    save_disp_l2r(reg / "disp_s1_s2.nii.gz", np.zeros((3, S, S, S)), aff)
    # identity transform: warped segmentation = moving segmentation
    save_volume(reg / "warpedseg_s1_s2.nii.gz", moving_seg.astype(np.int16), aff)
    # transported fixed landmarks = true moving landmarks + a known shift
    save_landmarks(reg / "landmarks_s1_s2.csv", ["L0", "L1", "L2"],
                   lms + 0.5 + np.asarray(shift))
    pd.DataFrame({"fixed": ["s1"], "moving": ["s2"], "seconds": [1.25], "device": ["cpu"],
                  "threads": [2]}).to_csv(reg / "times.csv", index=False)
    return prep / "subjects.csv", pairs, reg


def _liver_segs():
    f = np.zeros((S, S, S), np.int16)
    m = np.zeros((S, S, S), np.int16)
    f[0:4, 0:4, 0:4] = 5  # 64 voxels
    m[2:6, 0:4, 0:4] = 5  # overlap 32, union 96 -> IoU 1/3
    f[8:, 8:, 8:] = 6  # another organ, must be ignored
    return f, m


def test_liver_identity_disp_known_values(tmp_path):
    f, m = _liver_segs()
    subjects, pairs, reg = _setup(tmp_path, f, m)
    gt = tmp_path / "gt"
    g = np.zeros((3, S, S, S))
    g[0], g[1] = 3.0, 4.0
    save_disp_l2r(gt / "disp_s1_s2.nii.gz", g, np.eye(4))
    df, long = ev.evaluate(subjects, pairs, reg, "m", "liver", organ="liver", gt=gt,
                           data_source="hand-made")
    r = df.iloc[0]
    assert list(df.columns) == ev.COLUMNS
    assert r["iou"] == pytest.approx(1 / 3)
    assert r["dice"] == pytest.approx(0.5)
    assert r["lm_dist_vox"] == pytest.approx(5.0)
    assert r["lm_dist_mm"] == pytest.approx(10.0)  # 2 mm voxels of the moving image
    assert r["n_landmarks"] == 3
    assert r["jac_std"] == pytest.approx(0.0)
    assert r["folding_pct"] == 0.0
    assert r["epe"] == pytest.approx(5.0)
    assert r["seconds"] == 1.25 and r["device"] == "cpu" and r["data_source"] == "hand-made"
    assert long.iloc[0]["fixed_voxels"] == 64
    # 'any' takes labels >= 1: fixed has 64 + 64 voxels, moving only the box
    df_any, _ = ev.evaluate(subjects, pairs, reg, "m", organ="liver", liver_label="any")
    assert df_any.iloc[0]["iou"] == pytest.approx(32 / (64 + 64 + 32))


def test_binary_liver_mask_used_as_is():
    seg = np.zeros((4, 4, 4))
    seg[:2] = 1
    assert organ_mask(seg, "liver", "5").sum() == 32
    seg[:2] = 5
    seg[2] = 3
    assert organ_mask(seg, "liver", "5").sum() == 32
    assert organ_mask(seg, "liver", "any").sum() == 48
    assert organ_mask(seg, "brain").sum() == 48
    with pytest.raises(ValueError, match="'nonzero' is now 'any'"):
        organ_mask(seg, "liver", "nonzero")


def test_brain_mean_over_labels(tmp_path):
    f = np.zeros((S, S, S), np.int16)
    m = np.zeros((S, S, S), np.int16)
    f[0:4, 0:4, 0:4] = 21
    m[2:6, 0:4, 0:4] = 21  # IoU 1/3
    f[6:10, 6:10, 6:10] = 22
    m[6:10, 6:10, 6:10] = 22  # IoU 1
    m[0:2, 8:, 8:] = 23  # not in the fixed seg: ignored
    subjects, pairs, reg = _setup(tmp_path, f, m)
    out = tmp_path / "metrics.csv"
    long_out = tmp_path / "long.csv"
    rc = ev.cli(["--subjects", str(subjects), "--pairs", str(pairs), "--reg", str(reg),
                 "--method", "ADD", "--study", "brain", "--organ", "brain", "--out", str(out),
                 "--labels-out", str(long_out)])
    assert rc == 0
    df = pd.read_csv(out)
    assert df.loc[0, "iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert df.loc[0, "n_labels"] == 2
    long = pd.read_csv(long_out)
    assert sorted(long["label"]) == [21, 22]
    assert long.set_index("label").loc[21, "dice"] == pytest.approx(0.5)


def test_prealigned_correction_with_known_scaling(tmp_path):
    f, m = _liver_segs()
    subjects, pairs, reg = _setup(tmp_path, f, m, shift=(1.0, 0.0, 0.0), spacing=1.0,
                                  folder="prep_atlas")
    a2p = np.diag([2.0, 3.0, 3.0, 1.0])
    a2p[:3, 3] = [5, -7, 1]  # translation must not matter
    for sid in ("s1", "s2"):
        rec = {"atlas_to_prep": (a2p if sid == "s1" else np.eye(4)).tolist(),
               "prep_affine": np.diag([1.5, 1.5, 1.5, 1.0]).tolist()}
        (subjects.parent / f"{sid}_prep.json").write_text(json.dumps(rec))
    df, _ = ev.evaluate(subjects, pairs, reg, "DD-star", organ="liver", prealigned=True)
    # difference (1, 0, 0) in aligned voxels -> (2, 0, 0) original voxels -> 3 mm
    assert df.iloc[0]["lm_dist_vox"] == pytest.approx(2.0)
    assert df.iloc[0]["lm_dist_mm"] == pytest.approx(3.0)
    df0, _ = ev.evaluate(subjects, pairs, reg, "DD-star", organ="liver")
    assert df0.iloc[0]["lm_dist_vox"] == pytest.approx(1.0)


def test_missing_files_are_named(tmp_path, capsys):
    f, m = _liver_segs()
    subjects, pairs, reg = _setup(tmp_path, f, m)
    (reg / "warpedseg_s1_s2.nii.gz").unlink()
    with pytest.raises(InputError, match="warpedseg_s1_s2.nii.gz"):
        ev.evaluate(subjects, pairs, reg, "m")
    rc = ev.cli(["--subjects", str(subjects), "--pairs", str(pairs), "--reg", str(reg),
                 "--method", "m", "--out", str(tmp_path / "x.csv")])
    assert rc == 1
    assert "warpedseg_s1_s2.nii.gz" in capsys.readouterr().err
    (reg / "times.csv").unlink()
    with pytest.raises(InputError, match="times.csv"):
        ev.evaluate(subjects, pairs, reg, "m")
    with pytest.raises(InputError, match="s1_prep.json"):
        save_volume(reg / "warpedseg_s1_s2.nii.gz", m, np.eye(4))
        pd.DataFrame({"fixed": ["s1"], "moving": ["s2"], "seconds": [1.0]}).to_csv(
            reg / "times.csv", index=False)
        ev.evaluate(subjects, pairs, reg, "m", prealigned=True)
