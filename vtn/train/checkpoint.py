"""Checkpoints of :func:`vtn.train.train`: a plain dict (loadable with
``torch.load(weights_only=True)``) with the keys :data:`CHECKPOINT_KEYS`, written atomically;
periodic ones are ``<ckpt_dir>/step<NNNNNNNNN>.pt``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from vtn.io import InputError, atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_KEYS", "OPTIONAL_KEYS", "make_checkpoint",
           "save_checkpoint", "load_checkpoint", "latest_checkpoint", "periodic_path", "prune",
           "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = "vtn-checkpoint/1"

#: keys of every checkpoint written by :func:`vtn.train.train` (periodic and final)
CHECKPOINT_KEYS = (
    "format",          # CHECKPOINT_FORMAT
    "model_config",    # dict for vtn.networks.build_model
    "model_state",     # model.state_dict()
    "optimizer_state",  # torch.optim.Adam.state_dict()
    "step",            # number of completed optimisation steps
    "epoch",           # epoch index of the last completed step (step - 1) // iterations
    "elapsed",         # seconds of training wall time up to this checkpoint (all sessions)
    "finished",        # True in the final checkpoint (step == epochs * iterations)
    "train_config",    # the validated training config (dict, TrainConfig.as_dict())
    "subjects",        # list of training subject ids (in load order)
    "rng",             # {"torch_cpu", "torch_cuda", "numpy", "python"}
    "versions",        # {"torch", "vtn"}
)
#: keys written since (a checkpoint without them still loads): ``loss_start``, the total losses
#: of the run's first steps (at most :data:`vtn.train.loop.START_STEPS`; the divergence check's
#: reference)
OPTIONAL_KEYS = ("loss_start",)


def rng_state() -> dict:
    """Every random generator's state (torch CPU/CUDA, NumPy, Python) as tensors and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    """Restore the generators from :func:`rng_state`."""
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        if len(state["torch_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["torch_cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def make_checkpoint(model, optimizer, cfg, subjects, step: int, elapsed: float,
                    finished: bool, loss_start=()) -> dict:
    """The checkpoint dict of a run at ``step`` (``cfg``: its :class:`TrainConfig`;
    ``loss_start``: the total losses of its first steps)."""
    from vtn import __version__

    return {
        "format": CHECKPOINT_FORMAT,
        "model_config": dict(model.config),
        "model_state": {k: v.detach().to("cpu").contiguous()
                        for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict(),
        "step": int(step),
        "epoch": int(max(step - 1, 0) // cfg.iterations),
        "elapsed": float(elapsed),
        "finished": bool(finished),
        "train_config": cfg.as_dict(),
        "subjects": list(subjects),
        "rng": rng_state(),
        "versions": {"torch": str(torch.__version__), "vtn": str(__version__)},
        "loss_start": [float(v) for v in loss_start],
    }


def save_checkpoint(path, ckpt: dict) -> Path:
    """``torch.save`` through :func:`vtn.io.atomic_write` (never a half-written file)."""
    with atomic_write(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`vtn.train.train` with ``torch.load(weights_only=True)``.

    Raises:
        InputError: missing/unreadable file or not a vtn checkpoint (the message names it).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a vtn checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise InputError(f"{path}: checkpoint lacks keys {missing}")
    return ckpt


def periodic_path(ckpt_dir, step: int) -> Path:
    """Path of the periodic checkpoint of ``step`` in ``ckpt_dir``."""
    return Path(ckpt_dir) / f"step{step:09d}.pt"


def _periodic(ckpt_dir: Path) -> list:
    return sorted(p for p in ckpt_dir.glob("step*.pt") if p.stem[4:].isdigit())


def latest_checkpoint(ckpt_dir):
    """The periodic checkpoint with the highest step in ``ckpt_dir`` (or ``None``)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = _periodic(ckpt_dir)
    return found[-1] if found else None


def prune(ckpt_dir, keep: int) -> None:
    """Delete all but the ``keep`` latest periodic checkpoints of ``ckpt_dir``."""
    for p in _periodic(Path(ckpt_dir))[:-keep]:
        p.unlink(missing_ok=True)
