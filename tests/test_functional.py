"""Tests of vtn.functional: warps, composition, affine flows, Jacobians, point transport."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter

from vtn import functional as vf

torch.set_num_threads(1)


def _const_flow(shape, vec, dtype=torch.float64):
    flow = torch.zeros((1, 3) + tuple(shape), dtype=dtype)
    for k in range(3):
        flow[:, k] = vec[k]
    return flow


def _smooth_field(shape, amplitude, seed, sigma=3.0):
    """Random smooth displacement ``(3, D, H, W)`` in voxels with max |u| = amplitude."""
    rng = np.random.default_rng(seed)
    f = np.stack([gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
                  for _ in range(3)])
    return f * (amplitude / np.abs(f).max())


def _smooth_image(shape):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return (np.sin(2 * np.pi * grids[0] / 29.0) * np.cos(2 * np.pi * grids[1] / 31.0)
            + 0.5 * np.sin(2 * np.pi * (grids[2] + grids[0]) / 37.0))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 3, -2, -5])
def test_integer_shift_equals_index_take(axis, shift):
    shape = (8, 9, 10)
    rng = np.random.default_rng(0)
    img = rng.random(shape)
    vec = [0, 0, 0]
    vec[axis] = shift
    out = vf.warp(torch.from_numpy(img)[None, None], _const_flow(shape, vec))[0, 0].numpy()
    # out[x] = img[clamp(x + shift)]: exact slices inside, clamped border outside
    idx = np.clip(np.arange(shape[axis]) + shift, 0, shape[axis] - 1)
    expected = np.take(img, idx, axis=axis)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    # the interior part is a pure slice (np.roll without the wrapped-around part)
    n = shape[axis]
    inner = slice(0, n - shift) if shift > 0 else slice(-shift, n)
    rolled = np.roll(img, -shift, axis=axis)
    sl = [slice(None)] * 3
    sl[axis] = inner
    np.testing.assert_allclose(out[tuple(sl)], rolled[tuple(sl)], rtol=0, atol=1e-12)


def test_border_clamp_beyond_edge():
    shape = (6, 7, 8)
    img = np.random.default_rng(1).random(shape)
    t = torch.from_numpy(img)[None, None]
    out = vf.warp(t, _const_flow(shape, [20.0, 0, 0]))[0, 0].numpy()
    np.testing.assert_allclose(out, np.broadcast_to(img[-1], shape), atol=1e-12)
    out = vf.warp(t, _const_flow(shape, [0, -30.5, 0]))[0, 0].numpy()
    np.testing.assert_allclose(out, np.broadcast_to(img[:, :1, :], shape), atol=1e-12)
    out = vf.warp(t, _const_flow(shape, [100.0, 100.0, -100.0]))[0, 0].numpy()
    np.testing.assert_allclose(out, np.full(shape, img[-1, -1, 0]), atol=1e-12)


def test_fractional_shift_is_linear_interpolation():
    shape = (5, 6, 7)
    img = np.random.default_rng(2).random(shape)
    out = vf.warp(torch.from_numpy(img)[None, None], _const_flow(shape, [0, 0, 0.25]))[0, 0]
    expected = 0.75 * img[:, :, :-1] + 0.25 * img[:, :, 1:]
    np.testing.assert_allclose(out.numpy()[:, :, :-1], expected, atol=1e-12)


def test_warp_matches_simpleitk_displacement_field():
    shape = (16, 18, 20)
    rng = np.random.default_rng(3)
    img = gaussian_filter(rng.random(shape), 1.0)
    u = _smooth_field(shape, 3.0, seed=4)  # (3, D, H, W), channel k along numpy axis k
    ours = vf.warp(torch.from_numpy(img)[None, None], torch.from_numpy(u)[None])[0, 0].numpy()

    sitk_img = sitk.GetImageFromArray(img)  # sitk index (x, y, z) = numpy axes (2, 1, 0)
    # displacement vector in physical (x, y, z) = (u[2], u[1], u[0]); spacing 1, origin 0
    disp = np.stack([u[2], u[1], u[0]], axis=-1)
    field = sitk.GetImageFromArray(disp, isVector=True)
    field.CopyInformation(sitk_img)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    ref = sitk.GetArrayFromImage(
        sitk.Resample(sitk_img, sitk_img, tx, sitk.sitkLinear, -1.0, sitk.sitkFloat64))
    # compare where the sampling point lies inside [0, N-1] (ITK's out-of-image handling differs)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    pos = grid + u
    inside = np.all([(pos[k] >= 0) & (pos[k] <= shape[k] - 1) for k in range(3)], axis=0)
    assert inside.mean() > 0.6
    np.testing.assert_allclose(ours[inside], ref[inside], atol=1e-4)
    # and the comparison is not trivial: the warp moved the image
    assert np.abs(ours - img)[inside].max() > 0.01


def test_compose_equals_sequential_warp():
    shape = (24, 24, 24)
    g1 = torch.from_numpy(_smooth_field(shape, 2.5, seed=5, sigma=4.0))[None]
    g2 = torch.from_numpy(_smooth_field(shape, 2.5, seed=6, sigma=4.0))[None]
    c = slice(5, -5)  # away from the borders (clamping)
    # a linear image is interpolated exactly, so the identity holds to round-off
    grid = vf.identity_grid(shape, dtype=torch.float64)
    lin = (0.3 * grid[0] - 0.7 * grid[1] + 1.1 * grid[2])[None, None]
    seq = vf.warp(vf.warp(lin, g1), g2)
    comp = vf.warp(lin, vf.compose(g1, g2))
    torch.testing.assert_close(seq[..., c, c, c], comp[..., c, c, c], rtol=0, atol=1e-9)
    assert (seq - vf.warp(lin, g1 + g2))[..., c, c, c].abs().max() > 0.1
    # a smooth image: only interpolation error is left, far below that of adding the flows
    img = torch.from_numpy(_smooth_image(shape))[None, None]
    seq = vf.warp(vf.warp(img, g1), g2)
    comp = vf.warp(img, vf.compose(g1, g2))
    naive = vf.warp(img, g1 + g2)
    err = (seq - comp)[..., c, c, c].abs()
    err_naive = (seq - naive)[..., c, c, c].abs()
    assert err.max() < 0.03 and err.mean() < 0.005
    assert err_naive.mean() > 3 * err.mean()


def test_compose_with_zero_flow_and_constant_shifts():
    shape = (8, 8, 8)
    g = torch.from_numpy(_smooth_field(shape, 1.5, seed=7))[None]
    zero = torch.zeros_like(g)
    torch.testing.assert_close(vf.compose(g, zero), g)
    torch.testing.assert_close(vf.compose(zero, g), g)
    a, b = _const_flow(shape, [1, 2, -1]), _const_flow(shape, [0.5, -1, 0])
    torch.testing.assert_close(vf.compose(a, b), a + b)


def test_affine_flow_known_matrix():
    shape = (5, 7, 9)
    A = np.array([[1.1, 0.2, 0.0], [-0.1, 0.9, 0.3], [0.05, 0.0, 1.2]])
    bvec = np.array([0.5, -1.0, 2.0])
    W = torch.from_numpy(A - np.eye(3))[None]
    flow = vf.affine_flow(W, torch.from_numpy(bvec)[None], shape)[0].numpy()
    centre = (np.array(shape) - 1) / 2.0
    for p in [(0, 0, 0), (4, 6, 8), (2, 3, 4), (1, 5, 2)]:
        p = np.array(p, dtype=float)
        mapped = p + flow[:, int(p[0]), int(p[1]), int(p[2])]
        np.testing.assert_allclose(mapped, A @ (p - centre) + bvec + centre, atol=1e-12)
    # the centre is moved by b exactly
    np.testing.assert_allclose(flow[:, 2, 3, 4], bvec, atol=1e-12)


def test_jacobian_det_identity_scaling_affine():
    shape = (6, 7, 8)
    zero = torch.zeros((2, 3) + shape, dtype=torch.float64)
    jd = vf.jacobian_det(zero)
    assert jd.shape == (2, 5, 6, 7)
    assert torch.equal(jd, torch.ones_like(jd))
    s = 1.3
    W = torch.eye(3, dtype=torch.float64)[None] * (s - 1)
    flow = vf.affine_flow(W, torch.zeros(1, 3, dtype=torch.float64), shape)
    torch.testing.assert_close(vf.jacobian_det(flow), torch.full((1, 5, 6, 7), s**3,
                                                                 dtype=torch.float64))
    A = np.array([[1.1, 0.2, 0.0], [-0.1, 0.9, 0.3], [0.05, -0.2, 1.2]])
    flow = vf.affine_flow(torch.from_numpy(A - np.eye(3))[None],
                          torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), shape)
    jd = vf.jacobian_det(flow)
    np.testing.assert_allclose(jd.numpy(), np.linalg.det(A), rtol=1e-12)


def test_transport_points_integer_shift():
    shape = (8, 9, 10)
    flow = _const_flow(shape, [2.0, -1.0, 3.0])
    pts = torch.tensor([[0.0, 0.0, 0.0], [3.5, 4.25, 7.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
    out = vf.transport_points(pts, flow)
    torch.testing.assert_close(out, pts + torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))
    # a non-constant flow: the displacement at a grid point is read exactly
    g = torch.from_numpy(_smooth_field(shape, 2.0, seed=8))
    out = vf.transport_points(torch.tensor([[2.0, 3.0, 4.0]], dtype=torch.float64), g)
    torch.testing.assert_close(out[0], torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
                               + g[:, 2, 3, 4])


@pytest.mark.parametrize("search", [False, True])
def test_invert_points_large_affine_exact(search):
    """y + u(y) = p for an affine flow x -> c + A (x - c) + b has the closed form
    y = c + A^-1 (p - c - b); A is far from I (rotation 35 deg, scale 2.2), where the plain
    fixed-point iteration y <- p - u(y) does not converge."""
    shape = (20, 22, 24)
    c, s = np.cos(np.radians(35)), np.sin(np.radians(35))
    A = 2.2 * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) + 0.05
    b = np.array([1.0, -0.5, 2.0])
    flow = vf.affine_flow(torch.from_numpy(A - np.eye(3))[None], torch.from_numpy(b)[None],
                          shape)
    centre = (np.asarray(shape) - 1) / 2
    y_true = np.array([[9.5, 10.0, 11.0], [8.5, 11.25, 12.5], [10.5, 9.5, 10.75]])
    p = (y_true - centre) @ A.T + centre + b
    y = vf.invert_points(torch.from_numpy(p), flow, search=search)
    np.testing.assert_allclose(y.numpy(), y_true, atol=1e-6)
    # the case is not trivial: fixed-point iteration diverges here
    z = torch.from_numpy(p)
    for _ in range(50):
        z = torch.from_numpy(p) - vf.sample_flow(flow, z)
    assert np.abs(z.numpy() - y_true).max() > 1.0


def test_invert_points_smooth_field_roundtrip():
    shape = (16, 18, 20)
    g = torch.from_numpy(_smooth_field(shape, 3.0, seed=4))
    p = torch.tensor([[5.0, 6.5, 7.0], [10.25, 3.0, 12.0], [0.0, 17.0, 19.0]], dtype=torch.float64)
    y = vf.invert_points(p, g)
    torch.testing.assert_close(vf.transport_points(y, g), p, atol=1e-6, rtol=0)
    assert (y - p).abs().max() > 0.5  # the field moves the points
    assert vf.invert_points(p[:0], g).shape == (0, 3)


def test_shape_errors():
    img = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError):
        vf.warp(img, torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError):
        vf.warp(img, torch.zeros(1, 3, 4, 4, 5))
    with pytest.raises(ValueError):
        vf.warp(img, torch.zeros(2, 3, 4, 4, 4))
    with pytest.raises(ValueError):
        vf.warp(torch.zeros(1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError):
        vf.compose(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError):
        vf.affine_flow(torch.zeros(1, 3, 4), torch.zeros(1, 3), (4, 4, 4))
    with pytest.raises(ValueError):
        vf.affine_flow(torch.zeros(1, 3, 3), torch.zeros(2, 3), (4, 4, 4))
    with pytest.raises(ValueError):
        vf.jacobian_det(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError):
        vf.sample_flow(torch.zeros(3, 4, 4, 4), torch.zeros(5, 2))
    with pytest.raises(ValueError):
        vf.sample_flow(torch.zeros(2, 3, 4, 4, 4), torch.zeros(5, 3))


def test_warp_with_precomputed_grid_matches_warp_and_integer_shift():
    torch.manual_seed(2)
    img = torch.rand(2, 2, 8, 9, 10, dtype=torch.float64)
    flow = torch.randn(2, 3, 8, 9, 10, dtype=torch.float64) * 2
    grid = vf.sampling_grid((8, 9, 10), dtype=torch.float64)
    assert grid[0].shape == (1, 8, 9, 10, 3) and grid[1].shape == (3,)
    out = vf.warp(img, flow, grid=grid)
    assert torch.allclose(out, vf.warp(img, flow), atol=1e-12)
    assert not torch.equal(out, img)  # the flow moves the image (the test can fail)
    # integer shift of +1 voxel along axis 2: out[..., k] = img[..., k + 1] (border clamp)
    shift = _const_flow((8, 9, 10), [0.0, 0.0, 1.0]).expand(2, 3, 8, 9, 10)
    out = vf.warp(img, shift, grid=grid)
    assert torch.allclose(out[..., :-1], img[..., 1:], atol=1e-12)
    assert torch.allclose(out[..., -1], img[..., -1], atol=1e-12)
    g1 = torch.randn(2, 3, 8, 9, 10, dtype=torch.float64)
    assert torch.allclose(vf.compose(g1, flow, grid=grid), vf.compose(g1, flow), atol=1e-12)
    with pytest.raises(ValueError, match="grid is for shape"):
        vf.warp(img, flow, grid=vf.sampling_grid((8, 9, 11), dtype=torch.float64))


def test_forward_differences_and_det3_exact():
    # a linear ramp has constant differences: t = 2 x0 - 3 x1 + 0.5 x2
    x = vf.identity_grid((4, 5, 6), dtype=torch.float64)
    t = (2 * x[0] - 3 * x[1] + 0.5 * x[2]).view(1, 1, 4, 5, 6)
    d0, d1, d2 = vf.forward_differences(t)
    assert d0.shape == (1, 1, 3, 5, 6) and d1.shape == (1, 1, 4, 4, 6)
    assert d2.shape == (1, 1, 4, 5, 5)
    assert (d0 == 2).all() and (d1 == -3).all() and (d2 == 0.5).all()
    M = torch.from_numpy(np.random.default_rng(3).standard_normal((7, 2, 3, 3)))
    np.testing.assert_allclose(vf.det3(M).numpy(), np.linalg.det(M.numpy()), rtol=1e-12)
    with pytest.raises(ValueError, match="M must have shape"):
        vf.det3(torch.zeros(2, 3, 2))


def test_warp_labels_keeps_integer_labels():
    shape = (8, 8, 8)
    rng = np.random.default_rng(9)
    labels = torch.from_numpy(rng.choice([0, 3, 7, 21], size=shape))[None, None]
    out = vf.warp_labels(labels, _const_flow(shape, [1.0, 0.0, -2.0]))
    assert out.dtype == labels.dtype
    expected = np.take(np.take(labels[0, 0].numpy(), np.clip(np.arange(8) + 1, 0, 7), axis=0),
                       np.clip(np.arange(8) - 2, 0, 7), axis=2)
    np.testing.assert_array_equal(out[0, 0].numpy(), expected)
    flow = torch.from_numpy(_smooth_field(shape, 2.3, seed=10))[None]
    out = vf.warp_labels(labels, flow)
    assert out.dtype == labels.dtype
    assert set(np.unique(out.numpy())) <= {0, 3, 7, 21}
    # nearest neighbour: each output equals the label at the rounded sampling position
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    pos = np.clip(np.rint(grid + flow[0].numpy()), 0, 7).astype(int)
    ref = labels[0, 0].numpy()[pos[0], pos[1], pos[2]]
    # rounding ties (x.5) may go either way; they are measure-zero for a random field
    assert (out[0, 0].numpy() == ref).mean() > 0.99
