"""The Snakemake workflow: dry runs of both configs, lint, config validation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


#: a dry run with the thread counts a real run would get: without `--cores`, Snakemake >= 9.2x
#: runs a dry run with one core and caps every rule's threads at it (a SLURM run has no local cap)
DRY_RUN = ("-n", "--cores", "64")


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
    # liver: 6 cascades + ADDD-inv + supervised + voxelmorph + 2 data-amount;
    # brain: 2 cascades + ADD-inv + 2 star + 1 data-amount (DD-star on set A)
    n_models = 11 + 6
    n_methods = n_models + 2 + 2  # ANTs and Elastix in both studies
    assert counts == {
        "fetch_resources": 2,
        "make_embedded": n_datasets,
        "preprocess": n_datasets,
        "ground_truth": 2,
        "prealign": 3,  # brain_a, brain_b, brain_test
        "model_config": n_models,
        "train": n_models,
        "supervision_targets": 2,  # its 8 pairs in chunks of baseline_chunk (6)
        "register_model": n_models,
        "baseline": 8,  # baseline_chunk 6: the 12 test pairs of a tool in two jobs
        "gather_baseline": 4,
        "gather_targets": 1,
        "gather_prealign": 3,
        "evaluate": n_methods,
        "package_model": n_models,  # every model packaged (star models with their atlas)
        "study_spec": 2,
        "tables": 2,
        "figures": 2,
        "claims": 1,
        "runtime_summary": 1,
        "all": 1,
        "total": sum(
            [2, n_datasets, n_datasets, 2, 3, n_models, n_models, 2, n_models, 8, n_methods,
             n_models, 2, 2, 2, 1, 1, 1, 4, 1, 3]
        ),
    }


def test_cpu_long_config_dry_run(tmp_path):
    """config/cpu-long.yaml on top of the default config: the default study's jobs at 64^3, with
    8 test pairs per study in baseline chunks of 4 (the same number of baseline jobs)."""
    default = dry_run(tmp_path / "default", ROOT / "config" / "config.yaml")
    files = (ROOT / "config" / "config.yaml", ROOT / "config" / "cpu-long.yaml")
    long = dry_run_files(tmp_path / "long", *files)
    assert long == default
    text = " ".join(shell_commands(tmp_path / "long", *files))
    assert "--size 64" in text
    assert "--rows 0:4 " in text and "--rows 4:8 " in text and "--rows 8:" not in text


def test_cpu_long_training_recipe():
    """The overlay's recipe reaches the models' configs: batch 1 at lr 3e-4 for VTN and
    VoxelMorph-2 alike (lr 1e-3 diverged on the 64^3 liver), 8 x 110 steps."""
    from snakemake.utils import update_config, validate

    from vtn import study as S

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load((ROOT / "config" / "cpu-long.yaml").read_text()))
    validate(cfg, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    vtn = S.model_config(cfg, "liver", "ADDD")
    vxm = S.model_config(cfg, "liver", "voxelmorph")
    assert (vtn["image_size"], vtn["batch"], vtn["lr"]) == (64, 1, 3e-4)
    assert (vxm["batch"], vxm["lr"]) == (vtn["batch"], vtn["lr"])
    assert vtn["epochs"] * vtn["iterations"] == vxm["epochs"] * vxm["iterations"] == 880


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


#: subjects of the paper's datasets (paper Sec. V-A/B; LPBA40 as distributed: 40 folders)
PAPER_SIZES = {"lits": 131, "bfh": 92, "sliver07": 20, "adni": 67, "abide1": 318, "abide2": 1101,
               "adhd": 973, "lpba40": 40, "loni_atlas": 1}


def make_fake_paper_layout(root: Path, sizes: dict = PAPER_SIZES) -> dict:
    """Empty files laid out like the paper's datasets, as many subjects as ``sizes`` says (the
    workflow counts them when it builds the DAG: vtn.data.adapters.subject_ids)."""
    paths = {}
    lits = root / "LiTS"
    lits.mkdir()
    for i in range(sizes["lits"]):
        (lits / f"volume-{i}.nii").write_bytes(b"")
        (lits / f"segmentation-{i}.nii").write_bytes(b"")
    paths["lits"] = lits
    for name, folder in (("bfh", "BFH"), ("loni_atlas", "LONI-atlas")):
        (root / folder).mkdir()
        rows = []
        for i in range(sizes[name]):
            (root / folder / f"{name}{i}.nii.gz").write_bytes(b"")
            rows.append(f"{name}{i},{name}{i}.nii.gz,,")
        (root / folder / "subjects.csv").write_text("subject,image,seg,landmarks\n"
                                                    + "\n".join(rows) + "\n")
        paths[name] = root / folder / "subjects.csv"
    (root / "SLIVER07" / "landmarks").mkdir(parents=True)
    for i in range(1, sizes["sliver07"] + 1):
        (root / "SLIVER07" / f"liver-orig{i:03d}.mhd").write_text("")
        (root / "SLIVER07" / f"liver-seg{i:03d}.mhd").write_text("")
    paths["sliver07"] = root / "SLIVER07"
    for name, folder in (("adni", "ADNI"), ("abide1", "ABIDE-1"), ("abide2", "ABIDE-2"),
                         ("adhd", "ADHD")):
        for i in range(sizes[name]):
            (root / folder / f"sub{i:04d}").mkdir(parents=True)
            (root / folder / f"sub{i:04d}" / "t1.nii.gz").write_bytes(b"")
        paths[name] = root / folder
    (root / "LPBA40" / "landmarks").mkdir(parents=True)
    for i in range(1, sizes["lpba40"] + 1):
        s = f"S{i:02d}"
        (root / "LPBA40" / s).mkdir()
        (root / "LPBA40" / s / f"{s}.native.mri.img.gz").write_bytes(b"")
        (root / "LPBA40" / s / f"{s}.native.label.img.gz").write_bytes(b"")
    paths["lpba40"] = root / "LPBA40"
    return paths


def dry_run_jobs(output: str) -> list:
    """Every job of a dry run's listing: ``{"rule", "wildcards", "threads", "resources",
    "shell"}`` (threads 1 when not printed; resources as printed, numbers as int)."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", output, flags=re.M)[1:]:
        name, _, body = block.partition(":\n")
        job = {"rule": name.strip(), "wildcards": {}, "threads": 1, "resources": {}, "shell": ""}
        for line in body.splitlines():
            key, _, value = line.strip().partition(": ")
            if key == "Shell command":
                job["shell"] = value
                break
            if key == "threads":
                job["threads"] = int(value)
            elif key in ("wildcards", "resources"):
                for item in value.split(", "):
                    k, _, v = item.partition("=")
                    job[key][k] = int(v) if v.isdigit() else v
            elif not line.startswith(" "):
                break
        jobs.append(job)
    return jobs


def paper_config(tmp_path, sizes=PAPER_SIZES):
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    data = tmp_path / "data"
    data.mkdir()
    paths = make_fake_paper_layout(data, sizes)
    for name, ds in cfg["datasets"].items():
        ds["path"] = str(paths[name])
        if "landmarks" in ds:
            ds["landmarks"] = str(Path(ds["path"]) / "landmarks")
    configfile = tmp_path / "paper.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    return cfg, configfile


def slurm_dry_run(workdir, configfile):
    """The jobs of a dry run through profiles/slurm (its set-resources applied)."""
    pytest.importorskip("snakemake_executor_plugin_slurm",
                        reason="the SLURM profile needs snakemake-executor-plugin-slurm")
    proc = snakemake(*DRY_RUN, "--directory", str(workdir), "--configfile", str(configfile),
                     "--workflow-profile", str(ROOT / "profiles" / "slurm"))
    out = proc.stdout + proc.stderr
    jobs = dry_run_jobs(out.split("Job stats:")[1])
    assert len(jobs) == job_counts(out)["total"]
    return jobs


def by_rule(jobs):
    out = {}
    for j in jobs:
        out.setdefault(j["rule"], []).append(j)
    return out


def requests(jobs, *keys):
    """The distinct (threads, gpu, mem_mb, runtime) of some jobs."""
    return {(j["threads"], j["resources"].get("gpu", 0), j["resources"]["mem_mb"],
             j["resources"]["runtime"]) for j in jobs}


def test_paper_config_dry_run(tmp_path):
    """config/paper.yaml at the paper's shape (empty files laid out like LiTS, BFH, SLIVER07,
    ADNI, ABIDE, ADHD, LPBA40): the jobs per rule and what each asks SLURM for. ANTs/Elastix
    run one job per pair; no job but a training asks for more than 4 h."""
    cfg, configfile = paper_config(tmp_path)
    jobs = by_rule(slurm_dry_run(tmp_path / "work", configfile))
    counts = {rule: len(js) for rule, js in jobs.items()}
    # liver: 6 cascades + inv + supervised + voxelmorph + 2 data-amount = 11 models
    # brain: 3 cascades + inv + supervised + voxelmorph-star + 2 data-amount + 3 star = 11 models
    n_models = 22
    liver_pairs, brain_pairs = 20 * 19, 40 * 39  # SLIVER07: 20 scans; LPBA40: 40 folders
    prealigned = [67, 318, 1101, 973, 40]  # ADNI, ABIDE-1, ABIDE-2, ADHD, LPBA40: chunks of 20
    assert counts == {
        "import_dataset": 9, "preprocess": 9, "model_config": n_models, "train": n_models,
        "register_model": n_models, "package_model": n_models, "evaluate": n_models + 4,
        "baseline": 2 * liver_pairs + 2 * brain_pairs, "gather_baseline": 4,
        "supervision_targets": 2 * 2000, "gather_targets": 2,  # 2000 of LiTS' / ADNI's pairs
        "prealign": sum(-(-n // 20) for n in prealigned), "gather_prealign": 5,
        "study_spec": 2, "tables": 2, "figures": 2, "claims": 1, "runtime_summary": 1,
        "all": 1}
    # (threads, gpus, MB, minutes): GPU jobs gpu_threads 4 and one GPU; CPU jobs `threads` 8
    assert requests(jobs["train"]) == {(4, 1, 64000, 2880)}
    # inference: 15 min + 0.1 min per test pair
    assert requests(jobs["register_model"]) == {(4, 1, 32000, 15 + 38), (4, 1, 32000, 15 + 156)}
    # one pair per job: 15 min + 60 min (the paper's ANTs) or + 5 min (Elastix) at 128^3
    assert requests([j for j in jobs["baseline"] if j["wildcards"]["tool"] == "ants"]) == {
        (8, 0, 16000, 75)}
    assert requests([j for j in jobs["baseline"] if j["wildcards"]["tool"] == "elastix"]) == {
        (8, 0, 16000, 20)}
    assert requests(jobs["supervision_targets"]) == {(8, 0, 16000, 75)}
    # pre-alignment: 15 min + 5 min per subject, 20 subjects per job (last chunks smaller)
    assert {j["resources"]["runtime"] for j in jobs["prealign"]} == {
        15 + 5 * n for n in (20, 7, 18, 1, 13)}  # 67 = 3x20 + 7, 318, 1101, 973 likewise
    # evaluation with 8 processes: 15 min + 0.5 min per pair / 8
    assert requests(jobs["evaluate"]) == {(8, 0, 24000, 15 + 24), (8, 0, 24000, 15 + 98)}
    # preprocessing: 15 min + 1 min per CT (LiTS 131, BFH 92, SLIVER07 20), 0.2 per T1
    assert {(j["wildcards"]["dataset"], j["resources"]["runtime"]) for j in jobs["preprocess"]} \
        == {("lits", 146), ("bfh", 107), ("sliver07", 35), ("adni", 29), ("abide1", 79),
            ("abide2", 236), ("adhd", 210), ("lpba40", 23), ("loni_atlas", 16)}
    longest = max(j["resources"]["runtime"] for rule, js in jobs.items() if rule != "train"
                  for j in js if "runtime" in j["resources"])
    assert longest <= 240, longest
    assert not any(j["resources"].get("gpu") for rule, js in jobs.items()
                   if rule not in ("train", "register_model") for j in js)


def test_gpu_config_dry_run(tmp_path, monkeypatch):
    """config/gpu.yaml (embedded data): the same plan with generated datasets."""
    cfg = yaml.safe_load((ROOT / "config" / "gpu.yaml").read_text())
    jobs = by_rule(slurm_dry_run(tmp_path, ROOT / "config" / "gpu.yaml"))
    counts = {rule: len(js) for rule, js in jobs.items()}
    n_models = 11 + 10  # brain: one data-amount subset
    assert counts["train"] == counts["register_model"] == n_models
    assert counts["baseline"] == 4 * 380 and counts["gather_baseline"] == 4
    assert counts["supervision_targets"] == 2 * 200
    assert counts["prealign"] == 8 + 8 + 1  # brain_a, brain_b (150 each), brain_test (20)
    assert counts["make_embedded"] == len(cfg["datasets"]) and counts["ground_truth"] == 2
    assert requests(jobs["train"]) == {(4, 1, 64000, 2880)}
    assert requests(jobs["baseline"]) == {(16, 0, 16000, 75), (16, 0, 16000, 20)}
    assert requests(jobs["ground_truth"]) == {(16, 0, 16000, 15 + 12)}  # 380 pairs / 16 x 0.5
    assert max(j["resources"]["runtime"] for rule, js in jobs.items() if rule != "train"
               for j in js if "runtime" in j["resources"]) <= 240


def test_gpu_mini_config_has_the_gpu_configs_models(tmp_path):
    """config/gpu-mini.yaml (issue 16) is config/gpu.yaml's DAG in miniature: the same 21
    trainings, each asking for the GPU; config/gpu-mini-cpu.yaml turns it into its CPU rehearsal."""
    mini = dry_run(tmp_path / "gpu", ROOT / "config" / "gpu-mini.yaml")
    full = yaml.safe_load((ROOT / "config" / "gpu.yaml").read_text())
    small = yaml.safe_load((ROOT / "config" / "gpu-mini.yaml").read_text())
    assert small["studies"] == {
        k: {**v, "supervised": {"pairs": 4}, "baselines": {"ants": "fast", "elastix": "fast"}}
        for k, v in full["studies"].items()}
    assert mini["train"] == mini["register_model"] == 11 + 10
    assert mini["baseline"] == 4 and mini["supervision_targets"] == 2
    rehearsal = dry_run_files(tmp_path / "cpu", ROOT / "config" / "gpu-mini.yaml",
                              ROOT / "config" / "gpu-mini-cpu.yaml")
    assert rehearsal == mini


def test_trainings_ask_for_a_gpu_only_where_one_is_used(tmp_path):
    """`device: auto` is decided when the DAG is built, without torch: with no GPU on the
    machine (nvidia-smi) the trainings ask for no `gpu` and get `threads`, so `--cores` runs
    them side by side; with one, each asks for one GPU and gets `gpu_threads`."""
    def train_jobs(**env):
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *DRY_RUN,
             "--directory", str(tmp_path), "--configfile", str(ROOT / "config" / "config.yaml"),
             "--workflow-profile", str(ROOT / "profiles" / "default")],
            capture_output=True, text=True, timeout=600, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr
        jobs = by_rule(dry_run_jobs(proc.stdout.split("Job stats:")[1]))
        return jobs["train"] + jobs["register_model"]

    cpu = train_jobs(VTN_FAKE_GPUS="0")
    assert {(j["threads"], j["resources"]["gpu"]) for j in cpu} == {(1, 0)}
    assert all("--device cpu" in j["shell"] for j in cpu)
    gpu = train_jobs(VTN_FAKE_GPUS="1")
    assert {(j["threads"], j["resources"]["gpu"]) for j in gpu} == {(4, 1)}
    assert all("--device cuda" in j["shell"] for j in gpu)


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
