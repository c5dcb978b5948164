"""vtn.io.atomic_write: the one temp-file-then-replace writer of the package."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
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


def test_int16_displacement_is_smaller_and_within_its_bound(tmp_path):
    """`disp_dtype: int16`: scaled 16-bit integers (NIfTI has no float16) that every reader
    gets back as float32 within half a quantisation step, gzipped to a fraction of float32."""
    import nibabel as nib

    from vtn.io import load_disp_l2r, save_disp_l2r

    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(0, np.pi, 48)] * 3, indexing="ij"))
    # a smooth field of up to ~20 voxels plus fine detail: float32 mantissas are all noise
    flow = (20 * np.sin(g + rng.uniform(0, 1, (3, 1, 1, 1))) * np.cos(g[::-1])
            + rng.normal(0, 0.3, g.shape)).astype(np.float32)
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    save_disp_l2r(tmp_path / "f32.nii.gz", flow, aff)
    save_disp_l2r(tmp_path / "i16.nii.gz", flow, aff, dtype="int16")
    img = nib.load(tmp_path / "i16.nii.gz")
    assert img.get_data_dtype() == np.int16 and img.dataobj.slope != 1.0
    a, aff32 = load_disp_l2r(tmp_path / "f32.nii.gz")
    b, aff16 = load_disp_l2r(tmp_path / "i16.nii.gz")
    assert a.dtype == b.dtype == np.float32 and np.array_equal(a, flow)
    np.testing.assert_allclose(aff16, aff32)
    step = (flow.max() - flow.min()) / 65535
    err = np.abs(b - flow).max()
    assert 0 < err <= 0.5 * step * 1.01, (err, step)  # rounded, not exact: the case is real
    assert err < 1e-3  # voxels
    s32, s16 = ((tmp_path / n).stat().st_size for n in ("f32.nii.gz", "i16.nii.gz"))
    assert s16 < 0.6 * s32, (s16, s32)
    with pytest.raises(ValueError, match="dtype must be"):
        save_disp_l2r(tmp_path / "x.nii.gz", flow, aff, dtype="float16")
