"""Summary of Snakemake ``benchmark:`` files (wall time, CPU time, peak memory per job)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vtn.io import expand_files


def collect(benchmarks, root=None) -> pd.DataFrame:
    """Read benchmark files ``<root>/<rule>/<wildcards...>.tsv``.

    Args:
        benchmarks: the files (the workflow lists its jobs' files), or a folder: every ``.tsv``
            under it (``root`` is then that folder).
        root: the benchmark folder the files lie in (default: their common folder).

    Returns:
        One row per job: ``rule, job, s, cpu_time, max_rss`` (seconds, seconds, MB).
    """
    rows = []
    files, folder = expand_files(benchmarks, "**/*.tsv")
    if folder is not None:
        root = folder
    elif root is None:
        root = Path(os.path.commonpath(files)).parent if files else Path(".")
    root = Path(root)
    for tsv in files:
        df = pd.read_csv(tsv, sep="\t")
        rel = tsv.relative_to(root)
        rule = rel.parts[0]
        job = str(Path(*rel.parts[1:]).with_suffix(""))
        last = df.iloc[-1]
        rows.append({
            "rule": rule,
            "job": job,
            "s": float(last["s"]),
            "cpu_time": float(last.get("cpu_time", float("nan"))),
            "max_rss": float(last.get("max_rss", float("nan"))),
        })
    return pd.DataFrame(rows, columns=["rule", "job", "s", "cpu_time", "max_rss"])


def write_summary(benchmarks, out, root=None) -> pd.DataFrame:
    """Write a Markdown summary (per rule totals, then every job) to ``out``; ``benchmarks``,
    ``root``: see :func:`collect`."""
    df = collect(benchmarks, root)
    lines = ["# Runtime of this run", "",
             "From Snakemake's `benchmark:` files (wall seconds `s`, CPU seconds, peak RSS in MB).",
             ""]
    if df.empty:
        lines.append("No benchmark files found.")
    else:
        per_rule = df.groupby("rule").agg(jobs=("job", "count"), total_s=("s", "sum"),
                                          max_s=("s", "max"), max_rss=("max_rss", "max"))
        per_rule = per_rule.sort_values("total_s", ascending=False)
        lines += [f"Total wall time of all jobs (serial sum): {df['s'].sum():.1f} s", "",
                  per_rule.round(1).to_markdown(), "", "## Every job", "",
                  df.sort_values("s", ascending=False).round(2).to_markdown(index=False)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    return df


def cli(argv=None) -> int:
    """``vtn runtime --benchmarks TSV [TSV ...] --root benchmarks --out FILE.md`` (or
    ``--benchmarks DIR``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="vtn runtime", description=__doc__)
    ap.add_argument("--benchmarks", nargs="+", default=["benchmarks"],
                    help="Snakemake benchmark files (or their folder)")
    ap.add_argument("--root", default=None,
                    help="the benchmark folder: <root>/<rule>/<job>.tsv (default: common folder)")
    ap.add_argument("--out", required=True, help="Markdown file to write")
    args = ap.parse_args(argv)
    df = write_summary(args.benchmarks, args.out, args.root)
    print(f"{len(df)} jobs summarised into {args.out}")
    return 0
