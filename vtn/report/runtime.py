"""Summary of Snakemake ``benchmark:`` files (wall time, CPU time, peak memory per job)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def collect(benchmark_dir) -> pd.DataFrame:
    """Read every ``<rule>/<wildcards...>.tsv`` under ``benchmark_dir``.

    Returns:
        One row per job: ``rule, job, s, cpu_time, max_rss`` (seconds, seconds, MB).
    """
    rows = []
    root = Path(benchmark_dir)
    for tsv in sorted(root.rglob("*.tsv")):
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


def write_summary(benchmark_dir, out) -> pd.DataFrame:
    """Write a Markdown summary (per rule totals, then every job) to ``out``."""
    df = collect(benchmark_dir)
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
    """``vtn runtime --benchmarks DIR --out FILE.md``."""
    import argparse

    ap = argparse.ArgumentParser(prog="vtn runtime", description=__doc__)
    ap.add_argument("--benchmarks", default="benchmarks", help="Snakemake benchmark folder")
    ap.add_argument("--out", required=True, help="Markdown file to write")
    args = ap.parse_args(argv)
    df = write_summary(args.benchmarks, args.out)
    print(f"{len(df)} jobs summarised into {args.out}")
    return 0
