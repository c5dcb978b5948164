"""The SLURM profile on a real one-node SLURM (Debian's slurm-wlm + munge, started here).

Needs root (to start slurmctld/slurmd/munged and, if missing, to apt-get install them) and
``snakemake-executor-plugin-slurm``; otherwise the tests are skipped with the reason. The cluster
advertises 16 CPUs, 128 GB and one fake GPU (``config_overrides``), so the requests of the real
``profiles/slurm`` (8 CPUs per GPU, 64 GB, 48 h...) are scheduled unchanged on a small machine.

Run: ``sudo .venv/bin/python -m pytest -m slurm tests/test_slurm.py`` (root).
"""

from __future__ import annotations

import importlib.util
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_utils  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.slurm

# Poll SLURM every few seconds instead of the plugin's 40 s; `squeue` since there is no accounting.
FAST_POLL = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
             "--slurm-no-account"]


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "SLURM test needs Linux"
    if os.geteuid() != 0:
        return "SLURM test needs root (starts slurmctld, slurmd, munged; may apt-get install)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')"
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
    c = slurm_utils.LocalSlurm.start(cpus=16, memory_mb=128000, gpus=1, min_job_age=1800)
    print(f"SLURM started in {time.monotonic() - t0:.1f} s")
    try:
        yield c
    finally:
        t0 = time.monotonic()
        c.stop()
        print(f"SLURM stopped in {time.monotonic() - t0:.1f} s")
        assert not c.running()


def _env(extra: dict | None = None) -> dict:
    """The environment with the venv's bin first on PATH (rules call `python -m vtn`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def snakemake(args, env, cwd, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    proc.seconds = time.monotonic() - t0
    return proc


def _mb(text: str) -> float:
    """SLURM memory text ('64000M', '62.50G') in MB."""
    value, unit = float(text[:-1]), text[-1]
    return value * {"M": 1, "G": 1024, "T": 1024 ** 2}[unit]


def scontrol_job(cluster, job_id: str) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=cluster.env(),
                         capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


MINI_SNAKEFILE = r"""
localrules: summary

rule all:
    input: "summary.txt"

rule preprocess:
    output: "pairs.csv"
    shell: "printf 'fixed,moving\\na,b\\nb,c\\nc,a\\n' > {output}"

rule train:
    input: "pairs.csv"
    output: "model.txt"
    resources: gpu=1
    shell: "echo \"$SLURM_JOB_ID ${{CUDA_VISIBLE_DEVICES:-none}} $OMP_NUM_THREADS\" > {output}"

rule baseline:
    input: pairs="pairs.csv"
    output: "baseline.txt"
    threads: 2
    shell: "echo \"$SLURM_JOB_ID\" > {output}"

rule summary:
    input: "model.txt", "baseline.txt"
    output: "summary.txt"
    shell: "echo \"${{SLURM_JOB_ID:-local}}\" > {output}"
"""


def test_profile_requests_reach_slurm(cluster, tmp_path):
    """Rules named like the workflow's get the profile's resources as real SLURM job limits."""
    (tmp_path / "Snakefile").write_text(MINI_SNAKEFILE)
    proc = snakemake(["-s", "Snakefile", "--directory", str(tmp_path), "--executor", "slurm",
                      "--workflow-profile", str(PROFILE), "-j", "4", *FAST_POLL],
                     env=_env(cluster.env()), cwd=tmp_path)
    print(f"mini workflow through SLURM: {proc.seconds:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr + cluster.logs()

    job, cvd, omp = (tmp_path / "model.txt").read_text().split()
    assert cvd == "0"  # the fake GPU was allocated
    train = scontrol_job(cluster, job)
    assert train["TimeLimit"] == "2-00:00:00"  # runtime 2880 min
    assert _mb(train["MinMemoryNode"]) == 64000
    assert train.get("TresPerJob") == "gres:gpu:1", train
    assert train["NumCPUs"] == "8"  # cpus_per_gpu
    assert train["Partition"] == "debug"

    job = (tmp_path / "baseline.txt").read_text().strip()
    base = scontrol_job(cluster, job)
    # 3 pairs: 30 + 60 * 3 minutes, read from pairs.csv once it exists
    assert base["TimeLimit"] == "03:30:00"
    assert _mb(base["MinMemoryNode"]) == 16000
    assert base["NumCPUs"] == "2"  # threads -> --cpus-per-task
    assert "gpu" not in base.get("TresPerJob", "") + base["TRES"], base

    assert (tmp_path / "summary.txt").read_text().strip() == "local"  # localrules stay local


def test_slurm_profile_replaces_the_default_profile(tmp_path):
    """`--workflow-profile profiles/slurm` is the only workflow profile applied: no global gpu
    limit from profiles/default, the per-rule requests of profiles/slurm (dry run, no cluster)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')")
    args = ["-n", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
            "--configfile", str(ROOT / "config" / "config.yaml")]
    # without the option Snakemake discovers profiles/default next to the Snakefile ...
    proc = snakemake(args, env=_env(), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    used = re.findall(r"Using workflow specific profile (\S+)", out)
    assert used == [str(ROOT / "profiles" / "default")]
    # ... and with it, that one only
    proc = snakemake([*args, "--workflow-profile", str(PROFILE)], env=_env(), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.findall(r"Using workflow specific profile (\S+)", out) == [str(PROFILE)]
    train = re.findall(r"^rule train:.*?resources: (.*?)$", out, re.M | re.S)
    assert train and all("gpu=1" in r and "cpus_per_gpu=8" in r and "runtime=2880" in r
                         for r in train), train[:2]


def _deterministic(df: pd.DataFrame) -> pd.DataFrame:
    timing = [c for c in df.columns if re.search(r"sec|time|device|thread", c, re.I)]
    return df.drop(columns=timing)


@pytest.mark.slow
@pytest.mark.workflow
def test_tiny_study_on_slurm_matches_local(cluster, tmp_path):
    """The tiny study via `--executor slurm --workflow-profile profiles/slurm` == a local run."""
    import yaml

    cfg = yaml.safe_load(TINY.read_text())
    cfg["resources"] = str(ROOT / "resources")  # fetched packages shared with the other tests
    # device=auto: train/register ask SLURM for the (fake) GPU; torch still runs on the CPU.
    cfg["device"] = "auto"
    # Without the Elastix baseline (~150 s of the ~3 min of this study on 2 cores) the comparison
    # fits CI; test_profile_requests_reach_slurm covers the baseline rule's SLURM request.
    cfg["studies"]["liver"]["baselines"] = {}
    config = tmp_path / "tiny-slurm.yaml"
    config.write_text(yaml.safe_dump(cfg))
    common = ["-s", str(ROOT / "Snakefile"), "--configfile", str(config)]
    local, remote = tmp_path / "local", tmp_path / "slurm"
    local.mkdir(), remote.mkdir()
    proc = snakemake([*common, "--directory", str(local), "-c2",
                      "--workflow-profile", str(ROOT / "profiles" / "default")],
                     env=_env(), cwd=local)
    print(f"tiny study locally: {proc.seconds:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = snakemake([*common, "--directory", str(remote), "--executor", "slurm",
                      "--workflow-profile", str(PROFILE), "-j", "8", *FAST_POLL],
                     env=_env(cluster.env()), cwd=remote)
    print(f"tiny study through SLURM: {proc.seconds:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr + cluster.logs()
    # the jobs really went through SLURM (the plugin names each job's comment rule_<name>),
    # the cheap rules did not (localrules)
    listed = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%k|%Z|%T"], env=cluster.env(),
                            capture_output=True, text=True, check=True).stdout.split()
    jobs = [j.split("|") for j in listed]
    rules = {comment.removeprefix("rule_").split("_wildcards")[0]
             for comment, workdir, state in jobs
             if Path(workdir) == remote and state == "COMPLETED"}
    assert {"make_embedded", "preprocess", "ground_truth", "train", "register_model",
            "evaluate", "figures"} <= rules, rules
    assert not rules & {"model_config", "study_spec", "tables", "claims", "runtime_summary"}

    metrics = sorted(p.relative_to(local) for p in (local / "results" / "metrics").rglob("*.csv"))
    assert metrics
    for rel in metrics:
        a = _deterministic(pd.read_csv(local / rel))
        b = _deterministic(pd.read_csv(remote / rel))
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=str(rel))
    disps = sorted(p.relative_to(local)
                   for p in (local / "results" / "registrations").rglob("disp_*.nii.gz"))
    assert disps
    import nibabel as nib

    for rel in disps:
        a = np.asarray(nib.load(local / rel).dataobj)
        b = np.asarray(nib.load(remote / rel).dataobj)
        assert np.array_equal(a, b), rel
