"""The first real slice of the study, end to end, on a tiny config (tests/configs/tiny.yaml):
fetch resources -> embedded liver subjects -> preprocessing -> ground truth -> training ->
registration -> Elastix -> per-pair metrics -> tables, figures, claims, runtime summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"  # shared with the default study: downloaded once

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
           "--directory", str(work), "--configfile", str(ROOT / "tests" / "configs" / "tiny.yaml"),
           "--config", f"resources={RESOURCES}", "--cores", "2",
           "--workflow-profile", str(ROOT / "profiles" / "default")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake failed:\n{proc.stderr[-5000:]}\n{logs}")
    return work


def test_every_stage_ran(tiny_run):
    work = tiny_run
    assert (work / "results/data/liver_test/prep/subjects.csv").exists()
    assert len(list((work / "results/data/liver_test/gt").glob("disp_*.nii.gz"))) == 4
    for model in ("D", "AD"):
        assert (work / f"results/models/liver/{model}/checkpoint.pt").exists()
        log = pd.read_csv(work / f"results/models/liver/{model}/train_log.csv")
        assert log["step"].iloc[-1] == 10
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
           "--directory", str(work), "--configfile", str(ROOT / "tests" / "configs" / "tiny.yaml"),
           "--config", f"resources={RESOURCES}", "--report", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = report.read_text(errors="replace")
    for name in ("table2_methods", "figure6_methods", "claims.md", "training_curves"):
        assert name in html
