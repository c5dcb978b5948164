"""The compute device: which GPU a job gets and what it runs on.

* :func:`host_gpus` / :func:`gpu_request` (no torch, no CUDA): whether the workflow asks for the
  ``gpu`` resource -- ``device: cpu`` never, ``cuda`` always, ``auto`` when this machine has an
  NVIDIA GPU (``nvidia-smi -L``, else ``/proc/driver/nvidia/gpus``).
* :func:`claim_gpu_slot`: Snakemake never sets ``CUDA_VISIBLE_DEVICES``, so on an N-GPU machine
  (``--resources gpu=N``) every job would use ``cuda:0``. Before CUDA is initialised, a job takes
  the first free slot among the machine's GPUs -- a non-blocking ``flock`` on
  ``<lock dir>/gpu-<id>.lock`` held until the process ends -- and sets ``CUDA_VISIBLE_DEVICES``
  to it. An allocation made by SLURM (``SLURM_JOB_ID`` set with ``CUDA_VISIBLE_DEVICES``) is used
  as it is; outside SLURM a ``CUDA_VISIBLE_DEVICES`` set by the user is the pool of slots.
* :func:`resolve_device` (``--device auto|cpu|cuda|cuda:N``): takes the slot, then picks the
  device; ``cuda`` without CUDA is an error that says why and what to do.
* :func:`to_device`: host -> device copies that do not synchronise the host with the GPU.

Environment: ``VTN_GPU_LOCK_DIR`` (default ``<tmp>/vtn-gpu-slots``); ``VTN_FAKE_GPUS=N`` (tests:
the machine has N GPUs for :func:`host_gpus` and the slots, ``cuda`` jobs compute on the CPU).

``tensor.to("cuda")`` from ordinary (pageable) host memory waits for the copy, and with it for
all GPU work queued before it, so a training step that copies its pair indices or its random
augmentation control points that way stalls the host once per step. :func:`to_device` copies
through page-locked memory with ``non_blocking=True`` instead; PyTorch's pinned-memory allocator
keeps the staging buffer alive until the copy has run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["host_gpus", "gpu_request", "claim_gpu_slot", "resolve_device", "describe_device",
           "gpu_memory", "to_device", "FAKE_GPUS_ENV", "LOCK_DIR_ENV"]

FAKE_GPUS_ENV = "VTN_FAKE_GPUS"
LOCK_DIR_ENV = "VTN_GPU_LOCK_DIR"
_SLOT: dict = {}  # the slot this process holds: {"id": str, "fd": int, "path": Path}


def _fake_gpus() -> int | None:
    value = os.environ.get(FAKE_GPUS_ENV)
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"{FAKE_GPUS_ENV}={value!r}: expected a number of GPUs >= 0")
    return n


def host_gpus() -> int:
    """Number of NVIDIA GPUs of this machine, without torch and without initialising CUDA:
    ``VTN_FAKE_GPUS`` if set, else the ``GPU n:`` lines of ``nvidia-smi -L``, else the entries
    of ``/proc/driver/nvidia/gpus``, else 0."""
    fake = _fake_gpus()
    if fake is not None:
        return fake
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
            n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
            if n:
                return n
        except (OSError, subprocess.SubprocessError):
            pass
    proc = Path("/proc/driver/nvidia/gpus")
    try:
        return sum(1 for _ in proc.iterdir()) if proc.is_dir() else 0
    except OSError:
        return 0


def _slurm_gpus() -> bool:
    """Whether the SLURM allocation this process runs in has GPUs."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return True
    return any(os.environ.get(k, "").strip() not in ("", "0")
               for k in ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"))


def gpu_request(device: str) -> int:
    """GPUs a GPU job of the workflow asks for (the ``gpu`` resource): 0 for ``device: cpu``,
    1 for ``cuda``; for ``auto`` 1 when :func:`host_gpus` finds one on the machine that builds
    the DAG -- inside a SLURM job (a rule's job re-reads the workflow there), when the job's
    allocation has GPUs, so that it agrees with what the submit host asked for. On a cluster
    say ``cuda`` or ``cpu``: ``auto`` is decided by the submit host, which rarely has a GPU."""
    if device == "cpu":
        return 0
    if device == "cuda":
        return 1
    if device == "auto":
        if os.environ.get("SLURM_JOB_ID"):
            return 1 if _slurm_gpus() else 0
        return 1 if host_gpus() > 0 else 0
    raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")


def _lock_dir() -> Path:
    folder = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "vtn-gpu-slots")
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:  # shared by every user's jobs on this machine, like /tmp itself
            folder.chmod(0o1777)
        except OSError:
            pass
    return folder


def _try_lock(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    try:
        os.chmod(path, 0o666)
    except OSError:
        pass
    return fd


def _log_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def claim_gpu_slot(log=_log_default, poll: float = 5.0) -> str | None:
    """Give this process its own GPU: set ``CUDA_VISIBLE_DEVICES`` to the first free slot.

    Must run before CUDA is initialised. Under SLURM (``SLURM_JOB_ID`` and
    ``CUDA_VISIBLE_DEVICES`` set) the allocation is used as it is. The slots are the entries of
    a user-set ``CUDA_VISIBLE_DEVICES``, else ``0 .. host_gpus()-1``; with none, nothing
    happens. When every slot is held (more GPU jobs than GPUs: ``--resources gpu=N`` larger
    than the machine's count, or another workflow), the call waits for one, logging why.

    Returns:
        the ``CUDA_VISIBLE_DEVICES`` value the process runs with (``None``: not set).
    """
    if _SLOT:
        return _SLOT["id"]
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and os.environ.get("SLURM_JOB_ID"):
        log(f"GPU: CUDA_VISIBLE_DEVICES={cvd} (allocated by SLURM job {os.environ['SLURM_JOB_ID']})")
        return cvd
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        log(f"GPU: CUDA already initialised in this process; CUDA_VISIBLE_DEVICES={cvd} kept")
        return cvd
    if cvd is not None:
        pool = [d.strip() for d in cvd.split(",") if d.strip()]
    else:
        pool = [str(i) for i in range(host_gpus())]
    if not pool:
        return cvd
    folder = _lock_dir()
    waited = 0.0
    while True:
        for dev in pool:
            path = folder / f"gpu-{dev}.lock"
            fd = _try_lock(path)
            if fd is not None:
                _SLOT.update(id=dev, fd=fd, path=path)
                os.environ["CUDA_VISIBLE_DEVICES"] = dev
                log(f"GPU: slot {dev} of {','.join(pool)} (CUDA_VISIBLE_DEVICES={dev}; lock {path})"
                    + (f" after waiting {waited:.0f} s" if waited else ""))
                return dev
        if waited % 60 < poll:
            log(f"GPU: all {len(pool)} slots ({','.join(pool)}) are held by other jobs (locks in "
                f"{folder}); waiting -- more GPU jobs than GPUs (--resources gpu=N above the "
                f"machine's {len(pool)})?")
        time.sleep(poll)
        waited += poll


def _no_cuda_message(device: str) -> str:
    import torch

    reason = ("this PyTorch build has no CUDA" if torch.version.cuda is None
              else "no CUDA device is visible")
    return (f"--device {device}: this job asked for a GPU (the workflow requests the `gpu` "
            f"resource when the config says `device: cuda`, or `auto` on a machine with an "
            f"NVIDIA GPU), but PyTorch {torch.__version__} sees none ({reason}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Install a CUDA "
            "build of PyTorch or check the job's GPU allocation, or set `device: cpu` in the "
            "config to run on the CPU.")


def resolve_device(device: str, log=_log_default):
    """The ``torch.device`` of ``--device``: ``cpu``; ``auto`` (CUDA when available, else CPU);
    ``cuda`` (an error naming the cause when CUDA is missing); ``cuda:N`` (that device, no
    slot). ``auto`` and ``cuda`` first take a GPU slot (:func:`claim_gpu_slot`)."""
    import torch

    from vtn.io import InputError

    if device == "cpu":
        return torch.device("cpu")
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device in ("auto", "cuda"):
        slot = claim_gpu_slot(log)
    else:
        slot = None
    if torch.cuda.is_available():
        return torch.device("cuda" if device == "auto" else device)
    if device == "auto":
        return torch.device("cpu")
    fake = _fake_gpus()
    if fake:
        log(f"GPU: {FAKE_GPUS_ENV}={fake}: slot {slot} is a fake GPU (tests); computing on the CPU")
        return torch.device("cpu")
    raise InputError(_no_cuda_message(device))


def describe_device(dev) -> str:
    """One line naming the device: ``cuda:0 (NVIDIA H200, 139.8 GiB, CUDA_VISIBLE_DEVICES=2)``
    or ``cpu (2 threads)``."""
    import torch

    dev = torch.device(dev)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return (f"{dev} ({props.name}, {props.total_memory / 2**30:.1f} GiB, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})")
    return f"{dev} ({torch.get_num_threads()} threads)"


def gpu_memory(dev) -> str:
    """Allocated, peak and total memory of a CUDA device (``""`` on the CPU); reads counters
    only, no synchronisation."""
    import torch

    dev = torch.device(dev)
    if dev.type != "cuda":
        return ""
    total = torch.cuda.get_device_properties(dev).total_memory
    return (f"GPU mem {torch.cuda.memory_allocated(dev) / 2**30:.1f} GiB "
            f"(peak {torch.cuda.max_memory_allocated(dev) / 2**30:.1f}) of {total / 2**30:.1f} GiB")


def to_device(tensor, device, dtype=None):
    """``tensor`` (any shape, on the CPU) on ``device``, optionally cast to ``dtype`` first.

    On a CUDA device the copy is asynchronous (pinned staging buffer, ``non_blocking=True``);
    on the CPU (or ``device=None``) it is ``tensor.to(dtype=dtype)``, without a copy when
    nothing changes. The values are identical either way.
    """
    import torch

    if dtype is not None:
        tensor = tensor.to(dtype=dtype)
    if device is None:
        return tensor
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
