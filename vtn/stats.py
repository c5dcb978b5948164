"""Paired significance tests on per-pair metrics (the paper's Wilcoxon signed-rank tests)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_PAIRS", "paired_values", "wilcoxon"]

#: Fewest matched pairs for which a p-value is reported (with n = 6 the smallest exact two-sided
#: p-value is 2/64 = 0.031, below that 0.05 cannot be reached).
MIN_PAIRS = 6


def paired_values(a, b, metric: str | None = None):
    """Match two per-pair metric tables on ``(fixed, moving)``.

    Args:
        a, b: either DataFrames with columns ``fixed, moving`` and ``metric``, or Series indexed
            by ``(fixed, moving)`` (or any common index), or plain equal-length sequences
            (matched by position).
        metric: column to take from DataFrames.

    Returns:
        ``(x, y)`` float arrays of the matched, finite values.
    """
    import pandas as pd

    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        if metric is None:
            raise ValueError("metric is required for DataFrame inputs")
        sa = _series(a, metric)
        sb = _series(b, metric)
        joined = pd.concat([sa.rename("a"), sb.rename("b")], axis=1, join="inner")
    elif isinstance(a, pd.Series) and isinstance(b, pd.Series):
        joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    else:
        x = np.asarray(a, dtype=np.float64).reshape(-1)
        y = np.asarray(b, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
        joined = pd.DataFrame({"a": x, "b": y})
    joined = joined.astype(float)
    joined = joined[np.isfinite(joined["a"]) & np.isfinite(joined["b"])]
    return joined["a"].to_numpy(), joined["b"].to_numpy()


def _series(df, metric):
    if not {"fixed", "moving", metric} <= set(df.columns):
        raise ValueError(f"metric table needs columns fixed, moving, {metric}")
    d = df.drop_duplicates(["fixed", "moving"])
    return d.set_index(["fixed", "moving"])[metric]


def wilcoxon(a, b, alternative: str = "two-sided", metric: str | None = None) -> dict:
    """Paired Wilcoxon signed-rank test of ``a - b`` (``scipy.stats.wilcoxon``).

    Args:
        a, b: per-pair values (see :func:`paired_values`); pairs are matched by
            ``(fixed, moving)`` and pairs with a NaN in either are dropped.
        alternative: ``"two-sided"``, ``"greater"`` (``a`` tends to exceed ``b``) or ``"less"``.
        metric: column name for DataFrame inputs.

    Returns:
        dict with ``n`` (matched pairs), ``statistic``, ``p``, ``median_diff`` (median of
        ``a - b``), ``mean_a``, ``mean_b``, ``alternative`` and ``reason`` (empty when a p-value
        was computed; otherwise why ``p`` is NaN: fewer than :data:`MIN_PAIRS` pairs or all
        differences zero).
    """
    from scipy import stats

    if alternative not in {"two-sided", "greater", "less"}:
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    x, y = paired_values(a, b, metric)
    n = int(x.size)
    diff = x - y
    out = {
        "n": n,
        "statistic": float("nan"),
        "p": float("nan"),
        "median_diff": float(np.median(diff)) if n else float("nan"),
        "mean_a": float(x.mean()) if n else float("nan"),
        "mean_b": float(y.mean()) if n else float("nan"),
        "alternative": alternative,
        "reason": "",
    }
    if n < MIN_PAIRS:
        out["reason"] = f"only {n} matched pairs (< {MIN_PAIRS})"
        return out
    if np.all(diff == 0):
        out["reason"] = "all paired differences are zero"
        return out
    res = stats.wilcoxon(x, y, alternative=alternative)
    out["statistic"] = float(res.statistic)
    out["p"] = float(res.pvalue)
    if math.isnan(out["p"]):
        out["reason"] = "scipy returned NaN"
    return out
