"""Has each trained model reached the flat part of its training curve?

Criterion (issue #11, "models at their plateau"): over the last 10 % of a model's optimisation
steps the training loss drops by less than 2 %.

Which loss: where the training log has a ``probe`` column (:mod:`vtn.train.probe`: the loss of a
fixed set of training pairs, each with a fixed augmentation, measured with the weights of step
``T - ceil(T / 10)`` and of the last step ``T``), the verdict is that paired comparison:

    probe_drop = (P(T - ceil(T / 10)) - P(T)) / |P(T - ceil(T / 10))|

A log without a probe (older runs, ``probe_pairs: 0``) falls back to the *smoothed* logged loss,
the mean of the logged ``total`` loss over the trailing window of ``window`` (10 %) of all
steps, so

    S_end  = mean(loss, steps in (0.9 T, T])
    S_prev = mean(loss, steps in (0.8 T, 0.9 T])
    drop   = (S_prev - S_end) / |S_prev|        (positive: still falling)

and a curve is **flat** when ``drop < threshold`` (2 %). Both drops are always reported.
The logged rows are equally spaced
(every step or every ``log_every`` steps), so a window is the last ``ceil(10 % of the rows)``
rows (at least one: very short runs compare their last two rows). A loss that *rises* over the
last 10 % (negative drop) is flat by this test but reported with its sign.

The VoxelMorph-2 loss (negative local NCC + gradient term) is negative: the relative drop uses
``|S_prev|``, which keeps the sign convention (a falling loss is a positive drop).

The noise of the test: at batch 1 each logged loss is one image pair's, and pairs differ far
more than consecutive steps do, so a window's mean carries the pair-to-pair noise. Each row also
reports the standard error of the drop, ``SE = sqrt(var_prev / k + var_end / k) / |S_prev|``
(sample variances of the two windows of ``k`` rows, rows taken as independent): a drop closer
than about 2 SE to the 2 % threshold is no firm verdict either way. The verdict ``flat`` stays
the criterion above; the SE says how far to trust it. The SE cannot see what the windows share:
runs with one seed draw the same pairs and augmentations at the same steps, so one window that
happens to be easier shifts every such model alike (in the 64³ brain study the last window's
pairs and augmentations were 5.6 % easier before registration, and five models' logged losses
"fell" 3.8-5.9 %). That is why the probe decides where there is one.

``vtn convergence --logs A/train_log.csv B/train_log.csv --names A B --out convergence.csv``
writes one row per model (``model, steps, loss_prev, loss_end, drop_pct, drop_se_pct,
probe_prev, probe_end, probe_drop_pct, basis, flat``; ``basis``: ``probe`` or ``log``) and
prints a one-line verdict; the tables and figures read the same function.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

__all__ = ["WINDOW", "THRESHOLD", "COLUMNS", "plateau", "last_window_start", "probe_drop",
           "verdict", "check_logs", "summary_line", "cli"]

#: Fraction of the run's steps in each smoothing window (and the "last 10 %" of the criterion).
WINDOW = 0.10
#: Largest relative drop of the smoothed loss over the last window for a "flat" curve.
THRESHOLD = 0.02
#: columns of :func:`check_logs`
COLUMNS = ["model", "steps", "loss_prev", "loss_end", "drop_pct", "drop_se_pct", "probe_prev",
           "probe_end", "probe_drop_pct", "basis", "flat"]


def plateau(steps, losses, window: float = WINDOW, threshold: float = THRESHOLD) -> dict:
    """Plateau statistic of one training curve.

    Args:
        steps: increasing optimisation steps of the logged rows (equally spaced: every step, or
            every ``log_every`` steps; the last one is ``T``).
        losses: the logged loss at those steps (same length).
        window: fraction of the logged rows per smoothing window, in ``(0, 0.5]``; a window
            holds ``ceil(window * rows)`` rows, at least one.
        threshold: largest relative drop of a flat curve.

    Returns:
        ``{"steps": T, "loss_prev": S_prev, "loss_end": S_end, "drop_pct": 100 * drop,
        "drop_se_pct": 100 * SE, "flat": drop < threshold}`` (``SE``: the module docstring; 0
        for windows of one row).

    Raises:
        ValueError: mismatched lengths, a bad ``window``, or fewer than two logged rows.
    """
    steps = [int(s) for s in steps]
    losses = [float(v) for v in losses]
    if len(steps) != len(losses):
        raise ValueError(f"steps and losses differ in length ({len(steps)} vs {len(losses)})")
    if not 0 < window <= 0.5:
        raise ValueError(f"window must be in (0, 0.5], got {window}")
    if len(steps) < 2:
        raise ValueError(f"steps: the training log needs at least 2 logged steps, has "
                         f"{len(steps)}")
    k = max(1, math.ceil(window * len(steps)))
    last, prev = losses[-k:], losses[-2 * k:-k]
    s_end = sum(last) / len(last)
    s_prev = sum(prev) / len(prev)
    drop = (s_prev - s_end) / abs(s_prev) if s_prev != 0 else math.inf

    def var(xs, mean):
        return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0

    se = (math.sqrt(var(prev, s_prev) / k + var(last, s_end) / k) / abs(s_prev)
          if s_prev != 0 else math.inf)
    return {"steps": max(steps), "loss_prev": s_prev, "loss_end": s_end,
            "drop_pct": 100.0 * drop, "drop_se_pct": 100.0 * se, "flat": bool(drop < threshold)}


def last_window_start(total: int, window: float = WINDOW) -> int:
    """``T - ceil(window * T)``: the last step before the final ``window`` of a run of ``T``
    steps (the product rounded to 9 digits first: ``0.1 * 30`` is ``3.0000000000000004``)."""
    return int(total) - math.ceil(round(window * int(total), 9))


def probe_drop(steps, probe, window: float = WINDOW):
    """The probe's drop over the last ``window`` of a run.

    Args:
        steps: the logged steps (the last one is the run's ``T``).
        probe: the ``probe`` column at those steps (NaN or None where not measured).

    Returns:
        ``(P_prev, P_end, 100 * drop)`` with ``P_prev`` the probe at step
        ``T - ceil(window * T)`` and ``P_end`` at ``T``; ``None`` when either is missing.
    """
    values = {int(s): float(v) for s, v in zip(steps, probe) if v is not None and v == v}
    if not values:
        return None
    total = max(int(s) for s in steps)
    start = last_window_start(total, window)
    if start not in values or total not in values:
        return None
    prev, end = values[start], values[total]
    drop = (prev - end) / abs(prev) if prev != 0 else math.inf
    return prev, end, 100.0 * drop


def verdict(log, window: float = WINDOW, threshold: float = THRESHOLD) -> dict:
    """The plateau check of one training log.

    Args:
        log: DataFrame with ``step`` and ``total`` (and, where logged, ``probe``) columns.

    Returns:
        :func:`plateau`'s dict plus ``probe_prev, probe_end, probe_drop_pct`` (NaN without a
        probe) and ``basis``; ``flat`` is the probe's verdict where there is one
        (``basis: probe``), else the smoothed log's (``basis: log``).

    Raises:
        ValueError: as :func:`plateau`.
    """
    import pandas as pd

    res = plateau(log["step"], log["total"], window, threshold)
    probe = (probe_drop(log["step"], pd.to_numeric(log["probe"], errors="coerce"), window)
             if "probe" in log.columns else None)
    if probe is None:
        return {**res, "probe_prev": math.nan, "probe_end": math.nan, "probe_drop_pct": math.nan,
                "basis": "log"}
    return {**res, "probe_prev": probe[0], "probe_end": probe[1], "probe_drop_pct": probe[2],
            "basis": "probe", "flat": bool(probe[2] < 100.0 * threshold)}


def check_logs(logs: dict, window: float = WINDOW, threshold: float = THRESHOLD):
    """Plateau rows of several models.

    Args:
        logs: model name -> path of its ``train_log.csv`` (``step`` and ``total`` columns).

    Returns:
        a DataFrame of :data:`COLUMNS` in the given order: the smoothed logged loss's drop
        (``drop_pct`` ± ``drop_se_pct``), the probe's (``probe_*``, NaN without a probe), and
        ``flat`` by the probe where there is one (``basis`` ``probe``), else by the log.

    Raises:
        vtn.io.InputError: a missing or malformed log (the message names the file).
    """
    import pandas as pd

    from vtn.io import InputError

    rows = []
    for name, path in logs.items():
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: training log of {name} not found")
        df = pd.read_csv(path)
        if not {"step", "total"} <= set(df.columns):
            raise InputError(f"{path}: needs columns 'step' and 'total', has {list(df.columns)}")
        try:
            res = verdict(df, window, threshold)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from exc
        rows.append({"model": name, **res})
    return pd.DataFrame(rows, columns=COLUMNS)


def summary_line(table, threshold: float = THRESHOLD, window: float = WINDOW) -> str:
    """One sentence for table notes: how many curves are flat, and which are not."""
    n = len(table)
    if n == 0:
        return "Training curves: no training log found."
    bad = table[~table["flat"].astype(bool)]
    probed = int((table["basis"] == "probe").sum()) if "basis" in table else 0
    if probed == n:
        what = "the loss of the fixed probe pairs drops"
    elif probed == 0:
        what = "the smoothed logged loss drops"
    else:
        what = (f"the loss of the fixed probe pairs ({probed} models) or, without a probe, "
                f"the smoothed logged loss drops")
    head = (f"Training curves: {n - len(bad)} of {n} models are at their plateau ({what} by "
            f"< {100 * threshold:g} % over the last {100 * window:g} % of the steps)")
    if len(bad) == 0:
        return head + "."

    def falling(r):
        if getattr(r, "basis", "log") == "probe":
            return f"{r.model} ({r.probe_drop_pct:.1f} %)"
        return f"{r.model} ({r.drop_pct:.1f} ± {r.drop_se_pct:.1f} % of the logged loss)"

    return head + f"; still falling: {', '.join(falling(r) for r in bad.itertuples())}."


def _parser():
    p = argparse.ArgumentParser(prog="vtn convergence", description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", nargs="+", required=True, help="train_log.csv of each model")
    p.add_argument("--names", nargs="+", required=True, help="model name of each log")
    p.add_argument("--out", required=True, help="CSV, one row per model")
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p.add_argument("--window", type=float, default=WINDOW)
    return p


def cli(argv=None) -> int:
    from vtn.io import InputError, atomic_write

    args = _parser().parse_args(argv)
    if len(args.logs) != len(args.names):
        print(f"vtn convergence: {len(args.logs)} logs but {len(args.names)} names",
              file=sys.stderr)
        return 2
    try:
        table = check_logs(dict(zip(args.names, args.logs)), args.window, args.threshold)
    except InputError as exc:
        print(f"vtn convergence: {exc}", file=sys.stderr)
        return 1
    with atomic_write(args.out) as tmp:
        table.to_csv(tmp, index=False)
    print(summary_line(table, args.threshold, args.window))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
