"""Tests of vtn.register: output contract, known affine checkpoints, ANTs cross-check of the
exported ITK warp."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from test_train import make_subjects  # the fake-dataset helper (tests/ is on sys.path)
from vtn import register as R
from vtn import train as T
from vtn.contract import read_affine_part
from vtn.functional import affine_flow
from vtn.io import InputError, load_disp_l2r, load_itk_warp, load_landmarks


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def affine_checkpoint(tmp_path, csv, size, W, b):
    """A real 'A' checkpoint (1 training step) whose weights are replaced so that the model
    predicts exactly the affine flow ``W p_c + b`` for every input: all weights zero, the last
    encoder convolution's bias 1 (constant features 1 after LeakyReLU) and the two head kernels
    constant with sums ``W`` and ``b``."""
    cfg = dict(type="vtn", cascade="A", image_size=size, epochs=1, iterations=1, batch=2,
               augment=False, checkpoint_every=5)
    path = T.train([csv], cfg, tmp_path / "model" / "trained.pt", tmp_path / "model" / "log.csv",
                   device="cpu")
    ckpt = T.load_checkpoint(path)
    state = {k: torch.zeros_like(v) for k, v in ckpt["model_state"].items()}
    last_bias = [k for k in state if "encoder" in k and k.endswith("conv.bias")][-1]
    state[last_bias].fill_(1.0)
    for key, values in (("subnets.0.conv7_W.weight", np.asarray(W).reshape(9)),
                        ("subnets.0.conv7_b.weight", np.asarray(b))):
        w = state[key]
        for r, v in enumerate(values):
            w[r] = float(v) / w[r].numel()
    ckpt["model_state"] = state
    return T.save_checkpoint(tmp_path / "model" / "known.pt", ckpt)


def test_pure_shift_contract(tmp_path):
    size = 16
    csv = make_subjects(tmp_path / "data", n=3, size=size)
    shift = np.array([2.0, -1.0, 3.0])
    pt = affine_checkpoint(tmp_path, csv, size, np.zeros((3, 3)), shift)
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"fixed": ["s00", "s02"], "moving": ["s01", "s00"]}).to_csv(pairs, index=False)
    out = tmp_path / "reg"
    assert R.cli(["--checkpoint", str(pt), "--subjects", str(csv), "--pairs", str(pairs),
                  "--out", str(out), "--device", "cpu"]) == 0
    fixed_img = nib.load(str(tmp_path / "data" / "s00_image.nii.gz"))
    idx = np.indices((size,) * 3)
    src = tuple(np.clip(idx[a] + int(shift[a]), 0, size - 1) for a in range(3))
    for f, m in (("s00", "s01"), ("s02", "s00")):
        disp, aff = load_disp_l2r(out / f"disp_{f}_{m}.nii.gz")
        assert disp.shape == (3, size, size, size) and disp.dtype == np.float32
        np.testing.assert_allclose(aff, fixed_img.affine)
        np.testing.assert_allclose(disp, np.broadcast_to(shift[:, None, None, None], disp.shape),
                                   atol=1e-5)
        assert nib.load(str(out / f"disp_{f}_{m}.nii.gz")).shape == (size, size, size, 3)
        # warped = moving(x + shift), border clamp
        moving = nib.load(str(tmp_path / "data" / f"{m}_image.nii.gz")).get_fdata()
        warped = nib.load(str(out / f"warped_{f}_{m}.nii.gz"))
        np.testing.assert_allclose(warped.affine, fixed_img.affine)
        assert warped.get_data_dtype() == np.float32
        np.testing.assert_allclose(warped.get_fdata(), moving[src], atol=1e-5)
        seg = nib.load(str(tmp_path / "data" / f"{m}_seg.nii.gz"))
        wseg = nib.load(str(out / f"warpedseg_{f}_{m}.nii.gz"))
        assert wseg.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(wseg.dataobj), np.asarray(seg.dataobj)[src])
        np.testing.assert_allclose(wseg.affine, fixed_img.affine)
        # fixed landmarks carried into the moving image: p + shift
        names, p_fixed = load_landmarks(tmp_path / "data" / f"{f}_landmarks.csv")
        names2, p_out = load_landmarks(out / f"landmarks_{f}_{m}.csv")
        assert names2 == names
        np.testing.assert_allclose(p_out, p_fixed + shift, atol=1e-5)
        assert not (out / f"warp_{f}_{m}.nii.gz").exists()
    times = pd.read_csv(out / "times.csv")
    assert list(times.columns) == ["fixed", "moving", "seconds", "device", "threads"]
    assert times[["fixed", "moving"]].values.tolist() == [["s00", "s01"], ["s02", "s00"]]
    assert (times["seconds"] > 0).all() and (times["device"] == "cpu").all()
    assert (times["threads"] == 1).all()
    meta = json.loads((out / "method.json").read_text())
    assert meta["method"] == "vtn" and meta["device"] == "cpu" and meta["train_step"] == 1
    assert meta["model_config"]["spec"] == "A"


def test_zero_model_is_identity_and_errors(tmp_path):
    size = 16
    csv = make_subjects(tmp_path / "data", n=2, size=size, seg=False)
    pt = affine_checkpoint(tmp_path, csv, size, np.zeros((3, 3)), np.zeros(3))
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"fixed": ["s01"], "moving": ["s00"]}).to_csv(pairs, index=False)
    R.register_pairs(pt, csv, pairs, tmp_path / "reg", device="cpu")
    _, p_fixed = load_landmarks(tmp_path / "data" / "s01_landmarks.csv")
    _, p_out = load_landmarks(tmp_path / "reg" / "landmarks_s01_s00.csv")
    np.testing.assert_allclose(p_out, p_fixed, atol=1e-6)
    assert not (tmp_path / "reg" / "warpedseg_s01_s00.nii.gz").exists()  # no moving seg
    # errors name the offending file
    pd.DataFrame({"fixed": ["s01"], "moving": ["nope"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"bad\.csv.*'nope'"):
        R.register_pairs(pt, csv, tmp_path / "bad.csv", tmp_path / "reg2", device="cpu")
    other = make_subjects(tmp_path / "big", n=2, size=32)
    with pytest.raises(InputError, match=r"s01_image\.nii\.gz.*\(32, 32, 32\)"):
        R.register_pairs(pt, other, pairs, tmp_path / "reg3", device="cpu")
    with pytest.raises(InputError, match="missing.pt"):
        R.register_pairs(tmp_path / "missing.pt", csv, pairs, tmp_path / "reg4", device="cpu")


@pytest.mark.parametrize("moving_grid", ["same", "other"])
def test_itk_warp_reproduced_by_ants(tmp_path, moving_grid):
    """With ``other``, the moving image lies on a different grid (another crop and spacing, as
    two preprocessed subjects do): the ITK warp must use both affines."""
    ants = pytest.importorskip("ants")
    size = 32
    # an oblique, flipped, anisotropic grid (shared by all subjects, as after preprocessing)
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                    [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.2, 0.9, 1.5])
    affine[:3, 3] = [30.0, -12.0, 7.5]
    csv = make_subjects(tmp_path / "data", n=2, size=size, affine=affine)
    if moving_grid == "other":
        mov_path = tmp_path / "data" / "s01_image.nii.gz"
        img = nib.load(str(mov_path))
        other = affine.copy()
        other[:3, :3] = other[:3, :3] @ np.diag([1.1, 0.8, 1.05])
        other[:3, 3] += [4.0, -3.0, 2.5]
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), other), str(mov_path))
    W = np.array([[0.06, -0.12, 0.02], [0.1, 0.04, 0.0], [-0.03, 0.05, -0.08]])
    b = np.array([1.7, -2.3, 0.6])
    pt = affine_checkpoint(tmp_path, csv, size, W, b)
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"fixed": ["s00"], "moving": ["s01"]}).to_csv(pairs, index=False)
    out = tmp_path / "reg"
    R.register_pairs(pt, csv, pairs, out, device="cpu", itk_warp=True)

    # the affine part, for vtn native-space outside the crop box: the known (W, b) (float32
    # sums of the constant head kernels)
    W_got, b_got = read_affine_part(out, "s00", "s01")
    np.testing.assert_allclose(W_got, W, atol=1e-4)
    np.testing.assert_allclose(b_got, b, atol=1e-4)
    assert json.loads((out / "method.json").read_text())["affine_part"] == "affine_<f>_<m>.json"
    disp, _ = load_disp_l2r(out / "disp_s00_s01.nii.gz")
    expected = affine_flow(torch.tensor(W, dtype=torch.float64)[None],
                           torch.tensor(b, dtype=torch.float64)[None], (size,) * 3)[0].numpy()
    np.testing.assert_allclose(disp, expected, atol=1e-4)
    if moving_grid == "same":
        itk_disp, _ = load_itk_warp(out / "warp_s00_s01.nii.gz")
        np.testing.assert_allclose(itk_disp, disp, atol=1e-4)

    fixed = ants.image_read(str(tmp_path / "data" / "s00_image.nii.gz"))
    moving = ants.image_read(str(tmp_path / "data" / "s01_image.nii.gz"))
    res = ants.apply_transforms(fixed=fixed, moving=moving,
                                transformlist=[str(out / "warp_s00_s01.nii.gz")],
                                interpolator="linear")
    ours = nib.load(str(out / "warped_s00_s01.nii.gz")).get_fdata()
    theirs = res.numpy()
    assert theirs.shape == ours.shape
    pos = np.indices((size,) * 3) + disp
    inside = ((pos >= 0.01) & (pos <= size - 1.01)).all(axis=0)
    assert inside.mean() > 0.5
    err = np.abs(theirs - ours)[inside]
    assert err.max() < 1e-3 * np.abs(ours).max()
    # the deformation is not trivial: the warped image differs from the moving one
    assert np.abs(ours - moving.numpy())[inside].max() > 0.1


def test_fast_inference_path_close_to_float32(tmp_path):
    from vtn.perf import bf16_supported

    size = 16
    csv = make_subjects(tmp_path / "data", n=2, size=size)
    cfg = dict(type="vtn", cascade="AD", image_size=size, epochs=1, iterations=2, batch=2,
               augment=False, checkpoint_every=5)
    pt = T.train([csv], cfg, tmp_path / "m" / "ckpt.pt", tmp_path / "m" / "log.csv", device="cpu")
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"fixed": ["s00"], "moving": ["s01"]}).to_csv(pairs, index=False)
    R.register_pairs(pt, csv, pairs, tmp_path / "ref", device="cpu")
    R.register_pairs(pt, csv, pairs, tmp_path / "fast", device="cpu", fast=True)
    ref, _ = load_disp_l2r(tmp_path / "ref" / "disp_s00_s01.nii.gz")
    fast, _ = load_disp_l2r(tmp_path / "fast" / "disp_s00_s01.nii.gz")
    meta = json.loads((tmp_path / "fast" / "method.json").read_text())
    if bf16_supported():
        assert meta["precision"].startswith("bfloat16")
        # an untrained dense subnet predicts flows of tens of voxels: compare relative to them
        assert np.abs(fast - ref).max() <= 0.02 * np.abs(ref).max() + 0.25
        assert not np.array_equal(fast, ref)
    else:
        assert meta["precision"] == "float32"
        np.testing.assert_array_equal(fast, ref)
