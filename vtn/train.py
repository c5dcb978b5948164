"""Training of VTN cascades and VoxelMorph-2 (``vtn train``).

Recipe (paper Sec. V-A, reference-facts §5): Adam (beta 0.9/0.999, eps 1e-8), batches of image
pairs drawn from all ordered pairs ``(i, j), i != j`` of the training subjects (one shuffled list
per pass), learning rate ``lr`` halving every epoch after the ``lr_halve_after``-th
(:func:`learning_rate`), random B-spline augmentation of the moving image (:mod:`vtn.augment`),
the VTN loss of :mod:`vtn.losses` (``+inv`` variants: the model also runs on the swapped pair and
the invertibility term compares both flows).

Reproducibility: every random choice is a pure function of ``(seed, step)`` -- the pair order of
pass ``p`` is ``numpy.random.default_rng([seed, 1, p]).permutation``, the augmentation of step
``s`` uses a CPU :class:`torch.Generator` seeded from ``(seed, 2, s)`` -- and the weights are
initialised after ``torch.manual_seed(seed)``. A run resumed from a periodic checkpoint (model,
Adam state, step, RNG states) therefore ends with bitwise the same weights as an unbroken run on
the same device and thread count (on CUDA only up to the non-determinism of some backward
kernels, e.g. ``grid_sample``).

Checkpoint format (a plain dict, loadable with ``torch.load(weights_only=True)``): see
:data:`CHECKPOINT_KEYS`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import random
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from vtn.device import to_device
from vtn.io import InputError, atomic_write, load_disp_l2r, load_volume, read_pairs, read_subjects

__all__ = [
    "CHECKPOINT_KEYS",
    "DEFAULT_CONFIG",
    "NonFiniteLossError",
    "learning_rate",
    "load_config",
    "build_from_config",
    "PairSchedule",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "train",
    "cli",
]

CHECKPOINT_FORMAT = "vtn-checkpoint/1"

#: keys of every checkpoint written by :func:`train` (periodic and final)
CHECKPOINT_KEYS = (
    "format",          # CHECKPOINT_FORMAT
    "model_config",    # dict for vtn.networks.build_model
    "model_state",     # model.state_dict()
    "optimizer_state",  # torch.optim.Adam.state_dict()
    "step",            # number of completed optimisation steps
    "epoch",           # epoch index of the last completed step (step - 1) // iterations
    "elapsed",         # seconds of training wall time up to this checkpoint (all sessions)
    "finished",        # True in the final checkpoint (step == epochs * iterations)
    "train_config",    # the validated training config (dict)
    "subjects",        # list of training subject ids (in load order)
    "rng",             # {"torch_cpu", "torch_cuda", "numpy", "python"}
    "versions",        # {"torch", "vtn"}
)

#: training config keys and defaults (``None``: decided at run time / the network's default)
DEFAULT_CONFIG: dict = {
    "name": "",                 # free text, for the logs
    "type": "vtn",              # "vtn" | "voxelmorph2"
    "cascade": "ADDD",          # A?D+ (vtn only)
    "image_size": 128,
    "epochs": 5,
    "iterations": 20000,        # optimisation steps per epoch
    "batch": 8,                 # image pairs per step
    "lr": 1e-4,
    "lr_halve_after": 4,        # epoch index e >= this: lr * 0.5 ** (e - lr_halve_after + 1)
    "seed": 0,
    "augment": True,
    "inv_weight": 0.0,          # 1e-3 for the "+inv" variants
    "loss_weights": None,       # list of per-subnet dicts (vtn.losses.default_weights format)
    "supervised": False,        # endpoint-error training on --targets/--target-pairs
    #                             (implies augment: false)
    "reg_weight": 1.0,          # voxelmorph2 smoothness weight
    "checkpoint_every": 1000,   # steps
    "keep_checkpoints": 2,      # periodic checkpoints kept in ckpt_dir
    "log_every": 1,             # steps between CSV log rows
    "sync_every": None,         # steps between host reads of the loss (NaN check, log rows,
    #                             progress bar); None: 1 on CPU, 50 on CUDA (no host
    #                             synchronisation inside a step)
    "fast": None,               # bf16 autocast + channels_last; default True on CUDA
    "compile": False,           # torch.compile the forward and the loss (inductor; fused kernels)
    # network options (passed to build_cascade / VoxelMorph2 when not None)
    "flow_multiplier": None,
    "flow_init_scale": None,
    "affine_final_size": None,
    "tf_same_padding": None,
    "channels": None,
    "affine_compose": None,
    "enc_nf": None,
    "dec_nf": None,
}

_TYPES = {
    "name": (str,), "type": (str,), "cascade": (str,), "image_size": (int,), "epochs": (int,),
    "iterations": (int,), "batch": (int,), "lr": (float, int), "lr_halve_after": (int,),
    "seed": (int,), "augment": (bool,), "inv_weight": (float, int), "loss_weights": (list,),
    "supervised": (bool,), "reg_weight": (float, int), "checkpoint_every": (int,),
    "keep_checkpoints": (int,), "log_every": (int,), "sync_every": (int,), "fast": (bool,),
    "compile": (bool,),
    "flow_multiplier": (float, int, str), "affine_final_size": (int,),
    "flow_init_scale": (float, int),
    "tf_same_padding": (bool,), "channels": (int,), "affine_compose": (str,),
    "enc_nf": (list,), "dec_nf": (list,),
}
_VTN_NET_KEYS = ("flow_multiplier", "affine_final_size", "tf_same_padding", "channels",
                 "affine_compose", "flow_init_scale")
_VM_NET_KEYS = ("tf_same_padding", "enc_nf", "dec_nf")
#: keys that may change between a checkpoint and the resumed run
_RESUME_FREE = {"name", "epochs", "checkpoint_every", "keep_checkpoints", "log_every",
                "sync_every", "fast", "compile"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; the message names the step, the terms and the last checkpoint."""


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------


def load_config(config, source: str = "config") -> dict:
    """Validate a training config and fill in defaults.

    Args:
        config: a dict, or the path of a YAML file holding one.
        source: name used in error messages when ``config`` is a dict.

    Returns:
        a new dict with every key of :data:`DEFAULT_CONFIG`.

    Raises:
        InputError: unknown key, wrong type or invalid value (the message names the file and key).
    """
    if isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        source = str(path)
        if not path.exists():
            raise InputError(f"{path}: config file not found")
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise InputError(f"{source}: the config must be a mapping of keys to values")
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise InputError(f"{source}: unknown config key(s) {unknown}; "
                         f"allowed: {sorted(DEFAULT_CONFIG)}")
    cfg = dict(DEFAULT_CONFIG)
    for key, val in config.items():
        if val is None:
            continue
        ok = _TYPES[key]
        if isinstance(val, str) and float in ok and str not in ok:
            try:  # PyYAML reads "1e-4" (no dot) as a string
                val = float(val)
            except ValueError:
                pass
        if isinstance(val, bool) and bool not in ok:
            raise InputError(f"{source}: key {key!r} must be {'/'.join(t.__name__ for t in ok)}, "
                             f"got {val!r}")
        if not isinstance(val, ok):
            raise InputError(f"{source}: key {key!r} must be {'/'.join(t.__name__ for t in ok)}, "
                             f"got {type(val).__name__} {val!r}")
        cfg[key] = float(val) if float in ok and isinstance(val, int) and str not in ok else val
    if cfg["type"] not in ("vtn", "voxelmorph2"):
        raise InputError(f"{source}: key 'type' must be 'vtn' or 'voxelmorph2', got {cfg['type']!r}")
    for key in ("image_size", "epochs", "iterations", "batch", "checkpoint_every",
                "keep_checkpoints", "log_every", "sync_every"):
        if cfg[key] is not None and cfg[key] < 1:
            raise InputError(f"{source}: key {key!r} must be >= 1, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise InputError(f"{source}: key 'lr' must be > 0, got {cfg['lr']}")
    if cfg["lr_halve_after"] < 0:
        raise InputError(f"{source}: key 'lr_halve_after' must be >= 0")
    if cfg["inv_weight"] < 0 or cfg["reg_weight"] < 0:
        raise InputError(f"{source}: keys 'inv_weight' and 'reg_weight' must be >= 0")
    if cfg["type"] == "voxelmorph2":
        if cfg["inv_weight"] > 0:
            raise InputError(f"{source}: key 'inv_weight' is only supported for type 'vtn'")
        if cfg["supervised"]:
            raise InputError(f"{source}: key 'supervised' is only supported for type 'vtn'")
        bad = [k for k in _VTN_NET_KEYS if k not in _VM_NET_KEYS and cfg[k] is not None]
        if bad or cfg["loss_weights"] is not None:
            raise InputError(f"{source}: key(s) {bad or ['loss_weights']} do not apply to "
                             "type 'voxelmorph2'")
    else:
        bad = [k for k in ("enc_nf", "dec_nf") if cfg[k] is not None]
        if bad:
            raise InputError(f"{source}: key(s) {bad} only apply to type 'voxelmorph2'")
    if cfg["supervised"] and cfg["augment"]:
        # the target displacements do not follow a random deformation of the moving image
        warnings.warn(f"{source}: 'supervised: true' trains without augmentation "
                      "('augment' set to false)", stacklevel=2)
        cfg["augment"] = False
    if cfg["loss_weights"] is not None:
        if not all(isinstance(w, dict) for w in cfg["loss_weights"]):
            raise InputError(f"{source}: key 'loss_weights' must be a list of mappings "
                             "(one per subnet)")
        if len(cfg["loss_weights"]) != len(cfg["cascade"]):
            raise InputError(f"{source}: key 'loss_weights' has {len(cfg['loss_weights'])} "
                             f"entries but cascade {cfg['cascade']!r} has {len(cfg['cascade'])} "
                             "subnets")
    return cfg


def build_from_config(cfg: dict):
    """Model and loss of a validated training config.

    Returns:
        ``(model, loss_module)``; the model is built with the current torch RNG state.
    """
    from vtn import losses, networks

    if cfg["type"] == "vtn":
        opts = {k: cfg[k] for k in _VTN_NET_KEYS if cfg[k] is not None}
        try:
            model = networks.build_cascade(cfg["cascade"], cfg["image_size"], **opts)
        except (ValueError, TypeError) as exc:
            raise InputError(f"config: cannot build the network: {exc}") from exc
        try:
            loss = losses.VTNLoss(cfg["cascade"], weights=cfg["loss_weights"],
                                  inv_weight=float(cfg["inv_weight"]))
        except ValueError as exc:
            raise InputError(f"config: bad loss settings: {exc}") from exc
    else:
        mcfg = {"type": "voxelmorph2", "image_size": cfg["image_size"]}
        mcfg.update({k: cfg[k] for k in _VM_NET_KEYS if cfg[k] is not None})
        try:
            model = networks.build_model(mcfg)
        except (ValueError, TypeError) as exc:
            raise InputError(f"config: cannot build the network: {exc}") from exc
        loss = losses.VoxelMorphLoss(reg_weight=float(cfg["reg_weight"]))
    return model, loss


def learning_rate(epoch: int, base_lr: float, halve_after: int) -> float:
    """Learning rate of epoch index ``epoch`` (0-based).

    Constant ``base_lr`` for ``epoch < halve_after``, then halving every epoch:
    ``base_lr * 0.5 ** (epoch - halve_after + 1)`` (paper: "halves every epoch after the 4th",
    ``halve_after = 4``: epochs 0-3 at 1e-4, epoch 4 at 5e-5, epoch 5 at 2.5e-5).
    """
    if epoch < halve_after:
        return float(base_lr)
    return float(base_lr) * 0.5 ** (epoch - halve_after + 1)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def _load_subjects(subject_csvs, size: int):
    """All training images of the union of subject tables as one ``(N, 1, S, S, S)`` tensor."""
    ids, arrays = [], []
    for csv_path in subject_csvs:
        for row in read_subjects(csv_path):
            data, _ = load_volume(row["image"])
            if data.shape != (size, size, size):
                raise InputError(f"{row['image']}: image of shape {data.shape}, but the config's "
                                 f"image_size is {size} (listed in {csv_path})")
            ids.append(row["subject"])
            arrays.append(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)))
    if len(arrays) < 2:
        raise InputError(f"{', '.join(map(str, subject_csvs))}: training needs at least 2 "
                         f"subjects, found {len(arrays)}")
    return ids, torch.stack(arrays).unsqueeze(1)


def _load_targets(ids, targets_dir, pairs_csv, size: int):
    """Pairs ``[(fixed index, moving index)]`` and their target flows ``(P, 3, S, S, S)``."""
    if targets_dir is None or pairs_csv is None:
        raise InputError("supervised training needs --targets DIR and --target-pairs CSV")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"supervised training needs unique subject ids across the subject "
                         f"tables; duplicated: {dup}")
    index = {s: k for k, s in enumerate(ids)}
    pairs, flows = [], []
    for f, m in read_pairs(pairs_csv):
        for s in (f, m):
            if s not in index:
                raise InputError(f"{pairs_csv}: subject {s!r} is not in the training subjects")
        path = Path(targets_dir) / f"disp_{f}_{m}.nii.gz"
        flow, _ = load_disp_l2r(path)
        if flow.shape != (3, size, size, size):
            raise InputError(f"{path}: displacement of shape {flow.shape}, expected "
                             f"{(3, size, size, size)}")
        pairs.append((index[f], index[m]))
        flows.append(torch.from_numpy(flow))
    if not pairs:
        raise InputError(f"{pairs_csv}: no pairs listed")
    return pairs, torch.stack(flows)


class PairSchedule:
    """The stream of training pairs, a pure function of ``(seed, position)``.

    Position ``q`` (0-based, over the whole run) falls in pass ``p = q // P`` (``P`` pairs per
    pass); pass ``p`` visits the pairs in the order ``default_rng([seed, 1, p]).permutation(P)``.
    Unsupervised pairs are all ordered pairs ``(i, j), i != j`` of ``n`` subjects; pair number
    ``r`` is ``i = r // (n - 1)``, ``j = r % (n - 1)`` (skipping ``i``).

    Args:
        n: number of subjects (unsupervised) -- or ``None`` with ``pairs`` given.
        seed: the run's seed.
        pairs: explicit list of ``(fixed, moving)`` index pairs (supervised training).
    """

    def __init__(self, n: int | None, seed: int, pairs=None):
        self.seed = int(seed)
        self.pairs = None if pairs is None else list(pairs)
        self.n = n
        self.size = len(self.pairs) if self.pairs is not None else n * (n - 1)
        self._pass = None
        self._perm = None

    def _pair(self, r: int):
        if self.pairs is not None:
            return self.pairs[r]
        i, j = divmod(r, self.n - 1)
        return i, j + (j >= i)

    def __call__(self, start: int, count: int):
        """Pairs at positions ``start .. start + count - 1``.

        Returns:
            three lists: fixed subject indices, moving subject indices, pair numbers (index
            into ``pairs`` when given).
        """
        fixed, moving, numbers = [], [], []
        for q in range(start, start + count):
            p, r = divmod(q, self.size)
            if p != self._pass:
                self._perm = np.random.default_rng([self.seed, 1, p]).permutation(self.size)
                self._pass = p
            number = int(self._perm[r])
            i, j = self._pair(number)
            fixed.append(i)
            moving.append(j)
            numbers.append(number)
        return fixed, moving, numbers


def _augment_generator(seed: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), 2, int(step)]).generate_state(2, np.uint32)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        if len(state["torch_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["torch_cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_checkpoint(path, ckpt: dict) -> Path:
    """``torch.save`` through :func:`vtn.io.atomic_write` (never a half-written file)."""
    with atomic_write(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`train` with ``torch.load(weights_only=True)``.

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


def _ckpt_name(step: int) -> str:
    return f"step{step:09d}.pt"


def latest_checkpoint(ckpt_dir):
    """The periodic checkpoint with the highest step in ``ckpt_dir`` (or ``None``)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = sorted(p for p in ckpt_dir.glob("step*.pt") if p.stem[4:].isdigit())
    return found[-1] if found else None


def _prune(ckpt_dir: Path, keep: int) -> None:
    found = sorted(p for p in ckpt_dir.glob("step*.pt") if p.stem[4:].isdigit())
    for p in found[:-keep]:
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# log
# ----------------------------------------------------------------------------------------------


class _CsvLog:
    """Per-step CSV log ``step,epoch,lr,seconds,total,<terms...>``, flushed at every row."""

    def __init__(self, path: Path, resume_step: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = None
        rows = []
        if resume_step > 0 and self.path.exists():
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = reader.fieldnames
                rows = [r for r in reader if r.get("step", "").isdigit()
                        and int(r["step"]) <= resume_step]
        self.fh = open(self.path, "w", newline="")
        self.writer = None
        if self.columns:
            self.writer = csv.DictWriter(self.fh, fieldnames=self.columns)
            self.writer.writeheader()
            self.writer.writerows(rows)
            self.fh.flush()

    def write(self, row: dict) -> None:
        if self.writer is None:
            self.columns = list(row)
            self.writer = csv.DictWriter(self.fh, fieldnames=self.columns)
            self.writer.writeheader()
        self.writer.writerow({k: row.get(k, "") for k in self.columns})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _tensorboard(log_path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: optional
        return None
    return SummaryWriter(str(log_path.parent / (log_path.stem + "_tensorboard")))


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA device without CUDA is an InputError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return dev


def train(subject_csvs, config, out, log, device: str = "auto", targets=None,
          target_pairs=None, ckpt_dir=None, *, max_steps: int | None = None) -> Path:
    """Train a model; resume automatically from the latest checkpoint in ``ckpt_dir``.

    Args:
        subject_csvs: preprocessed ``subjects.csv`` files (images float32 ``S^3``); training uses
            the union of their subjects.
        config: training config (YAML path or dict; keys in :data:`DEFAULT_CONFIG`).
        out: final checkpoint path.
        log: CSV log path (``step,epoch,lr,seconds,total,<loss terms>``).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        targets: folder of ``disp_<f>_<m>.nii.gz`` target fields (``supervised: true``).
        target_pairs: CSV ``fixed,moving`` of the supervised pairs.
        ckpt_dir: periodic checkpoints (default ``<out>.parent / "ckpt"``).
        max_steps: stop after this many completed steps (a checkpoint is written there and its
            path returned); a later call resumes. ``None``: train to the end.

    Returns:
        ``out`` once training is complete (else the periodic checkpoint written at ``max_steps``).

    Raises:
        InputError: bad config or input files.
        NonFiniteLossError: the loss became NaN/Inf (the periodic checkpoints are kept).
    """
    cfg = load_config(config)
    out = Path(out)
    log = Path(log)
    ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else out.parent / "ckpt"
    dev = resolve_device(device)
    fast = (cfg["fast"] if cfg["fast"] is not None else True) and dev.type == "cuda"

    if isinstance(subject_csvs, (str, Path)):
        subject_csvs = [subject_csvs]
    ids, images = _load_subjects(subject_csvs, cfg["image_size"])
    target_flows = None
    if cfg["supervised"]:
        pairs, target_flows = _load_targets(ids, targets, target_pairs, cfg["image_size"])
        schedule = PairSchedule(None, cfg["seed"], pairs=pairs)
    else:
        schedule = PairSchedule(len(ids), cfg["seed"])

    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    model, loss_fn = build_from_config(cfg)
    model.to(dev)
    if fast:
        model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    # the compiled module shares the parameters; checkpoints are taken from ``model``. The loss
    # is compiled too, so that its element-wise terms (CC, TV, invertibility) fuse into few kernels.
    forward = torch.compile(model) if cfg["compile"] else model
    criterion = torch.compile(loss_fn) if cfg["compile"] else loss_fn

    step, elapsed = 0, 0.0
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        ckpt = load_checkpoint(latest)
        old = {k: v for k, v in ckpt["train_config"].items() if k not in _RESUME_FREE}
        new = {k: v for k, v in cfg.items() if k not in _RESUME_FREE}
        if old != new or ckpt["subjects"] != ids:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise InputError(f"{latest}: checkpoint of a different run (config keys {diff} or "
                             "the subject list differ); remove it or use another --ckpt-dir")
        model.load_state_dict(ckpt["model_state"])
        opt.load_state_dict(ckpt["optimizer_state"])
        step, elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
        _set_rng_state(ckpt["rng"])
        print(f"vtn train: resuming from {latest} (step {step})", file=sys.stderr)

    total_steps = cfg["epochs"] * cfg["iterations"]
    stop = total_steps if max_steps is None else min(int(max_steps), total_steps)
    if dev.type == "cuda" and images.numel() * 4 < 8 * 2**30:
        images = images.to(dev)
        target_flows = target_flows.to(dev) if target_flows is not None else None

    def make_ckpt(at_step: int, finished: bool) -> dict:
        from vtn import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": dict(model.config),
            "model_state": {k: v.detach().to("cpu").contiguous()
                            for k, v in model.state_dict().items()},
            "optimizer_state": opt.state_dict(),
            "step": int(at_step),
            "epoch": int(max(at_step - 1, 0) // cfg["iterations"]),
            "elapsed": float(elapsed),
            "finished": bool(finished),
            "train_config": dict(cfg),
            "subjects": list(ids),
            "rng": _rng_state(),
            "versions": {"torch": str(torch.__version__), "vtn": str(__version__)},
        }

    # The running log lives beside the checkpoints (a workflow manager deletes the declared
    # outputs of a killed job, and the resumed run must continue the full history); it is
    # copied to ``log`` whenever training returns.
    run_log = ckpt_dir / "train_log.csv"
    csv_log = _CsvLog(run_log, step)
    tb = _tensorboard(log)
    try:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=step, file=sys.stderr, disable=not sys.stderr.isatty(),
                   desc="vtn train", dynamic_ncols=True)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None
    model.train()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if fast
                else contextlib.nullcontext())
    last_ckpt = latest
    sync_every = cfg["sync_every"] or (50 if dev.type == "cuda" else 1)
    # Losses of completed steps not yet read on the host: (step, epoch, lr, seconds, names,
    # values) with ``values`` a device tensor [total, *terms]. Reading them is the only host
    # synchronisation of the loop; it happens every ``sync_every`` steps and before every
    # checkpoint, so no checkpoint is ever written after a non-finite loss.
    pending: list = []

    def flush() -> None:
        nonlocal elapsed
        if not pending:
            return
        t_wait = time.perf_counter()
        values = torch.stack([p[5] for p in pending]).cpu().tolist()
        elapsed += time.perf_counter() - t_wait  # the GPU work still queued when we asked
        block = list(pending)
        pending.clear()
        for k, ((at, epoch, lr, seconds, names, _), vals) in enumerate(zip(block, values)):
            if not all(math.isfinite(v) for v in vals):
                bad = {n: v for n, v in zip(names, vals[1:]) if not math.isfinite(v)}
                raise NonFiniteLossError(
                    f"step {at}: the loss is not finite (total={vals[0]}; non-finite "
                    f"terms: {bad or 'none -- the weighted sum overflowed'}); training stopped. "
                    f"Last good checkpoint: {last_ckpt or 'none written yet'}")
            if at % cfg["log_every"] == 0 or at == stop:
                row = {"step": at, "epoch": epoch, "lr": lr,
                       "seconds": round(elapsed if k == len(block) - 1 else seconds, 4),
                       "total": vals[0]}
                row.update(zip(names, vals[1:]))
                csv_log.write(row)
                if tb is not None:
                    for key, v in row.items():
                        if key not in ("step", "epoch"):
                            tb.add_scalar(key, v, at)
        if bar is not None:
            bar.set_postfix(loss=f"{values[-1][0]:.4f}", lr=f"{block[-1][2]:.2e}")

    try:
        while step < stop:
            t0 = time.perf_counter()
            epoch = step // cfg["iterations"]
            lr = learning_rate(epoch, cfg["lr"], cfg["lr_halve_after"])
            for group in opt.param_groups:
                group["lr"] = lr
            fi, mi, numbers = schedule(step * cfg["batch"], cfg["batch"])
            index = torch.tensor([fi, mi, numbers], dtype=torch.long)
            if images.device.type == dev.type:  # data already on the device: index it there
                index = to_device(index, dev)
            fixed = to_device(images[index[0]], dev)
            moving = to_device(images[index[1]], dev)
            target = None
            if target_flows is not None:
                target = to_device(target_flows[index[2]], dev)
            if cfg["augment"]:
                from vtn.augment import augment_moving

                moving = augment_moving(moving, generator=_augment_generator(cfg["seed"], step))[
                    "moving"]
            if fast:
                fixed = fixed.contiguous(memory_format=torch.channels_last_3d)
                moving = moving.contiguous(memory_format=torch.channels_last_3d)
            with autocast:
                out_fw = forward(fixed, moving)
                out_rev = forward(moving, fixed) if cfg["inv_weight"] > 0 else None
                if cfg["type"] == "vtn":
                    loss, terms = criterion(out_fw, fixed, out_reverse=out_rev, target=target)
                else:
                    loss, terms = criterion(out_fw, fixed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed += time.perf_counter() - t0
            names = list(terms)
            pending.append((step, epoch, lr, elapsed, names,
                            torch.stack([loss.detach().float()]
                                        + [terms[n].float() for n in names])))
            if bar is not None:
                bar.update(1)
            checkpoint_now = step % cfg["checkpoint_every"] == 0 or step == stop
            if checkpoint_now or step % sync_every == 0:
                flush()
            if checkpoint_now:
                bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
                if bad:
                    raise NonFiniteLossError(
                        f"step {step}: the loss was finite but parameters became NaN/Inf "
                        f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); training "
                        f"stopped. Last good checkpoint: {last_ckpt or 'none written yet'}")
                last_ckpt = save_checkpoint(ckpt_dir / _ckpt_name(step), make_ckpt(step, False))
                _prune(ckpt_dir, cfg["keep_checkpoints"])
    finally:
        csv_log.close()
        with atomic_write(log) as tmp_log:
            shutil.copyfile(run_log, tmp_log)
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
    if step < total_steps:
        return last_ckpt if last_ckpt is not None else ckpt_dir / _ckpt_name(step)
    save_checkpoint(out, make_ckpt(step, True))
    return out


def cli(argv=None) -> int:
    """``vtn train --subjects CSV [CSV ...] --config model.yaml --out checkpoint.pt --log CSV``."""
    ap = argparse.ArgumentParser(prog="vtn train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", nargs="+", required=True, help="preprocessed subjects.csv files")
    ap.add_argument("--config", required=True, help="training config YAML")
    ap.add_argument("--out", required=True, help="final checkpoint (.pt)")
    ap.add_argument("--log", required=True, help="training log CSV")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--ckpt-dir", default=None, help="periodic checkpoints (default <out>/../ckpt)")
    ap.add_argument("--targets", default=None, help="folder of disp_<f>_<m>.nii.gz (supervised)")
    ap.add_argument("--target-pairs", default=None, help="fixed,moving CSV (supervised)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many steps (checkpointed; rerun to resume)")
    args = ap.parse_args(argv)
    try:
        path = train(args.subjects, args.config, args.out, args.log, device=args.device,
                     targets=args.targets, target_pairs=args.target_pairs,
                     ckpt_dir=args.ckpt_dir, max_steps=args.max_steps)
    except (InputError, NonFiniteLossError) as exc:
        print(f"vtn train: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
