"""The first real slice of the study, end to end, on a tiny config (tests/configs/tiny.yaml):
fetch resources -> embedded liver subjects -> preprocessing -> ground truth -> training ->
registration -> Elastix -> per-pair metrics -> tables, figures, claims, runtime summary, model
packages and (``outputs: native_space``) every method's registrations in the original image
space; and the same study on a fake Learn2Reg task folder (``source: learn2reg``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from test_learn2reg import make_task  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"  # shared with the default study: downloaded once
TINY = ROOT / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.workflow


def run_workflow(work, config: dict):
    """``snakemake`` (all targets) in ``work`` with ``config`` written next to it."""
    configfile = work.parent / f"{work.name}.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
           "--directory", str(work), "--configfile", str(configfile), "--cores", "2",
           "--workflow-profile", str(ROOT / "profiles" / "default")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake failed:\n{proc.stderr[-5000:]}\n{logs}")
    return work


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny study with every kind of method (VTN with and without an affine subnet,
    VoxelMorph-2, ANTs, Elastix, a star model on ANTs-pre-aligned brains) and native outputs."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(resources=str(RESOURCES), outputs={"native_space": True})
    cfg["studies"]["liver"].update(voxelmorph=True, baselines={"ants": "fast", "elastix": "fast"})
    cfg["datasets"].update(
        brain_train={"source": "embedded", "organ": "brain", "n": 2, "seed": 3},
        brain_test={"source": "embedded", "organ": "brain", "n": 2, "seed": 4},
        brain_atlas={"source": "embedded", "organ": "brain", "n": 1, "seed": 5})
    cfg["studies"]["brain"] = {
        "organ": "brain", "train": ["brain_train"], "test": "brain_test", "main": "AD",
        "star_cascades": ["D"], "atlas": {"dataset": "brain_atlas", "subject": "brain_atlas000"}}
    return run_workflow(tmp_path_factory.mktemp("tiny"), cfg)


def test_every_stage_ran(tiny_run):
    work = tiny_run
    assert (work / "results/data/liver_test/prep/subjects.csv").exists()
    assert len(list((work / "results/data/liver_test/gt").glob("disp_*.nii.gz"))) == 4
    for model in ("D", "AD"):
        assert (work / f"results/models/liver/{model}/checkpoint.pt").exists()
        log = pd.read_csv(work / f"results/models/liver/{model}/train_log.csv")
        assert log["step"].iloc[-1] == 4
    for bench in ("train/liver/AD.tsv", "register/liver/AD.tsv",
                  "baseline/liver/elastix/00000-00004.tsv"):  # one chunk: baseline_chunk 4
        assert (work / "benchmarks" / bench).exists()


def test_metrics_are_real(tiny_run):
    work = tiny_run
    cols = ["iou", "lm_dist_vox", "jac_std", "folding_pct", "seconds"]
    for method in ("D", "AD", "elastix"):
        df = pd.read_csv(work / f"results/metrics/liver/{method}.csv")
        assert len(df) == 4
        assert df[cols].notna().all().all(), df
        assert ((df["iou"] > 0) & (df["iou"] <= 1)).all()
        assert (df["seconds"] > 0).all()
        assert df["data_source"].str.contains("NOT the paper").all()
    # Elastix actually registers: it beats doing nothing on the landmarks
    el = pd.read_csv(work / "results/metrics/liver/elastix.csv")
    assert el["epe"].notna().all()


def test_tables_figures_claims(tiny_run):
    work = tiny_run
    tables = work / "results/tables/liver"
    assert (tables / "table2_methods.md").exists()
    assert "NOT the paper" in (tables / "table2_methods.md").read_text()
    assert list((work / "results/figures/liver").glob("*.png"))
    assert (work / "results/figures/data/liver_test.png").stat().st_size > 1000
    claims = (work / "results/claims.md").read_text()
    assert "PASS" in claims or "FAIL" in claims or "inconclusive" in claims
    assert "Total wall time" in (work / "results/runtime.md").read_text()


def test_html_report(tiny_run):
    work = tiny_run
    report = work / "results" / "report.html"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
           "--directory", str(work), "--configfile", str(work.parent / f"{work.name}.yaml"),
           "--report", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = report.read_text(errors="replace")
    for name in ("table2_methods", "figure6_methods", "claims.md", "training_curves"):
        assert name in html


def test_models_are_packaged(tiny_run):
    """Every trained model carries its preprocessing: results/models/<study>/<model>/model.pt
    with the recipe (reference image embedded), the card and the study's metrics."""
    import torch

    from vtn.recipe import load_package

    work = tiny_run
    for model in ("D", "AD"):
        path = work / f"results/models/liver/{model}/model.pt"
        net, pkg = load_package(path)
        assert pkg["recipe"]["organ"] == "liver" and pkg["recipe"]["size"] == 16
        assert pkg["recipe"]["prealign"] is None
        assert tuple(pkg["recipe"]["histogram_matching"]["reference_image"].shape) == (16,) * 3
        card = pkg["card"]
        assert card["name"].startswith(f"liver/{model}")
        assert card["training_data"]["subjects"] == [f"liver_train00{i}" for i in range(3)]
        assert "liver_train (embedded)" in card["training_data"]["source"]
        assert card["metrics"]["n_pairs"] == 4 and card["training"]["steps"] == 4
        state = torch.load(work / f"results/models/liver/{model}/checkpoint.pt",
                           weights_only=True)["model_state"]
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
        md = (work / f"results/models/liver/{model}/model.md").read_text()
        assert "Model card" in md and "| iou |" in md
    assert (work / "benchmarks/package_model/liver/AD.tsv").exists()


def _sitk_warp(warp, fixed, moving, labels=False):
    """Our ITK warp file applied with SimpleITK to the ORIGINAL moving scan on the original fixed
    grid (an implementation independent of vtn.native)."""
    import SimpleITK as sitk

    field = sitk.ReadImage(str(warp), sitk.sitkVectorFloat64)
    out = sitk.Resample(sitk.ReadImage(str(moving)), sitk.ReadImage(str(fixed)),
                        sitk.DisplacementFieldTransform(field),
                        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out).T


def check_native(work, study, method, test, prep_dir, expect_outside, whole_scan=False):
    """Every test pair of a method in the original space: the ITK warp applied by SimpleITK to
    the raw moving scan equals our warped scan (1e-3 of its intensity range, inside the moving
    scan); the landmarks carried by the native map equal the method's own prep-grid landmarks
    mapped to mm; the Learn2Reg disp and the ITK warp describe the same map."""
    native = work / f"results/native/{study}/{method}"
    reg = work / f"results/registrations/{study}/{method}"
    summary = json.loads((native / "native.json").read_text())
    pairs = pd.read_csv(work / f"results/data/{test}/pairs.csv", dtype=str)
    assert [(p["fixed"], p["moving"]) for p in summary["pairs"]] == list(zip(pairs["fixed"], pairs["moving"]))
    for p in summary["pairs"]:
        f, m = p["fixed"], p["moving"]
        assert p["outside"] == expect_outside
        # the crop box is part of the scan (brains: the crop can take the whole scan)
        share = p["inside_crop_percent"]
        assert 1 < share <= 100 and (whole_scan or share < 100)
        fm, mm = (json.loads((prep_dir / f"{s}_prep.json").read_text()) for s in (f, m))
        fixed_raw, moving_raw = Path(fm["raw_image"]), Path(mm["raw_image"])
        f_img, m_img = nib.load(str(fixed_raw)), nib.load(str(moving_raw))
        ours = nib.load(str(native / f"warped_{f}_{m}.nii.gz"))
        assert ours.shape == f_img.shape
        np.testing.assert_allclose(ours.affine, f_img.affine, atol=1e-4)
        disp = np.asarray(nib.load(str(native / f"disp_{f}_{m}.nii.gz")).dataobj)
        w = np.indices(f_img.shape).transpose(1, 2, 3, 0) + disp
        inside = ((w >= 0.5) & (w <= np.array(m_img.shape) - 1.5)).all(axis=-1)
        assert inside.mean() > 0.3
        mov = m_img.get_fdata()
        ref = _sitk_warp(native / f"warp_{f}_{m}.nii.gz", fixed_raw, moving_raw)
        ours = ours.get_fdata()
        assert np.abs(ref - ours)[inside].max() < 1e-3 * np.ptp(mov)
        assert np.abs(ours - f_img.get_fdata())[inside].max() > 1e-2 * np.ptp(mov)  # not trivial
        # the Learn2Reg disp and the ITK warp: the same map (LPS mm vs voxels)
        itk = np.asarray(nib.load(str(native / f"warp_{f}_{m}.nii.gz")).dataobj)[:, :, :, 0, :]
        v = np.indices(f_img.shape).reshape(3, -1).T
        mm_map = (m_img.affine[:3, :3] @ (v + disp.reshape(-1, 3)).T).T + m_img.affine[:3, 3]
        mm_fix = (f_img.affine[:3, :3] @ v.T).T + f_img.affine[:3, 3]
        np.testing.assert_allclose(itk.reshape(-1, 3), (mm_map - mm_fix) * [-1, -1, 1], atol=1e-3)
        if mm.get("raw_seg"):
            lab = _sitk_warp(native / f"warp_{f}_{m}.nii.gz", fixed_raw, mm["raw_seg"], labels=True)
            wseg = np.asarray(nib.load(str(native / f"warpedseg_{f}_{m}.nii.gz")).dataobj)
            clear = inside & (np.abs(np.abs(w - np.floor(w)) - 0.5) > 1e-3).all(axis=-1)
            assert (wseg[clear] == lab[clear]).mean() > 0.999
        # landmarks: the native map vs the method's own transport on the prep grid
        if (reg / f"landmarks_{f}_{m}.csv").exists():
            nat = pd.read_csv(native / f"landmarks_{f}_{m}.csv").set_index("name")
            own = pd.read_csv(reg / f"landmarks_{f}_{m}.csv").set_index("name")
            g_m = np.array(mm["prep_to_raw"]) if mm.get("atlas_to_prep") is None else (
                np.array(mm["prep_to_raw"]) @ np.array(mm["atlas_to_prep"]))
            q = own[["i", "j", "k"]].to_numpy()
            raw_vox = (g_m[:3, :3] @ q.T).T + g_m[:3, 3]
            own_mm = (m_img.affine[:3, :3] @ raw_vox.T).T + m_img.affine[:3, 3]
            np.testing.assert_allclose(nat.loc[own.index, ["x", "y", "z"]].to_numpy(), own_mm,
                                       atol=1e-3)
    return summary


def test_native_space_outputs_for_every_method(tiny_run):
    """outputs: native_space -- every method (VTN with and without an affine subnet,
    VoxelMorph-2, ANTs, Elastix, a star model) in the original space of the embedded scans;
    outside the crop box the affine part where the method has one (vtn register's
    affine_<f>_<m>.json)."""
    work = tiny_run
    prep = work / "results/data/liver_test/prep"
    regs = work / "results/registrations/liver"
    assert len(list((regs / "AD").glob("affine_*.json"))) == 4
    assert not list((regs / "D").glob("affine_*.json"))
    for method, outside in (("AD", "affine"), ("D", "identity"), ("voxelmorph", "identity"),
                            ("ants", "identity"), ("elastix", "identity")):
        check_native(work, "liver", method, "liver_test", prep, outside)
    assert (work / "benchmarks/native_space/liver/elastix.tsv").exists()
    # a star model: registered on the atlas grid, written on the original brain scans
    star = check_native(work, "brain", "D-star", "brain_test",
                        work / "results/prealign/brain/brain_test", "identity", whole_scan=True)
    assert star["subjects"].endswith("results/prealign/brain/brain_test/subjects.csv")
    check_native(work, "brain", "AD", "brain_test", work / "results/data/brain_test/prep", "affine",
                 whole_scan=True)


def test_star_model_is_packaged_with_its_atlas(tiny_run):
    from vtn.io import load_volume
    from vtn.recipe import load_package

    work = tiny_run
    _, pkg = load_package(work / "results/models/brain/D-star/model.pt")
    atlas, _ = load_volume(work / "results/data/brain_atlas/prep/brain_atlas000_image.nii.gz")
    np.testing.assert_array_equal(pkg["recipe"]["prealign"]["atlas_image"].numpy(), atlas)
    assert pkg["recipe"]["organ"] == "brain" and pkg["recipe"]["prealign"]["preset"] == "fast"
    assert "pre-aligned to the atlas brain_atlas000" in pkg["card"]["training_data"]["source"]


VAL_PAIRS = (("0005", "0006"), ("0006", "0007"), ("0007", "0005"))


@pytest.fixture(scope="module")
def l2r_run(tmp_path_factory):
    """The example config config/learn2reg-abdomenctct.yaml as a user runs it (its one path
    pointed at a task folder laid out as the challenge releases it: 7 phantom CTs, liver label 6,
    keypoints, three registration_val pairs), shrunk to test size."""
    task = make_task(tmp_path_factory.mktemp("l2r_data") / "AbdomenCTCT",
                     cases=[f"{i:04d}" for i in range(1, 8)], val_pairs=VAL_PAIRS, phantoms=True)[0]
    text = (ROOT / "config" / "learn2reg-abdomenctct.yaml").read_text()
    cfg = yaml.safe_load(text.replace("/data/Learn2Reg/AbdomenCTCT", str(task)))
    assert {d["path"] for d in cfg["datasets"].values()} == {str(task)}  # one key to change
    cfg.update(image_size=16, threads=1, device="cpu")
    cfg["training"].update(iterations=10, batch=2, epochs=1, checkpoint_every=5)
    cfg["studies"]["abdomen"].update(main="AD", cascades=[], voxelmorph=False, baselines={})
    return run_workflow(tmp_path_factory.mktemp("l2r"), cfg)


def test_learn2reg_task_runs_through_the_study(l2r_run):
    work = l2r_run
    name = "AbdomenCTCT_{}_0000".format
    # training on the images outside the validation pairs, testing on exactly those pairs
    train = pd.read_csv(work / "results/data/abdomen_train/prep/subjects.csv", dtype=str)
    assert list(train["subject"]) == [name(f"{i:04d}") for i in range(1, 5)]
    val = pd.read_csv(work / "results/data/abdomen_val/prep/subjects.csv", dtype=str)
    assert list(val["subject"]) == [name(c) for c in ("0005", "0006", "0007")]
    pairs = pd.read_csv(work / "results/data/abdomen_val/pairs.csv", dtype=str)
    assert list(zip(pairs["fixed"], pairs["moving"])) == [(name(f), name(m)) for f, m in VAL_PAIRS]
    meta = json.loads((work / f"results/data/abdomen_val/prep/{name('0005')}_prep.json").read_text())
    assert meta["liver_label"] == "6" and meta["box_source"] == "liver label 6"
    # metrics on the task's pairs: liver overlap and keypoint distances
    df = pd.read_csv(work / "results/metrics/abdomen/AD.csv")
    assert len(df) == 3 and ((df["iou"] > 0) & (df["iou"] <= 1)).all()
    assert df["lm_dist_vox"].notna().all() and df["data_source"].str.contains("learn2reg").all()
    assert "abdomen_val (learn2reg)" in (work / "results/tables/abdomen/table2_methods.md").read_text()
    # the packaged model and the native-space results on the original CT grids
    card = (work / "results/models/abdomen/AD/model.md").read_text()
    assert "abdomen_train (learn2reg, train subset)" in card
    check_native(work, "abdomen", "AD", "abdomen_val", work / "results/data/abdomen_val/prep",
                 "affine")
