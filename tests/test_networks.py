"""Tests of vtn.networks: sizes, parameter counts, cascade composition, config round trip."""

import pytest
import torch

from vtn import functional as vf
from vtn import losses as L
from vtn import networks as N

torch.set_num_threads(1)


def _pair(size, B=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, 1, size, size, size, generator=g),
            torch.rand(B, 1, size, size, size, generator=g))


def test_dense_subnet_parameter_count_at_128():
    net = N.DenseSubnet(128)
    assert net.levels == 6
    n = N.count_parameters(net)
    # reference-facts 1.4: ~28.25 M per VTN cascade (encoder 14.1 M + decoder 14.1 M)
    assert abs(n - 28.25e6) < 0.01e6
    assert abs(N.count_parameters(net.encoder) - 14.1e6) < 0.1e6
    # the decoder widths of the reference table
    assert net.deconv["5"].weight.shape[:2] == (512, 256)
    assert net.deconv["4"].weight.shape[:2] == (515, 128)
    assert net.pred["2"].weight.shape[1] == 67
    assert net.pred0.weight.shape[:2] == (35, 3)
    assert net.pred0.bias is None and net.upsamp["1"].bias is None


def test_level_counts_and_bad_sizes():
    assert [N.num_levels(s) for s in (128, 64, 32, 16, 48)] == [6, 5, 4, 3, 4]
    assert N.num_levels(128, final_size=4) == 5
    assert N.AffineSubnet(128).levels == 5 and N.AffineSubnet(128, final_size=2).levels == 6
    with pytest.raises(ValueError):
        N.DenseSubnet(30)
    with pytest.raises(ValueError):
        N.DenseSubnet(64, levels=5 + 2)
    with pytest.raises(ValueError, match="divisible"):
        N.DenseSubnet((32, 32, 24), levels=4)
    # non-cubic sizes work when every dim is divisible
    net = N.DenseSubnet((16, 32, 24))
    f, m = torch.rand(1, 1, 16, 32, 24), torch.rand(1, 1, 16, 32, 24)
    assert net(f, m).shape == (1, 3, 16, 32, 24)


def test_uniform_scaling_limits():
    net = N.DenseSubnet(32)
    conv1 = net.encoder.down[0].conv
    lim = (3.0 / (27 * 2)) ** 0.5  # fan = k^3 C_in
    assert conv1.weight.abs().max() <= lim and conv1.weight.abs().max() > 0.9 * lim
    assert torch.count_nonzero(conv1.bias) == 0
    up = net.upsamp["1"]
    lim = (3.0 / (64 * 3)) ** 0.5  # transposed: fan = k^3 C_out = 0.125
    assert abs(lim - 0.125) < 1e-12
    assert up.weight.abs().max() <= lim and up.weight.abs().max() > 0.9 * lim


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("spec", ["D", "AD", "ADDD"])
def test_forward_shapes(size, spec):
    torch.manual_seed(0)
    model = N.build_cascade(spec, size)
    fixed, moving = _pair(size, B=1 if size == 64 else 2)
    B = fixed.shape[0]
    with torch.no_grad():
        out = model(fixed, moving)
    assert model.subnet_kinds == list(spec)
    for key in ("flows", "agg", "warped"):
        assert len(out[key]) == len(spec)
    for f in out["flows"] + out["agg"]:
        assert f.shape == (B, 3, size, size, size)
    for w in out["warped"]:
        assert w.shape == (B, 1, size, size, size)
    assert out["flow"] is out["agg"][-1]
    if spec.startswith("A"):
        W, b = out["affine"]
        assert W.shape == (B, 3, 3) and b.shape == (B, 3)
    else:
        assert out["affine"] is None


def test_initial_affine_close_to_identity():
    torch.manual_seed(1)
    model = N.build_cascade("A", 32)
    fixed, moving = _pair(32, B=2)
    with torch.no_grad():
        out = model(fixed, moving)
    W, b = out["affine"]
    assert W.abs().max() < 0.5 and b.abs().max() < 1.0  # A = I + W starts near I
    torch.testing.assert_close(out["flow"], vf.affine_flow(W, b, (32, 32, 32)))
    # the head is a full-extent conv: kernel 4^3 at 32^3 input (paper's 4^3 before the FC)
    assert model.subnets[0].conv7_W.weight.shape == (9, 64, 4, 4, 4)
    # no size-dependent buffers
    assert all(not k.endswith("grid") for k in model.state_dict())
    assert len(list(model.buffers())) == 0


def test_config_round_trip():
    torch.manual_seed(2)
    model = N.build_cascade("ADD", 32, flow_multiplier="1/n", tf_same_padding=True,
                            affine_final_size=2)
    cfg = model.config
    assert cfg["type"] == "vtn" and cfg["spec"] == "ADD" and cfg["image_size"] == 32
    for v in cfg.values():
        assert v is None or isinstance(v, (str, int, float, bool, list))
    clone = N.build_model(cfg)
    clone.load_state_dict(model.state_dict())
    fixed, moving = _pair(32)
    with torch.no_grad():
        a, b = model(fixed, moving), clone(fixed, moving)
    assert torch.equal(a["flow"], b["flow"]) and torch.equal(a["warped"][-1], b["warped"][-1])
    assert clone.subnets[1].flow_multiplier == 0.5

    vm = N.VoxelMorph2(32)
    vm2 = N.build_model(vm.config)
    vm2.load_state_dict(vm.state_dict())
    with torch.no_grad():
        assert torch.equal(vm(fixed, moving)["flow"], vm2(fixed, moving)["flow"])
    with pytest.raises(ValueError):
        N.build_model({"type": "unet", "image_size": 32})
    with pytest.raises(ValueError):
        N.build_model({"type": "vtn", "spec": "AD", "image_size": 32, "colour": 3})


def test_cascade_composition_consistency():
    torch.manual_seed(3)
    for compose_mode in ("analytic", "warp"):
        model = N.build_cascade("ADD", 32, affine_compose=compose_mode)
        fixed, moving = _pair(32, B=2, seed=4)
        with torch.no_grad():
            out = model(fixed, moving)
        # every warped image is the original moving image warped once by the aggregate
        for k in range(3):
            torch.testing.assert_close(out["warped"][k], vf.warp(moving, out["agg"][k]))
        torch.testing.assert_close(out["warped"][-1], vf.warp(moving, out["flow"]))
        # the aggregates are compositions of the subnet flows (eq. 3)
        torch.testing.assert_close(out["agg"][0], out["flows"][0])
        torch.testing.assert_close(out["agg"][2], vf.compose(out["agg"][1], out["flows"][2]))
        if compose_mode == "analytic":
            W = out["affine"][0]
            expected = (out["flows"][1] + torch.einsum("bij,bjdhw->bidhw", W, out["flows"][1])
                        + out["agg"][0])
            torch.testing.assert_close(out["agg"][1], expected)
            # equals the interpolated composition wherever no border clamping happens
            interp = vf.compose(out["agg"][0], out["flows"][1])
            grid = vf.identity_grid((32, 32, 32)).unsqueeze(0)
            pos = grid + out["flows"][1]
            inside = ((pos >= 0) & (pos <= 31)).all(dim=1, keepdim=True).expand_as(interp)
            assert inside.float().mean() > 0.5
            torch.testing.assert_close(out["agg"][1][inside], interp[inside], atol=1e-3,
                                       rtol=1e-4)
        else:
            torch.testing.assert_close(out["agg"][1],
                                       vf.compose(out["agg"][0], out["flows"][1]))


def test_tf_same_padding_pads_after_only():
    torch.manual_seed(9)
    net = N.DenseSubnet(16, tf_same_padding=True)
    layer = net.encoder.down[0]
    x = torch.rand(1, 2, 16, 16, 16)
    ref = torch.nn.functional.leaky_relu(
        torch.nn.functional.conv3d(torch.nn.functional.pad(x, (0, 1) * 3), layer.conv.weight,
                                   layer.conv.bias, stride=2), 0.1)
    torch.testing.assert_close(layer(x), ref)
    # TF SAME output sample i covers input voxels 2i..2i+2; PyTorch padding=1 covers 2i-1..2i+1
    sym = torch.nn.functional.leaky_relu(
        torch.nn.functional.conv3d(x, layer.conv.weight, layer.conv.bias, stride=2, padding=1),
        0.1)
    assert not torch.allclose(ref, sym)
    f, m = _pair(16)
    assert net(f, m).shape == (1, 3, 16, 16, 16)


def test_dense_output_scaling():
    torch.manual_seed(5)
    net = N.DenseSubnet(16)
    f, m = _pair(16)
    with torch.no_grad():
        base = net(f, m)
        net.flow_multiplier = 0.25
        torch.testing.assert_close(net(f, m), base * 0.25)


def test_voxelmorph2_shape_and_params():
    torch.manual_seed(6)
    vm = N.VoxelMorph2(32)
    assert abs(N.count_parameters(vm) - 0.30e6) < 0.005e6
    fixed, moving = _pair(32)
    with torch.no_grad():
        out = vm(fixed, moving)
    assert out["flow"].shape == (1, 3, 32, 32, 32)
    assert out["warped"][0].shape == (1, 1, 32, 32, 32)
    assert vm.subnet_kinds == ["D"] and out["affine"] is None
    # N(0, 1e-5) flow init: the initial flow is tiny
    assert out["flow"].abs().max() < 1e-2
    with pytest.raises(ValueError):
        N.VoxelMorph2(40)


def test_bad_spec_raises():
    for spec in ("", "DA", "AA", "ADA", "X", "add"):
        with pytest.raises(ValueError, match=repr(spec)[1:-1] or "spec"):
            N.build_cascade(spec, 32)
    with pytest.raises(ValueError):
        N.build_cascade("AD", 32, affine_compose="sum")
    model = N.build_cascade("D", 32)
    with pytest.raises(ValueError):
        model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))


def test_gradient_reaches_first_subnet_from_last_similarity():
    torch.manual_seed(7)
    model = N.build_cascade("ADD", 16)
    fixed, moving = _pair(16, seed=8)
    out = model(fixed, moving)
    L.correlation_loss(fixed, out["warped"][-1]).sum().backward()
    for k, net in enumerate(model.subnets):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None for g in grads), k
        assert sum(g.abs().sum().item() for g in grads) > 0, k
    # the affine head in particular
    assert model.subnets[0].conv7_W.weight.grad.abs().max() > 0


def test_flows_stay_float32_under_autocast():
    torch.manual_seed(10)
    model = N.build_cascade("AD", 16, affine_final_size=2)
    fixed, moving = _pair(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(fixed, moving)
    assert all(t.dtype == torch.float32 for t in out["flows"] + out["agg"] + out["warped"])
    assert out["affine"][0].dtype == torch.float32
    torch.testing.assert_close(out["warped"][-1], vf.warp(moving, out["flow"]))


def test_flow_init_scale_scales_the_initial_flow_exactly():
    """pred0 is a bias-free linear layer: scaling its initial weights scales the output flow."""
    import torch

    from vtn.networks import build_cascade, build_model

    torch.manual_seed(0)
    ref = build_cascade("D", 16)
    torch.manual_seed(0)
    small = build_cascade("D", 16, flow_init_scale=0.05)
    assert small.config["flow_init_scale"] == 0.05
    fixed, moving = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        a = ref(fixed, moving)["flow"]
        b = small(fixed, moving)["flow"]
    torch.testing.assert_close(b, 0.05 * a, rtol=1e-5, atol=1e-6)
    assert a.abs().max() > 1.0  # the reference initialisation really predicts large flows
    rebuilt = build_model(small.config)
    assert rebuilt.config == small.config
