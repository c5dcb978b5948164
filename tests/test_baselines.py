"""ANTs and Elastix baselines: field conversion, known transforms, the output contract, bad input.

Volumes are 24^3-32^3 with shortened iteration schedules; ``import itk`` alone costs ~15-20 s, so
the Elastix tests share one process-wide import.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from vtn.functional import warp
from vtn.io import InputError, load_disp_l2r, load_landmarks, load_volume, save_landmarks, save_volume

# itk's SWIG bindings emit hundreds of DeprecationWarnings on import
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")

# An LPS-like (x and y flipped in RAS), 2 mm, shifted affine: sign or axis errors cannot hide.
LPS_AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, -2.0, 0, 40.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])

# Short schedules (same stages and level counts as the presets).
ANTS_FEW = {"linear_iterations": "50x25x10", "syn_iterations": "20x10x0"}
ELX_FEW = {"affine_iterations": 64, "bspline_iterations": 64}


def _grid(n):
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64)] * 3, indexing="ij"), 0)


def phantom(n):
    """Textured, asymmetric blob phantom ``(n, n, n)`` in [0, 1], its label map (0..3) and 4
    landmarks (voxel indices)."""
    g = _grid(n)
    c = (n - 1) / 2.0
    img = np.zeros((n, n, n))
    labels = np.zeros((n, n, n), np.int16)
    blobs = [((0.0, 0.0, 0.0), (0.32, 0.25, 0.2), 1.0),
             ((0.15, -0.1, 0.05), (0.08, 0.1, 0.07), 0.7),
             ((-0.12, 0.12, -0.08), (0.07, 0.06, 0.09), 0.45)]
    for lab, (off, rad, val) in enumerate(blobs, start=1):
        r = sum(((g[k] - c - off[k] * n) / (rad[k] * n)) ** 2 for k in range(3))
        img += val / (1.0 + np.exp(np.clip((r - 1.0) * 8.0, -50, 50)))
        labels[r <= 1.0] = lab
    # smooth texture (fixed seed) so that every region, not only the blob edges, is identifiable
    tex = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((n, n, n)), n / 16.0)
    img += 0.5 * tex / np.abs(tex).max() * (img > 0.05)
    img = ndimage.gaussian_filter(np.clip(img, 0, None), 0.7)
    marks = np.array([[c + 0.15 * n, c - 0.1 * n, c + 0.05 * n],
                      [c - 0.12 * n, c + 0.12 * n, c - 0.08 * n],
                      [c + 0.2 * n, c + 0.1 * n, c],
                      [c - 0.05 * n, c - 0.15 * n, c + 0.1 * n]])
    return (img / img.max()).astype(np.float32), labels, marks


def known_deformation(n):
    """Pull field ``u`` ``(3, n, n, n)`` voxels: a rigid-plus-scaling affine (6 deg rotation,
    scale 1.03, translation (3, -2, 2) voxels) plus a smooth local Gaussian bump (1.2 voxels).

    (A global shear-like deformation is not used: the paper's MI affine stages, sampling ~100
    points at the coarsest level of a 32^3 image, do not find it reliably.)"""
    g = _grid(n)
    pc = g - (n - 1) / 2.0
    a = np.deg2rad(6.0)
    A = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) * 1.03
    lin = np.einsum("ij,j...->i...", A - np.eye(3), pc)
    trans = np.array([3.0, -2.0, 2.0]).reshape(3, 1, 1, 1) * n / 32.0
    centre = np.array([0.1, -0.1, 0.05]).reshape(3, 1, 1, 1) * n
    bump = np.exp(-((pc - centre) ** 2).sum(0) / (2 * (n / 8.0) ** 2))
    local = 1.2 * n / 32.0 * bump * np.array([1.0, 0.5, -0.5]).reshape(3, 1, 1, 1)
    return lin + trans + local


def make_moving(fixed, u, order=1):
    """``moving(y) = fixed(y + u(y))`` (so the moving image *is* the fixed one pulled by u)."""
    g = _grid(fixed.shape[0])
    return ndimage.map_coordinates(fixed, g + u, order=order, mode="nearest").astype(fixed.dtype)


def true_moving_points(points, u):
    """Moving-image position of fixed points ``p``: solve ``y + u(y) = p`` by fixed-point steps."""
    y = points.copy()
    for _ in range(100):
        uy = np.stack([ndimage.map_coordinates(u[k], y.T, order=1, mode="nearest")
                       for k in range(3)], 1)
        y = points - uy
    return y


def _interior(n, margin):
    s = slice(margin, n - margin)
    return (s, s, s)


def _our_warp(moving, disp):
    return warp(torch.from_numpy(moving)[None, None], torch.from_numpy(disp)[None])[0, 0].numpy()


def _write_pair(tmp_path, fixed, moving, aff_f=LPS_AFFINE, aff_m=LPS_AFFINE):
    fp, mp = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    save_volume(fp, fixed, aff_f)
    save_volume(mp, moving, aff_m)
    return fp, mp


# ----------------------------------------------------------------------------- ANTs

def test_ants_arguments_paper_preset_verbatim():
    from vtn.baselines.ants import ants_arguments

    args = ants_arguments("F", "M", "/tmp/p_", preset="paper", seed=7)
    cmd = " ".join(args)
    paper = ("-d 3 -u 1 -w [0.025,0.975] -r [F,M,1] -t Rigid[0.1] -m MI[F,M,1,32,Regular,0.2] "
             "-c [2000x2000x2000,1e-9,15] -s 2x1x0 -f 4x2x1 -t Affine[0.1] "
             "-m MI[F,M,1,32,Regular,0.1] -c [2000x2000x2000,1e-9,15] -s 2x1x0 -f 4x2x1 "
             "-t SyN[0.15,3.0,0.0] -m CC[F,M,1,4] -c [100x100x100x50,1e-9,15] -s 3x2x1x0 "
             "-f 6x4x2x1")
    assert cmd == paper + " --random-seed 7 -o /tmp/p_"
    fast = " ".join(ants_arguments("F", "M", "o", preset="fast"))
    assert "-c [200x100x50,1e-9,15]" in fast
    assert "-m CC[F,M,1,2] -c [100x70x50,1e-9,15] -s 2x1x0 -f 4x2x1" in fast
    with pytest.raises(ValueError):
        ants_arguments("F", "M", "o", preset="nope")
    with pytest.raises(ValueError):
        ants_arguments("F", "M", "o", seed=0)


def test_ants_field_to_voxel_exact():
    """A constant LPS field on a flipped, anisotropic grid; moving grid with another origin."""
    import ants

    from vtn.baselines.ants import ants_field_to_voxel

    n = (4, 5, 6)
    direction = np.diag([-1.0, 1.0, 1.0])
    fixed = ants.from_numpy(np.zeros(n, np.float32), origin=(10.0, 0.0, 0.0),
                            spacing=(2.0, 1.0, 3.0), direction=direction)
    moving = ants.from_numpy(np.zeros(n, np.float32), origin=(14.0, 1.0, 0.0),
                             spacing=(2.0, 1.0, 3.0), direction=direction)
    field = np.zeros(n + (3,))
    field[..., 0] = 2.0   # +2 mm along LPS x = -1 voxel along axis 0 (flipped)
    field[..., 2] = 6.0   # +6 mm along z = +2 voxels along axis 2
    disp = ants_field_to_voxel(field, fixed, moving)
    # field alone: (-1, 0, +2) voxels; moving origin (+4, +1, 0) mm, i.e. (+2, -1, 0) voxels of
    # the moving grid (x flipped): x = 12 - 2i -> i_m = (14 - x) / 2 = i + 1, j_m = j - 1
    expected = np.array([1.0, -1.0, 2.0])
    np.testing.assert_allclose(disp.reshape(3, -1).T, np.broadcast_to(expected, (np.prod(n), 3)),
                               atol=1e-6)


def test_ants_conversion_matches_ants_own_warp(tmp_path):
    """Our warp through the converted field == antsApplyTransforms' own resampling (interior)."""
    from vtn.baselines.ants import register_ants

    n = 24
    fixed, _, _ = phantom(n)
    moving = make_moving(fixed, known_deformation(n))
    fp, mp = _write_pair(tmp_path, fixed, moving)
    disp, seconds, info = register_ants(fp, mp, preset="fast", threads=1, return_tool_warped=True,
                                        **ANTS_FEW)
    assert disp.shape == (3, n, n, n) and disp.dtype == np.float32
    assert seconds > 0 and info["arguments"][0] == "-d"
    ours = _our_warp(moving, disp)
    tool = info["tool_warped"]
    # points mapped inside the moving volume: there ANTs' zero padding and our clamp agree
    pos = _grid(n) + disp
    inside = ((pos >= 0) & (pos <= n - 1)).all(0)
    assert inside.mean() > 0.7
    err = np.abs(ours - tool)[inside]
    assert err.max() < 1e-3 * tool.max()
    assert np.linalg.norm(ours[inside] - tool[inside]) / np.linalg.norm(tool[inside]) < 1e-4


def test_ants_deterministic_with_one_thread_and_seed(tmp_path):
    """Run in a fresh process: ITK reads its thread count once per process."""
    import subprocess
    import sys

    n = 24
    fixed, _, _ = phantom(n)
    fp, mp = _write_pair(tmp_path, fixed, make_moving(fixed, known_deformation(n)))
    code = (
        "import sys, numpy as np\n"
        "from vtn.baselines.ants import register_ants\n"
        f"kw = dict(preset='fast', threads=1, seed=3, **{ANTS_FEW!r})\n"
        f"d1 = register_ants({str(fp)!r}, {str(mp)!r}, **kw)[0]\n"
        f"d2 = register_ants({str(fp)!r}, {str(mp)!r}, **kw)[0]\n"
        "print(float(np.abs(d1 - d2).max()), float(np.abs(d1).max()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    diff, size = map(float, res.stdout.split())
    assert diff == 0.0
    assert size > 1.0  # it did move


def test_ants_recovers_integer_translation(tmp_path):
    from vtn.baselines.ants import register_ants

    n = 32
    fixed, _, _ = phantom(n)
    t = np.array([2.0, -3.0, 1.0])
    moving = ndimage.shift(fixed, t, order=1, mode="nearest")  # moving(x + t) = fixed(x)
    fp, mp = _write_pair(tmp_path, fixed, moving)
    disp, _, _ = register_ants(fp, mp, preset="fast", threads=1)
    core = disp[(slice(None),) + _interior(n, 8)].reshape(3, -1)
    # measured over seeds 1-3: |mean - t| <= 0.14, max deviation 0.2-0.7 voxels; a sign or
    # axis error would be off by >= 2 voxels
    np.testing.assert_allclose(core.mean(1), t, atol=0.2)
    assert np.percentile(np.abs(core - t[:, None]), 95) < 0.6
    assert np.abs(core - t[:, None]).max() < 1.0


def test_ants_different_affines_same_content(tmp_path):
    """Same voxels, moving header shifted by (6, -4, 8) mm: the voxel field is 0 although the
    physical transform is a translation (the moving image's own grid is used).

    The optimisers are switched off (0 iterations at every level), so the transform is exactly
    ANTs' centre-of-mass initialisation (``-r [F,M,1]``), which for identical voxels is the header
    shift itself. With the optimisers on, the result on a 24^3 phantom depends on the CPU's
    floating point (MI on 6^3 voxels at the coarsest level), which would test ANTs, not us.
    """
    from vtn.baselines.ants import register_ants

    n = 24
    fixed, _, _ = phantom(n)
    aff_m = LPS_AFFINE.copy()
    aff_m[:3, 3] += [6.0, -4.0, 8.0]
    fp, mp = _write_pair(tmp_path, fixed, fixed.copy(), LPS_AFFINE, aff_m)
    disp, _, info = register_ants(fp, mp, preset="fast", threads=1,
                                  linear_iterations="0x0x0", syn_iterations="0x0x0")
    assert "0x0x0" in " ".join(info["arguments"])
    # a header-only error (field read in the fixed grid) would show as (-3, 2, 4) voxels
    np.testing.assert_allclose(disp, 0.0, atol=1e-3)


# ----------------------------------------------------------------------------- Elastix

def test_elastix_parameter_maps():
    from vtn.baselines.elastix import parameter_maps

    aff, bsp = parameter_maps("paper")
    assert aff["Transform"] == ["AffineTransform"] and bsp["Transform"] == ["BSplineTransform"]
    assert bsp["MaximumNumberOfIterations"] == ["1000"]
    assert aff["MaximumNumberOfIterations"] == ["256"]  # elastix's default affine map, untouched
    assert parameter_maps("fast")[1]["MaximumNumberOfIterations"] == ["250"]
    with pytest.raises(ValueError):
        parameter_maps("nope")


def test_elastix_preset_levels_and_parameters(monkeypatch):
    from vtn.baselines import elastix

    monkeypatch.setitem(elastix.PRESETS, "t", {
        "affine_iterations": 100, "bspline_iterations": 200, "resolutions": 2,
        "parameters": {"ASGDParameterEstimationMethod": "DisplacementDistribution"}})
    aff, bsp = elastix.parameter_maps("t")
    default = elastix.parameter_maps("paper")[1]["GridSpacingSchedule"]
    assert len(default) == 4  # elastix's default B-spline map: 4 levels
    assert aff["NumberOfResolutions"] == bsp["NumberOfResolutions"] == ["2"]
    assert bsp["GridSpacingSchedule"] == default[-2:]  # the two finest grids
    assert (aff["MaximumNumberOfIterations"], bsp["MaximumNumberOfIterations"]) == (["100"],
                                                                                  ["200"])
    assert aff["ASGDParameterEstimationMethod"] == bsp["ASGDParameterEstimationMethod"] == [
        "DisplacementDistribution"]


def test_elastix_field_to_voxel_exact():
    import itk

    from vtn.baselines.elastix import elastix_field_to_voxel

    shape_xyz = (4, 5, 6)
    fixed = itk.image_from_array(np.zeros(shape_xyz[::-1], np.float32))
    fixed.SetSpacing((2.0, 1.0, 3.0))
    fixed.SetOrigin((10.0, 0.0, 0.0))
    fixed.SetDirection(itk.matrix_from_array(np.diag([-1.0, 1.0, 1.0])))
    moving = itk.image_from_array(np.zeros(shape_xyz[::-1], np.float32))
    moving.SetSpacing((2.0, 1.0, 3.0))
    moving.SetOrigin((14.0, 1.0, 0.0))
    moving.SetDirection(itk.matrix_from_array(np.diag([-1.0, 1.0, 1.0])))
    field = np.zeros(shape_xyz[::-1] + (3,))  # (z, y, x, 3)
    field[..., 0] = 2.0
    field[..., 2] = 6.0
    disp = elastix_field_to_voxel(field, fixed, moving)
    assert disp.shape == (3,) + shape_xyz
    np.testing.assert_allclose(disp.reshape(3, -1).T,
                               np.broadcast_to([1.0, -1.0, 2.0], (np.prod(shape_xyz), 3)),
                               atol=1e-6)


def test_elastix_conversion_matches_elastix_own_warp(tmp_path):
    from vtn.baselines.elastix import register_elastix

    n = 24
    fixed, _, _ = phantom(n)
    moving = make_moving(fixed, known_deformation(n))
    fp, mp = _write_pair(tmp_path, fixed, moving)
    disp, seconds, info = register_elastix(fp, mp, preset="fast", threads=1,
                                           return_tool_warped=True, **ELX_FEW)
    assert disp.shape == (3, n, n, n) and seconds > 0
    ours = _our_warp(moving, disp)
    tool = info["tool_warped"]
    pos = _grid(n) + disp
    inside = ((pos >= 0) & (pos <= n - 1)).all(0)
    assert inside.mean() > 0.7
    assert np.abs(ours - tool)[inside].max() < 1e-3 * tool.max()
    assert np.linalg.norm(ours[inside] - tool[inside]) / np.linalg.norm(tool[inside]) < 1e-4


@pytest.mark.slow
def test_elastix_recovers_integer_translation(tmp_path):
    from vtn.baselines.elastix import register_elastix

    n = 32
    fixed, _, _ = phantom(n)
    t = np.array([2.0, -3.0, 1.0])
    moving = ndimage.shift(fixed, t, order=1, mode="nearest")
    fp, mp = _write_pair(tmp_path, fixed, moving)
    disp, _, _ = register_elastix(fp, mp, preset="fast", threads=1, affine_iterations=128,
                                  bspline_iterations=32)
    core = disp[(slice(None),) + _interior(n, 8)].reshape(3, -1)
    # MI on 2048 random samples with few iterations is not sub-voxel accurate here; a sign or
    # axis-order error would be off by >= 2 voxels
    np.testing.assert_allclose(core.mean(1), t, atol=0.5)


# ----------------------------------------------------------------------------- both tools

@pytest.mark.parametrize("method", ["ants", pytest.param("elastix", marks=pytest.mark.slow)])
def test_known_transform_landmark_error_drops(tmp_path, method):
    """Affine + smooth deformation: each tool cuts the landmark error far below the initial."""
    n = 32
    fixed, _, marks = phantom(n)
    u = known_deformation(n)
    moving = make_moving(fixed, u)
    fp, mp = _write_pair(tmp_path, fixed, moving)
    if method == "ants":
        from vtn.baselines.ants import register_ants

        disp, _, _ = register_ants(fp, mp, preset="fast", threads=1)
    else:
        from vtn.baselines.elastix import register_elastix

        disp, _, _ = register_elastix(fp, mp, preset="fast", threads=2, affine_iterations=128,
                                      bspline_iterations=128)
    truth = true_moving_points(marks, u)
    from vtn.functional import transport_points

    moved = transport_points(torch.from_numpy(marks), torch.from_numpy(disp).double()).numpy()
    before = np.linalg.norm(marks - truth, axis=1).mean()
    after = np.linalg.norm(moved - truth, axis=1).mean()
    print(f"{method}: landmark error {before:.3f} -> {after:.3f} voxels")
    assert before > 3.0
    assert after < 0.3 * before, (before, after)


# ----------------------------------------------------------------------------- CLI / contract

def _dataset(tmp_path, n=24, seg_affine=None):
    fixed, labels, marks = phantom(n)
    u = known_deformation(n)
    moving = make_moving(fixed, u)
    mlabels = make_moving(labels.astype(np.float32), u, order=0).astype(np.int16)
    d = tmp_path / "prep"
    d.mkdir()
    rows = []
    for sid, img, lab in (("a", fixed, labels), ("b", moving, mlabels)):
        save_volume(d / f"{sid}_image.nii.gz", img, LPS_AFFINE)
        save_volume(d / f"{sid}_seg.nii.gz", lab,
                    LPS_AFFINE if seg_affine is None or sid == "a" else seg_affine)
        save_landmarks(d / f"{sid}_landmarks.csv", ["l0", "l1", "l2", "l3"], marks)
        rows.append({"subject": sid, "image": f"{sid}_image.nii.gz", "seg": f"{sid}_seg.nii.gz",
                     "landmarks": f"{sid}_landmarks.csv"})
    pd.DataFrame(rows).to_csv(d / "subjects.csv", index=False)
    pd.DataFrame({"fixed": ["a"], "moving": ["b"]}).to_csv(tmp_path / "pairs.csv", index=False)
    return d / "subjects.csv", tmp_path / "pairs.csv", moving, mlabels


def _check_contract(out, moving, mlabels, method, threads):
    n = moving.shape[0]
    disp, aff = load_disp_l2r(out / "disp_a_b.nii.gz")
    assert disp.shape == (3, n, n, n)
    np.testing.assert_allclose(aff, LPS_AFFINE)
    warped, waff = load_volume(out / "warped_a_b.nii.gz")
    np.testing.assert_allclose(waff, LPS_AFFINE)
    np.testing.assert_allclose(warped, _our_warp(moving, disp), atol=1e-5)
    seg, _ = load_volume(out / "warpedseg_a_b.nii.gz", dtype=None)
    assert np.issubdtype(seg.dtype, np.integer) and set(np.unique(seg)) <= set(np.unique(mlabels))
    names, pts = load_landmarks(out / "landmarks_a_b.csv")
    assert names == ["l0", "l1", "l2", "l3"] and pts.shape == (4, 3)
    times = pd.read_csv(out / "times.csv")
    assert list(times.columns) == ["fixed", "moving", "seconds", "device", "threads"]
    assert times.loc[0, "fixed"] == "a" and times.loc[0, "device"] == "cpu"
    assert times.loc[0, "threads"] == threads and times.loc[0, "seconds"] > 0
    meta = json.loads((out / "method.json").read_text())
    assert meta["method"] == method and meta["preset"] == "fast" and meta["arguments"]


def test_cli_ants_writes_contract(tmp_path):
    from vtn.baselines.run import cli

    subjects, pairs, moving, mlabels = _dataset(tmp_path)
    out = tmp_path / "reg"
    rc = cli(["--method", "ants", "--preset", "fast", "--subjects", str(subjects),
              "--pairs", str(pairs), "--out", str(out), "--threads", "1"])
    assert rc == 0
    _check_contract(out, moving, mlabels, "ants", 1)
    meta = json.loads((out / "method.json").read_text())
    assert meta["seed"] == 1 and "-c" in meta["arguments"]


@pytest.mark.slow
def test_cli_elastix_writes_contract(tmp_path):
    from vtn.baselines.run import cli

    subjects, pairs, moving, mlabels = _dataset(tmp_path)
    out = tmp_path / "reg"
    rc = cli(["--method", "elastix", "--preset", "fast", "--subjects", str(subjects),
              "--pairs", str(pairs), "--out", str(out), "--threads", "2"])
    assert rc == 0
    _check_contract(out, moving, mlabels, "elastix", 2)
    meta = json.loads((out / "method.json").read_text())
    assert meta["parameter_maps"][1]["MaximumNumberOfIterations"] == ["250"]


def test_bad_input_missing_image(tmp_path):
    from vtn.baselines.run import run_baseline

    subjects, pairs, _, _ = _dataset(tmp_path)
    (subjects.parent / "b_image.nii.gz").unlink()
    with pytest.raises(InputError, match="b_image.nii.gz"):
        run_baseline("ants", subjects, pairs, tmp_path / "out", preset="fast")
    assert not (tmp_path / "out").exists()


def test_bad_input_seg_grid_mismatch(tmp_path):
    from vtn.baselines.run import run_baseline

    bad = LPS_AFFINE.copy()
    bad[0, 3] += 5.0
    subjects, pairs, _, _ = _dataset(tmp_path, seg_affine=bad)
    with pytest.raises(InputError, match="b_seg.nii.gz"):
        run_baseline("elastix", subjects, pairs, tmp_path / "out", preset="fast")


def test_bad_input_unknown_subject_and_shape(tmp_path):
    from vtn.baselines.run import cli, run_baseline

    subjects, pairs, _, _ = _dataset(tmp_path)
    pd.DataFrame({"fixed": ["a"], "moving": ["zz"]}).to_csv(tmp_path / "p2.csv", index=False)
    with pytest.raises(InputError, match="'zz'"):
        run_baseline("ants", subjects, tmp_path / "p2.csv", tmp_path / "out")
    save_volume(subjects.parent / "b_image.nii.gz", np.zeros((20, 24, 24), np.float32), LPS_AFFINE)
    with pytest.raises(InputError, match="b_image.nii.gz"):
        run_baseline("ants", subjects, pairs, tmp_path / "out")
    assert cli(["--method", "ants", "--subjects", str(subjects), "--pairs", str(pairs),
                "--out", str(tmp_path / "o")]) == 1
