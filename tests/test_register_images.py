"""Tests of ``vtn register-images`` (and ``vtn.io.read_scan``): a known affine pair in two
orientations, spacings and file formats; the written ITK warp applied by antspyx and SimpleITK to
the original moving scan; clear errors."""

import json
import re
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from test_recipe import make_liver_study  # tests/ is on sys.path
from vtn import recipe as R
from vtn import register_images as RI
from vtn.cli import main as vtn_main
from vtn.io import InputError, read_scan

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# fixed: ITK identity direction (LPS axes), 1 x 1 x 2 mm; moving: RAS axes, 1.5 mm isotropic
A_F = LPS @ np.diag([1.0, 1.0, 2.0, 1.0])
A_F[:3, 3] = [18.0, 14.0, -22.0]
A_M = np.diag([1.5, 1.5, 1.5, 1.0])
A_M[:3, 3] = [-25.0, -23.0, -24.0]
FIXED_SHAPE, MOVING_SHAPE = (40, 34, 24), (34, 32, 33)


def world_transform():
    """Fixed world (RAS mm) -> moving world: rotations 8 deg about z and 4 deg about x, scale
    1.04, a shift, about (0, 0, 0)."""
    a, c = np.deg2rad(8.0), np.deg2rad(4.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    t = np.eye(4)
    t[:3, :3] = 1.04 * rz @ rx
    t[:3, 3] = [2.5, -1.5, 1.2]
    return t


def anatomy(y):
    """HU of a world point (RAS mm): air, a body ellipsoid (40 HU), a liver ellipsoid (~110 HU
    with texture)."""
    body = ((y[..., 0] / 22) ** 2 + (y[..., 1] / 20) ** 2 + (y[..., 2] / 30) ** 2) < 1
    liver = (((y[..., 0] - 3) / 11) ** 2 + ((y[..., 1] + 1) / 9) ** 2 + ((y[..., 2] - 1) / 14) ** 2) < 1
    tex = 25 * np.sin(y[..., 0] / 3.0) * np.cos(y[..., 1] / 4.0) + 10 * np.sin(y[..., 2] / 5.0)
    return np.where(liver, 110 + tex, np.where(body, 40 + 0.3 * tex, -1000.0)).astype(np.float32), liver


def _world(shape, aff):
    v = np.indices(shape).reshape(3, -1).T.astype(float)
    return (aff @ np.c_[v, np.ones(len(v))].T).T[:, :3].reshape(*shape, 3)


def write_dicom_series(arr, aff, folder):
    """An int16 DICOM series (one file per slice) of an (X, Y, Z) array with an LPS-identity
    direction (``aff`` = LPS @ diag(spacing) + origin). GDCM's writer switches the process to
    the C locale (later text reads would default to ASCII): the locale is restored."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_series(arr, aff, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(arr, aff, folder):
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    img = sitk.GetImageFromArray(np.rint(arr).astype(np.int16).transpose(2, 1, 0))
    img.SetSpacing([float(s) for s in np.abs(np.diag(aff)[:3])])
    img.SetOrigin((LPS @ aff)[:3, 3].tolist())
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1" + time.strftime("%H%M%S")
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, val in (("0008|0060", "CT"), ("0020|000e", uid), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                         ("0020|0013", str(k)),
                         ("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k)))))):
            sl.SetMetaData(tag, val)
        w.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        w.Execute(sl)
    return folder


def make_pair(root, fixed_format):
    """The moving scan (NIfTI, RAS 1.5 mm) and the fixed scan = moving pulled through the world
    transform (MetaImage or DICOM, LPS 1 x 1 x 2 mm); liver masks, labels and landmarks."""
    import SimpleITK as sitk

    root.mkdir(parents=True, exist_ok=True)
    T = world_transform()
    mov, mliver = anatomy(_world(MOVING_SHAPE, A_M))
    fx = _world(FIXED_SHAPE, A_F)
    fix, fliver = anatomy(fx @ T[:3, :3].T + T[:3, 3])
    p = {"moving": root / "moving.nii.gz", "moving_seg": root / "moving_seg.nii.gz",
         "moving_mask": root / "moving_mask.nii.gz", "fixed_mask": root / "fixed_mask.nii.gz"}
    nib.save(nib.Nifti1Image(mov, A_M), str(p["moving"]))
    seg = (mliver * 6 + (mov > 0) * (~mliver) * 2).astype(np.int16)
    nib.save(nib.Nifti1Image(seg, A_M), str(p["moving_seg"]))
    nib.save(nib.Nifti1Image(mliver.astype(np.uint8), A_M), str(p["moving_mask"]))
    nib.save(nib.Nifti1Image(fliver.astype(np.uint8), A_F), str(p["fixed_mask"]))
    if fixed_format == "mha":
        img = sitk.GetImageFromArray(fix.transpose(2, 1, 0))
        img.SetSpacing([1.0, 1.0, 2.0])
        img.SetOrigin((LPS @ A_F)[:3, 3].tolist())
        p["fixed"] = root / "fixed.mha"
        sitk.WriteImage(img, str(p["fixed"]))
    else:
        p["fixed"] = write_dicom_series(fix, A_F, root / "fixed_dicom")
    pd.DataFrame({"name": ["in", "edge"], "x": [2.0, -12.0], "y": [0.5, 6.0],
                  "z": [3.0, -10.0]}).to_csv(root / "fixed_lm.csv", index=False)
    p["fixed_landmarks"] = root / "fixed_lm.csv"
    return p


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """A trained 'AD' liver model (1 step, dense subnets started near the identity) packaged."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("register_images")
    s = make_liver_study(root, cascade="AD", flow_init_scale=0.05)
    return R.package_model(s["ckpt"], [s["csv"]], root / "model.pt", log=lambda m: None)


def set_weights(src, dst, W, b, dense_scale):
    """A copy of a package whose affine subnet predicts exactly ``W p_c + b`` for every input
    (all weights zero, the last encoder bias 1, constant head kernels summing to W and b) and
    whose dense subnet's flow is scaled by ``dense_scale`` (0: exactly the affine)."""
    pkg = torch.load(src, weights_only=True)
    state = pkg["model_state"]
    aff_keys = [k for k in state if k.startswith("subnets.0.")]
    for k in aff_keys:
        state[k] = torch.zeros_like(state[k])
    last = [k for k in aff_keys if "encoder" in k and k.endswith("conv.bias")][-1]
    state[last].fill_(1.0)
    for key, values in (("subnets.0.conv7_W.weight", np.asarray(W).reshape(9)),
                        ("subnets.0.conv7_b.weight", np.asarray(b))):
        for r, v in enumerate(values):
            state[key][r] = float(v) / state[key][r].numel()
    state["subnets.1.pred0.weight"] *= dense_scale
    torch.save(pkg, dst)
    return dst


def prep_affine(summary, T, size):
    """(W, b) of the model-grid affine that realises the world transform T for this pair's
    crops: M = G_m^-1 A_m^-1 T A_f G_f, and x + W (x - c) + b = M x."""
    pf, pm = summary["preprocessing"]["fixed"], summary["preprocessing"]["moving"]
    G_f, G_m = np.array(pf["prep_to_raw"]), np.array(pm["prep_to_raw"])
    Af, Am = np.array(pf["raw_affine"]), np.array(pm["raw_affine"])
    M = np.linalg.inv(G_m) @ np.linalg.inv(Am) @ T @ Af @ G_f
    c = np.full(3, (size - 1) / 2.0)
    return M[:3, :3] - np.eye(3), M[:3, 3] + M[:3, :3] @ c - c


def _sitk_read(path):
    import SimpleITK as sitk

    if path.is_dir():
        r = sitk.ImageSeriesReader()
        r.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)))
        return r.Execute()
    return sitk.ReadImage(str(path))


def _run(model, p, out, *extra):
    args = ["register-images", "--model", str(model), str(p["fixed"]), str(p["moving"]),
            "--out", str(out), "--device", "cpu", *extra]
    return vtn_main(args)


def test_known_affine_pair_is_exact(packaged, tmp_path, capsys):
    """DICOM fixed (LPS, 1 x 1 x 2 mm) and NIfTI moving (RAS, 1.5 mm) related by a known world
    affine: every output follows in closed form, inside and outside the crop box."""
    import SimpleITK as sitk

    p = make_pair(tmp_path / "data", "dicom")
    T = world_transform()
    out = tmp_path / "out"
    masks = ["--fixed-mask", str(p["fixed_mask"]), "--moving-mask", str(p["moving_mask"])]
    probe = set_weights(packaged, tmp_path / "probe.pt", np.zeros((3, 3)), np.zeros(3), 0.0)
    assert _run(probe, p, out, *masks) == 0
    stem = "fixed_dicom_moving"
    summary = json.loads((out / f"registration_{stem}.json").read_text())
    W, b = prep_affine(summary, T, 16)
    assert np.abs(W).max() > 0.05 and np.abs(b).max() > 0.1  # not a trivial affine
    model = set_weights(packaged, tmp_path / "known.pt", W, b, 0.0)
    assert _run(model, p, out, *masks) == 1  # outputs exist
    assert "--overwrite" in capsys.readouterr().err
    assert _run(model, p, out, *masks, "--moving-seg", str(p["moving_seg"]),
                "--fixed-landmarks", str(p["fixed_landmarks"]), "--overwrite") == 0
    err = capsys.readouterr().err
    assert all(f"[{k}/7]" in err for k in range(1, 8))
    assert "vtn register-images: fixed_dicom_moving:" in err and "folding 0.000 %" in err
    summary = json.loads((out / f"registration_{stem}.json").read_text())
    assert summary["outside_crop"] == "affine" and summary["folding_percent"] == 0.0
    assert 5 < summary["inside_crop_percent"] < 95  # both sides of the crop box are checked

    f_arr, f_aff = read_scan(p["fixed"])
    np.testing.assert_allclose(f_aff, A_F, atol=1e-4)
    v = np.indices(FIXED_SHAPE).reshape(3, -1).T.astype(float)
    x = (A_F @ np.c_[v, np.ones(len(v))].T).T
    y = (T @ x.T).T
    w = (np.linalg.inv(A_M) @ y.T).T[:, :3]
    disp = np.asarray(nib.load(str(out / f"disp_{stem}.nii.gz")).dataobj)
    assert disp.shape == (*FIXED_SHAPE, 3)
    np.testing.assert_allclose(disp.reshape(-1, 3), w - v, atol=2e-3)
    itk = np.asarray(nib.load(str(out / f"warp_{stem}.nii.gz")).dataobj)
    np.testing.assert_allclose(itk.reshape(-1, 3), ((y - x)[:, :3]) * [-1, -1, 1], atol=2e-3)
    # warped scan and labels: SimpleITK with the world affine (LPS) on the original files
    T_lps = LPS @ T @ LPS
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(T_lps[:3, :3].ravel().tolist())
    tx.SetTranslation(T_lps[:3, 3].tolist())
    fixed_img = _sitk_read(p["fixed"])
    ref = sitk.GetArrayFromImage(sitk.Resample(_sitk_read(p["moving"]), fixed_img, tx,
                                               sitk.sitkLinear, 0.0)).T
    ours = nib.load(str(out / f"warped_{stem}.nii.gz")).get_fdata()
    mov, _ = read_scan(p["moving"])
    assert np.abs(ours - ref).max() < 1e-3 * np.ptp(mov)
    assert np.abs(ours - f_arr).max() > 100  # content moved (fixed is int16-rounded HU)
    lab = sitk.GetArrayFromImage(sitk.Resample(_sitk_read(p["moving_seg"]), fixed_img, tx,
                                               sitk.sitkNearestNeighbor, 0)).T
    wseg = np.asarray(nib.load(str(out / f"warpedseg_{stem}.nii.gz")).dataobj)
    assert wseg.dtype == np.int16  # the label map's own type
    clear = (np.abs(np.abs(w - np.floor(w)) - 0.5) > 1e-3).all(axis=1).reshape(FIXED_SHAPE)
    np.testing.assert_array_equal(wseg[clear], lab[clear])
    assert (wseg == 6).sum() > 100
    lms = pd.read_csv(out / f"landmarks_{stem}.csv")
    pts = pd.read_csv(p["fixed_landmarks"])[["x", "y", "z"]].to_numpy()
    np.testing.assert_allclose(lms[["x", "y", "z"]].to_numpy(),
                               (T @ np.c_[pts, np.ones(2)].T).T[:, :3], atol=2e-3)
    assert (out / f"overlay_{stem}.png").stat().st_size > 10000


def test_itk_warp_applied_by_ants_and_simpleitk(packaged, tmp_path):
    """A dense deformation (affine + dense subnet), no masks (the recipe's liver finder): the
    written ITK warp applied to the ORIGINAL moving scan by antspyx and by SimpleITK gives our
    full-resolution warped scan."""
    ants = pytest.importorskip("ants")
    import SimpleITK as sitk

    p = make_pair(tmp_path / "data", "mha")
    W = np.array([[0.04, -0.06, 0.0], [0.05, 0.02, 0.01], [0.0, 0.03, -0.05]])
    model = set_weights(packaged, tmp_path / "dense.pt", W, np.array([0.6, -0.8, 0.4]), 1.0)
    out = tmp_path / "out"
    RI.register_images(model, p["fixed"], p["moving"], out, device="cpu", log=lambda s: None)
    stem = "fixed_moving"
    summary = json.loads((out / f"registration_{stem}.json").read_text())
    assert summary["preprocessing"]["fixed"]["box_source"] == "threshold liver finder"
    ours = nib.load(str(out / f"warped_{stem}.nii.gz")).get_fdata()
    disp = np.asarray(nib.load(str(out / f"disp_{stem}.nii.gz")).dataobj)
    w = np.indices(FIXED_SHAPE).transpose(1, 2, 3, 0) + disp
    overlap = ((w >= 0.5) & (w <= np.array(MOVING_SHAPE) - 1.5)).all(axis=-1)
    assert overlap.mean() > 0.3
    mov, _ = read_scan(p["moving"])
    tol = 1e-3 * np.ptp(mov)
    res = ants.apply_transforms(fixed=ants.image_read(str(p["fixed"])),
                                moving=ants.image_read(str(p["moving"])),
                                transformlist=[str(out / f"warp_{stem}.nii.gz")], interpolator="linear")
    assert res.numpy().shape == ours.shape
    assert np.abs(res.numpy() - ours)[overlap].max() < tol
    field = sitk.ReadImage(str(out / f"warp_{stem}.nii.gz"), sitk.sitkVectorFloat64)
    via = sitk.Resample(sitk.ReadImage(str(p["moving"])), sitk.ReadImage(str(p["fixed"])),
                        sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0)
    assert np.abs(sitk.GetArrayFromImage(via).T - ours)[overlap].max() < tol
    # the deformation is not an affine map: a second difference of the map is far from zero
    curv = np.abs(np.diff(disp, n=2, axis=0))[1:-1, 1:-1, 1:-1].max()
    assert curv > 0.05 and summary["outside_crop"] == "affine"


def test_read_scan_formats_and_errors(tmp_path):
    import SimpleITK as sitk

    arr = np.random.default_rng(0).normal(size=(9, 8, 7)).astype(np.float32) * 100
    dcm = write_dicom_series(arr, A_F, tmp_path / "dcm")
    got, aff = read_scan(dcm)
    np.testing.assert_array_equal(got, np.rint(arr))
    np.testing.assert_allclose(aff, A_F, atol=1e-5)
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetSpacing((0.7, 0.8, 1.9))
    img.SetDirection(np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], float).ravel().tolist())
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    got, aff = read_scan(tmp_path / "a.nrrd")
    np.testing.assert_array_equal(got, arr)
    np.testing.assert_allclose(aff[:3, :3], LPS[:3, :3] @ np.array([[0, 0.8, 0], [0.7, 0, 0], [0, 0, -1.9]]))
    second = write_dicom_series(arr, A_F, tmp_path / "two" / "a")
    for f in second.iterdir():
        f.rename(tmp_path / "two" / f.name)
    time.sleep(1.1)  # another series UID
    for f in write_dicom_series(arr, A_F, tmp_path / "two" / "b").iterdir():
        f.rename(tmp_path / "two" / ("b" + f.name))
    with pytest.raises(InputError, match="2 DICOM series"):
        read_scan(tmp_path / "two")
    sitk.WriteImage(sitk.GetImageFromArray(arr[:, :, 0]), str(tmp_path / "flat.mha"))
    with pytest.raises(InputError, match=r"flat\.mha: a 2-D image"):
        read_scan(tmp_path / "flat.mha")


def _bad_inputs(tmp):
    good = np.random.default_rng(1).normal(size=(20, 18, 16)).astype(np.float32)
    cases = {}
    nib.save(nib.Nifti1Image(good[:, :, :1], np.eye(4)), str(tmp / "slice.nii.gz"))
    cases["2-D"] = (tmp / "slice.nii.gz", r"slice\.nii\.gz: a 2-D image")
    nib.save(nib.Nifti1Image(np.stack([good] * 3, -1), np.eye(4)), str(tmp / "series.nii.gz"))
    cases["4-D"] = (tmp / "series.nii.gz", r"series\.nii\.gz: a 4-D series of 3 volumes")
    nan = good.copy()
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp / "nan.nii.gz"))
    cases["NaN"] = (tmp / "nan.nii.gz", r"nan\.nii\.gz: 1 voxels are NaN")
    return cases


@pytest.mark.parametrize("case", ["2-D", "4-D", "NaN"])
def test_bad_scans_are_clear_errors(packaged, tmp_path, case, capsys):
    path, msg = _bad_inputs(tmp_path)[case]
    p = make_pair(tmp_path / "data", "mha")
    assert vtn_main(["register-images", "--model", str(packaged), str(p["fixed"]), str(path),
                     "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("vtn register-images: error:")
    assert re.search(msg, last), last
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_model_and_organ_errors(packaged, tmp_path, capsys):
    p = make_pair(tmp_path / "data", "mha")
    with pytest.raises(InputError, match="trained on liver scans.*--organ brain"):
        RI.register_images(packaged, p["fixed"], p["moving"], tmp_path / "o", organ="brain",
                           device="cpu", log=lambda s: None)
    ckpt = packaged.parent / "model" / "checkpoint.pt"
    with pytest.raises(InputError, match="package it first"):
        RI.register_images(ckpt, p["fixed"], p["moving"], tmp_path / "o", device="cpu",
                           log=lambda s: None)
    other = tmp_path / "other_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), np.eye(4)), str(other))
    with pytest.raises(InputError, match=r"other_seg\.nii\.gz: label map of shape .* not on the grid"):
        RI.register_images(packaged, p["fixed"], p["moving"], tmp_path / "o", moving_seg=other,
                           device="cpu", log=lambda s: None)
    far = tmp_path / "far.csv"
    pd.DataFrame({"name": ["far"], "x": [500.0], "y": [0.0], "z": [0.0]}).to_csv(far, index=False)
    with pytest.raises(InputError, match=r"far\.csv: landmark\(s\) outside the fixed image.*far at"):
        RI.register_images(packaged, p["fixed"], p["moving"], tmp_path / "o", fixed_landmarks=far,
                           device="cpu", log=lambda s: None)
    assert not (tmp_path / "o").exists()


def _vtn_subprocess(*args):
    """``python -m vtn ARGS`` in a fresh process (one ITK thread); returns its stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "vtn", *map(str, args)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.fixture(scope="module")
def star_study(tmp_path_factory):
    """A star model: three liver CTs (s1 on another grid: axes swapped, other spacing),
    ``vtn preprocess`` at 16^3, ``vtn prealign`` to s0's preprocessed image (ANTs, fast preset),
    a 'D' cascade trained one step on the aligned images, packaged."""
    pytest.importorskip("ants")
    from test_preprocess import AFF, write_subject, write_table

    from vtn import train as T
    from vtn.data import preprocess as pp

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("star")
    raw = root / "raw"
    raw.mkdir()
    recs = [write_subject(raw, f"s{i}", seed=i) for i in range(3)]
    aff1 = AFF[:, [1, 0, 2, 3]] * [1.2, 1.0, 0.8, 1.0]
    for name in ("s1.nii.gz", "s1_seg.nii.gz"):
        arr = np.asarray(nib.load(str(raw / name)).dataobj)
        nib.save(nib.Nifti1Image(arr.transpose(1, 0, 2).copy(), aff1), str(raw / name))
    for i in range(3):  # liver masks for register-images (the crop of the training data)
        seg = nib.load(str(raw / f"s{i}_seg.nii.gz"))
        nib.save(nib.Nifti1Image((np.asarray(seg.dataobj) == 5).astype(np.uint8), seg.affine),
                 str(raw / f"s{i}_mask.nii.gz"))
    table = write_table(raw, recs)
    prep = root / "prep"
    pp.preprocess_dataset(table, "liver", 16, raw / "s0.nii.gz", prep,
                          reference_seg=raw / "s0_seg.nii.gz", log=lambda s: None)
    aligned = root / "prep_atlas"
    # ANTs in a fresh process: ITK fixes its thread count at the first ANTs call of a process,
    # and only one thread makes the registration deterministic (register-images below likewise)
    _vtn_subprocess("prealign", "--subjects", prep / "subjects.csv", "--atlas",
                    prep / "s0_image.nii.gz", "--out", aligned, "--threads", "1", "--preset", "fast")
    cfg = dict(type="vtn", cascade="D", image_size=16, epochs=1, iterations=1, batch=2,
               augment=False, checkpoint_every=5, flow_init_scale=0.05)
    ckpt = T.train([aligned / "subjects.csv"], cfg, root / "m" / "checkpoint.pt",
                   root / "m" / "log.csv", device="cpu")
    model = R.package_model(ckpt, [aligned / "subjects.csv"], root / "model.pt",
                            log=lambda m: None)
    return {"raw": raw, "prep": prep, "aligned": aligned, "model": model}


def test_star_model_package_and_register_images(star_study, tmp_path):
    """A model trained on atlas pre-aligned images: the package embeds the atlas; register-images
    aligns both preprocessed scans to it with ANTs as vtn prealign did and maps the result back
    to the ORIGINAL scans through prep_to_raw @ atlas_to_prep -- the same files as vtn.native
    writes from the pre-aligned training records and the network's flow on them."""
    from vtn.io import load_volume
    from vtn.native import write_native_from_prep

    raw, aligned = star_study["raw"], star_study["aligned"]
    pkg = torch.load(star_study["model"], weights_only=True)
    pa_rec = pkg["recipe"]["prealign"]
    atlas, atlas_aff = load_volume(star_study["prep"] / "s0_image.nii.gz")
    np.testing.assert_array_equal(pa_rec["atlas_image"].numpy(), atlas)
    np.testing.assert_allclose(pa_rec["atlas_affine"], atlas_aff)
    assert (pa_rec["preset"], pa_rec["random_seed"]) == ("fast", 1)
    assert "Atlas pre-alignment (star model)" in star_study["model"].with_suffix(".md").read_text()

    out = tmp_path / "out"
    masks = ("--fixed-mask", raw / "s1_mask.nii.gz", "--moving-mask", raw / "s2_mask.nii.gz")
    err = _vtn_subprocess("register-images", "--model", star_study["model"], raw / "s1.nii.gz",
                          raw / "s2.nii.gz", "--out", out, *masks, "--moving-seg",
                          raw / "s2_seg.nii.gz", "--device", "cpu", "--threads", "1")
    assert all(f"[{k}/8]" in err for k in range(1, 9)) and "pre-aligning both scans" in err
    summary = json.loads((out / "registration_s1_s2.json").read_text())
    assert summary["prealign_threads"] == 1
    metas = {s: json.loads((aligned / f"{s}_prep.json").read_text()) for s in ("s1", "s2")}
    for tag, sid in (("fixed", "s1"), ("moving", "s2")):
        got = np.array(summary["preprocessing"][tag]["atlas_to_prep"])
        np.testing.assert_allclose(got, metas[sid]["atlas_to_prep"], atol=1e-6)
    a2p = np.array(metas["s1"]["atlas_to_prep"])
    assert np.abs(a2p[:3, :3] - np.eye(3)).max() > 0.05  # s1 lies on another grid: not trivial

    # reference: the network on the pre-aligned training images, mapped by vtn.native
    net, _ = R.load_package(star_study["model"])
    imgs = [torch.from_numpy(load_volume(aligned / f"{s}_image.nii.gz")[0])[None, None]
            for s in ("s1", "s2")]
    with torch.inference_mode():
        flow = net(*imgs)["flow"][0].double()
    ref = write_native_from_prep(tmp_path / "ref", metas["s1"], metas["s2"], flow.numpy())
    assert ref["outside"] == "identity" and summary["outside_crop"] == "identity"
    for name in ("disp_s1_s2.nii.gz", "warp_s1_s2.nii.gz", "warped_s1_s2.nii.gz"):
        ours = np.asarray(nib.load(str(out / name)).dataobj)
        theirs = np.asarray(nib.load(str(tmp_path / "ref" / name)).dataobj)
        np.testing.assert_allclose(ours, theirs, atol=1e-5 * max(1.0, np.abs(theirs).max()))
    # without atlas_to_prep the map would be another one: the pre-alignment really enters it
    plain = {s: {k: v for k, v in m.items() if k != "atlas_to_prep"} for s, m in metas.items()}
    write_native_from_prep(tmp_path / "plain", plain["s1"], plain["s2"], flow.numpy())
    d_plain = np.asarray(nib.load(str(tmp_path / "plain" / "disp_s1_s2.nii.gz")).dataobj)
    d_ours = np.asarray(nib.load(str(out / "disp_s1_s2.nii.gz")).dataobj)
    assert np.abs(d_plain - d_ours).max() > 1.0
    # independent of our voxel matrices: with zero network flow the ITK warp is the world map
    # of the two ANTs transforms (atlas -> fixed / moving scan, LPS mm) that vtn prealign
    # recorded, T_m T_f^-1, at every voxel of the original fixed scan (inside and outside the crop)
    zero = torch.load(star_study["model"], weights_only=True)
    for k in [k for k in zero["model_state"] if "pred0" in k]:
        zero["model_state"][k].zero_()
    torch.save(zero, tmp_path / "zero.pt")
    _vtn_subprocess("register-images", "--model", tmp_path / "zero.pt", raw / "s1.nii.gz",
                    raw / "s2.nii.gz", "--out", tmp_path / "zero", *masks, "--device", "cpu")
    t_f, t_m = (np.array(metas[s]["prealign"]["ants_lps_fixed_to_moving"]) for s in ("s1", "s2"))
    f_img = nib.load(str(raw / "s1.nii.gz"))
    v = np.indices(f_img.shape).reshape(3, -1).T
    p_lps = (LPS @ f_img.affine @ np.c_[v, np.ones(len(v))].T)
    q_lps = t_m @ np.linalg.inv(t_f) @ p_lps
    itk = np.asarray(nib.load(str(tmp_path / "zero" / "warp_s1_s2.nii.gz")).dataobj)
    np.testing.assert_allclose(itk[:, :, :, 0, :].reshape(-1, 3), (q_lps - p_lps)[:3].T, atol=1e-3)
    assert np.abs(q_lps - p_lps).max() > 5.0  # the grids differ: not the identity
