"""vtn.io.atomic_write: the one temp-file-then-replace writer of the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vtn.io import atomic_write, save_landmarks

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_replaces_on_success(tmp_path):
    out = tmp_path / "sub" / "table.csv"
    with atomic_write(out) as tmp:
        assert tmp.parent == out.parent and tmp.name == ".tmp-table.csv"
        assert tmp.suffix == out.suffix  # writers that infer the format from the name still work
        tmp.write_text("a\n1\n")
        assert not out.exists()  # nothing is visible before the block ends
    assert out.read_text() == "a\n1\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.csv"]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    out = tmp_path / "table.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_save_landmarks_is_atomic(tmp_path):
    out = tmp_path / "lm.csv"
    save_landmarks(out, ["a", "b"], [[1, 2, 3], [4, 5, 6]])
    assert out.read_text().splitlines() == ["name,i,j,k", "a,1.000000,2.000000,3.000000",
                                            "b,4.000000,5.000000,6.000000"]
    assert [p.name for p in tmp_path.iterdir()] == ["lm.csv"]


def test_no_hand_written_temp_file_writes():
    """Every temp-file-then-replace write goes through vtn.io.atomic_write."""
    offenders = []
    for path in sorted((ROOT / "vtn").rglob("*.py")):
        if path == ROOT / "vtn" / "io.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.tmp-|os\.replace\(|tmp\.replace\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
