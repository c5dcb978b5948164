"""The probe: the loss of one fixed set of training pairs, measured at set steps of a run.

Why: the logged loss of a step is that step's batch, and batches differ more than consecutive
weights do. The plateau check (:mod:`vtn.report.convergence`) compares the last 10 % of a run
with the 10 % before; when the pairs and augmentations drawn in one window happen to be easier,
the log reads as learning. In the 64³ brain study (docs/reproduction.md) the last window's pairs
and augmentations were 5.6 % easier before registration (mean 1 - CC of fixed and augmented
moving image) than the previous window's, and the logged loss "fell" by 5.9 %. The probe removes
that: the same ``K`` pairs, each with the same augmentation, are evaluated with the weights of
different steps, a paired comparison whose only change is the weights.

Probe set of a run with seed ``s``: ``K = min(probe_pairs, P)`` distinct pair numbers drawn by
``numpy.random.default_rng([s, 3]).choice(P, K, replace=False)`` from the run's ``P`` pairs
(:class:`vtn.train.data.PairSchedule`), the moving image of probe pair ``k`` augmented (when the
run augments) with the generator seeded from ``(s, 4, k)``. The probe loss is the mean over the
``K`` pairs of the training loss (the same terms and weights, forward and, for "+ inv", reverse
pass), evaluated without gradients in batches of the run's ``batch``.

Probe steps (:func:`probe_steps`): every checkpoint step, and the first step of the last 10 % of
the run, ``T - ceil(T / 10)`` (the plateau check compares that step with the last, ``T``). The
values go into the ``probe`` column of the training log (empty on the other rows).
"""

from __future__ import annotations

import numpy as np
import torch

from vtn.report.convergence import last_window_start
from vtn.train.data import PROBE_AUGMENT_STREAM, PROBE_PAIR_STREAM, seeded_generator

__all__ = ["probe_steps", "probe_numbers", "ProbeSet"]


def probe_steps(total: int, checkpoint_every: int) -> frozenset:
    """Steps (1-based, completed steps) after which the probe is measured.

    Args:
        total: the run's steps ``T`` (>= 1).
        checkpoint_every: steps between periodic checkpoints (>= 1).

    Returns:
        every multiple of ``checkpoint_every`` up to ``T``, the start of the plateau check's
        last window (:func:`vtn.report.convergence.last_window_start`, when >= 1) and ``T``.
    """
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    steps = set(range(checkpoint_every, total + 1, checkpoint_every)) | {total}
    start = last_window_start(total)
    if start >= 1:
        steps.add(start)
    return frozenset(steps)


def probe_numbers(size: int, count: int, seed: int) -> list:
    """The pair numbers of the probe: ``min(count, size)`` distinct numbers in ``[0, size)``."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rng = np.random.default_rng([int(seed), PROBE_PAIR_STREAM])
    return [int(v) for v in rng.choice(size, size=min(int(count), size), replace=False)]


class ProbeSet:
    """The probe pairs of a run, built once (images on the CPU, augmented once).

    Args:
        images: ``(N, 1, S, S, S)`` training images.
        schedule: the run's :class:`vtn.train.data.PairSchedule` (pair numbers -> subjects).
        count: ``probe_pairs`` of the config (>= 1).
        seed: the run's seed.
        augment: whether the run augments the moving image.
        targets: ``(P, 3, S, S, S)`` supervised target flows (indexed by pair number), or None.
    """

    def __init__(self, images: torch.Tensor, schedule, count: int, seed: int, augment: bool,
                 targets: torch.Tensor | None = None):
        self.numbers = probe_numbers(schedule.size, count, seed)
        pairs = [schedule.pair(n) for n in self.numbers]
        self.fixed = images[[f for f, _ in pairs]].cpu()
        moving = images[[m for _, m in pairs]].cpu()
        if augment:
            from vtn.augment import augment_moving

            moving = torch.cat([
                augment_moving(moving[k:k + 1],
                               generator=seeded_generator(seed, PROBE_AUGMENT_STREAM, k))["moving"]
                for k in range(len(self.numbers))])
        self.moving = moving
        self.targets = None if targets is None else targets[self.numbers].cpu()

    def __len__(self) -> int:
        return len(self.numbers)

    def loss(self, loss_of, batch: int, prepare=lambda t: t) -> float:
        """Mean training loss over the probe pairs.

        Args:
            loss_of: ``(fixed, moving, target or None) -> scalar tensor``, the batch-mean total
                loss of the current weights (called under ``torch.no_grad``).
            batch: pairs per call.
            prepare: applied to each tensor before the call (device, memory format).
        """
        total, n = 0.0, len(self)
        with torch.no_grad():
            for a in range(0, n, batch):
                b = min(a + batch, n)
                target = None if self.targets is None else prepare(self.targets[a:b])
                value = loss_of(prepare(self.fixed[a:b]), prepare(self.moving[a:b]), target)
                total += float(value) * (b - a)
        return total / n
