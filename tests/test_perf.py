"""Correctness of the opt-in fast inference path (vtn.perf) -- not timing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from vtn import functional as vf
from vtn import networks, perf


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("cin,cout,n,bias", [(5, 3, 6, False), (4, 7, 5, True)])
def test_subpixel_equals_conv_transpose(cin, cout, n, bias):
    torch.manual_seed(1)
    ct = nn.ConvTranspose3d(cin, cout, 4, stride=2, padding=1, bias=bias)
    x = torch.randn(2, cin, n, n + 1, n + 2, dtype=torch.float64)
    ct = ct.double()
    sp = perf.SubpixelConvTranspose3d(ct).double()
    ref = ct(x)
    out = sp(x)
    assert out.shape == (2, cout, 2 * n, 2 * (n + 1), 2 * (n + 2))
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)


def test_subpixel_single_tap_is_exact_upsampling():
    # a kernel that is 1 at tap (1,1,1) only: output(2j) = x(j) on even voxels, 0 on odd.
    ct = nn.ConvTranspose3d(1, 1, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        ct.weight.zero_()
        ct.weight[0, 0, 1, 1, 1] = 1.0
    x = torch.arange(27, dtype=torch.float32).view(1, 1, 3, 3, 3)
    out = perf.SubpixelConvTranspose3d(ct)(x)
    assert torch.equal(out[:, :, ::2, ::2, ::2], x)
    assert out[:, :, 1::2].abs().sum() == 0


def test_subpixel_channels_last_layout_preserved():
    ct = nn.ConvTranspose3d(3, 2, 4, stride=2, padding=1, bias=False)
    x = torch.randn(1, 3, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    out = perf.SubpixelConvTranspose3d(ct)(x)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(out, ct(x.contiguous()), atol=1e-5)


def test_subpixel_rejects_other_geometry():
    with pytest.raises(ValueError, match="k=4, s=2"):
        perf.SubpixelConvTranspose3d(nn.ConvTranspose3d(2, 2, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="ConvTranspose3d"):
        perf.SubpixelConvTranspose3d(nn.Conv3d(2, 2, 3))


@pytest.mark.parametrize("spec", ["D", "ADD"])
def test_fast_model_float32_equals_default(spec):
    torch.manual_seed(3)
    model = perf.damp_flow_heads_(networks.build_cascade(spec, 32), 0.1).eval()
    fast = perf.fast_model(model, dtype=torch.float32)
    f, m = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32)
    with torch.inference_mode():
        ref = model(f, m)
        out = fast(f, m)
    assert set(out) == set(ref)
    assert fast.subnet_kinds == list(spec)
    # one forward: the fast model is a Cascade with other subnets and a cached grid
    assert type(fast) is networks.Cascade and fast.cached_grid and not model.cached_grid
    assert fast.config == model.config
    for key in ("flows", "agg", "warped"):
        assert len(out[key]) == len(spec)
        for a, b in zip(out[key], ref[key]):
            assert a.dtype == torch.float32 and a.shape == b.shape
            assert (a - b).abs().max() < 1e-4
    if spec.startswith("A"):
        assert torch.allclose(out["affine"][0], ref["affine"][0], atol=1e-6)
    # the original model is untouched (still ConvTranspose3d, float32)
    assert any(isinstance(x, nn.ConvTranspose3d) for x in model.modules())
    assert not any(isinstance(x, nn.ConvTranspose3d) for x in fast.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _trained_liver_pair(tmp_path_factory):
    """A real 32^3 liver pair (embedded data) and an ADDD briefly trained on it."""
    pytest.importorskip("nibabel")
    from pathlib import Path

    res = Path(__file__).resolve().parents[1] / "resources"
    if not res.exists():
        pytest.skip("resources not available")
    from vtn.data import preprocess, synth  # noqa: F401  (import errors -> skip below)
    from vtn import cli

    tmp = tmp_path_factory.mktemp("perfpair")
    rc = cli.main(["make-embedded", "--organ", "liver", "--resources", str(res), "--n", "2",
                   "--seed", "7", "--out", str(tmp / "raw")])
    assert rc == 0
    rc = cli.main(["preprocess", "--subjects", str(tmp / "raw" / "subjects.csv"), "--organ",
                   "liver", "--size", "32", "--reference-subjects",
                   str(tmp / "raw" / "subjects.csv"), "--out", str(tmp / "prep")])
    assert rc == 0
    return tmp / "prep"


@pytest.fixture(scope="module")
def liver_pair(tmp_path_factory):
    from vtn.io import load_landmarks, load_volume, read_subjects

    prep = _trained_liver_pair(tmp_path_factory)
    rows = read_subjects(prep / "subjects.csv")
    imgs = [torch.from_numpy(load_volume(r["image"])[0]).view(1, 1, 32, 32, 32) for r in rows]
    segs = [load_volume(r["seg"], dtype=None)[0] for r in rows]
    lms = [load_landmarks(r["landmarks"])[1] for r in rows]
    # train ADDD briefly on the pair, float32, fixed seed
    torch.manual_seed(0)
    from vtn.losses import VTNLoss

    # start from damped flow heads (an untrained VTN predicts flows of tens of voxels, which a
    # cascade amplifies chaotically); a few steps then give a smooth, realistic few-voxel flow.
    model = perf.damp_flow_heads_(networks.build_cascade("ADDD", 32), 0.1)
    loss_fn = VTNLoss("ADDD")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    f, m = imgs[0], imgs[1]
    for _ in range(4):
        loss, _ = loss_fn(model(f, m), f)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, imgs, segs, lms


def test_fast_bf16_on_real_pair_within_tolerance(liver_pair):
    """bf16 + channels_last + sub-pixel vs float32 on a real 32^3 liver pair (ADDD).

    Tolerances (stated in docs/performance.md): max |flow diff| <= 0.25 voxel, mean <= 0.02
    voxel, |Dice diff| <= 0.01, |mean landmark distance diff| <= 0.05 voxel.
    """
    model, imgs, segs, lms = liver_pair
    fast = perf.fast_model(model, dtype=torch.bfloat16)
    r = perf.compare_fast(model, fast, imgs[0], imgs[1], segs[0], segs[1], lms[0], lms[1])
    assert r["max_abs_flow"] > 0.5  # the trained model moves things (the test can fail)
    assert r["max_abs_flow_diff"] <= 0.25, r
    assert r["mean_abs_flow_diff"] <= 0.02, r
    assert abs(r["dice_diff"]) <= 0.01, r
    assert abs(r["lm_dist_diff"]) <= 0.05, r
    assert r["lm_max_point_diff"] <= 0.25, r
    # and the float32 fast path is exact to rounding on the same pair
    fast32 = perf.fast_model(model, dtype=torch.float32)
    r32 = perf.compare_fast(model, fast32, imgs[0], imgs[1], segs[0], segs[1], lms[0], lms[1])
    assert r32["max_abs_flow_diff"] < 1e-3 and r32["dice_diff"] == 0.0


def test_compare_fast_detects_a_wrong_model():
    torch.manual_seed(4)
    model = perf.damp_flow_heads_(networks.build_cascade("D", 16), 0.1).eval()
    other = perf.damp_flow_heads_(networks.build_cascade("D", 16), 0.1).eval()
    f, m = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    same = perf.compare_fast(model, perf.fast_model(model, dtype=torch.float32), f, m)
    diff = perf.compare_fast(model, other, f, m)
    assert same["max_abs_flow_diff"] < 1e-4
    assert diff["max_abs_flow_diff"] > 100 * same["max_abs_flow_diff"]


def test_damp_flow_heads_scales_the_flow_exactly():
    torch.manual_seed(5)
    model = networks.build_cascade("D", 16).eval()
    f, m = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.inference_mode():
        a = model(f, m)["flow"]
        perf.damp_flow_heads_(model, 0.5)
        b = model(f, m)["flow"]
    assert torch.allclose(b, 0.5 * a, atol=1e-5)


def test_fast_model_rejects_voxelmorph_and_bad_dtype():
    vm = networks.build_model({"type": "voxelmorph2", "image_size": 16})
    with pytest.raises(ValueError, match="VTN cascades only"):
        perf.fast_model(vm)
    with pytest.raises(ValueError, match="dtype"):
        perf.fast_model(networks.build_cascade("D", 16), dtype=torch.int8)


def test_fast_model_gradients_flow():
    torch.manual_seed(6)
    model = networks.build_cascade("AD", 16)
    fast = perf.fast_model(model, dtype=torch.float32)
    f, m = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    out = fast(f, m)
    out["warped"][-1].mean().backward()
    grads = [p.grad for p in fast.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_bench_fast_and_no_train(capsys):
    from vtn import bench

    res = bench.run_bench("AD", 16, batch=2, device="cpu", repeats=1, warmup=0, fast=True,
                          threads=1, skip_train=True)
    assert res["fast"] and res["bf16"] and res["channels_last"]
    assert res["infer_ms_per_pair_b1"] > 0 and res["infer_ms_per_pair"] > 0
    assert res["train_ms_per_step"] is None and res["threads"] == 1
    res = bench.run_bench("D", 16, batch=2, device="cpu", repeats=1, warmup=0, fast=True)
    assert res["train_ms_per_step"] > 0  # training step under bf16 autocast + channels_last
    with pytest.raises(ValueError, match="VTN cascades"):
        bench.run_bench(model_type="voxelmorph2", size=16, batch=1, fast=True)
    assert bench.cli(["--cascade", "D", "--size", "16", "--batch", "2", "--repeats", "1",
                      "--fast", "--no-train"]) == 0
    out = capsys.readouterr().out
    assert "inference, batch 1" in out and "training step" not in out
