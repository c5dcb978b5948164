"""The SLURM profile on a real one-node SLURM (Debian's slurm-wlm + munge, started here).

Opt-in: ``VTN_SLURM_TESTS=1`` (``.ci/run`` sets it). These tests need root: they start munged,
slurmctld and slurmd, and install ``slurm-wlm`` and ``munge`` with apt-get when missing. Without
the variable they are skipped (a plain ``pytest`` never installs or starts anything). Run:

    sudo VTN_SLURM_TESTS=1 .venv/bin/python -m pytest -m slurm tests/test_slurm.py

The submit side runs ``$VTN_SUBMIT_PYTHON -m snakemake`` -- an environment made from
``profiles/slurm/requirements.txt`` (executor plugin 2.8.0), as README's cluster section says --
or, without the variable, this interpreter (the ``.[slurm]`` extra, plugin 2.6.1); the jobs run
this environment's ``python -m vtn``. The node advertises 16 CPUs, 128 GB and two fake GPUs
(``config_overrides``; GRES on /dev/null and /dev/zero), so the real ``profiles/slurm`` requests
(64 GB, 48 h, ...) are scheduled unchanged on a small machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_utils  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"
RESOURCES = ROOT / "resources"  # fetched packages shared with the other tests
OPT_IN = "VTN_SLURM_TESTS"
SUBMIT_PYTHON = os.environ.get("VTN_SUBMIT_PYTHON") or sys.executable
HOW = ("sudo VTN_SLURM_TESTS=1 python -m pytest -m slurm tests/test_slurm.py (root; installs "
       "slurm-wlm and munge with apt-get if missing, starts and stops its own daemons)")

pytestmark = pytest.mark.slurm

# Poll SLURM every few seconds instead of the plugin's 40 s; `squeue` since there is no accounting.
FAST_POLL = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
             "--slurm-no-account"]


def _plugin_version(python: str) -> str | None:
    proc = subprocess.run([python, "-c", "import importlib.metadata as m; "
                           "print(m.version('snakemake-executor-plugin-slurm'))"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _skip_reason() -> str | None:
    if os.environ.get(OPT_IN) != "1":
        return f"real-SLURM tests are opt-in: {HOW}"
    if sys.platform != "linux":
        return "SLURM test needs Linux"
    if os.geteuid() != 0:
        return f"SLURM test needs root; {HOW}"
    if _plugin_version(SUBMIT_PYTHON) is None:
        return (f"{SUBMIT_PYTHON}: snakemake-executor-plugin-slurm not installed (set "
                "VTN_SUBMIT_PYTHON to an environment of profiles/slurm/requirements.txt, or "
                "pip install -e '.[slurm]')")
    if slurm_utils.missing_programs() and shutil.which("apt-get") is None:
        return f"SLURM programs missing ({slurm_utils.missing_programs()}) and no apt-get"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        slurm_utils.ensure_installed()
    except slurm_utils.SlurmUnavailable as err:
        pytest.skip(str(err))
    t0 = time.monotonic()
    # MinJobAge 1800 s: finished jobs stay visible to squeue for the status checks and the asserts
    c = slurm_utils.LocalSlurm.start(cpus=16, memory_mb=128000, gpus=2, min_job_age=1800)
    print(f"SLURM started in {time.monotonic() - t0:.1f} s; submit side {SUBMIT_PYTHON} "
          f"(plugin {_plugin_version(SUBMIT_PYTHON)})")
    try:
        yield c
    finally:
        t0 = time.monotonic()
        c.stop()
        print(f"SLURM stopped in {time.monotonic() - t0:.1f} s")
        assert not c.running()


def _env(extra: dict | None = None) -> dict:
    """The environment of a run: this venv's bin first on PATH (rules call `python -m vtn`),
    the repository's vtn, GPU slot locks of the test; jobs compute on the CPU with the
    allocation's fake GPUs (VTN_FAKE_GPUS)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["VTN_FAKE_GPUS"] = "2"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra or {})
    return env


def snakemake(args, env, cwd, timeout=1500, python=None):
    cmd = [python or sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    proc.seconds = time.monotonic() - t0
    return proc


def on_slurm(cluster, workdir, configfile, targets=(), *extra, profile=PROFILE, jobs=8):
    """The workflow through `--executor slurm --workflow-profile profiles/slurm`."""
    # targets first: --configfile takes every word up to the next option
    return snakemake([*targets, "--directory", str(workdir), "--configfile", str(configfile),
                      "--executor", "slurm", "--workflow-profile", str(profile), "-j", str(jobs),
                      *FAST_POLL, *extra], env=_env(cluster.env()), cwd=workdir,
                     python=SUBMIT_PYTHON)


def locally(workdir, configfile, targets=(), *extra):
    return snakemake([*targets, "--directory", str(workdir), "--configfile", str(configfile),
                      "--cores", "2", "--workflow-profile", str(ROOT / "profiles" / "default"),
                      *extra], env=_env(), cwd=workdir)


def _fail(proc, cluster=None, workdir=None):
    logs = ""
    if workdir is not None:
        logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted((Path(workdir) / "logs").rglob("*.log"))[-12:])
    return proc.stdout[-4000:] + proc.stderr[-6000:] + logs + (cluster.logs() if cluster else "")


def _mb(text: str) -> float:
    """SLURM memory text ('64000M', '62.50G') in MB."""
    value, unit = float(text[:-1]), text[-1]
    return value * {"M": 1, "G": 1024, "T": 1024 ** 2}[unit]


def scontrol_job(cluster, job_id: str) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=cluster.env(),
                         capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def slurm_jobs(cluster, workdir) -> list:
    """``(job id, rule, wildcards text, state)`` of the SLURM jobs run in ``workdir``, in
    submission order (the plugin names a job's comment ``rule_<rule>_wildcards_<...>``)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%k|%Z|%T"], env=cluster.env(),
                         capture_output=True, text=True, check=True).stdout.split()
    jobs = []
    for line in out:
        job, comment, cwd, state = line.split("|")
        if Path(cwd) == Path(workdir):
            rule, _, wc = comment.removeprefix("rule_").partition("_wildcards_")
            jobs.append((job, rule, wc, state))
    return sorted(jobs, key=lambda j: int(j[0]))


def job_stats(output: str) -> dict:
    block = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block.split("\n\n")[0], re.M)}


def test_slurm_profile_replaces_the_default_profile(tmp_path):
    """`--workflow-profile profiles/slurm` is the only workflow profile applied: no global gpu
    limit from profiles/default, the per-rule requests of profiles/slurm (dry run, no cluster)."""
    if _plugin_version(sys.executable) is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')")
    # `--cores`: without it Snakemake >= 9.2x caps threads at 1 in a dry run (not under SLURM)
    args = ["-n", "--cores", "64", "--directory", str(tmp_path),
            "--configfile", str(ROOT / "config" / "config.yaml")]
    # without the option Snakemake discovers profiles/default next to the Snakefile ...
    proc = snakemake(args, env=_env(), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    used = re.findall(r"Using workflow specific profile (\S+)", out)
    assert used == [str(ROOT / "profiles" / "default")]
    # ... and with it, that one only
    proc = snakemake([*args, "--workflow-profile", str(PROFILE), "--config", "device=cuda"],
                     env=_env(), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.findall(r"Using workflow specific profile (\S+)", out) == [str(PROFILE)]
    train = re.findall(r"^rule train:.*?threads: (\d+)\n\s+resources: (.*?)$", out, re.M | re.S)
    assert train and all(t == "4" and "gpu=1" in r and "mem_mb=64000" in r
                         and "runtime=2880" in r for t, r in train), train[:2]


# ---------------------------------------------------------------------------------------------
# a scaled copy of config/paper.yaml: the same rules and fan-out, tiny volumes, a few steps
# ---------------------------------------------------------------------------------------------


def scaled_paper_config(path: Path) -> Path:
    """config/paper.yaml's structure on embedded data: both studies, every kind of model (plain
    and atlas pre-aligned cascades, + inv, supervised, VoxelMorph-2, a data-amount variant),
    ANTs and Elastix in chunks of pairs, pre-alignment in chunks of subjects, `device: cuda`."""
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    cfg.update(
        data_note="EMBEDDED test data (scaled copy of config/paper.yaml), NOT the paper's data",
        resources=str(RESOURCES), image_size=16, threads=1, gpu_threads=1, device="cuda",
        baseline_chunk=3, prealign_chunk=2)
    cfg["training"].update(epochs=1, iterations=10, batch=2, checkpoint_every=5)
    cfg["voxelmorph"].update(batch=2, iterations=10)
    cfg["datasets"] = {
        "liver_a": {"source": "embedded", "organ": "liver", "n": 3, "seed": 1},
        "liver_b": {"source": "embedded", "organ": "liver", "n": 3, "seed": 2},
        "liver_test": {"source": "embedded", "organ": "liver", "n": 3, "seed": 3},
        "brain_a": {"source": "embedded", "organ": "brain", "n": 3, "seed": 4},
        "brain_test": {"source": "embedded", "organ": "brain", "n": 3, "seed": 5},
        "brain_atlas": {"source": "embedded", "organ": "brain", "n": 1, "seed": 6},
    }
    liver, brain = cfg["studies"]["liver"], cfg["studies"]["brain"]
    liver.update(train=["liver_a", "liver_b"], test="liver_test", main="AD", cascades=["D"],
                 supervised={"pairs": 4}, data_amount={"A": ["liver_a"]},
                 baselines={"ants": "fast", "elastix": "fast"})
    brain.update(train=["brain_a"], test="brain_test", main="AD", cascades=[],
                 star_cascades=["D"], atlas={"dataset": "brain_atlas", "subject": "brain_atlas000"},
                 inv=False, baselines={"ants": "fast"})
    for key in ("supervised", "data_amount", "data_amount_model"):
        brain.pop(key, None)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def scaled_run(cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("paper-scaled")
    config = scaled_paper_config(work / "config.yaml")
    proc = on_slurm(cluster, work, config)
    print(f"scaled paper DAG through SLURM: {proc.seconds:.1f} s")
    assert proc.returncode == 0, _fail(proc, cluster, work)
    return {"work": work, "config": config, "proc": proc}


@pytest.mark.slow
@pytest.mark.workflow
def test_scaled_paper_dag_runs_on_slurm(cluster, scaled_run, tmp_path):
    """The scaled paper DAG with `--jobs 8`: every compute rule went through SLURM with the
    profile's requests, chunk jobs fan out per pair / subject, results equal a local run."""
    work = scaled_run["work"]
    jobs = slurm_jobs(cluster, work)
    done = {}
    for job, rule, _, state in jobs:
        assert state == "COMPLETED", jobs
        done.setdefault(rule, []).append(job)
    n = {rule: len(ids) for rule, ids in done.items()}
    # 6 pairs per test set in chunks of 3; 4 supervised pairs in chunks of 3; pre-alignment of
    # brain_a and brain_test (3 subjects each) in chunks of 2
    assert n["baseline"] == (2 + 2) + 2 and n["supervision_targets"] == 2 and n["prealign"] == 4
    # liver: AD, D, AD-inv, supervised, voxelmorph, AD-data-a; brain: AD, D-star, voxelmorph-star
    assert n["train"] == n["register_model"] == 9 and n["evaluate"] == 9 + 3
    assert n["make_embedded"] == n["preprocess"] == 6 and n["ground_truth"] == 2
    assert n["figures"] == 2
    local_rules = {"model_config", "study_spec", "tables", "claims", "runtime_summary",
                   "gather_baseline", "gather_targets", "gather_prealign", "fetch_resources"}
    assert not set(n) & local_rules
    # what SLURM was asked for: the profile's memory and time, GPUs for GPU rules only
    train = scontrol_job(cluster, done["train"][0])
    assert train["TimeLimit"] == "2-00:00:00" and _mb(train["MinMemoryNode"]) == 64000
    assert "gpu:1" in train.get("TresPerJob", ""), train
    assert train["NumCPUs"] == "1"  # gpu_threads
    base = scontrol_job(cluster, done["baseline"][0])
    assert base["TimeLimit"] == "00:16:00"  # 15 min + 3 pairs x 5 min x (16/128)^3, rounded up
    assert _mb(base["MinMemoryNode"]) == 16000 and "gpu" not in base.get("TresPerJob", "")
    # the GPU jobs ran with SLURM's allocation, used as it is
    log = (work / "logs" / "train" / "liver" / "AD.log").read_text()
    assert re.search(r"CUDA_VISIBLE_DEVICES=[01] \(allocated by SLURM job \d+\)", log), log
    assert "vtn train: step 10/10 (100.0%)" in log
    for study, methods in (("liver", ["D", "AD", "AD-inv", "supervised", "voxelmorph",
                                      "AD-data-a", "ants", "elastix"]),
                           ("brain", ["AD", "D-star", "voxelmorph-star", "ants"])):
        for m in methods:
            df = pd.read_csv(work / "results" / "metrics" / study / f"{m}.csv")
            assert len(df) == 6 and df["iou"].notna().all(), (study, m)
    for out in ("results/claims.md", "results/runtime.md", "results/tables/liver",
                "results/figures/brain"):
        assert (work / out).exists()
    assert not (work / "results" / "chunks").exists() or not any(
        (work / "results" / "chunks").rglob("disp_*"))  # temporary chunks removed
    # a local run of part of the same DAG gives the same numbers and fields
    local = tmp_path / "local"
    local.mkdir()
    targets = ["results/metrics/liver/AD.csv", "results/metrics/liver/ants.csv"]
    proc = locally(local, scaled_run["config"], targets)
    assert proc.returncode == 0, _fail(proc, None, local)
    timing = re.compile(r"sec|time|device|thread", re.I)
    for rel in targets:
        a, b = (pd.read_csv(d / rel) for d in (local, work))
        cols = [c for c in a.columns if not timing.search(c)]
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True, obj=rel)
    import nibabel as nib

    disps = sorted((local / "results" / "registrations" / "liver").rglob("disp_*.nii.gz"))
    assert len(disps) == 12
    for p in disps:
        rel = p.relative_to(local)
        assert np.array_equal(np.asarray(nib.load(p).dataobj),
                              np.asarray(nib.load(work / rel).dataobj)), rel


@pytest.mark.slow
@pytest.mark.workflow
def test_baseline_failure_keeps_every_other_pair(cluster, scaled_run):
    """One pair per job (`baseline_chunk=1`); a test subject's image is broken: the jobs of the
    pairs without it finish and stay (keep-going), the next run computes only the failed ones."""
    work, config = scaled_run["work"], scaled_run["config"]
    shutil.rmtree(work / "results" / "registrations" / "liver" / "ants")
    image = work / "results" / "data" / "liver_test" / "prep" / "liver_test002_image.nii.gz"
    good = image.read_bytes()
    image.write_bytes(b"not a NIfTI file")
    target = ["results/registrations/liver/ants"]
    chunk1 = ["--config", "baseline_chunk=1"]
    try:
        proc = on_slurm(cluster, work, config, target, *chunk1, "--retries", "0")
    finally:
        image.write_bytes(good)
    assert proc.returncode != 0
    pairs = pd.read_csv(work / "results" / "data" / "liver_test" / "pairs.csv", dtype=str)
    chunks = work / "results" / "chunks" / "liver" / "ants"
    kept = {}
    for i, (f, m) in enumerate(zip(pairs["fixed"], pairs["moving"])):
        disp = chunks / f"{i:05d}-{i + 1:05d}" / f"disp_{f}_{m}.nii.gz"
        if "liver_test002" in (f, m):
            assert not disp.parent.exists(), disp  # the failed jobs left nothing behind
        else:
            assert disp.exists(), disp
            kept[disp.name] = disp.stat().st_ino
    assert len(kept) == 2  # (000, 001) and (001, 000)
    assert "liver_test002_image.nii.gz: cannot read" in "".join(
        p.read_text() for p in (work / "logs" / "baseline" / "liver" / "ants").glob("*.log"))
    proc = on_slurm(cluster, work, config, target, *chunk1)
    assert proc.returncode == 0, _fail(proc, cluster, work)
    assert job_stats(proc.stdout + proc.stderr) == {"baseline": 4, "gather_baseline": 1,
                                                    "total": 5}
    folder = work / target[0]
    assert len(pd.read_csv(folder / "times.csv")) == 6
    for name, inode in kept.items():  # the finished pairs were linked, not computed again
        assert (folder / name).stat().st_ino == inode


# ---------------------------------------------------------------------------------------------
# a training killed by SLURM's time limit resumes and ends with an unbroken run's weights
# ---------------------------------------------------------------------------------------------


def _steps_per_second(work, config) -> float:
    """Training speed of the test's model here (one thread), from the progress lines."""
    cfg = yaml.safe_load(config.read_text())
    m = dict(type="vtn", cascade="D", image_size=cfg["image_size"], epochs=1, iterations=60,
             batch=2, checkpoint_every=100, progress_every=60, seed=0)
    (work / "calib.yaml").write_text(yaml.safe_dump(m))
    proc = subprocess.run([sys.executable, "-m", "vtn", "train", "--subjects",
                           "results/data/liver_a/prep/subjects.csv", "--config", "calib.yaml",
                           "--out", "calib/c.pt", "--log", "calib/l.csv", "--device", "cpu"],
                          cwd=work, env=_env({"OMP_NUM_THREADS": "1"}), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return float(re.search(r"([\d.]+) steps/s", proc.stderr).group(1))


@pytest.mark.slow
@pytest.mark.workflow
def test_training_killed_by_time_limit_resumes_with_the_same_weights(cluster, tmp_path):
    """Attempt 1 of `train` gets a 1-minute limit: SLURM sends SIGTERM, the training checkpoints
    its current step and exits; the retry (the profile's `retries`) resumes from that checkpoint
    and ends with bitwise the weights of an unbroken run (CPU, one thread)."""
    import torch

    work = tmp_path / "work"
    work.mkdir()
    config = scaled_paper_config(work / "config.yaml")
    cfg = yaml.safe_load(config.read_text())
    cfg["studies"] = {"liver": {**cfg["studies"]["liver"], "main": "D", "cascades": [],
                                "inv": False, "supervised": None, "voxelmorph": False,
                                "data_amount": None, "baselines": {}}}
    for key in ("supervised", "data_amount"):
        cfg["studies"]["liver"].pop(key)
    cfg["datasets"] = {k: v for k, v in cfg["datasets"].items() if k.startswith("liver")}
    model_yaml = "results/models/liver/D/model.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = locally(work, config, ["results/data/liver_a/prep/subjects.csv",
                                  "results/data/liver_b/prep/subjects.csv", model_yaml])
    assert proc.returncode == 0, _fail(proc, None, work)
    # ~240 s of training at the calibrated rate: the 1-minute limit (plus job start-up) stops it
    # even if the machine runs 3x faster than during the calibration (a busy machine's
    # calibration once gave a training that finished inside the minute)
    rate = _steps_per_second(work, config)
    cfg["training"].update(iterations=max(300, int(240 * rate)), checkpoint_every=10 ** 6)
    config.write_text(yaml.safe_dump(cfg))
    proc = locally(work, config, [model_yaml], "--forcerun", "model_config")
    assert proc.returncode == 0, _fail(proc, None, work)
    steps = cfg["training"]["iterations"]
    # the unbroken run, beside the cluster's (one thread each)
    subjects = ["results/data/liver_a/prep/subjects.csv", "results/data/liver_b/prep/subjects.csv"]
    ref = subprocess.Popen([sys.executable, "-m", "vtn", "train", "--subjects", *subjects,
                            "--config", model_yaml, "--out", "ref/c.pt", "--log", "ref/l.csv",
                            "--device", "cpu"], cwd=work, env=_env({"OMP_NUM_THREADS": "1"}),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # the profile, with a 1-minute limit for the first attempt of `train`
    profile = tmp_path / "profile"
    profile.mkdir()
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    prof["set-resources"]["train"]["runtime"] = "1 if attempt == 1 else 30"
    (profile / "config.yaml").write_text(yaml.safe_dump(prof))
    proc = on_slurm(cluster, work, config, ["results/models/liver/D/checkpoint.pt"],
                    profile=profile)
    _, err = ref.communicate(timeout=1200)
    assert ref.returncode == 0, err
    assert proc.returncode == 0, _fail(proc, cluster, work)
    trains = [j for j in slurm_jobs(cluster, work) if j[1] == "train"]
    assert [state for *_, state in trains] == ["TIMEOUT", "COMPLETED"], trains
    assert scontrol_job(cluster, trains[0][0])["TimeLimit"] == "00:01:00"
    log = (work / "logs" / "train" / "liver" / "D.log").read_text()
    resumed = re.search(r"resuming from \S+step(\d+)\.pt \(step (\d+)\)", log)
    assert resumed, log
    k = int(resumed.group(2))
    # no periodic checkpoint before the end: step k was written when SIGTERM came
    assert 0 < k < steps, (k, steps)
    a = torch.load(work / "results/models/liver/D/checkpoint.pt", weights_only=True)
    b = torch.load(work / "ref/c.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    for name, v in b["model_state"].items():
        assert torch.equal(v, a["model_state"][name]), name
    pd.testing.assert_frame_equal(
        pd.read_csv(work / "results/models/liver/D/train_log.csv").drop(columns="seconds"),
        pd.read_csv(work / "ref/l.csv").drop(columns="seconds"))
