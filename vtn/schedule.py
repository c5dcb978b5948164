"""Learning-rate schedule of VTN training (paper Sec. V-A; reference-facts §5.1).

The paper: "learning rate is 10^-4 and halves every epoch after the 4th epoch", 5 epochs of
20,000 batches. Two readings, named by :data:`SCHEDULES`:

* ``"reference"`` (default) -- the authors' code (RCN ``train.py``: ``learningRates = [1e-4,
  1e-4, 1e-4, 1e-4 / 2, 1e-4 / 4, 1e-4 / 8, ...]`` indexed by ``step // 20000``): constant for
  epochs 0-2, halved from epoch 3 on: ``1e-4, 1e-4, 1e-4, 5e-5, 2.5e-5`` for the 5 epochs, then
  ``/8, /16, ...``;
* ``"paper_text"`` -- the sentence read literally: constant for epochs 0-3 (the first four),
  halved from epoch 4 on: ``1e-4, 1e-4, 1e-4, 1e-4, 5e-5``, then ``/4, /8, ...``.

Both are ``base_lr * 0.5 ** (epoch - halve_after + 1)`` for ``epoch >= halve_after`` (epochs
0-based), with ``halve_after`` the first epoch at half the rate: 3 (reference) or 4 (paper_text).
Scaling ``base_lr`` scales the whole schedule (as ``--lr`` in the reference code).
"""

from __future__ import annotations

__all__ = ["SCHEDULES", "learning_rate"]

#: schedule name -> first (0-based) epoch at half the base rate
SCHEDULES = {"reference": 3, "paper_text": 4}


def learning_rate(epoch: int, base_lr: float, schedule: str = "reference",
                  halve_after: int | None = None) -> float:
    """Learning rate of epoch index ``epoch`` (0-based; ``epoch = step // iterations``).

    Args:
        epoch: 0-based epoch index (>= 0).
        base_lr: the rate of the first epochs (paper: 1e-4).
        schedule: ``"reference"`` or ``"paper_text"`` (see the module docstring).
        halve_after: override the schedule's first halved epoch (>= 0); ``None`` = the
            schedule's (:data:`SCHEDULES`).

    Returns:
        ``base_lr`` for ``epoch < halve_after``, else ``base_lr * 0.5 ** (epoch - halve_after
        + 1)``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    start = SCHEDULES[schedule] if halve_after is None else int(halve_after)
    if start < 0:
        raise ValueError(f"halve_after must be >= 0, got {halve_after}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch < start:
        return float(base_lr)
    return float(base_lr) * 0.5 ** (epoch - start + 1)
