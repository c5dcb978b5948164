import pytest
import torch

from vtn.device import to_device


def test_to_device_cpu_is_exact_and_casts():
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7.0
    assert to_device(t, "cpu") is t  # nothing to do: no copy
    assert to_device(t, None) is t
    c = to_device(t, torch.device("cpu"), torch.float32)
    assert c.dtype == torch.float32 and torch.equal(c, t.float())
    i = to_device(torch.tensor([[0, 2], [1, 0]]), "cpu")
    assert i.dtype == torch.long and i.tolist() == [[0, 2], [1, 0]]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_cuda_does_not_synchronise():
    t = torch.rand(2, 3, 5, 5, 5, dtype=torch.float64)
    torch.cuda.set_sync_debug_mode("error")
    try:
        g = to_device(t, "cuda", torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert g.device.type == "cuda" and torch.equal(g.cpu(), t.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fill_kernels_give_the_same_constants_as_a_host_copy(dtype):
    """vtn.functional builds per-axis constants on a GPU with ``torch.full`` (no host copy):
    the same roundings as ``torch.tensor``."""
    values = [2.0 / 127, 2.0 / 95, 63 / 2.0, 1.0 / 3.0]
    filled = torch.stack([torch.full((), v, dtype=dtype) for v in values])
    assert torch.equal(filled, torch.tensor(values, dtype=dtype))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_warp_and_affine_flow_do_not_synchronise():
    from vtn.functional import affine_flow, centered_grid, warp

    img = torch.rand(2, 1, 8, 9, 10, device="cuda")
    flow = torch.rand(2, 3, 8, 9, 10, device="cuda")
    W = torch.rand(2, 3, 3, device="cuda") * 0.1
    b = torch.rand(2, 3, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = warp(img, flow)
        aff = affine_flow(W, b, (8, 9, 10))
        grid = centered_grid((8, 9, 10), device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu(), warp(img.cpu(), flow.cpu()))
    torch.testing.assert_close(aff.cpu(), affine_flow(W.cpu(), b.cpu(), (8, 9, 10)))
    assert torch.equal(grid.cpu(), centered_grid((8, 9, 10)))


# ---------------------------------------------------------------------------------------------
# which GPU a job gets (vtn.device.claim_gpu_slot / resolve_device), decided without torch
# ---------------------------------------------------------------------------------------------

import fcntl  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# one job of a workflow: take a slot through resolve_device('cuda') (what vtn train and
# vtn register do), hold it a while, report what it got and when
HOLD = r"""
import json, os, sys, time
from vtn.device import resolve_device
dev = resolve_device(sys.argv[1], log=lambda m: print(m, file=sys.stderr))
t0 = time.time()
time.sleep(float(sys.argv[2]))
print(json.dumps({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": str(dev),
                  "start": t0, "end": time.time()}))
"""


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "VTN_FAKE_GPUS")}
    env.update(PYTHONPATH=str(ROOT), VTN_GPU_LOCK_DIR=str(tmp_path / "locks"), **extra)
    return env


def _job(tmp_path, device="cuda", hold=0.0, **env):
    proc = subprocess.run([sys.executable, "-c", HOLD, device, str(hold)], capture_output=True,
                          text=True, env=_env(tmp_path, **env), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_gpu_request_from_the_config_device(monkeypatch):
    from vtn.device import gpu_request, host_gpus

    for var in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS",
                "SLURM_STEP_GPUS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VTN_FAKE_GPUS", "3")
    assert host_gpus() == 3
    assert [gpu_request(d) for d in ("cpu", "cuda", "auto")] == [0, 1, 1]
    monkeypatch.setenv("VTN_FAKE_GPUS", "0")
    assert host_gpus() == 0
    assert [gpu_request(d) for d in ("cpu", "cuda", "auto")] == [0, 1, 0]
    with pytest.raises(ValueError, match="device must be"):
        gpu_request("gpu")
    # inside a SLURM job `auto` follows the job's allocation, not the node's GPUs
    monkeypatch.setenv("VTN_FAKE_GPUS", "4")
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert gpu_request("auto") == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpu_request("auto") == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "2")
    assert gpu_request("auto") == 1 and gpu_request("cpu") == 0
    monkeypatch.setenv("VTN_FAKE_GPUS", "two")
    with pytest.raises(ValueError, match="VTN_FAKE_GPUS"):
        host_gpus()


def test_slot_skips_a_held_gpu(tmp_path):
    """With GPU 0 held by another job, the next one gets GPU 1; with both free, GPU 0."""
    got, log = _job(tmp_path, VTN_FAKE_GPUS="2")
    assert got["cvd"] == "0" and "slot 0 of 0,1" in log
    (tmp_path / "locks").mkdir(exist_ok=True)
    with open(tmp_path / "locks" / "gpu-0.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        got, log = _job(tmp_path, VTN_FAKE_GPUS="2")
    assert got["cvd"] == "1" and "slot 1 of 0,1" in log
    assert "fake GPU" in log and got["device"] == "cpu"  # tests: computes on the CPU
    # a user's CUDA_VISIBLE_DEVICES is the pool of slots
    got, _ = _job(tmp_path, CUDA_VISIBLE_DEVICES="3,5", VTN_FAKE_GPUS="8")
    assert got["cvd"] == "3"


def test_slurm_allocation_is_used_as_it_is(tmp_path):
    got, log = _job(tmp_path, CUDA_VISIBLE_DEVICES="2", SLURM_JOB_ID="77", VTN_FAKE_GPUS="4")
    assert got["cvd"] == "2" and "allocated by SLURM job 77" in log
    assert not (tmp_path / "locks").exists()  # no slot taken


def test_device_cpu_and_auto_without_gpus_take_no_slot(tmp_path):
    for device in ("cpu", "auto"):
        got, log = _job(tmp_path, device=device, VTN_FAKE_GPUS="0")
        assert got == {**got, "cvd": None, "device": "cpu"} and "slot" not in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_at_once_saying_why():
    from vtn.device import resolve_device
    from vtn.io import InputError

    with pytest.raises(InputError, match=r"asked for a GPU.*sees none.*set `device: cpu`"):
        resolve_device("cuda", log=lambda m: None)


SNAKEFILE = """
rule all:
    input: expand("job{i}.json", i=range(6))

rule gpu_job:
    output: "job{i}.json"
    resources: gpu=1
    threads: 1
    shell: "PYTHON hold.py cuda 6 > {output}"
"""


def test_concurrent_gpu_jobs_get_distinct_gpus(tmp_path):
    """A real Snakemake run, `--cores 8 --resources gpu=3` on a machine with 3 (fake) GPUs:
    at most 3 GPU jobs run at once, every running job has its own GPU, and all 3 are used."""
    work = tmp_path / "wf"
    work.mkdir()
    (work / "hold.py").write_text(HOLD)
    (work / "Snakefile").write_text(SNAKEFILE.replace("PYTHON", sys.executable))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "8", "--resources",
                           "gpu=3", "--directory", str(work), "-s", str(work / "Snakefile")],
                          capture_output=True, text=True, env=_env(tmp_path, VTN_FAKE_GPUS="3"),
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = [json.loads((work / f"job{i}.json").read_text()) for i in range(6)]
    assert {j["cvd"] for j in jobs} == {"0", "1", "2"}
    concurrent = 0
    for a in jobs:
        running = [b for b in jobs if b["start"] <= a["start"] < b["end"]]
        concurrent = max(concurrent, len(running))
        assert len({b["cvd"] for b in running}) == len(running), running
    assert concurrent == 3  # the jobs did overlap (--cores 8 allows more; gpu=3 does not)
