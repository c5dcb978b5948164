"""The Snakemake workflow: dry runs of both configs, lint, config validation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args, cwd=ROOT, check=True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict:
    """Parse the 'Job stats' table of a dry run."""
    counts = {}
    block = output.split("Job stats:", 1)[1]
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)\s*$", line)
        if not m:
            if counts:
                break
            continue
        counts[m.group(1)] = int(m.group(2))
    return counts


def dry_run(workdir, configfile):
    return dry_run_files(workdir, configfile)


def dry_run_files(workdir, *configfiles):
    """Job counts of a dry run with one or more config files (later ones update earlier ones)."""
    proc = snakemake("-n", "--directory", str(workdir), "--configfile", *map(str, configfiles),
                     "--workflow-profile", str(ROOT / "profiles" / "default"))
    return job_counts(proc.stdout + proc.stderr)


def test_default_config_dry_run(tmp_path):
    counts = dry_run(tmp_path, ROOT / "config" / "config.yaml")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    n_datasets = len(cfg["datasets"])
    # liver: 6 cascades + ADDD-inv + its ablation + supervised + voxelmorph + 2 data-amount;
    # brain: 2 cascades + ADD-inv + 2 star + 1 data-amount (DD-star on set A)
    n_models = 12 + 6
    n_methods = n_models + 2 + 2  # ANTs and Elastix in both studies
    assert counts == {
        "fetch_resources": 2,
        "make_embedded": n_datasets,
        "preprocess": n_datasets,
        "ground_truth": 2,
        "prealign": 3,  # brain_a, brain_b, brain_test
        "model_config": n_models,
        "train": n_models,
        "supervision_targets": 1,
        "register_model": n_models,
        "baseline": 4,
        "evaluate": n_methods,
        "package_model": n_models,  # every model packaged (star models with their atlas)
        "study_spec": 2,
        "tables": 2,
        "figures": 2,
        "claims": 1,
        "runtime_summary": 1,
        "all": 1,
        "total": sum(
            [2, n_datasets, n_datasets, 2, 3, n_models, n_models, 1, n_models, 4, n_methods,
             n_models, 2, 2, 2, 1, 1, 1]
        ),
    }


def shell_commands(workdir, *configfiles):
    """The shell commands of a dry run (``-p``), one string per job."""
    proc = snakemake("-n", "-p", "--directory", str(workdir), "--configfile", *map(str, configfiles),
                     "--workflow-profile", str(ROOT / "profiles" / "default"))
    return [line.split("Shell command:", 1)[1].strip() for line in proc.stdout.splitlines()
            if line.startswith("Shell command: python -m vtn")]


def test_native_space_dry_run(tmp_path):
    """outputs: native_space adds one vtn native-space job per method of every study; star
    methods read the pre-aligned test subjects (their records carry atlas_to_prep)."""
    extra = tmp_path / "native.yaml"
    extra.write_text("outputs:\n  native_space: true\n")
    from snakemake.utils import validate

    from vtn import study as S

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(cfg, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    n_methods = sum(len(S.methods(cfg, st)) for st in cfg["studies"])
    n_models = sum(len(S.models(cfg, st)) for st in cfg["studies"])
    counts = dry_run_files(tmp_path / "work", ROOT / "config" / "config.yaml", extra)
    assert counts["native_space"] == n_methods and counts["package_model"] == n_models
    cmds = [c for c in shell_commands(tmp_path / "work", ROOT / "config" / "config.yaml", extra)
            if c.startswith("python -m vtn native-space")]
    assert len(cmds) == n_methods
    assert ("python -m vtn native-space --reg results/registrations/brain/D-star --subjects "
            "results/prealign/brain/brain_test/subjects.csv --pairs results/data/brain_test/pairs.csv"
            " --out results/native/brain/D-star") in [c.split(" >")[0] for c in cmds]
    assert ("--reg results/registrations/liver/ants --subjects "
            "results/data/liver_test/prep/subjects.csv") in " ".join(cmds)


def test_learn2reg_config_dry_run(tmp_path):
    """The example Learn2Reg config with its one path pointed at a task folder: both datasets
    imported from it (their subset, the task's pairs), the test pairs taken from the task."""
    from test_learn2reg import make_task  # tests/ is on sys.path

    task, _ = make_task(tmp_path / "AbdomenCTCT")
    text = (ROOT / "config" / "learn2reg-abdomenctct.yaml").read_text()
    configfile = tmp_path / "l2r.yaml"
    configfile.write_text(text.replace("/data/Learn2Reg/AbdomenCTCT", str(task)))
    counts = dry_run(tmp_path / "work", configfile)
    n_models = 4  # D, AD, ADDD, VoxelMorph-2
    assert counts["import_learn2reg"] == 2 and "import_dataset" not in counts
    assert counts["preprocess"] == 2 and counts["train"] == counts["package_model"] == n_models
    assert counts["native_space"] == counts["evaluate"] == n_models + 2
    cmds = shell_commands(tmp_path / "work", configfile)
    imports = sorted(c for c in cmds if c.startswith("python -m vtn import"))
    assert [("--subset train" in c, "--subset val" in c) for c in imports] == [(True, False), (False, True)]
    assert all(f"--path {task} " in c and "--pairs-out results/data/" in c for c in imports)
    prep = {c.split("--out results/data/")[1].split("/")[0]: c for c in cmds
            if c.startswith("python -m vtn preprocess")}
    assert "--pairs-from results/data/abdomen_val/raw/pairs.csv" in prep["abdomen_val"]
    assert "--liver-label 6" in prep["abdomen_val"] and "--pairs-from" not in prep["abdomen_train"]


def make_fake_paper_layout(root: Path) -> dict:
    """Tiny files laid out like the paper's datasets (only their presence matters to a dry run)."""
    paths = {}
    (root / "LiTS").mkdir()
    for i in range(3):
        (root / "LiTS" / f"volume-{i}.nii").write_bytes(b"")
        (root / "LiTS" / f"segmentation-{i}.nii").write_bytes(b"")
    paths["lits"] = root / "LiTS"
    (root / "BFH").mkdir()
    (root / "BFH" / "subjects.csv").write_text("subject,image,seg,landmarks\n")
    paths["bfh"] = root / "BFH" / "subjects.csv"
    (root / "SLIVER07" / "landmarks").mkdir(parents=True)
    for i in range(1, 4):
        (root / "SLIVER07" / f"liver-orig{i:03d}.mhd").write_text("")
        (root / "SLIVER07" / f"liver-seg{i:03d}.mhd").write_text("")
    paths["sliver07"] = root / "SLIVER07"
    for name in ("ADNI", "ABIDE-1", "ABIDE-2", "ADHD"):
        (root / name).mkdir()
        (root / name / "t1.nii.gz").write_bytes(b"")
    paths.update(adni=root / "ADNI", abide1=root / "ABIDE-1", abide2=root / "ABIDE-2",
                 adhd=root / "ADHD")
    (root / "LPBA40" / "landmarks").mkdir(parents=True)
    for i in range(1, 4):
        (root / "LPBA40" / f"S{i:02d}").mkdir()
    paths["lpba40"] = root / "LPBA40"
    (root / "LONI-atlas").mkdir()
    (root / "LONI-atlas" / "subjects.csv").write_text("subject,image,seg,landmarks\n")
    paths["loni_atlas"] = root / "LONI-atlas" / "subjects.csv"
    return paths


def test_paper_config_dry_run(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    data = tmp_path / "data"
    data.mkdir()
    paths = make_fake_paper_layout(data)
    for name, ds in cfg["datasets"].items():
        ds["path"] = str(paths[name])
        if "landmarks" in ds:
            ds["landmarks"] = str(Path(ds["path"]) / "landmarks")
    configfile = tmp_path / "paper.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    counts = dry_run(tmp_path / "work", configfile)
    # liver: 6 cascades + inv + supervised + voxelmorph + 2 data-amount = 11 models
    # brain: 3 cascades + inv + supervised + voxelmorph-star + 2 data-amount + 3 star = 11 models
    n_models = 22
    assert counts["import_dataset"] == len(cfg["datasets"])
    assert counts["preprocess"] == len(cfg["datasets"])
    assert "make_embedded" not in counts and "fetch_resources" not in counts
    assert "ground_truth" not in counts  # no ground truth for real data
    assert counts["train"] == n_models
    assert counts["register_model"] == counts["package_model"] == n_models
    assert counts["baseline"] == 4  # ANTs + Elastix for both studies
    assert counts["supervision_targets"] == 2
    # star variants: the brain training sets and the test set are pre-aligned to the atlas
    assert counts["prealign"] == 5
    assert counts["evaluate"] == n_models + 4
    assert counts["tables"] == counts["figures"] == 2


def test_lint():
    proc = snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def write_config(tmp_path, mutate):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.__setitem__("imag_size", 32), "imag_size"),
        (lambda c: c["training"].__setitem__("iterations", "many"), "iterations"),
        (lambda c: c["studies"]["liver"].__setitem__("main", "AXD"), "AXD"),
        (lambda c: c["studies"]["liver"].__setitem__("test", "nope"), "studies.liver.test"),
        (lambda c: c["datasets"]["liver_a"].__setitem__("source", "lits"), "datasets.liver_a.path"),
        (
            lambda c: c["datasets"]["liver_a"].update(source="lits", path="/no/such/LiTS"),
            "/no/such/LiTS",
        ),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, mutate, expected):
    configfile = write_config(tmp_path, mutate)
    proc = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(configfile),
                     check=False)
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
