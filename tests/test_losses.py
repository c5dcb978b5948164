"""Tests of vtn.losses against analytic values and independent computations."""

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from scipy.spatial.transform import Rotation

from vtn import functional as vf
from vtn import losses as L

torch.set_num_threads(1)
D64 = torch.float64


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=D64)


# ------------------------------------------------------------------ correlation


def test_cc_linear_function_and_negative():
    a = _rand(1, 1, 6, 7, 8)
    # eps=0 gives the exact population statistic of eqs. 5-6
    assert L.correlation_coefficient(a, 3.0 * a + 2.0, eps=0).item() == pytest.approx(1, abs=1e-12)
    assert L.correlation_coefficient(a, -0.5 * a + 1.0, eps=0).item() == pytest.approx(-1,
                                                                                       abs=1e-12)
    # the default eps = 1e-6 shrinks it slightly: cov / sqrt((v+eps)(9v+eps))
    v = a.var(unbiased=False).item()
    expected = 3 * v / np.sqrt((v + 1e-6) * (9 * v + 1e-6))
    assert L.correlation_coefficient(a, 3 * a + 2).item() == pytest.approx(expected, rel=1e-12)
    assert L.correlation_loss(a, 3 * a + 2).item() == pytest.approx(1 - expected, abs=1e-12)


def test_cc_matches_numpy_and_is_per_sample():
    a = _rand(3, 1, 5, 6, 7, seed=1)
    b = _rand(3, 1, 5, 6, 7, seed=2)
    b[1] = a[1] * 2 + 1
    b[2] = -a[2]
    cc = L.correlation_coefficient(a, b, eps=0)
    assert cc.shape == (3,)
    ref0 = np.corrcoef(a[0].numpy().ravel(), b[0].numpy().ravel())[0, 1]
    np.testing.assert_allclose(cc.numpy(), [ref0, 1.0, -1.0], atol=1e-12)
    # changing one sample does not change the others (per-sample statistics)
    b2 = b.clone()
    b2[0] = b2[0] * 10 + 100
    cc2 = L.correlation_coefficient(a, b2, eps=0)
    np.testing.assert_allclose(cc2.numpy(), cc.numpy(), atol=1e-12)
    # offsetting a whole sample (the bug of the batch-wide mean) leaves the result unchanged
    a2 = a.clone()
    a2[1] += 50
    np.testing.assert_allclose(L.correlation_coefficient(a2, b, eps=0).numpy(), cc.numpy(),
                               atol=1e-10)


def test_cc_shape_error():
    with pytest.raises(ValueError):
        L.correlation_coefficient(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))


# ------------------------------------------------------------------ TV


def test_tv_linear_ramp_analytic():
    shape = (5, 6, 7)
    G = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.5, 0.25], [3.0, 0.0, -0.5]], dtype=D64)
    grid = vf.identity_grid(shape, dtype=D64)
    flow = torch.einsum("ij,jdhw->idhw", G, grid)[None]  # f_c(x) = sum_i G[c, i] x_i
    n_omega = 5 * 6 * 7
    counts = [4 * 6 * 7, 5 * 5 * 7, 5 * 6 * 6]  # number of forward differences per axis
    expected = sum(counts[i] * (G[:, i] ** 2).sum().item() for i in range(3)) / (3 * n_omega)
    tv = L.total_variation(flow)
    assert tv.shape == (1,)
    assert tv.item() == pytest.approx(expected, rel=1e-12)
    assert L.total_variation(flow, reference=True).item() == pytest.approx(expected / 2,
                                                                           rel=1e-12)
    # a constant field has zero TV; batch entries are independent
    both = torch.cat([flow, torch.full_like(flow, 3.0)])
    np.testing.assert_allclose(L.total_variation(both).numpy(), [expected, 0.0], rtol=1e-12)


def test_gradient_l2_analytic():
    shape = (4, 5, 6)
    grid = vf.identity_grid(shape, dtype=D64)
    flow = torch.stack([2 * grid[0], torch.zeros_like(grid[0]), -grid[2]])[None]
    # axis 0: channel 0 differs by 2 -> mean over (3 channels) = 4/3; axis 1: 0; axis 2: 1/3
    assert L.gradient_l2_loss(flow).item() == pytest.approx((4 / 3 + 0 + 1 / 3) / 3, rel=1e-12)


# ------------------------------------------------------------------ affine losses


def _eq9(W):
    s = torch.linalg.svdvals(torch.eye(3, dtype=W.dtype) + W)
    return (-6 + (s**2 + s**-2).sum(-1))


def test_orthogonality_matches_svd():
    g = torch.Generator().manual_seed(3)
    W = 0.3 * torch.randn(16, 3, 3, generator=g, dtype=D64)
    ours = L.orthogonality_loss(W)
    ref = _eq9(W)
    # with eps the value differs from eq. 9 by O(eps (1 + s^-4)); relative 1e-3 is ample
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-3, atol=1e-3)
    # without the regulariser the characteristic-polynomial form equals eq. 9 exactly
    np.testing.assert_allclose(L.orthogonality_loss(W, eps=0.0).numpy(), ref.numpy(), rtol=1e-9)
    assert (ours > 0).all()


def test_orthogonality_zero_for_rotations():
    R = torch.from_numpy(Rotation.random(8, random_state=4).as_matrix())
    W = R - torch.eye(3, dtype=D64)
    np.testing.assert_allclose(L.orthogonality_loss(W).numpy(), 0.0, atol=1e-8)
    np.testing.assert_allclose(L.orthogonality_loss(W.float()).numpy(), 0.0, atol=1e-5)


def test_orthogonality_finite_for_singular():
    eye = torch.eye(3)
    W = torch.stack([
        -eye,                                              # I + W = 0
        torch.diag(torch.tensor([0.0, 0.0, -1.0])),        # rank 2
        torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 1.0, 1.0]]) - eye,  # rank 2, large
        torch.full((3, 3), 1e3),                           # huge
    ])
    for dtype in (torch.float32, D64):
        Wd = W.to(dtype).clone().requires_grad_(True)
        out = L.orthogonality_loss(Wd)
        assert out.dtype == dtype
        assert torch.isfinite(out).all() and (out > 0).all()
        out.sum().backward()
        assert torch.isfinite(Wd.grad).all()
    # zero matrix: C = eps I, loss = 3 eps + (1+eps)^2 3 / eps - 6 (1 + eps)
    eps = 1e-5
    assert L.orthogonality_loss(-eye[None].double()).item() == pytest.approx(
        3 * eps + (1 + eps) ** 2 * 3 / eps - 6 * (1 + eps), rel=1e-9)


def test_determinant_loss_exact():
    g = torch.Generator().manual_seed(5)
    W = 0.4 * torch.randn(10, 3, 3, generator=g, dtype=D64)
    det = np.linalg.det(np.eye(3) + W.numpy())
    np.testing.assert_allclose(L.determinant_loss(W).numpy(), (det - 1) ** 2, rtol=1e-12)
    assert L.determinant_loss(torch.zeros(1, 3, 3)).item() == 0.0
    # scaling by 2 along one axis: det 2 -> loss 1; a reflection: det -1 -> loss 4
    assert L.determinant_loss(torch.diag(torch.tensor([1.0, 0, 0]))[None]).item() == 1.0
    assert L.determinant_loss(torch.diag(torch.tensor([-2.0, 0, 0]))[None]).item() == 4.0
    with pytest.raises(ValueError):
        L.determinant_loss(torch.zeros(3, 3))


# ------------------------------------------------------------------ invertibility


def _const(shape, vec, batch=1):
    return torch.tensor(vec, dtype=D64).view(1, 3, 1, 1, 1).expand(batch, 3, *shape).clone()


def test_invertibility_zero_for_exact_inverse():
    shape = (12, 12, 12)
    t = [1.5, -2.0, 0.75]
    f, g = _const(shape, t), _const(shape, [-x for x in t])
    assert L.invertibility_loss(f, g).item() == pytest.approx(0.0, abs=1e-20)
    assert L.invertibility_loss(f, g, central=False).item() == pytest.approx(0.0, abs=1e-20)
    # affine and its inverse: exact inside (no clamping in the central region)
    A = np.array([[1.1, 0.1, 0.0], [0.0, 0.95, 0.05], [0.0, 0.0, 1.05]])
    b = np.array([0.5, -0.3, 0.2])
    Ai = np.linalg.inv(A)
    fwd = vf.affine_flow(torch.from_numpy(A - np.eye(3))[None], torch.from_numpy(b)[None], shape)
    bwd = vf.affine_flow(torch.from_numpy(Ai - np.eye(3))[None],
                         torch.from_numpy(-Ai @ b)[None], shape)
    assert L.invertibility_loss(fwd, bwd).item() < 1e-20


def test_invertibility_positive_and_value():
    shape = (8, 8, 8)
    f, g = _const(shape, [1.0, 0, 0]), _const(shape, [0, 2.0, 0])
    # compose(f, g) = g + f = (1, 2, 0) everywhere, both orders: 2 * 5 = 10
    assert L.invertibility_loss(f, g).item() == pytest.approx(10.0, rel=1e-12)
    # batch of two: the second sample is an exact inverse pair
    f2 = torch.cat([f, _const(shape, [1.0, 1.0, 1.0])])
    g2 = torch.cat([g, _const(shape, [-1.0, -1.0, -1.0])])
    np.testing.assert_allclose(L.invertibility_loss(f2, g2).numpy(), [10.0, 0.0], atol=1e-12)


def test_invertibility_central_crop():
    shape = (16, 16, 16)
    # non-zero only in the outer quarter along axis 0: invisible to the central region
    g = torch.zeros((1, 3) + shape, dtype=D64)
    g[:, :, :4] = 0.5
    g[:, :, 12:] = -0.5
    zero = torch.zeros_like(g)
    assert L.invertibility_loss(zero, g).item() == 0.0
    assert L.invertibility_loss(zero, g, central=False).item() == pytest.approx(
        2 * 3 * 0.25 * 0.5, rel=1e-12)  # half the voxels carry |(.5,.5,.5)|^2 = .75, two terms
    # one voxel inside the central region changes it
    g[:, 1, 4, 8, 8] = 1.0
    assert L.invertibility_loss(zero, g).item() == pytest.approx(2 * 1.0 / 8**3, rel=1e-12)


# ------------------------------------------------------------------ other terms


def test_endpoint_error():
    shape = (3, 4, 5)
    flow = _const(shape, [3.0, 4.0, 0.0], batch=2)
    target = torch.zeros_like(flow)
    target[1] = flow[1]
    np.testing.assert_allclose(L.endpoint_error(flow, target).numpy(), [5.0, 0.0])
    flow.requires_grad_(True)
    L.endpoint_error(flow, target).sum().backward()
    assert torch.isfinite(flow.grad).all()  # finite where the error is exactly zero


def test_local_ncc_matches_scipy_box_filter():
    a = _rand(1, 1, 10, 11, 12, seed=6)
    b = 0.5 * a + 0.3 * _rand(1, 1, 10, 11, 12, seed=7)
    w = 5
    an, bn = a[0, 0].numpy(), b[0, 0].numpy()
    n = w**3

    def box(x):  # zero-padded box sums
        return uniform_filter(x, size=w, mode="constant", cval=0.0) * n

    sa, sb, saa, sbb, sab = box(an), box(bn), box(an * an), box(bn * bn), box(an * bn)
    ua, ub = sa / n, sb / n
    cross = sab - ub * sa - ua * sb + ua * ub * n
    va = saa - 2 * ua * sa + ua * ua * n
    vb = sbb - 2 * ub * sb + ub * ub * n
    expected = -np.mean(cross**2 / (va * vb + 1e-5))
    assert L.local_ncc_loss(a, b, window=w).item() == pytest.approx(expected, rel=1e-9)
    # identical images: cc -> 1 where the windows have variance
    assert L.local_ncc_loss(a, a, window=w).item() < -0.99
    with pytest.raises(ValueError):
        L.local_ncc_loss(a, b, window=4)


# ------------------------------------------------------------------ gradcheck


def test_gradcheck_all_terms():
    a = _rand(2, 1, 4, 4, 5, seed=8).requires_grad_(True)
    b = _rand(2, 1, 4, 4, 5, seed=9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: L.correlation_coefficient(x, y), (a, b))
    flow = (_rand(2, 3, 4, 4, 5, seed=10) - 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(L.total_variation, (flow,))
    W = (0.3 * (_rand(3, 3, 3, seed=11) - 0.5)).requires_grad_(True)
    assert torch.autograd.gradcheck(L.orthogonality_loss, (W,))
    assert torch.autograd.gradcheck(L.determinant_loss, (W,))
    f12 = (1.3 * (_rand(1, 3, 6, 6, 6, seed=12) - 0.5)).requires_grad_(True)
    f21 = (1.3 * (_rand(1, 3, 6, 6, 6, seed=13) - 0.5)).requires_grad_(True)
    assert torch.autograd.gradcheck(L.invertibility_loss, (f12, f21), atol=1e-5)


# ------------------------------------------------------------------ weights and modules


def test_default_weights_table1():
    assert L.default_weights("ADDD") == [
        {"sim": 1.0, "det": 0.1, "ortho": 0.1},
        {"sim": 0.0, "tv": 1.0},
        {"sim": 0.05, "tv": 1.0},
        {"sim": 1.0, "tv": 1.0},
    ]
    assert L.default_weights("D") == [{"sim": 1.0, "tv": 1.0}]
    assert [w["sim"] for w in L.default_weights("ADDDDD")] == [1.0, 0.0, 0.0, 0.0, 0.05, 1.0]
    with pytest.raises(ValueError, match="DA"):
        L.default_weights("DA")


def _fake_out(spec, B=2, shape=(8, 8, 8), seed=0):
    """A model-like output dict built by hand (flows, warped images, affine)."""
    g = torch.Generator().manual_seed(seed)
    moving = torch.rand(B, 1, *shape, generator=g, dtype=D64)
    flows, agg, warped = [], [], []
    affine = None
    for k, kind in enumerate(spec):
        if kind == "A":
            W = 0.1 * torch.randn(B, 3, 3, generator=g, dtype=D64)
            bb = torch.randn(B, 3, generator=g, dtype=D64)
            affine = (W, bb)
            f = vf.affine_flow(W, bb, shape)
        else:
            f = torch.randn(B, 3, *shape, generator=g, dtype=D64)
        a = f if k == 0 else vf.compose(agg[-1], f)
        flows.append(f)
        agg.append(a)
        warped.append(vf.warp(moving, a))
    return {"flows": flows, "agg": agg, "warped": warped, "affine": affine, "flow": agg[-1],
            "moving": moving}


def test_vtnloss_combines_terms_as_table1():
    spec = "ADDD"
    out = _fake_out(spec)
    fixed = torch.rand(2, 1, 8, 8, 8, dtype=D64)
    total, terms = L.VTNLoss(spec)(out, fixed)
    assert set(terms) == {"sim_0", "det_0", "ortho_0", "tv_1", "sim_2", "tv_2", "sim_3", "tv_3"}
    W = out["affine"][0]
    expected = (L.correlation_loss(fixed, out["warped"][0]).mean()
                + 0.1 * L.determinant_loss(W).mean() + 0.1 * L.orthogonality_loss(W).mean()
                + sum(L.total_variation(out["flows"][k]).mean() for k in (1, 2, 3))
                + 0.05 * L.correlation_loss(fixed, out["warped"][2]).mean()
                + L.correlation_loss(fixed, out["warped"][3]).mean())
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    assert all(not v.requires_grad and v.dim() == 0 for v in terms.values())
    total_sum, _ = L.VTNLoss(spec, reduction="sum")(out, fixed)
    assert total_sum.item() == pytest.approx(2 * expected.item(), rel=1e-12)


def test_vtnloss_inverse_and_supervised():
    spec = "AD"
    out = _fake_out(spec, seed=1)
    rev = _fake_out(spec, seed=2)
    fixed = torch.rand(2, 1, 8, 8, 8, dtype=D64)
    loss = L.VTNLoss(spec, inv_weight=1e-3, inv_reverse_terms="all")
    with pytest.raises(ValueError):
        loss(out, fixed)
    total, terms = loss(out, fixed, out_reverse=rev, moving=out["moving"])
    assert "inv" in terms and "sim_0_rev" in terms and "tv_1_rev" in terms
    inv = L.invertibility_loss(out["flow"], rev["flow"]).mean()
    assert terms["inv"].item() == pytest.approx(inv.item(), rel=1e-12)
    plain, _ = L.VTNLoss(spec)(out, fixed)
    rev_part, _ = L.VTNLoss(spec)(rev, out["moving"])
    assert total.item() == pytest.approx((plain + rev_part + 1e-3 * inv).item(), rel=1e-12)
    # supervised: similarity dropped, regularisation kept, epe added
    target = torch.zeros_like(out["flow"])
    total, terms = L.VTNLoss(spec)(out, fixed, target=target)
    assert not any(k.startswith("sim") for k in terms)
    assert {"tv_1", "det_0", "ortho_0", "epe"} <= set(terms)
    _, terms = L.VTNLoss(spec, supervised_similarity=True)(out, fixed, target=target)
    assert "sim_1" in terms
    with pytest.raises(ValueError):
        L.VTNLoss("ADD")(out, fixed)  # output has 2 subnets
    with pytest.raises(ValueError):
        L.VTNLoss(spec, reduction="median")


def _leaf_reverse(spec, seed):
    """A reverse-run output whose tensors are leaves (to read the gradient w.r.t. each)."""
    rev = _fake_out(spec, seed=seed)
    leaf = {"flows": [f.detach().requires_grad_() for f in rev["flows"]],
            "warped": [w.detach().requires_grad_() for w in rev["warped"]],
            "affine": tuple(t.detach().requires_grad_() for t in rev["affine"]),
            "flow": rev["flow"].detach().requires_grad_(), "moving": rev["moving"]}
    leaves = leaf["flows"] + leaf["warped"] + list(leaf["affine"])
    return leaf, leaves


@pytest.mark.parametrize("spec", ["AD", "ADD"])
def test_plus_inv_default_adds_only_the_invertibility_term(spec):
    """The paper's "+ inv": the reverse run enters the loss only through eq. 12."""
    out = _fake_out(spec, seed=1)
    fixed = torch.rand(2, 1, 8, 8, 8, dtype=D64)
    rev, leaves = _leaf_reverse(spec, seed=2)
    loss = L.VTNLoss(spec, inv_weight=1e-3)
    assert loss.inv_reverse_terms == "inv_only"
    total, terms = loss(out, fixed, out_reverse=rev, moving=out["moving"])
    plain, plain_terms = L.VTNLoss(spec)(out, fixed)
    inv = L.invertibility_loss(out["flow"], rev["flow"]).mean()
    assert set(terms) == set(plain_terms) | {"inv"}
    assert total.item() == pytest.approx((plain + 1e-3 * inv).item(), rel=1e-12)
    grads = torch.autograd.grad(total, leaves + [rev["flow"]], allow_unused=True)
    assert all(g is None for g in grads[:-1])  # no similarity/TV/det/ortho of the reverse run
    (g_inv,) = torch.autograd.grad(1e-3 * L.invertibility_loss(out["flow"], rev["flow"]).mean(),
                                   rev["flow"])
    torch.testing.assert_close(grads[-1], g_inv, rtol=1e-12, atol=0)
    assert g_inv.abs().max() > 0
    # the named option keeps the earlier behaviour: the reverse run's own terms too
    total_all, terms_all = L.VTNLoss(spec, inv_weight=1e-3, inv_reverse_terms="all")(
        out, fixed, out_reverse=rev, moving=out["moving"])
    rev_part, _ = L.VTNLoss(spec)(rev, out["moving"])
    assert total_all.item() == pytest.approx((plain + rev_part + 1e-3 * inv).item(), rel=1e-12)
    assert {"sim_1_rev", "det_0_rev", "ortho_0_rev"} <= set(terms_all)
    grads_all = torch.autograd.grad(total_all, leaves, allow_unused=True)
    assert sum(g is not None and bool(g.abs().max() > 0) for g in grads_all) >= 3
    with pytest.raises(ValueError, match="inv_reverse_terms"):
        L.VTNLoss(spec, inv_weight=1e-3, inv_reverse_terms="both")


def test_voxelmorph_loss():
    out = _fake_out("D", B=1, shape=(10, 10, 10))
    fixed = torch.rand(1, 1, 10, 10, 10, dtype=D64)
    total, terms = L.VoxelMorphLoss(reg_weight=0.5, window=5)(out, fixed)
    ncc = L.local_ncc_loss(fixed, out["warped"][-1], 5)
    grad = L.gradient_l2_loss(out["flow"])
    assert total.item() == pytest.approx((ncc + 0.5 * grad).item(), rel=1e-12)
    assert set(terms) == {"ncc", "grad"}
