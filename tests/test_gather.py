"""Chunked registrations and pre-alignment (`vtn baseline --rows`, `vtn prealign --rows`) and
`vtn gather`: the gathered folder is the output contract of one unchunked run, by hard links."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_baselines import _dataset  # noqa: E402  (tests/ is on sys.path)
from vtn.gather import cli as gather_cli
from vtn.gather import gather_registrations
from vtn.io import InputError, load_disp_l2r

ROOT = Path(__file__).resolve().parents[1]


def _two_pairs(tmp_path):
    subjects, pairs, _, _ = _dataset(tmp_path)
    pd.DataFrame({"fixed": ["a", "b"], "moving": ["b", "a"]}).to_csv(pairs, index=False)
    return subjects, pairs


def _baseline(subjects, pairs, out, *extra):
    """`vtn baseline` with ANTs in a process of its own, as a workflow job (ITK reads its thread
    count once per process: one thread and a fixed seed make ANTs deterministic)."""
    proc = subprocess.run([sys.executable, "-m", "vtn", "baseline", "--method", "ants",
                           "--preset", "fast", "--subjects", str(subjects), "--pairs", str(pairs),
                           "--out", str(out), "--threads", "1", *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_chunks_gathered_equal_one_run(tmp_path):
    subjects, pairs = _two_pairs(tmp_path)
    err = _baseline(subjects, pairs, tmp_path / "whole")
    # one progress line per pair: count, rate, ETA
    lines = [ln for ln in err.splitlines() if "vtn baseline ants: pair" in ln]
    assert len(lines) == 2 and "pair 1/2 (50.0%)" in lines[0] and "ETA" in lines[0]
    assert "pair 2/2 (100.0%)" in lines[1] and "a <- b" in lines[0] and "b <- a" in lines[1]

    parts = [tmp_path / "c" / name for name in ("0-1", "1-2", "2-3")]
    for part, rows in zip(parts, ("0:1", "1:2", "2:3")):
        _baseline(subjects, pairs, part, "--rows", rows)
    # rows past the end (preprocessing dropped a subject): an empty chunk, no method.json
    assert pd.read_csv(parts[2] / "times.csv").empty
    assert not (parts[2] / "method.json").exists() and len(list(parts[2].iterdir())) == 1
    assert sorted(p.name for p in parts[0].iterdir()) == [
        "disp_a_b.nii.gz", "landmarks_a_b.csv", "method.json", "times.csv", "warped_a_b.nii.gz",
        "warpedseg_a_b.nii.gz"]

    out = tmp_path / "gathered"
    assert gather_cli(["--parts", *map(str, parts), "--pairs", str(pairs), "--out", str(out)]) == 0
    whole = tmp_path / "whole"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.iterdir())
    for f, m in (("a", "b"), ("b", "a")):
        # ANTs with one thread and a fixed seed is deterministic: same fields as one run
        np.testing.assert_array_equal(load_disp_l2r(out / f"disp_{f}_{m}.nii.gz")[0],
                                      load_disp_l2r(whole / f"disp_{f}_{m}.nii.gz")[0])
        # hard links: the same file, no second copy
        src = next(p for p in parts if (p / f"disp_{f}_{m}.nii.gz").exists())
        a, b = os.stat(out / f"disp_{f}_{m}.nii.gz"), os.stat(src / f"disp_{f}_{m}.nii.gz")
        assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev) and a.st_nlink == 2
    times = pd.read_csv(out / "times.csv")
    assert times[["fixed", "moving"]].values.tolist() == [["a", "b"], ["b", "a"]]
    assert list(times.columns) == list(pd.read_csv(whole / "times.csv").columns)
    meta, ref = (json.loads((d / "method.json").read_text()) for d in (out, whole))
    assert meta.pop("chunks") == 3 and meta.pop("pairs") == 2
    args, ref_args = meta.pop("arguments"), ref.pop("arguments")  # differ in temporary paths
    assert meta == ref and len(args) == len(ref_args) and args[:20] == ref_args[:20]
    # the chunks can go (the workflow marks them temporary): the gathered files stay
    for p in parts:
        for f in p.iterdir():
            f.unlink()
    assert load_disp_l2r(out / "disp_a_b.nii.gz")[0].shape == (3, 24, 24, 24)


def test_gather_refuses_incomplete_or_overlapping_chunks(tmp_path):
    from vtn.contract import write_times

    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"fixed": ["a", "b", "c"], "moving": ["b", "c", "a"]}).to_csv(pairs, index=False)

    def part(name, rows, files=()):
        d = tmp_path / name
        d.mkdir()
        write_times(d, [{"fixed": f, "moving": m, "seconds": 1.0, "device": "cpu", "threads": 1}
                        for f, m in rows])
        (d / "method.json").write_text('{"method": "ants"}')
        for f in files:
            (d / f).write_text("x")
        return d

    # hidden files (Snakemake's .snakemake_timestamp in directory outputs) are not gathered
    p1 = part("p1", [("a", "b")], ["disp_a_b.nii.gz", ".snakemake_timestamp"])
    p2 = part("p2", [("b", "c")], ["disp_b_c.nii.gz", ".snakemake_timestamp"])
    with pytest.raises(InputError, match=r"hold 2 of its 3 pairs; missing: c,a"):
        gather_registrations([p1, p2], pairs, tmp_path / "out")
    p3 = part("p3", [("c", "a"), ("a", "b")])
    with pytest.raises(InputError, match="pair a,b also in"):
        gather_registrations([p1, p2, p3], pairs, tmp_path / "out")
    p4 = part("p4", [("c", "a")], ["disp_a_b.nii.gz"])
    with pytest.raises(InputError, match="chunks overlap"):
        gather_registrations([p1, p2, p4], pairs, tmp_path / "out")
    p5 = part("p5", [("c", "a"), ("x", "y")])
    with pytest.raises(InputError, match="not in the table: x,y"):
        gather_registrations([p1, p2, p5], pairs, tmp_path / "out")
    with pytest.raises(InputError, match="chunk folder not found"):
        gather_registrations([p1, tmp_path / "nope"], pairs, tmp_path / "out")
    assert not (tmp_path / "out" / "times.csv").exists()  # nothing half-written as finished
    p6 = part("p6", [("c", "a")], ["disp_c_a.nii.gz"])
    gather_registrations([p1, p2, p6], pairs, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "disp_a_b.nii.gz", "disp_b_c.nii.gz", "disp_c_a.nii.gz", "method.json", "times.csv"]

