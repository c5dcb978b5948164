"""Training of VTN cascades and VoxelMorph-2 (``vtn train``).

Recipe (paper Sec. V-A, reference-facts §5): Adam (beta 0.9/0.999, eps 1e-8), batches of image
pairs drawn from all ordered pairs ``(i, j), i != j`` of the training subjects (one shuffled list
per pass), learning rate ``lr`` halving every epoch from the schedule's first halved epoch on
(:func:`vtn.schedule.learning_rate`, reading ``lr_schedule``), random B-spline augmentation of the moving image (:mod:`vtn.augment`),
the VTN loss of :mod:`vtn.losses` (``+inv`` variants: the model also runs on the swapped pair and
the invertibility term compares both flows).

Reproducibility: every random choice is a pure function of ``(seed, step)`` -- the pair order of
pass ``p`` is ``numpy.random.default_rng([seed, 1, p]).permutation``, the augmentation of step
``s`` uses a CPU :class:`torch.Generator` seeded from ``(seed, 2, s)`` (:mod:`vtn.train.data`) --
and the weights are initialised after ``torch.manual_seed(seed)``. A run resumed from a periodic
checkpoint (model, Adam state, step, RNG states; :mod:`vtn.train.checkpoint`) therefore ends with
bitwise the same weights as an unbroken run on the same device and thread count (on CUDA only up
to the non-determinism of some backward kernels, e.g. ``grid_sample``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vtn.device import describe_device, gpu_memory, resolve_device, to_device
from vtn.io import InputError, atomic_write
from vtn.progress import Progress, logger
from vtn.schedule import learning_rate
from vtn.train.checkpoint import (latest_checkpoint, load_checkpoint, make_checkpoint,
                                  periodic_path, prune, save_checkpoint, set_rng_state)
from vtn.train.config import RESUME_FREE, TrainConfig, load_config
from vtn.train.data import PairSchedule, augment_generator, load_subjects, load_targets
from vtn.train.probe import ProbeSet, probe_steps

__all__ = ["TrainingDiverged", "NonFiniteLossError", "LossExplodedError", "START_STEPS",
           "TrainingInterrupted", "INTERRUPT_SIGNALS", "EXIT_INTERRUPTED",
           "build_from_config", "CsvLog", "train", "cli"]

#: signals that stop a training after the current step with a checkpoint (SLURM sends SIGTERM
#: at the time limit and on pre-emption, then SIGKILL after KillWait/GraceTime; SIGUSR1 for
#: sites that ask for an early warning with ``--signal``; SIGINT is Ctrl-C)
INTERRUPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: exit status of ``vtn train`` stopped by a signal after writing its checkpoint (EX_TEMPFAIL)
EXIT_INTERRUPTED = 75


#: steps whose mean total loss is the divergence check's reference (``divergence_factor``)
START_STEPS = 10


class TrainingDiverged(RuntimeError):
    """Training stopped because it diverged; the message names the step, the loss terms and the
    last checkpoint (written before the divergence was seen)."""


class NonFiniteLossError(TrainingDiverged):
    """The loss (or, at a checkpoint, a parameter) became NaN/Inf."""


class LossExplodedError(TrainingDiverged):
    """The loss stayed finite but rose far above its start (config key ``divergence_factor``)."""


class TrainingInterrupted(RuntimeError):
    """A signal stopped training; a checkpoint of the current step was written first."""

    def __init__(self, message: str, checkpoint: Path):
        super().__init__(message)
        self.checkpoint = checkpoint


def build_from_config(cfg: TrainConfig):
    """Model and loss of a training config.

    Returns:
        ``(model, loss_module)``; the model is built with the current torch RNG state.
    """
    from vtn import losses, networks

    try:
        if cfg.type == "vtn":
            model = networks.build_cascade(cfg.cascade, cfg.image_size, **cfg.network_options())
        else:
            model = networks.build_model({"type": "voxelmorph2", "image_size": cfg.image_size,
                                          **cfg.network_options()})
    except (ValueError, TypeError) as exc:
        raise InputError(f"config: cannot build the network: {exc}") from exc
    if cfg.type != "vtn":
        return model, losses.VoxelMorphLoss(reg_weight=float(cfg.reg_weight))
    try:
        loss = losses.VTNLoss(cfg.cascade, weights=cfg.loss_weights,
                              inv_weight=float(cfg.inv_weight),
                              inv_reverse_terms=cfg.inv_reverse_terms)
    except ValueError as exc:
        raise InputError(f"config: bad loss settings: {exc}") from exc
    return model, loss


# ----------------------------------------------------------------------------------------------
# log
# ----------------------------------------------------------------------------------------------


class CsvLog:
    """Per-step CSV log ``step,epoch,lr,seconds,total,<terms...>[,probe]``, flushed at every
    row."""

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


class _Signals:
    """Record :data:`INTERRUPT_SIGNALS` instead of dying (``received``: the first one's name);
    the previous handlers come back on exit. Only the main thread can install handlers:
    elsewhere nothing is installed."""

    def __init__(self):
        self.received = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in INTERRUPT_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


@dataclass
class _StepLoss:
    """The loss of a completed step, still on the device (``values``: ``[total, *terms]``)."""

    step: int
    epoch: int
    lr: float
    seconds: float
    names: list
    values: torch.Tensor
    probe: float | None = None


@dataclass
class _Run:
    """A training run: its config, data, model, optimiser and progress."""

    cfg: TrainConfig
    dev: torch.device
    fast: bool
    ids: list
    images: torch.Tensor
    targets: torch.Tensor | None
    schedule: PairSchedule
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    opt: torch.optim.Optimizer
    forward: object
    criterion: object
    ckpt_dir: Path
    probe: ProbeSet | None = None
    probe_at: frozenset = frozenset()
    step: int = 0
    elapsed: float = 0.0
    last_ckpt: Path | None = None
    pending: list = field(default_factory=list)
    last_losses: dict = field(default_factory=dict)
    loss_start: list = field(default_factory=list)

    def checkpoint(self, finished: bool) -> dict:
        return make_checkpoint(self.model, self.opt, self.cfg, self.ids, self.step, self.elapsed,
                               finished, self.loss_start)


def _start(cfg: TrainConfig, subject_csvs, dev, targets, target_pairs, ckpt_dir: Path) -> _Run:
    """Load the data, seed every generator, build model, loss and optimiser."""
    fast = (cfg.fast if cfg.fast is not None else True) and dev.type == "cuda"
    if isinstance(subject_csvs, (str, Path)):
        subject_csvs = [subject_csvs]
    ids, images = load_subjects(subject_csvs, cfg.image_size)
    target_flows = None
    if cfg.supervised:
        pairs, target_flows = load_targets(ids, targets, target_pairs, cfg.image_size)
        schedule = PairSchedule(None, cfg.seed, pairs=pairs)
    else:
        schedule = PairSchedule(len(ids), cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model, loss_fn = build_from_config(cfg)
    model.to(dev)
    if fast:
        model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    # the compiled module shares the parameters; checkpoints are taken from ``model``. The loss
    # is compiled too, so that its element-wise terms (CC, TV, invertibility) fuse into few kernels.
    forward = torch.compile(model) if cfg.compile else model
    criterion = torch.compile(loss_fn) if cfg.compile else loss_fn
    probe, probe_at = None, frozenset()
    if cfg.probe_pairs > 0:
        probe = ProbeSet(images, schedule, cfg.probe_pairs, cfg.seed, cfg.augment, target_flows)
        probe_at = probe_steps(cfg.total_steps, cfg.checkpoint_every)
    return _Run(cfg, dev, fast, ids, images, target_flows, schedule, model, loss_fn, opt,
                forward, criterion, ckpt_dir, probe, probe_at)


def _resume(run: _Run, log) -> None:
    """Continue from the latest periodic checkpoint of ``run.ckpt_dir``, if there is one."""
    latest = latest_checkpoint(run.ckpt_dir)
    run.last_ckpt = latest
    if latest is None:
        return
    ckpt = load_checkpoint(latest)
    old = {k: v for k, v in ckpt["train_config"].items() if k not in RESUME_FREE}
    new = {k: v for k, v in run.cfg.as_dict().items() if k not in RESUME_FREE}
    if old != new or ckpt["subjects"] != run.ids:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise InputError(f"{latest}: checkpoint of a different run (config keys {diff} or "
                         "the subject list differ); remove it or use another --ckpt-dir")
    run.model.load_state_dict(ckpt["model_state"])
    run.opt.load_state_dict(ckpt["optimizer_state"])
    run.step, run.elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
    run.loss_start = list(ckpt.get("loss_start", []))
    set_rng_state(ckpt["rng"])
    log(f"resuming from {latest} (step {run.step})")


def _batch(run: _Run):
    """``(fixed, moving, target or None)`` of the current step, on the device."""
    cfg, dev = run.cfg, run.dev
    fi, mi, numbers = run.schedule(run.step * cfg.batch, cfg.batch)
    index = torch.tensor([fi, mi, numbers], dtype=torch.long)
    if run.images.device.type == dev.type:  # data already on the device: index it there
        index = to_device(index, dev)
    fixed = to_device(run.images[index[0]], dev)
    moving = to_device(run.images[index[1]], dev)
    target = to_device(run.targets[index[2]], dev) if run.targets is not None else None
    if cfg.augment:
        from vtn.augment import augment_moving

        moving = augment_moving(moving, generator=augment_generator(cfg.seed, run.step))["moving"]
    return _prepare(run, fixed), _prepare(run, moving), target


def _prepare(run: _Run, t: torch.Tensor) -> torch.Tensor:
    """``t`` on the run's device, channels-last in fast mode."""
    t = to_device(t, run.dev)
    return t.contiguous(memory_format=torch.channels_last_3d) if run.fast else t


def _loss(run: _Run, fixed, moving, target):
    """``(total, terms)``: the training loss of a batch with the current weights."""
    out_fw = run.forward(fixed, moving)
    out_rev = run.forward(moving, fixed) if run.cfg.inv_weight > 0 else None
    if run.cfg.type == "vtn":
        return run.criterion(out_fw, fixed, out_reverse=out_rev, target=target)
    return run.criterion(out_fw, fixed)


def _probe(run: _Run, autocast) -> float:
    """The probe loss (:mod:`vtn.train.probe`) of the current weights."""
    run.model.eval()
    try:
        with autocast:
            return run.probe.loss(lambda f, m, t: _loss(run, f, m, t)[0].float(),
                                  run.cfg.batch, lambda t: _prepare(run, t))
    finally:
        run.model.train()


def _step(run: _Run, autocast) -> None:
    """One optimisation step; its loss is queued in ``run.pending`` (no host synchronisation)."""
    cfg = run.cfg
    t0 = time.perf_counter()
    epoch = run.step // cfg.iterations
    lr = learning_rate(epoch, cfg.lr, cfg.lr_schedule, cfg.lr_halve_after)
    for group in run.opt.param_groups:
        group["lr"] = lr
    fixed, moving, target = _batch(run)
    with autocast:
        loss, terms = _loss(run, fixed, moving, target)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.step += 1
    run.elapsed += time.perf_counter() - t0
    names = list(terms)
    run.pending.append(_StepLoss(run.step, epoch, lr, run.elapsed, names,
                                 torch.stack([loss.detach().float()]
                                             + [terms[n].float() for n in names])))


def _check_divergence(run: _Run, p: _StepLoss, vals: list) -> None:
    """Raise :class:`LossExplodedError` when the total loss ``vals[0]`` of step ``p`` exceeds
    ``start + divergence_factor * max(|start|, 0.01)``, ``start`` being the mean total loss of the
    run's first :data:`START_STEPS` steps. In the healthy runs of the 32³ and 64³ studies the loss
    never rose above its start by more than 3.3 times ``max(|start|, 0.01)``; the runs of the 64³
    study that diverged at lr 1e-3 passed 100 times at steps 122-262 of 660 (docs/reproduction.md).
    """
    if len(run.loss_start) < START_STEPS:
        run.loss_start.append(vals[0])
        return
    factor = run.cfg.divergence_factor
    start = sum(run.loss_start) / len(run.loss_start)
    if factor > 0 and vals[0] > start + factor * max(abs(start), 0.01):
        terms = ", ".join(f"{n} {v:.4g}" for n, v in zip(p.names, vals[1:]))
        raise LossExplodedError(
            f"step {p.step}: the loss diverged: total {vals[0]:.4g} ({terms}) against "
            f"{start:.4g} over steps 1-{START_STEPS} (limit: divergence_factor "
            f"{factor:g}); training stopped -- lower the learning rate (config key 'lr'), or "
            f"set divergence_factor 0 to train on. Last good checkpoint: "
            f"{run.last_ckpt or 'none written yet'}")


def _flush(run: _Run, stop: int, csv_log: CsvLog, tb) -> None:
    """Read the queued losses on the host (the only synchronisation of the loop), stop on a
    non-finite or diverged one (:func:`_check_divergence`), and write their log rows."""
    if not run.pending:
        return
    t_wait = time.perf_counter()
    values = torch.stack([p.values for p in run.pending]).cpu().tolist()
    run.elapsed += time.perf_counter() - t_wait  # the GPU work still queued when we asked
    block = list(run.pending)
    run.pending.clear()
    for k, (p, vals) in enumerate(zip(block, values)):
        if not all(math.isfinite(v) for v in vals):
            bad = {n: v for n, v in zip(p.names, vals[1:]) if not math.isfinite(v)}
            raise NonFiniteLossError(
                f"step {p.step}: the loss is not finite (total={vals[0]}; non-finite "
                f"terms: {bad or 'none -- the weighted sum overflowed'}); training stopped. "
                f"Last good checkpoint: {run.last_ckpt or 'none written yet'}")
        _check_divergence(run, p, vals)
        if p.step % run.cfg.log_every == 0 or p.step == stop or p.probe is not None:
            row = {"step": p.step, "epoch": p.epoch, "lr": p.lr,
                   "seconds": round(run.elapsed if k == len(block) - 1 else p.seconds, 4),
                   "total": vals[0]}
            row.update(zip(p.names, vals[1:]))
            if run.probe is not None:
                row["probe"] = "" if p.probe is None else p.probe
            csv_log.write(row)
            if tb is not None:
                for key, v in row.items():
                    if key not in ("step", "epoch") and v != "":
                        tb.add_scalar(key, v, p.step)
    run.last_losses = dict(zip(["total", *block[-1].names], values[-1]), lr=block[-1].lr)


def _save_periodic(run: _Run) -> None:
    """Write the periodic checkpoint of ``run.step`` (after checking the parameters) and prune."""
    bad = [n for n, p in run.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLossError(
            f"step {run.step}: the loss was finite but parameters became NaN/Inf "
            f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); training "
            f"stopped. Last good checkpoint: {run.last_ckpt or 'none written yet'}")
    run.last_ckpt = save_checkpoint(periodic_path(run.ckpt_dir, run.step),
                                    run.checkpoint(finished=False))
    prune(run.ckpt_dir, run.cfg.keep_checkpoints)


def train(subject_csvs, config, out, log, device: str = "auto", targets=None,
          target_pairs=None, ckpt_dir=None, *, max_steps: int | None = None) -> Path:
    """Train a model; resume automatically from the latest checkpoint in ``ckpt_dir``.

    Args:
        subject_csvs: preprocessed ``subjects.csv`` files (images float32 ``S^3``); training uses
            the union of their subjects.
        config: training config (YAML path, dict or :class:`TrainConfig`).
        out: final checkpoint path.
        log: CSV log path (``step,epoch,lr,seconds,total,<loss terms>``, and ``probe``: the
            loss of the fixed probe pairs at the probe steps, :mod:`vtn.train.probe`).
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
        LossExplodedError: the loss rose above ``divergence_factor`` times its start (idem).
        TrainingInterrupted: SIGTERM/SIGINT/SIGUSR1 arrived; the step under way was finished and
            checkpointed (a later call resumes from it, ending with the same weights).
    """
    cfg = load_config(config)
    out, log = Path(out), Path(log)
    ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else out.parent / "ckpt"
    say = logger("vtn train")
    dev = resolve_device(device, log=say)
    run = _start(cfg, subject_csvs, dev, targets, target_pairs, ckpt_dir)
    _resume(run, say)
    stop = cfg.total_steps if max_steps is None else min(int(max_steps), cfg.total_steps)
    if run.dev.type == "cuda" and run.images.numel() * 4 < 8 * 2**30:
        run.images = run.images.to(run.dev)
        run.targets = run.targets.to(run.dev) if run.targets is not None else None
    what = f"{cfg.type} {cfg.cascade}" if cfg.type == "vtn" else cfg.type
    say(f"device {describe_device(run.dev)}; {what} at {cfg.image_size}^3, "
        f"{len(run.ids)} subjects, batch {cfg.batch}, steps {run.step}/{stop}"
        + (f" (of {cfg.total_steps})" if stop < cfg.total_steps else "")
        + ("; bf16 autocast + channels_last" if run.fast else ""))

    # The running log lives beside the checkpoints (a workflow manager deletes the declared
    # outputs of a killed job, and the resumed run must continue the full history); it is
    # copied to ``log`` whenever training returns.
    run_log = ckpt_dir / "train_log.csv"
    csv_log = CsvLog(run_log, run.step)
    tb = _tensorboard(log)
    progress = Progress(stop, start=run.step)
    run.model.train()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.fast
                else contextlib.nullcontext())
    # Losses are read on the host every ``sync_every`` steps, at every progress line and before
    # every checkpoint, so no checkpoint is ever written after a non-finite or diverged loss.
    sync_every = cfg.sync_every or (50 if run.dev.type == "cuda" else 1)
    try:
        with _Signals() as signals:
            while run.step < stop:
                _step(run, autocast)
                probe_now = run.probe is not None and run.step in run.probe_at
                if probe_now:
                    run.pending[-1].probe = _probe(run, autocast)
                checkpoint_now = run.step % cfg.checkpoint_every == 0 or run.step == stop
                progress_now = run.step % cfg.progress_every == 0 or run.step == stop
                interrupted = signals.received is not None and run.step < stop
                if (checkpoint_now or progress_now or interrupted or probe_now
                        or run.step % sync_every == 0):
                    _flush(run, stop, csv_log, tb)
                if checkpoint_now or interrupted:
                    _save_periodic(run)
                if progress_now or interrupted:
                    say(_progress_line(run, progress))
                if interrupted:
                    raise TrainingInterrupted(
                        f"stopped by {signals.received} after step {run.step}/{stop}; checkpoint "
                        f"{run.last_ckpt} written; run again to resume from it", run.last_ckpt)
    finally:
        csv_log.close()
        with atomic_write(log) as tmp_log:
            shutil.copyfile(run_log, tmp_log)
        if tb is not None:
            tb.close()
    if run.step < cfg.total_steps:
        return run.last_ckpt if run.last_ckpt is not None else periodic_path(ckpt_dir, run.step)
    save_checkpoint(out, run.checkpoint(finished=True))
    say(f"finished {run.step} steps in {run.elapsed:.0f} s of training; wrote {out}")
    return out


def _progress_line(run: _Run, progress: Progress) -> str:
    """``step 1200/100000 steps (1.2%), 3.41 steps/s, ETA 8h03m | loss 0.12 (sim_0 -0.91, ...)
    | lr 1e-04 | GPU mem ...`` (losses of the last flushed step)."""
    losses = dict(run.last_losses)
    total, lr = losses.pop("total", float("nan")), losses.pop("lr", float("nan"))
    terms = ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
    parts = [f"step {progress.status(run.step)}", f"loss {total:.4g} ({terms})", f"lr {lr:.3g}"]
    mem = gpu_memory(run.dev)
    return " | ".join(parts + ([mem] if mem else []))


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
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(line_buffering=True)
    try:
        path = train(args.subjects, args.config, args.out, args.log, device=args.device,
                     targets=args.targets, target_pairs=args.target_pairs,
                     ckpt_dir=args.ckpt_dir, max_steps=args.max_steps)
    except TrainingInterrupted as exc:
        print(f"vtn train: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InputError, TrainingDiverged) as exc:
        print(f"vtn train: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
