"""Progress lines of long jobs (training steps, registered pairs): written to stderr, flushed at
once (a job's log file shows them while it runs; no terminal needed, no tqdm), each with the
time of day, ``done/total``, the rate and the ETA.
"""

from __future__ import annotations

import sys
import time

__all__ = ["fmt_duration", "Progress", "logger"]


def fmt_duration(seconds: float) -> str:
    """``3h05m``, ``4m12s``, ``12s``, ``0.4s``; ``?`` when unknown (NaN, infinite)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def logger(prefix: str, stream=None):
    """``log(msg)``: print ``HH:MM:SS prefix: msg`` to ``stream`` (default stderr), flushed."""

    def log(msg: str) -> None:
        out = stream if stream is not None else sys.stderr
        print(f"{time.strftime('%H:%M:%S')} {prefix}: {msg}", file=out, flush=True)

    return log


class Progress:
    """Rate and ETA of a loop over ``total`` items that starts at item ``start`` (a resumed
    run counts only what this process did).

    ``status(done)`` -> ``"120/400 (30.0%), 2.41 steps/s, ETA 1m56s"``.
    """

    def __init__(self, total: int, start: int = 0, unit: str = "step", clock=time.monotonic):
        self.total, self.start, self.unit, self.clock = int(total), int(start), unit, clock
        self.t0 = clock()

    def rate(self, done: int) -> float:
        """Items per second since this object was made (NaN before the first item)."""
        dt = self.clock() - self.t0
        n = done - self.start
        return n / dt if n > 0 and dt > 0 else float("nan")

    def eta(self, done: int) -> float:
        r = self.rate(done)
        return (self.total - done) / r if r == r and r > 0 else float("nan")

    def status(self, done: int) -> str:
        pct = 100.0 * done / self.total if self.total else 100.0
        r = self.rate(done)
        rate = f"{r:.3g} {self.unit}s/s" if r == r else f"- {self.unit}s/s"
        return (f"{done}/{self.total} ({pct:.1f}%), {rate}, "
                f"ETA {fmt_duration(self.eta(done))}")
