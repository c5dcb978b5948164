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


def _setup(tmp_path, fixed_seg, moving_seg, disp=(0.0, 0.0, 0.0), spacing=2.0,
           folder="prep"):
    """Two subjects and a registration folder whose displacement is the constant ``disp``;
    moving landmarks = fixed landmarks + ``disp`` + ``ERR``."""
    prep = tmp_path / folder
    prep.mkdir()
    aff = np.diag([spacing, spacing, spacing, 1.0])
    rows = [_subject(prep, "s1", fixed_seg, LMS, aff),
            _subject(prep, "s2", moving_seg, LMS + np.asarray(disp) + ERR, aff)]
    pd.DataFrame(rows).to_csv(prep / "subjects.csv", index=False)
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"fixed": ["s1"], "moving": ["s2"]}).to_csv(pairs, index=False)
    reg = tmp_path / "reg"
    reg.mkdir()
    save_disp_l2r(reg / "disp_s1_s2.nii.gz",
                  np.ones((3, S, S, S)) * np.asarray(disp, dtype=float).reshape(3, 1, 1, 1), aff)
    # hand-made warped segmentation: the moving segmentation as it is
    save_volume(reg / "warpedseg_s1_s2.nii.gz", moving_seg.astype(np.int16), aff)
    pd.DataFrame({"fixed": ["s1"], "moving": ["s2"], "seconds": [1.25], "device": ["cpu"],
                  "threads": [2]}).to_csv(reg / "times.csv", index=False)
    return prep / "subjects.csv", pairs, reg


LMS = np.array([[2.0, 3, 4], [6, 6, 6], [8.5, 2, 9]])
ERR = np.array([0.0, 3.0, 4.0])  # landmark error of the registration: 5 voxels


def _liver_segs():
    f = np.zeros((S, S, S), np.int16)
    m = np.zeros((S, S, S), np.int16)
    f[0:4, 0:4, 0:4] = 5  # 64 voxels
    m[2:6, 0:4, 0:4] = 5  # overlap 32, union 96 -> IoU 1/3
    f[8:, 8:, 8:] = 6  # another organ, must be ignored
    return f, m


def test_liver_constant_disp_known_values(tmp_path):
    f, m = _liver_segs()
    subjects, pairs, reg = _setup(tmp_path, f, m, disp=(1.0, -1.0, 0.5))
    gt = tmp_path / "gt"
    g = np.zeros((3, S, S, S))
    g[0], g[1], g[2] = 4.0, 3.0, 0.5  # (1, -1, 0.5) + (3, 4, 0): end-point error 5
    save_disp_l2r(gt / "disp_s1_s2.nii.gz", g, np.eye(4))
    df, long = ev.evaluate(subjects, pairs, reg, "m", "liver", organ="liver", gt=gt,
                           data_source="hand-made")
    r = df.iloc[0]
    assert list(df.columns) == ev.COLUMNS
    assert list(long.columns) == ev.LABEL_COLUMNS
    assert r["iou"] == pytest.approx(1 / 3)
    assert r["dice"] == pytest.approx(0.5)
    # liver: the one structure is the liver; HD95 of 4^3 boxes shifted by 2 is 2 voxels (the
    # hand count is in test_metrics), 4 mm at 2 mm voxels
    assert r["iou_structures"] == pytest.approx(1 / 3) and r["n_labels"] == 1
    assert r["hd95_structures"] == pytest.approx(2.0)
    assert r["hd95_structures_mm"] == pytest.approx(4.0)
    for col in ("lm_dist_vox", "lm_ref_vox"):  # a constant shift: both measures see ERR
        assert r[col] == pytest.approx(5.0)
    for col in ("lm_dist_mm", "lm_ref_mm"):
        assert r[col] == pytest.approx(10.0)  # 2 mm voxels
    assert r["n_landmarks"] == 3
    assert r["jac_std"] == pytest.approx(0.0)
    assert r["folding_pct"] == 0.0 and r["ndv_pct"] == 0.0
    assert r["sdlogj"] == pytest.approx(0.0, abs=1e-12)
    assert r["epe"] == pytest.approx(5.0)
    assert r["seconds"] == 1.25 and r["device"] == "cpu" and r["data_source"] == "hand-made"
    lab = long.iloc[0]
    assert lab["label"] == "liver" and lab["fixed_voxels"] == 64 and lab["hd95"] == 2.0
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


def test_brain_iou_is_the_whole_brain_structures_are_extra(tmp_path):
    f = np.zeros((S, S, S), np.int16)
    m = np.zeros((S, S, S), np.int16)
    f[0:4, 0:4, 0:4] = 21
    m[2:6, 0:4, 0:4] = 21  # IoU 1/3, HD95 2 voxels
    f[6:10, 6:10, 6:10] = 22
    m[6:10, 6:10, 6:10] = 22  # IoU 1, HD95 0
    m[0:2, 8:, 8:] = 23  # not in the fixed seg: not a structure, but brain
    subjects, pairs, reg = _setup(tmp_path, f, m)
    out = tmp_path / "metrics.csv"
    long_out = tmp_path / "long.csv"
    rc = ev.cli(["--subjects", str(subjects), "--pairs", str(pairs), "--reg", str(reg),
                 "--method", "ADD", "--study", "brain", "--organ", "brain", "--out", str(out),
                 "--labels-out", str(long_out)])
    assert rc == 0
    df = pd.read_csv(out)
    # the paper's Seg. IoU: every labelled voxel as one region. Fixed 128 voxels, warped 160,
    # shared 32 + 64 = 96 -> IoU 96 / 192, Dice 192 / 288
    assert df.loc[0, "iou"] == pytest.approx(0.5)
    assert df.loc[0, "dice"] == pytest.approx(2 / 3)
    # beyond the paper: the mean over the structures present in the fixed segmentation
    assert df.loc[0, "iou_structures"] == pytest.approx((1 / 3 + 1) / 2)
    assert df.loc[0, "dice_structures"] == pytest.approx((0.5 + 1) / 2)
    assert df.loc[0, "hd95_structures"] == pytest.approx(1.0)
    assert df.loc[0, "hd95_structures_mm"] == pytest.approx(2.0)
    assert df.loc[0, "n_labels"] == 2
    long = pd.read_csv(long_out)
    assert sorted(long["label"]) == [21, 22]
    assert long.set_index("label").loc[21, "dice"] == pytest.approx(0.5)
    assert long.set_index("label").loc[21, "hd95"] == pytest.approx(2.0)


# An exact affine registration: phi(x) = M x + t on the fixed grid (trilinear interpolation of
# an affine field is exact), moving landmarks = phi(fixed landmarks) + E. In closed form the
# warped moving landmarks are y = M^-1 (p - t) = q + M^-1 E, so the paper's difference (fixed
# frame) is M^-1 E and the reference code's (moving frame) is -E.
M = np.array([[1.25, 0.1, 0.0], [0.0, 1.2, 0.1], [0.05, 0.0, 1.3]])
T = np.array([0.5, -0.3, 0.2])
E = np.array([[1.0, -2.0, 0.5], [0.0, 1.5, 1.0], [-1.0, 0.0, 2.0]])
QF = np.array([[4.0, 5.0, 6.0], [7.5, 8.0, 5.0], [5.0, 6.0, 9.0]])
AFF_F = np.diag([2.0, 2.0, 2.0, 1.0])  # the two images have different voxel sizes
AFF_M = np.diag([0.5, 0.7, 0.6, 1.0])


def _affine_pair(tmp_path, folder):
    prep = tmp_path / folder
    prep.mkdir()
    n = 16
    rows = []
    for sid, aff, pts in (("s1", AFF_F, QF), ("s2", AFF_M, QF @ M.T + T + E)):
        save_volume(prep / f"{sid}_image.nii.gz", np.zeros((n, n, n), np.float32), aff)
        save_landmarks(prep / f"{sid}_landmarks.csv", ["a", "b", "c"], pts)
        rows.append({"subject": sid, "image": f"{sid}_image.nii.gz", "seg": "",
                     "landmarks": f"{sid}_landmarks.csv"})
    pd.DataFrame(rows).to_csv(prep / "subjects.csv", index=False)
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"fixed": ["s1"], "moving": ["s2"]}).to_csv(pairs, index=False)
    reg = tmp_path / "reg"
    reg.mkdir()
    grid = np.indices((n, n, n)).astype(np.float64)
    disp = np.einsum("ij,jxyz->ixyz", M - np.eye(3), grid) + T.reshape(3, 1, 1, 1)
    save_disp_l2r(reg / "disp_s1_s2.nii.gz", disp, AFF_F)
    pd.DataFrame({"fixed": ["s1"], "moving": ["s2"], "seconds": [1.0]}).to_csv(
        reg / "times.csv", index=False)
    return prep / "subjects.csv", pairs, reg


def _mean_norm(vectors, *mats):
    v = np.asarray(vectors, dtype=np.float64)
    for mat in mats:
        v = v @ np.asarray(mat)[:3, :3].T
    return float(np.linalg.norm(v, axis=1).mean())


def test_landmark_frames_exact_affine_pair_plain_method(tmp_path):
    subjects, pairs, reg = _affine_pair(tmp_path, "prep")
    r = ev.evaluate(subjects, pairs, reg, "ADD", organ="brain")[0].iloc[0]
    paper_diff = np.linalg.solve(M, E.T).T  # y - q = M^-1 E on the fixed grid
    assert r["lm_dist_vox"] == pytest.approx(_mean_norm(paper_diff), rel=1e-6)
    assert r["lm_dist_mm"] == pytest.approx(_mean_norm(paper_diff, AFF_F), rel=1e-6)
    assert r["lm_ref_vox"] == pytest.approx(_mean_norm(E), rel=1e-6)
    assert r["lm_ref_mm"] == pytest.approx(_mean_norm(E, AFF_M), rel=1e-6)
    # not trivial: the two measures and the two frames differ
    assert abs(r["lm_dist_vox"] - r["lm_ref_vox"]) > 0.2
    assert abs(_mean_norm(paper_diff, AFF_M) - r["lm_dist_mm"]) > 0.5


def test_landmark_frames_exact_affine_pair_star_method(tmp_path):
    """★: the paper's difference (aligned fixed grid) goes through the FIXED subject's
    atlas_to_prep and prep affine, the reference code's (aligned moving grid) through the
    MOVING subject's."""
    subjects, pairs, reg = _affine_pair(tmp_path, "prep_atlas")
    c, s_ = np.cos(0.3), np.sin(0.3)
    a2p = {"s1": np.array([[1.4 * c, -1.4 * s_, 0, 5], [1.3 * s_, 1.3 * c, 0, -7],
                           [0, 0, 1.5, 1], [0, 0, 0, 1.0]]),
           "s2": np.array([[0.8, 0, 0.1, -3], [0, 1.3, 0, 2], [0, 0, 1.1, 0], [0, 0, 0, 1.0]])}
    prep_aff = {"s1": np.diag([1.5, 1.5, 1.5, 1.0]), "s2": np.diag([1.0, 2.0, 2.5, 1.0])}
    for sid in ("s1", "s2"):
        rec = {"atlas_to_prep": a2p[sid].tolist(), "prep_affine": prep_aff[sid].tolist()}
        (subjects.parent / f"{sid}_prep.json").write_text(json.dumps(rec))
    r = ev.evaluate(subjects, pairs, reg, "DD-star", organ="brain", prealigned=True)[0].iloc[0]
    paper_diff = np.linalg.solve(M, E.T).T
    assert r["lm_dist_vox"] == pytest.approx(_mean_norm(paper_diff, a2p["s1"]), rel=1e-6)
    assert r["lm_dist_mm"] == pytest.approx(
        _mean_norm(paper_diff, a2p["s1"], prep_aff["s1"]), rel=1e-6)
    assert r["lm_ref_vox"] == pytest.approx(_mean_norm(E, a2p["s2"]), rel=1e-6)
    assert r["lm_ref_mm"] == pytest.approx(_mean_norm(E, a2p["s2"], prep_aff["s2"]), rel=1e-6)
    # the correction matters: without it the numbers are those of the plain method
    plain = ev.evaluate(subjects, pairs, reg, "DD-star", organ="brain")[0].iloc[0]
    assert abs(plain["lm_dist_vox"] - r["lm_dist_vox"]) > 0.05
    assert abs(plain["lm_ref_vox"] - r["lm_ref_vox"]) > 0.05
    # ... and the frames are not interchangeable (fixed subject's map for lm_dist)
    assert abs(_mean_norm(paper_diff, a2p["s2"]) - r["lm_dist_vox"]) > 0.2
    # no original prep affine: mm left empty
    for sid in ("s1", "s2"):
        rec = {"atlas_to_prep": a2p[sid].tolist()}
        (subjects.parent / f"{sid}_prep.json").write_text(json.dumps(rec))
    r2 = ev.evaluate(subjects, pairs, reg, "DD-star", organ="brain", prealigned=True)[0].iloc[0]
    assert np.isnan(r2["lm_dist_mm"]) and np.isnan(r2["lm_ref_mm"])
    assert r2["lm_dist_vox"] == pytest.approx(r["lm_dist_vox"])


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
    (subjects.parent / "s1_prep.json").write_text(json.dumps({"atlas_to_prep": np.eye(4).tolist()}))
    with pytest.raises(InputError, match="s2_prep.json"):  # the moving subject's frame too
        ev.evaluate(subjects, pairs, reg, "m", prealigned=True)


def test_parallel_jobs_give_the_same_rows(tmp_path, capsys):
    """`--jobs 2`: pairs evaluated in worker processes, rows identical and in pair order, one
    progress line per pair."""
    f, m = _liver_segs()
    subjects, pairs, reg = _setup(tmp_path, f, m, disp=(1.0, -1.0, 0.5))
    # a second pair with another displacement: rows must not be swapped
    save_disp_l2r(reg / "disp_s2_s1.nii.gz", np.full((3, S, S, S), -2.0), np.eye(4))
    save_volume(reg / "warpedseg_s2_s1.nii.gz", f, np.eye(4))
    pd.DataFrame({"fixed": ["s1", "s2"], "moving": ["s2", "s1"]}).to_csv(pairs, index=False)
    one, long1 = ev.evaluate(subjects, pairs, reg, "m", organ="liver")
    two, long2 = ev.evaluate(subjects, pairs, reg, "m", organ="liver", jobs=2,
                             log=lambda s: print(s, file=__import__("sys").stderr))
    pd.testing.assert_frame_equal(one, two)
    pd.testing.assert_frame_equal(long1, long2)
    assert one["lm_ref_vox"].iloc[0] != one["lm_ref_vox"].iloc[1]  # the two pairs differ
    err = capsys.readouterr().err.splitlines()
    assert [ln.split(",")[0] for ln in err] == ["pair 1/2 (50.0%)", "pair 2/2 (100.0%)"]
