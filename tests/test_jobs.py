"""vtn.jobs: the job plan known when the DAG is built (subject and pair counts, chunks, time
limits), checked against what the commands really do."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from vtn import jobs as J
from vtn.data.adapters import import_dataset, subject_ids
from vtn.data.preprocess import make_pairs
from vtn.io import InputError


def test_chunks_cover_every_row_once():
    for n, k in [(0, 1), (1, 1), (7, 1), (7, 3), (7, 7), (7, 50), (380, 1), (2000, 64)]:
        names = J.chunks(n, k)
        rows = [J.chunk_rows(c) for c in names]
        covered = [i for a, b in rows for i in range(a, b)]
        assert covered == list(range(n)), (n, k)
        assert len(names) == math.ceil(n / k)
        assert all(0 < b - a <= k for a, b in rows)
        assert names == sorted(names)  # zero-padded: file order is row order
    assert J.chunks(7, 3) == ["00000-00003", "00003-00006", "00006-00007"]
    assert J.chunks(123456, 100000) == ["000000-100000", "100000-123456"]
    with pytest.raises(ValueError, match="chunk size"):
        J.chunks(5, 0)


def test_parse_rows():
    assert J.parse_rows("0:1") == (0, 1)
    assert J.parse_rows("12:380") == (12, 380)
    for bad in ("3", "a:b", "5:5", "6:2", "-1:3", "1:2:3"):
        with pytest.raises(ValueError, match="rows"):
            J.parse_rows(bad)


def _config(datasets, studies):
    return {"datasets": datasets, "studies": studies}


def test_pair_counts_match_make_pairs():
    """n_pairs is the length of the pairs.csv preprocessing writes (vtn.data.preprocess)."""
    studies = {
        "liver": {"organ": "liver", "train": ["tr"], "test": "te", "main": "AD",
                  "max_pairs": 12, "supervised": {"pairs": 200}},
        "brain": {"organ": "brain", "train": ["btr"], "test": "bte", "main": "AD"},
    }
    datasets = {
        "tr": {"source": "embedded", "organ": "liver", "n": 9, "seed": 1},   # 72 pairs < 200
        "te": {"source": "embedded", "organ": "liver", "n": 5, "seed": 2},   # 20 pairs > 12
        "btr": {"source": "embedded", "organ": "brain", "n": 3, "seed": 3},  # no pairs file
        "bte": {"source": "embedded", "organ": "brain", "n": 20, "seed": 4},  # all 380 pairs
    }
    cfg = _config(datasets, studies)
    from vtn.study import test_pairs

    for name, d in datasets.items():
        ids = [f"s{i}" for i in range(d["n"])]
        expected = len(make_pairs(ids, max_pairs=test_pairs(cfg, name) or None))
        assert J.n_pairs(cfg, name) == expected, name
        assert J.n_subjects(cfg, name) == d["n"]
    assert J.n_pairs(cfg, "bte") == 380 and J.n_pairs(cfg, "te") == 12
    assert J.n_pairs(cfg, "tr") == 72
    # fewer subjects after preprocessing: fewer pairs (the last chunks come out empty)
    assert J.n_pairs(cfg, "bte", subjects=19) == 342


def _nifti(path, shape=(4, 4, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))


def test_user_dataset_counts_are_the_imported_subjects(tmp_path):
    """subject_ids lists (without converting) exactly the subjects `vtn import` writes."""
    import SimpleITK as sitk

    lits = tmp_path / "LiTS"
    for i in (0, 1, 10):
        _nifti(lits / f"volume-{i}.nii")
        _nifti(lits / f"segmentation-{i}.nii")
    _nifti(lits / "volume-x.nii")  # not a LiTS name: ignored by both
    sliver = tmp_path / "SLIVER07"
    sliver.mkdir()
    for i in (1, 2):
        img = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16))
        sitk.WriteImage(img, str(sliver / f"liver-orig{i:03d}.mhd"))
    lpba = tmp_path / "LPBA40"
    for s in ("S01", "S02", "S03"):
        _nifti(lpba / s / f"{s}.native.mri.nii.gz")
        _nifti(lpba / s / f"{s}.native.label.nii.gz")
    t1 = tmp_path / "ADNI"
    for rel in ("a/t1.nii.gz", "b/t1.nii", "c.nii.gz"):
        _nifti(t1 / rel)
    table = tmp_path / "BFH" / "subjects.csv"
    _nifti(tmp_path / "BFH" / "x.nii.gz")
    table.write_text("subject,image,seg,landmarks\nb1,x.nii.gz,,\nb2,x.nii.gz,,\n")
    sizes = {}
    for layout, path in [("lits", lits), ("sliver07", sliver), ("lpba40", lpba),
                         ("t1_folder", t1), ("table", table)]:
        ids = subject_ids(layout, path)
        out = tmp_path / "out" / layout / "subjects.csv"
        imported = [r["subject"] for r in import_dataset(layout, path, out)]
        assert ids == imported, layout
        sizes[layout] = len(ids)
        cfg = _config({"d": {"source": layout, "organ": "liver", "path": str(path)}}, {})
        assert J.n_subjects(cfg, "d") == len(ids)
    assert sizes == {"lits": 3, "sliver07": 2, "lpba40": 3, "t1_folder": 3, "table": 2}
    # listing converted nothing
    assert not list(sliver.glob("*.nii.gz"))
    with pytest.raises(InputError, match="does not exist"):
        subject_ids("lits", tmp_path / "nowhere")


def test_runtime_minutes_closed_form():
    # 1 pair of the paper's ANTs at 128^3: 15 + 60 minutes; the second attempt twice that
    assert J.runtime_minutes("ants/paper", 1, 128) == 75
    assert J.runtime_minutes("ants/paper", 1, 128, attempt=2) == 150
    # 64^3: an eighth of the per-pair time; 32 pairs of Elastix' paper preset
    assert J.runtime_minutes("ants/paper", 1, 64) == 15 + math.ceil(60 / 8)
    assert J.runtime_minutes("elastix/paper", 32, 128) == 15 + 5 * 32
    # preprocessing does not scale with the model size
    assert J.runtime_minutes("preprocess/brain", 100, 32) == 15 + 20
    assert J.runtime_minutes("preprocess/liver", 100, 128) == 15 + 100
    with pytest.raises(ValueError, match="unknown job kind"):
        J.runtime_minutes("nope", 1, 128)


def test_eval_processes():
    assert [J.eval_processes(n, 8) for n in (1, 12, 50, 51, 380, 1560)] == [1, 1, 1, 2, 8, 8]
    assert J.eval_processes(380, 2) == 2 and J.eval_processes(0, 4) == 1


def test_learn2reg_counts_are_the_imported_images_and_task_pairs(tmp_path):
    """A Learn2Reg dataset: its subset's images, and for val/test subsets the task's pairs
    (what `vtn import --layout learn2reg --pairs-out` and `vtn preprocess --pairs-from` write)."""
    from test_learn2reg import make_task  # tests/ is on sys.path
    from vtn.data.learn2reg import import_learn2reg

    task, _ = make_task(tmp_path / "AbdomenCTCT", cases=("0001", "0002", "0003", "0004"))
    studies = {"s": {"organ": "liver", "train": ["tr"], "test": "va", "main": "AD"}}
    for subset in ("train", "val", "all"):
        cfg = _config({"tr": {"source": "learn2reg", "organ": "liver", "path": str(task),
                              "subset": "train", "label": 6},
                       "va": {"source": "learn2reg", "organ": "liver", "path": str(task),
                              "subset": subset, "label": 6}}, studies)
        rows, pairs = import_learn2reg(task, tmp_path / f"out-{subset}", subset=subset)
        assert J.n_subjects(cfg, "va") == len(rows)
        n = len(rows)
        assert J.n_pairs(cfg, "va") == (len(pairs) if subset == "val" else n * (n - 1))
    # the training images outside the val pairs (0001-0003 are in them): 0004 alone
    assert J.n_subjects(cfg, "tr") == 1 and J.n_pairs(cfg, "tr") == 0
    assert not list(tmp_path.glob("AbdomenCTCT/**/*_landmarks.csv"))  # counting converts nothing
