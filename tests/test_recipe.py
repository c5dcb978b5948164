"""Tests of vtn.recipe: the model package (weights + preprocessing recipe + card) and the recipe
reproducing ``vtn preprocess`` bit for bit."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from test_preprocess import AFF, write, write_subject, write_table  # tests/ is on sys.path
from vtn import recipe as R
from vtn import train as T
from vtn.data import preprocess as pp
from vtn.io import InputError, load_landmarks, load_volume

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

SIZE = 16
RADIUS = 2  # median radius of the threshold liver finder for these tiny volumes


def finder_ct(seed=7):
    """A CT without segmentation: air, a liver-like block (HU ~110), a small bright slab; on a
    left-anterior-superior grid (first axis flipped) so that reorientation is exercised."""
    rng = np.random.default_rng(seed)
    vol = np.full((26, 24, 18), -1000.0, np.float32)
    vol[4:20, 5:19, 3:15] = rng.uniform(70.0, 150.0, (16, 14, 12))
    vol[21:24, 2:22, 2:16] = 400.0
    aff = np.diag([-1.5, 1.5, 2.0, 1.0])
    aff[:3, 3] = [20.0, -15.0, 3.0]
    return vol, aff


def make_liver_study(root, cascade="A", **train_options):
    """Raw data (3 CTs with liver label 5, one without labels), ``vtn preprocess`` at 16^3 with the
    histogram reference s0, and a 1-step training; returns a dict of paths."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    world = (AFF @ np.r_[9.0, 8.0, 5.0, 1])[:3]
    recs = [write_subject(raw, f"s{i}", seed=i, landmarks=[["a", *world], ["b", *(world + 3.0)]])
            for i in range(3)]
    vol, aff = finder_ct()
    write(raw / "s3.nii.gz", vol, aff)
    recs.append({"subject": "s3", "image": "s3.nii.gz", "seg": "", "landmarks": ""})
    table = write_table(raw, recs)
    prep = root / "prep"
    pp.preprocess_dataset(table, "liver", SIZE, raw / "s0.nii.gz", prep,
                          reference_seg=raw / "s0_seg.nii.gz", median_radius=RADIUS, log=lambda s: None)
    cfg = dict(type="vtn", cascade=cascade, image_size=SIZE, epochs=1, iterations=1, batch=2,
               augment=False, checkpoint_every=5, **train_options)
    ckpt = T.train([prep / "subjects.csv"], cfg, root / "model" / "checkpoint.pt",
                   root / "model" / "log.csv", device="cpu")
    metrics = root / "metrics.csv"
    pd.DataFrame({"study": "liver", "method": "vtn_A", "fixed": ["s0", "s1", "s2"],
                  "moving": ["s1", "s2", "s0"], "iou": [0.5, 0.7, np.nan],
                  "lm_dist_vox": [1.0, 2.0, 4.0]}).to_csv(metrics, index=False)
    return {"raw": raw, "prep": prep, "csv": prep / "subjects.csv", "ckpt": ckpt, "metrics": metrics}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    torch.set_num_threads(1)
    s = make_liver_study(root)
    s["model"] = R.package_model(s["ckpt"], [s["csv"]], root / "model.pt", metrics=s["metrics"],
                                 source="fake liver CTs", log=lambda m: None)
    return s


def test_package_is_plain_and_self_contained(study):
    pkg = torch.load(study["model"], weights_only=True)
    assert pkg["format"] == R.MODEL_FORMAT
    rec, card = pkg["recipe"], pkg["card"]
    assert rec["organ"] == "liver" and rec["size"] == SIZE
    assert rec["crop"]["median_radius"] == RADIUS and rec["crop"]["liver_label"] == "5"
    assert rec["crop"]["margin_fraction"] == 0.1 and rec["crop"]["margin_min_voxels"] == 5
    assert rec["intensity"] == {"method": "ct_window", "width": 290.0, "level": 120.0,
                                "hu_range": [-25.0, 265.0]}
    hm = rec["histogram_matching"]
    assert (hm["histogram_levels"], hm["match_points"], hm["threshold_at_mean_intensity"]) == (256, 15, True)
    # the embedded reference = the reference preprocessed through steps 1-5 (not matched)
    ref = pp.preprocess_subject(study["raw"] / "s0.nii.gz", "liver", SIZE,
                                seg=study["raw"] / "s0_seg.nii.gz").image
    assert hm["reference_image"].dtype == torch.float32
    np.testing.assert_array_equal(hm["reference_image"].numpy(), ref)
    # card: data, training, the study's metrics (NaN left out of the mean)
    assert card["training_data"]["n_subjects"] == 4 and card["training_data"]["source"] == "fake liver CTs"
    assert set(card["training_data"]["crops_from"]) == {"liver label 5", "threshold liver finder"}
    assert card["training"]["steps"] == 1
    iou = card["metrics"]["summary"]["iou"]
    assert iou["n"] == 2 and iou["mean"] == pytest.approx(0.6) and iou["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert card["metrics"]["n_pairs"] == 3 and card["metrics"]["method"] == "vtn_A"
    md = study["model"].with_suffix(".md").read_text()
    assert "| iou | 0.6 |" in md and "threshold liver finder" in md and "fake liver CTs" in md
    model, _ = R.load_package(study["model"])
    state = T.load_checkpoint(study["ckpt"])["model_state"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


@pytest.mark.parametrize("sid", ["s1", "s3"])
def test_recipe_reproduces_vtn_preprocess_exactly(study, sid):
    """s1: crop from its label map (+ landmarks); s3: no labels, the threshold liver finder."""
    pkg = torch.load(study["model"], weights_only=True)
    raw, prep = study["raw"], study["prep"]
    meta = json.loads((prep / f"{sid}_prep.json").read_text())
    seg = raw / f"{sid}_seg.nii.gz" if sid != "s3" else None
    lms = raw / f"{sid}_lm.csv" if sid != "s3" else None
    img, res = R.apply_recipe(pkg["recipe"], raw / f"{sid}.nii.gz", seg=seg, landmarks=lms)
    want, want_aff = load_volume(prep / f"{sid}_image.nii.gz")
    assert img.dtype == np.float32 and img.shape == (SIZE,) * 3
    np.testing.assert_array_equal(img, want)
    np.testing.assert_allclose(res.affine, want_aff, atol=1e-5)
    assert res.meta["crop_box"] == meta["crop_box"] and res.meta["box_source"] == meta["box_source"]
    if sid == "s3":
        assert res.meta["box_source"] == "threshold liver finder"
        lo, hi = np.array(res.meta["crop_box"]["lo"]), np.array(res.meta["crop_box"]["hi"])
        assert (hi - lo + 1 < [26, 24, 18][::1]).any()  # a real crop, not the whole image
    else:
        seg_want, _ = load_volume(prep / f"{sid}_seg.nii.gz", dtype=None)
        np.testing.assert_array_equal(res.seg, seg_want)
        names, pts = load_landmarks(prep / f"{sid}_landmarks.csv")
        assert names == res.landmarks[0]
        np.testing.assert_allclose(res.landmarks[1], pts, atol=1e-6)
    # histogram matching did something (the test would pass trivially otherwise)
    assert np.abs(img - res.image).max() > 1e-3


def test_package_errors_name_the_problem(study, tmp_path):
    ckpt, csv = study["ckpt"], study["csv"]
    # subject tables that are not the training data
    sub = tmp_path / "sub"
    sub.mkdir()
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for f in study["prep"].iterdir():
        (sub / f.name).write_bytes(f.read_bytes())
    rows.iloc[::-1].to_csv(sub / "subjects.csv", index=False)
    with pytest.raises(InputError, match="same order"):
        R.package_model(ckpt, [sub / "subjects.csv"], tmp_path / "m.pt", log=lambda m: None)
    # a preprocessed image that no longer matches its raw file
    rows.to_csv(sub / "subjects.csv", index=False)
    img = nib.load(str(sub / "s0_image.nii.gz"))
    arr = np.asarray(img.dataobj).copy()
    arr[3, 3, 3] += 0.25
    nib.save(nib.Nifti1Image(arr, img.affine), str(sub / "s0_image.nii.gz"))
    with pytest.raises(InputError, match=r"s0_image\.nii\.gz: the recipe does not reproduce"):
        R.package_model(ckpt, [sub / "subjects.csv"], tmp_path / "m.pt", log=lambda m: None)
    assert not (tmp_path / "m.pt").exists()
    # records that disagree, and atlas pre-aligned data
    meta = json.loads((sub / "s2_prep.json").read_text())
    (sub / "s2_prep.json").write_text(json.dumps(dict(meta, size=32)))
    with pytest.raises(InputError, match=r"s2_prep\.json: size = 32 differs"):
        R.build_recipe([sub / "subjects.csv"], log=lambda m: None)
    (sub / "s2_prep.json").write_text(json.dumps(dict(meta, atlas_to_prep=np.eye(4).tolist())))
    with pytest.raises(InputError, match="pre-aligned to an atlas"):
        R.build_recipe([sub / "subjects.csv"], log=lambda m: None)
    # a training checkpoint is not a package
    with pytest.raises(InputError, match="package it first: vtn package-model"):
        R.load_package(ckpt)
    assert R.cli(["--checkpoint", str(ckpt), "--train-subjects", str(csv), "--out",
                  str(tmp_path / "x.txt")]) == 1
