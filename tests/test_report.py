"""Tables, claims and figures on small hand-made metric tables and registration folders."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from vtn import stats
from vtn.io import save_disp_l2r, save_landmarks, save_volume
from vtn.report import claims, figures, paper, tables

N = 8
PAIRS = [(f"s{i}", f"s{i + 1}") for i in range(N)]
SOURCE = "embedded: hand-made test data (NOT the paper's data)"


def _spec(organ="liver"):
    return {
        "study": organ, "organ": organ, "data_source": SOURCE, "image_size": 32,
        "main": "ADDD",
        "methods": {
            "ants": {"display": "ANTs", "kind": "baseline", "preset": "fast"},
            "elastix": {"display": "Elastix", "kind": "baseline", "preset": "fast"},
            "voxelmorph": {"display": "VoxelMorph-2", "kind": "voxelmorph", "cascade": "D"},
            "D": {"display": "VTN D", "kind": "vtn", "cascade": "D", "inv": False, "star": False},
            "DD": {"display": "VTN DD", "kind": "vtn", "cascade": "DD", "inv": False,
                   "star": False},
            "ADDD": {"display": "VTN ADDD", "kind": "vtn", "cascade": "ADDD", "inv": False,
                     "star": False},
            "ADDD-inv": {"display": "VTN ADDD + inv", "kind": "vtn", "cascade": "ADDD",
                         "inv": True, "star": False},
            "ADDD-a": {"display": "VTN ADDD (set A)", "kind": "vtn", "cascade": "ADDD",
                       "inv": False, "star": False},
        },
        "loss_weights": {"ADDD": [{"sim": 1, "det": 0.1, "ortho": 0.1}, {"sim": 0, "tv": 1},
                                  {"sim": 0.05, "tv": 1}, {"sim": 1, "tv": 1}]},
        "tables": {"methods": ["ants", "elastix", "voxelmorph", "ADDD", "ADDD-inv"],
                   "smoothness": ["ants", "elastix", "ADDD", "ADDD-inv"],
                   "data_amount": [{"label": "set A", "method": "ADDD-a"},
                                   {"label": "set A + B", "method": "ADDD"}],
                   "cascades": ["D", "DD", "ADDD"]},
        "comparisons": [{"a": "ADDD-inv", "b": "ants", "metrics": ["iou", "lm_dist_vox"]},
                        {"a": "ADDD", "b": "voxelmorph", "metrics": ["iou"]}],
    }


def _frame(iou, lm, fold, seconds, device, pairs=PAIRS):
    n = len(pairs)
    return pd.DataFrame({
        "study": "liver", "method": "x", "fixed": [p[0] for p in pairs],
        "moving": [p[1] for p in pairs], "iou": iou, "dice": np.asarray(iou) * 1.1,
        "iou_structures": np.asarray(iou) * 0.8, "dice_structures": np.asarray(iou) * 0.85,
        "hd95_structures": np.arange(n) + 1.0, "hd95_structures_mm": np.arange(n) * 2 + 2.0,
        "lm_dist_vox": lm, "lm_dist_mm": np.asarray(lm) * 2, "lm_ref_vox": np.asarray(lm) + 1,
        "lm_ref_mm": np.asarray(lm) * 2 + 2, "jac_std": np.linspace(.2, .3, n),
        "folding_pct": fold, "sdlogj": np.linspace(.05, .1, n), "ndv_pct": np.asarray(fold) / 2,
        "epe": np.nan, "seconds": seconds, "device": device, "threads": 2,
        "data_source": SOURCE})


IOU = {
    "ants": [0.70, 0.72, 0.69, 0.75, 0.71, 0.73, 0.68, 0.74],
    "elastix": [0.74, 0.76, 0.71, 0.73, 0.78, 0.72, 0.70, 0.77],
    "D": [0.60, 0.62, 0.58, 0.65, 0.61, 0.66, 0.59, 0.63],
    "DD": [0.66, 0.65, 0.64, 0.70, 0.69, 0.67, 0.61, 0.68],
    "ADDD": [0.80, 0.81, 0.79, 0.85, 0.82, 0.83, 0.78, 0.84],
    "ADDD-a": [0.79, 0.80, 0.80, 0.84, 0.80, 0.84, 0.77, 0.83],
}
IOU["ADDD-inv"] = [v + 0.01 * (i + 1) for i, v in enumerate(IOU["ADDD"])]  # all higher


def _write_metrics(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = {}
    for name, iou in IOU.items():
        lm = list(10 - 5 * np.asarray(iou) + rng.normal(0, 0.05, N))
        if name == "ADDD-inv":
            lm = [v + 0.3 for v in frames["ADDD"]["lm_dist_vox"]]  # inv is worse on landmarks
        fold = [0.0] * N if name in {"ADDD", "ADDD-inv"} else list(rng.random(N))
        secs, dev = ([100.0 + i for i in range(N)], "cpu") if name == "ants" else \
            ([10.0 + 0.5 * i for i in range(N)], "cpu") if name == "elastix" else \
            ([20.0 + 0.1 * i for i in range(N)], "cpu")
        frames[name] = _frame(iou, lm, fold, secs, dev)
        frames[name].to_csv(folder / f"{name}.csv", index=False)
    gpu = _frame(IOU["ADDD"], frames["ADDD"]["lm_dist_vox"], [0.0] * N,
                 [0.1 + 0.001 * i for i in range(N)], "cuda")
    gpu.to_csv(folder / "ADDD@gpu.csv", index=False)
    return frames


def _read(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ")
    return lines[0], pd.read_csv(path, skiprows=1)


def test_wilcoxon_matches_scipy_and_handles_small_n():
    a, b = _frame(IOU["ADDD"], [1] * N, [0] * N, 1, "cpu"), _frame(IOU["ants"], [1] * N,
                                                                    [0] * N, 1, "cpu")
    b = b.iloc[::-1]  # matched by (fixed, moving), not by row order
    r = stats.wilcoxon(a, b, alternative="greater", metric="iou")
    assert r["n"] == N
    assert r["p"] == pytest.approx(sps.wilcoxon(IOU["ADDD"], IOU["ants"],
                                                alternative="greater").pvalue)
    assert r["p"] == pytest.approx(1 / 2**N)  # exact: every difference positive
    assert r["median_diff"] == pytest.approx(np.median(np.subtract(IOU["ADDD"], IOU["ants"])))
    small = stats.wilcoxon([1, 2, 3], [0, 0, 0])
    assert math.isnan(small["p"]) and "3 matched pairs" in small["reason"]
    zero = stats.wilcoxon([1.0] * 7, [1.0] * 7)
    assert math.isnan(zero["p"]) and "zero" in zero["reason"]


def test_tables_known_means_pvalues_and_captions(tmp_path):
    _write_metrics(tmp_path / "metrics")
    spec = _spec()
    out = tmp_path / "tables"
    written = tables.make_tables(spec, tmp_path / "metrics", out)
    for stem in ("table1_loss_weights", "table2_methods", "table3_smoothness",
                 "table4_data_amount", "table5_cascades", "pvalues"):
        assert stem in written
        for ext in ("csv", "md", "tex"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
        assert SOURCE in (out / f"{stem}.md").read_text().splitlines()[0]
        assert "32³" in (out / f"{stem}.md").read_text()
        assert "\\caption{" in (out / f"{stem}.tex").read_text()
    cap, t2 = _read(out / "table2_methods.csv")
    assert SOURCE in cap and "Table II" in cap
    row = t2.set_index("method").loc["ADDD"]
    assert row["iou_mean"] == pytest.approx(np.mean(IOU["ADDD"]))
    assert row["iou_std"] == pytest.approx(np.std(IOU["ADDD"]))
    assert row["time_gpu_s"] == pytest.approx(np.mean([0.1 + 0.001 * i for i in range(N)]))
    assert row["time_cpu_s"] == pytest.approx(np.mean([20.0 + 0.1 * i for i in range(N)]))
    assert row["paper_iou"] == paper.TABLE_II["ADDD"]["iou"]
    assert math.isnan(t2.set_index("method").loc["ants", "time_gpu_s"])
    assert "voxelmorph" not in set(t2["method"])  # no metrics file: skipped
    md = (out / "table2_methods.md").read_text()
    assert "N/A" in md
    assert f"| {np.mean(IOU['ADDD']):.4f} ({np.std(IOU['ADDD']):.4f}) |" in md
    assert "voxelmorph" in (out / "notes.txt").read_text()
    # p-values: spec comparison and cascade vs previous, against scipy directly
    _, pv = _read(out / "pvalues.csv")
    r = pv[(pv["a"] == "ADDD-inv") & (pv["b"] == "ants") & (pv["metric"] == "iou")].iloc[0]
    assert r["p"] == pytest.approx(sps.wilcoxon(IOU["ADDD-inv"], IOU["ants"]).pvalue)
    assert "not run" in pv[pv["b"] == "voxelmorph"].iloc[0]["note"]
    _, t5 = _read(out / "table5_cascades.csv")
    t5 = t5.set_index("method")
    assert t5.loc["DD", "p_iou_vs_prev"] == pytest.approx(
        sps.wilcoxon(IOU["DD"], IOU["D"]).pvalue)
    assert math.isnan(t5.loc["D", "p_iou_vs_prev"])
    assert math.isnan(t5.loc["ADDD", "p_iou_vs_prev"])  # ADD not in the list
    _, t1 = _read(out / "table1_loss_weights.csv")
    assert len(t1) == 9
    assert t1[(t1["subnetwork"] == "Dense 2") & (t1["loss"] == "Similarity")]["ratio"].iloc[0] \
        == 0.05
    _, t4 = _read(out / "table4_data_amount.csv")
    assert list(t4["training_data"]) == ["set A", "set A + B"]


def _header(md_path):
    return [c.strip() for c in md_path.read_text().splitlines()[2].strip("|").split("|")]


@pytest.mark.parametrize("organ", ["liver", "brain"])
def test_tables_paper_columns_beside_paper_values_and_extra_columns_named(tmp_path, organ):
    _write_metrics(tmp_path / "metrics")
    out = tmp_path / "tables"
    written = tables.make_tables(_spec(organ), tmp_path / "metrics", out)
    methods = "table2_methods" if organ == "liver" else "table6_methods"
    smooth = "table3_smoothness" if organ == "liver" else "table7_smoothness"
    head = _header(out / f"{methods}.md")
    assert head[head.index("Seg. IoU") + 1] == "Paper IoU"
    assert head[head.index("Lm. Dist. (vox)") + 1] == "Paper Lm."
    head = _header(out / f"{smooth}.md")
    assert head[head.index("Folding (%)") + 1] == "Paper Folding (%)"
    md = (out / f"{methods}.md").read_text()
    region = "whole brain" if organ == "brain" else "liver mask"
    assert f"Seg. IoU: IoU of the {region}" in md and "Section V-B" in md
    assert "det < 0" in (out / f"{smooth}.md").read_text()
    assert "det <= 0" not in (out / f"{smooth}.md").read_text()
    # every measure beyond the paper has a named column in extra_measures, with its definition
    assert "extra_measures" in written
    head = _header(out / "extra_measures.md")
    assert head == ["Method"] + [tables.METRIC_NAMES[m] for m in tables.EXTRA_METRICS]
    text = (out / "extra_measures.md").read_text()
    for name in head[1:]:
        assert name.split(" (")[0] in text.split(head[-1], 1)[1]  # defined in the note
    _, ex = _read(out / "extra_measures.csv")
    row = ex.set_index("method").loc["ADDD"]
    assert row["iou_structures_mean"] == pytest.approx(np.mean(IOU["ADDD"]) * 0.8)
    assert row["hd95_structures_mean"] == pytest.approx(np.mean(np.arange(N) + 1.0))
    assert row["sdlogj_mean"] == pytest.approx(np.mean(np.linspace(.05, .1, N)))
    assert set(ex["method"]) == {"ants", "elastix", "ADDD", "ADDD-inv", "D", "DD"}


def test_tables_cli_brain_numbering_and_empty_metrics(tmp_path):
    spec = _spec("brain")
    spec["loss_weights"] = {"ADDD": None}
    p = tmp_path / "study.json"
    p.write_text(json.dumps(spec))
    _write_metrics(tmp_path / "m")
    assert tables.cli(["--spec", str(p), "--metrics", str(tmp_path / "m"),
                       "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "table6_methods.md").exists()
    assert (tmp_path / "o" / "table9_cascades.tex").exists()
    assert not (tmp_path / "o" / "table1_loss_weights.csv").exists()
    # nothing run at all: no crash, notes only
    (tmp_path / "empty").mkdir()
    assert tables.cli(["--spec", str(p), "--metrics", str(tmp_path / "empty"),
                       "--out", str(tmp_path / "o2")]) == 0
    assert "not written" in (tmp_path / "o2" / "notes.txt").read_text()


def _claim(rows, claim, test_contains):
    hits = [r for r in rows if r["claim"] == claim and test_contains in r["test"]]
    assert hits, (claim, test_contains, [(r["claim"], r["test"]) for r in rows])
    return hits[0]


def test_claims_pass_fail_inconclusive(tmp_path):
    _write_metrics(tmp_path / "metrics" / "liver")
    rows = claims.study_claims(_spec(), tmp_path / "metrics")
    r = _claim(rows, "invertibility loss improves accuracy", ": iou")
    assert r["verdict"] == "PASS"
    assert r["p"] == pytest.approx(sps.wilcoxon(IOU["ADDD-inv"], IOU["ADDD"],
                                                alternative="greater").pvalue)
    assert "0.8882" in r["paper"]
    assert _claim(rows, "invertibility loss improves accuracy", "lm_dist")["verdict"] == "FAIL"
    fold = _claim(rows, "invertibility loss reduces folding", "folding")
    assert fold["verdict"] == "inconclusive" and "zero" in fold["note"]
    casc = _claim(rows, "cascading improves accuracy", ": iou")
    assert casc["verdict"] == "PASS" and casc["test"].startswith("VTN ADDD vs VTN D")
    gpu = _claim(rows, "learned methods are orders of magnitude faster than ANTs (with GPU)", "")
    assert gpu["verdict"] == "PASS"
    cpu_el = _claim(rows, "learned methods are faster than Elastix without GPU", "")
    assert cpu_el["verdict"] == "FAIL"  # 20 s vs 10 s
    data = _claim(rows, "more unlabeled training data helps", ": iou")
    assert data["p"] == pytest.approx(sps.wilcoxon(IOU["ADDD"], IOU["ADDD-a"],
                                                   alternative="greater").pvalue)
    # a CPU-only run: the GPU speed claim is inconclusive and says it needs a GPU
    (tmp_path / "metrics" / "liver" / "ADDD@gpu.csv").unlink()
    rows = claims.study_claims(_spec(), tmp_path / "metrics")
    gpu = _claim(rows, "learned methods are orders of magnitude faster than ANTs (with GPU)", "")
    assert gpu["verdict"] == "inconclusive" and gpu["note"].startswith("needs a GPU")
    # brain: the pre-aligned DD* and ADD did not run -> inconclusive
    brows = claims.study_claims(_spec("brain"), tmp_path / "metrics")
    aff = _claim(brows, "integrated affine subnetwork beats ANTs pre-alignment on landmarks", "")
    assert aff["verdict"] == "inconclusive" and "not run" in aff["note"]


def test_claims_print_the_study_findings(tmp_path):
    """A study's `findings` (config) close results/claims.md; a study without any adds nothing."""
    _write_metrics(tmp_path / "metrics" / "liver")
    spec = {**_spec(), "findings": "one CT deformed at random: per-pair optimisers win."}
    claims.write_claims([spec], tmp_path / "metrics", tmp_path / "claims.md")
    text = (tmp_path / "claims.md").read_text()
    assert text.rstrip().endswith("- **liver**: one CT deformed at random: per-pair optimisers win.")
    assert text.index("Summary:") < text.index("## What this data can show")
    claims.write_claims([_spec()], tmp_path / "metrics", tmp_path / "plain.md")
    assert "What this data can show" not in (tmp_path / "plain.md").read_text()


def test_claims_small_n_and_cli(tmp_path):
    frames = _write_metrics(tmp_path / "metrics" / "liver")
    for name in ("ADDD", "ADDD-inv"):
        frames[name].iloc[:4].to_csv(tmp_path / "metrics" / "liver" / f"{name}.csv", index=False)
    spec_path = tmp_path / "liver.json"
    spec_path.write_text(json.dumps(_spec()))
    out = tmp_path / "claims.md"
    assert claims.cli(["--spec", str(spec_path), "--metrics-root", str(tmp_path / "metrics"),
                       "--out", str(out)]) == 0
    text = out.read_text()
    assert SOURCE in text.splitlines()[2]
    assert claims.LEGEND in text and "det < 0" in text and "det <= 0" not in text
    assert "whole brain" in claims.LEGEND and "lm_ref_vox" in claims.LEGEND
    df = pd.read_csv(out.with_suffix(".csv"))
    inv = df[df["claim"] == "invertibility loss improves accuracy"]
    assert set(inv["verdict"]) == {"inconclusive"}
    assert claims.verdict({"p": 0.01, "reason": ""})[0] == "PASS"
    assert claims.verdict({"p": 0.2, "reason": ""})[0] == "FAIL"
    assert claims.verdict({"p": 0.01, "reason": ""}, ratio=3.0, min_ratio=10)[0] == "FAIL"


def test_paper_numbers_transcribed():
    assert paper.TABLE_II["ADDD + inv"] == {"iou": 0.8882, "lm": 11.42, "time_gpu": 0.13,
                                            "time_cpu": 26.0}
    assert paper.TABLE_IX["DDD*"]["iou"] == 0.9320
    assert paper.TABLE_VII["Elastix"]["folding"] == (0.0, 0.0)
    assert paper.paper_key("DD-star", {"cascade": "DD", "star": True}) == "DD*"
    assert paper.paper_key("ADDD-inv", {"cascade": "ADDD", "inv": True}) == "ADDD + inv"
    assert paper.paper_key("ants", {"kind": "baseline"}) == "ANTs"


def _fake_study(tmp_path, S=16):
    prep = tmp_path / "prep"
    prep.mkdir()
    aff = np.eye(4)
    rng = np.random.default_rng(0)
    rows = []
    lms = np.array([[8.0, 8, 4], [6, 9, 8], [9, 6, 11]])
    for i in range(3):
        sid = f"s{i}"
        img = rng.random((S, S, S)).astype(np.float32)
        seg = np.zeros((S, S, S), np.int16)
        seg[3 + i:11, 4:12, 2:14] = 5
        save_volume(prep / f"{sid}_image.nii.gz", img, aff)
        save_volume(prep / f"{sid}_seg.nii.gz", seg, aff)
        save_landmarks(prep / f"{sid}_landmarks.csv", ["L1", "L2", "L3"], lms + i * 0.5)
        rows.append({"subject": sid, "image": f"{sid}_image.nii.gz", "seg": f"{sid}_seg.nii.gz",
                     "landmarks": f"{sid}_landmarks.csv"})
    pd.DataFrame(rows).to_csv(prep / "subjects.csv", index=False)
    # atlas-aligned copy for a star method: aligned = original scaled by 1 (identity) + note
    pa = tmp_path / "prep_atlas"
    pa.mkdir()
    for i in range(3):
        sid = f"s{i}"
        for suf in ("image.nii.gz", "seg.nii.gz", "landmarks.csv"):
            (pa / f"{sid}_{suf}").write_bytes((prep / f"{sid}_{suf}").read_bytes())
        a2p = np.eye(4)
        a2p[:3, 3] = [1, 0, 0]
        (pa / f"{sid}_prep.json").write_text(json.dumps({"atlas_to_prep": a2p.tolist()}))
    pd.DataFrame(rows).to_csv(pa / "subjects.csv", index=False)
    pairs = [("s0", "s1"), ("s1", "s2"), ("s2", "s0")]
    regs, mets = tmp_path / "reg", tmp_path / "metrics"
    mets.mkdir()
    for k, name in enumerate(["ants", "ADDD", "ADDD-inv", "D", "DD-star"]):
        d = regs / name
        d.mkdir(parents=True)
        for f, m in pairs:
            save_volume(d / f"warped_{f}_{m}.nii.gz", rng.random((S, S, S)).astype(np.float32),
                        aff)
            seg = np.zeros((S, S, S), np.int16)
            seg[4:12, 4:12, 2:14] = 5
            save_volume(d / f"warpedseg_{f}_{m}.nii.gz", seg, aff)
            save_landmarks(d / f"landmarks_{f}_{m}.csv", ["L1", "L2", "L3"], lms + k * 0.3)
            if name == "ADDD":  # the main method's fields (Figure 1 rendering)
                save_disp_l2r(d / f"disp_{f}_{m}.nii.gz",
                              rng.normal(0, 0.5, (3, S, S, S)).astype(np.float32), aff)
        pd.DataFrame({"fixed": [p[0] for p in pairs], "moving": [p[1] for p in pairs],
                      "iou": [0.7 + 0.01 * k, 0.8, 0.75], "lm_dist_vox": [1.0, 2.0, 3.0],
                      "seconds": 1.0, "device": "cpu"}).to_csv(mets / f"{name}.csv", index=False)
    models = tmp_path / "models"
    for name in ("ADDD", "D"):
        (models / name).mkdir(parents=True)
        pd.DataFrame({"step": [1, 2, 3], "epoch": 0, "lr": 1e-4, "seconds": [1, 2, 3],
                      "total": [1.0, 0.8, 0.7], "sim": [-0.5, -0.6, -0.7]}).to_csv(
            models / name / "train_log.csv", index=False)
    spec = _spec()
    spec["methods"]["DD-star"] = {"display": "VTN DD", "kind": "vtn", "cascade": "DD",
                                  "inv": False, "star": True}
    spec["tables"]["methods"] = ["ants", "DD-star", "ADDD", "ADDD-inv"]
    spec["tables"]["cascades"] = ["D", "ADDD"]
    return spec, mets, regs, prep, pa, models


def test_figures_produce_pngs(tmp_path):
    import matplotlib.image as mpimg

    spec, mets, regs, prep, pa, models = _fake_study(tmp_path)
    out = tmp_path / "fig"
    res = figures.make_figures(spec, mets, regs, prep / "subjects.csv", out, models,
                               pa / "subjects.csv")
    names = sorted(p.name for p in res["written"])
    assert names == ["figure1_rendering.png", "figure6_methods.png", "figure7_cascades.png",
                     "training_curves.png"]
    for p in res["written"]:
        assert p.stat().st_size > 5000
        img = mpimg.imread(p)
        assert img.shape[0] > 100 and img.std() > 0.01
    # median pair of ADDD: IoUs 0.71, 0.80, 0.75 -> (s2, s0)
    import pandas as pd_

    assert figures.median_pair(pd_.read_csv(mets / "ADDD.csv")) == ("s2", "s0")
    # without the pre-aligned subjects the star method is left out with a note
    res2 = figures.make_figures(spec, mets, regs, prep / "subjects.csv", tmp_path / "fig2")
    assert any("DD-star" in n for n in res2["notes"])
    # no fields of the main method: Figure 1 is left out with a note naming the file
    for p in (regs / "ADDD").glob("disp_*.nii.gz"):
        p.unlink()
    res3 = figures.make_figures(spec, mets, regs, prep / "subjects.csv", tmp_path / "fig3")
    assert "figure1_rendering.png" not in {p.name for p in res3["written"]}
    assert any("figure1_rendering: disp_s2_s0.nii.gz" in n for n in res3["notes"])


def test_prealign_seconds_from_prep_json(tmp_path):
    import json as _json

    from vtn.report.tables import prealign_seconds

    (tmp_path / "subjects.csv").write_text("subject,image\na,a.nii.gz\nb,b.nii.gz\nc,c.nii.gz\n")
    for sid, sec in (("a", 2.0), ("b", 4.0)):
        (tmp_path / f"{sid}_prep.json").write_text(_json.dumps({"prealign_seconds": sec}))
    (tmp_path / "c_prep.json").write_text(_json.dumps({}))
    assert prealign_seconds(tmp_path / "subjects.csv") == (3.0, 2)
    assert prealign_seconds(None) is None
    assert prealign_seconds(tmp_path / "missing.csv") is None


def test_report_reads_exactly_the_files_it_is_given(tmp_path):
    """Exact inputs: given files, the tables use those and no other file of their folder."""
    folder = tmp_path / "metrics"
    _write_metrics(folder)
    names = list(IOU) + ["ADDD-inv"]
    files = [folder / f"{n}.csv" for n in dict.fromkeys(names)]
    by_folder = tables.load_metrics(folder, names)
    by_files = tables.load_metrics(files, names)
    assert set(by_files[0]) == set(by_folder[0]) == set(names)
    assert "ADDD" in by_folder[1] and "ADDD" not in by_files[1]  # ADDD@gpu.csv not listed
    with_gpu = tables.load_metrics(files + [folder / "ADDD@gpu.csv"], names)
    assert len(with_gpu[1]["ADDD"]) == N
    # claims: --metrics once per spec gives the same rows as --metrics-root
    root = tmp_path / "root"
    _write_metrics(root / "liver")
    (root / "liver" / "ADDD@gpu.csv").unlink()
    spec_path = tmp_path / "liver.json"
    spec_path.write_text(json.dumps(_spec()))
    listed = [str(root / "liver" / f"{n}.csv") for n in dict.fromkeys(names)]
    assert claims.cli(["--spec", str(spec_path), "--metrics", *listed,
                       "--out", str(tmp_path / "a.md")]) == 0
    assert claims.cli(["--spec", str(spec_path), "--metrics-root", str(root),
                       "--out", str(tmp_path / "b.md")]) == 0
    assert (tmp_path / "a.md").read_text() == (tmp_path / "b.md").read_text()


def test_runtime_reads_exactly_the_listed_benchmarks(tmp_path):
    from vtn.report import runtime

    root = tmp_path / "benchmarks"
    for rule, job, s in [("train", "liver/AD", 3.0), ("evaluate", "liver/AD", 1.0),
                         ("train", "liver/D", 2.0)]:
        (root / rule / job).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"s": [s], "cpu_time": [s], "max_rss": [10.0]}).to_csv(
            root / rule / f"{job}.tsv", sep="\t", index=False)
    listed = [root / "train/liver/AD.tsv", root / "evaluate/liver/AD.tsv"]
    df = runtime.collect(listed, root)
    assert sorted(zip(df["rule"], df["job"])) == [("evaluate", "liver/AD"), ("train", "liver/AD")]
    assert df["s"].sum() == 4.0
    assert len(runtime.collect(root)) == 3  # a folder: every file under it
    out = tmp_path / "runtime.md"
    assert runtime.cli(["--benchmarks", *map(str, listed), "--root", str(root),
                        "--out", str(out)]) == 0
    assert "Total wall time of all jobs (serial sum): 4.0 s" in out.read_text()
