"""Tests of vtn.data.prealign on a 32^3 phantom displaced by a known voxel affine."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from vtn.data import prealign as pa
from vtn.io import load_landmarks, load_volume, save_landmarks, save_volume

N = 32
# anisotropic, x-flipped prep affine: exercises the RAS/LPS and spacing handling
AFF = np.array([[-1.5, 0, 0, 20.0], [0, 2.0, 0, -30.0], [0, 0, 1.0, 5.0], [0, 0, 0, 1.0]])
G = np.mgrid[:N, :N, :N].astype(np.float64)
C = np.full(3, (N - 1) / 2.0)
R2 = ((G[0] - C[0]) / 11) ** 2 + ((G[1] - C[1]) / 12) ** 2 + ((G[2] - C[2]) / 10) ** 2
INSIDE = R2 < 1


def known_affine():
    th = np.deg2rad(6.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    lin = rot @ np.diag([1.04, 0.97, 1.02])
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = C - lin @ C + [1.5, -1.0, 2.0]
    return m  # atlas voxel -> prep voxel


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prealign")
    prep = tmp / "prep"
    tex = ndimage.gaussian_filter(np.random.default_rng(0).random((N, N, N)), 2.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    atlas = ndimage.gaussian_filter(np.where(INSIDE, 0.3 + 0.7 * tex, 0.0), 0.7).astype(np.float32)
    seg = np.where(INSIDE, 1 + (G[0] > C[0]) + 2 * (G[1] > C[1]), 0).astype(np.int16)
    m = known_affine()
    mi = np.linalg.inv(m)
    moved = ndimage.affine_transform(atlas, mi[:3, :3], offset=mi[:3, 3], order=1).astype(np.float32)
    moved_seg = ndimage.affine_transform(seg, mi[:3, :3], offset=mi[:3, 3], order=0).astype(np.int16)
    save_volume(prep / "a_image.nii.gz", atlas, AFF)
    save_volume(prep / "a_seg.nii.gz", seg, AFF)
    save_volume(prep / "b_image.nii.gz", moved, AFF)
    save_volume(prep / "b_seg.nii.gz", moved_seg, AFF)
    save_landmarks(prep / "b_landmarks.csv", ["p1", "p2"], [[10.25, 12.5, 14.0], [20.0, 18.75, 9.5]])
    (prep / "b_prep.json").write_text(json.dumps({"prep_to_raw": np.eye(4).tolist(), "size": N, "organ": "brain"}))
    pd.DataFrame([{"subject": "a", "image": "a_image.nii.gz", "seg": "a_seg.nii.gz", "landmarks": ""},
                  {"subject": "b", "image": "b_image.nii.gz", "seg": "b_seg.nii.gz",
                   "landmarks": "b_landmarks.csv"}]).to_csv(prep / "subjects.csv", index=False)
    out = tmp / "prep_atlas"
    rc = pa.cli(["--subjects", str(prep / "subjects.csv"), "--atlas", str(prep / "a_image.nii.gz"),
                 "--atlas-seg", str(prep / "a_seg.nii.gz"), "--out", str(out), "--threads", "1",
                 "--preset", "fast"])
    assert rc == 0
    return {"prep": prep, "out": out, "atlas": atlas, "seg": seg, "moved": moved, "m": m}


def test_threads_passed_to_itk(run):
    assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
    meta = json.loads((run["out"] / "b_prep.json").read_text())
    assert meta["prealign"]["threads"] == 1


def test_recovers_known_affine(run):
    meta = json.loads((run["out"] / "b_prep.json").read_text())
    a2p = np.array(meta["atlas_to_prep"])
    pts = np.c_[G.reshape(3, -1).T[INSIDE.ravel()], np.ones(INSIDE.sum())]
    err = np.linalg.norm(((a2p - run["m"]) @ pts.T)[:3], axis=0)
    err_identity = np.linalg.norm(((np.eye(4) - run["m"]) @ pts.T)[:3], axis=0)
    assert err_identity.mean() > 2.0
    assert err.mean() < 0.75 and err.max() < 1.5
    assert meta["prealign_seconds"] > 0
    # input json is kept
    assert meta["organ"] == "brain" and meta["size"] == N and meta["prep_to_raw"] == np.eye(4).tolist()


def test_aligned_image_and_seg_match_atlas(run):
    img, aff = load_volume(run["out"] / "b_image.nii.gz")
    np.testing.assert_allclose(aff, AFF, atol=1e-6)
    assert np.corrcoef(img[INSIDE], run["atlas"][INSIDE])[0, 1] > 0.97
    seg, _ = load_volume(run["out"] / "b_seg.nii.gz", dtype=None)
    assert seg.dtype == np.int16 and set(np.unique(seg)) <= {0, 1, 2, 3, 4}
    meta = json.loads((run["out"] / "b_prep.json").read_text())
    assert meta["prealign"]["mean_dice_to_atlas"] > 0.85


def test_voxel_matrix_agrees_with_ants_apply_transforms(run):
    import ants

    fi = ants.image_read(str(run["prep"] / "a_image.nii.gz"))
    mo = ants.image_read(str(run["prep"] / "b_image.nii.gz"))
    np.testing.assert_allclose(pa.ants_voxel_to_lps(fi), np.diag([-1, -1, 1, 1]) @ AFF, atol=1e-5)
    w = ants.apply_transforms(fixed=fi, moving=mo, transformlist=[str(run["out"] / "b_prealign.mat")],
                              interpolator="linear").numpy()
    ours, _ = load_volume(run["out"] / "b_image.nii.gz")
    # compare where the sampled prep point is inside the prep grid (the two libraries treat
    # points within half a voxel outside the grid differently: ITK extrapolates, scipy gives 0)
    a2p = np.array(json.loads((run["out"] / "b_prep.json").read_text())["atlas_to_prep"])
    src = (a2p @ np.c_[G.reshape(3, -1).T, np.ones(N ** 3)].T)[:3].T.reshape(N, N, N, 3)
    ok = ((src >= 0) & (src <= N - 1)).all(axis=-1)
    assert ok.mean() > 0.8
    np.testing.assert_allclose(ours[ok], w[ok], atol=1e-4)


def test_landmarks_exactly_consistent(run):
    meta = json.loads((run["out"] / "b_prep.json").read_text())
    a2p = np.array(meta["atlas_to_prep"])
    names0, p0 = load_landmarks(run["prep"] / "b_landmarks.csv")
    names1, q = load_landmarks(run["out"] / "b_landmarks.csv")
    assert names0 == names1
    back = (a2p @ np.c_[q, np.ones(len(q))].T).T[:, :3]
    np.testing.assert_allclose(back, p0, atol=2e-6)


def test_atlas_subject_gets_identity(run):
    meta = json.loads((run["out"] / "a_prep.json").read_text())
    assert meta["atlas_to_prep"] == np.eye(4).tolist() and meta["prealign_seconds"] == 0.0
    img, _ = load_volume(run["out"] / "a_image.nii.gz")
    np.testing.assert_array_equal(img, run["atlas"])
    rows = pd.read_csv(run["out"] / "subjects.csv", keep_default_na=False)
    assert rows["subject"].tolist() == ["a", "b"] and rows["landmarks"].tolist() == ["", "b_landmarks.csv"]


def test_chunks_gathered_equal_one_run(run, tmp_path):
    """`vtn prealign --rows` chunks put together by `vtn gather --subjects` give the table and
    the files of one unchunked run (the workflow's prealign jobs). Each run is a process of its
    own, as a workflow job: ITK reads its thread count once per process, and one thread makes
    ANTs deterministic."""
    import subprocess
    import sys
    from pathlib import Path

    from vtn.gather import gather_subjects
    from vtn.io import InputError

    subjects = run["prep"] / "subjects.csv"

    def prealign(out, *rows):
        proc = subprocess.run(
            [sys.executable, "-m", "vtn", "prealign", "--subjects", str(subjects), "--atlas",
             str(run["prep"] / "a_image.nii.gz"), "--atlas-seg", str(run["prep"] / "a_seg.nii.gz"),
             "--out", str(out), "--threads", "1", "--preset", "fast", *rows],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert proc.returncode == 0, proc.stderr

    whole = tmp_path / "whole"
    prealign(whole)
    parts = [tmp_path / "c" / rows.replace(":", "-") for rows in ("0:1", "1:2", "2:3")]
    for part in parts:
        prealign(part, "--rows", part.name.replace("-", ":"))
    assert pd.read_csv(parts[2] / "subjects.csv").empty  # rows past the end: an empty chunk
    out = gather_subjects(parts, subjects, tmp_path / "gathered")
    assert out == tmp_path / "gathered" / "subjects.csv"
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(whole / "subjects.csv"))
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in whole.iterdir())
    for name in ("a_prep.json", "b_prep.json"):
        a = json.loads((whole / name).read_text())
        b = json.loads((out.parent / name).read_text())
        for rec in (a, b):  # timing and ANTs' temporary folder differ between runs
            rec.pop("prealign_seconds"), rec["prealign"].pop("ants_args")
        assert a == b, name
    np.testing.assert_array_equal(load_volume(out.parent / "b_image.nii.gz")[0],
                                  load_volume(whole / "b_image.nii.gz")[0])
    assert os.stat(out.parent / "b_image.nii.gz").st_nlink == 2  # linked, not copied
    with pytest.raises(InputError, match="missing: b"):
        gather_subjects(parts[:1], subjects, tmp_path / "g2")


def test_lps_affine_to_matrix():
    par = [2, 0, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3]
    m = pa.lps_affine_to_matrix(par, [10, 0, 0])
    # y = A (x - c) + t + c
    np.testing.assert_allclose(m @ [10, 0, 0, 1], [11, 2, 3, 1])
    np.testing.assert_allclose(m @ [11, 0, 0, 1], [13, 2, 3, 1])
