"""Tests of vtn.augment (random B-spline augmentation, reference-facts §5.4)."""

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from vtn import augment as A
from vtn.functional import sample_flow


def test_sample_power_law_bounds_and_median():
    g = torch.Generator().manual_seed(0)
    v = A.sample_power((200_000,), g)
    assert v.dtype == torch.float32
    assert v.abs().max() <= 0.4 + 1e-7
    # |v| = |t|^3 with |t| ~ U(0, 0.4^(1/3)): P(|v| < 0.05) = (0.05 / 0.4)^(1/3) = 0.5
    assert abs(float(v.abs().median()) - 0.05) < 0.002
    # the extreme is reached (law is not truncated below the bound)
    assert v.abs().max() > 0.399
    # symmetric
    assert abs(float((v > 0).float().mean()) - 0.5) < 0.005


@pytest.mark.parametrize("size,bound", [(128, 12.8), (32, 3.2), (16, 1.6)])
def test_max_displacement(size, bound):
    assert A.max_displacement(size) == pytest.approx(bound)
    g = torch.Generator().manual_seed(1)
    ctrl = A.random_control_points(64, (size,) * 3, g)
    assert ctrl.shape == (64, 3, 5, 5, 5)
    assert float(ctrl.abs().max()) <= bound + 1e-5
    assert float(ctrl.abs().max()) > 0.95 * bound


def test_basis_matrix_matches_scipy_bspline():
    for length in (16, 20, 32, 128):
        mat = A.bspline_basis_matrix(length, 7, dtype=torch.float64)
        assert mat.shape == (length, 7)
        torch.testing.assert_close(mat.sum(1), torch.ones(length, dtype=torch.float64))
        rng = np.random.default_rng(length)
        c = rng.normal(size=7)
        spline = BSpline(np.arange(-3.0, 8.0), c, 3)  # uniform knots, base interval [0, 4]
        x = (np.arange(length) + 0.5) * 4 / length
        np.testing.assert_allclose(mat.numpy() @ c, spline(x), rtol=0, atol=1e-12)


def test_reference_sampling_positions_at_128():
    # 32 voxels per interval, u = (i + 0.5) / 32: voxel 0 -> B-spline at u = 1/64 on c0..c3
    mat = A.bspline_basis_matrix(128, 7, dtype=torch.float64)
    u = 0.5 / 32
    expected = [(1 - u) ** 3 / 6, (3 * u**3 - 6 * u**2 + 4) / 6,
                (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6, u**3 / 6, 0, 0, 0]
    np.testing.assert_allclose(mat[0].numpy(), expected, atol=1e-15)
    # voxel 32 starts interval 1 (control points 1..4)
    assert mat[32, 0] == 0 and mat[32, 1] > 0 and mat[32, 5] == 0


def test_field_is_tensor_product_spline_and_bounded():
    g = torch.Generator().manual_seed(3)
    ctrl = A.random_control_points(2, (16, 20, 24), g).double()
    field = A.bspline_field(ctrl, (16, 20, 24))
    assert field.shape == (2, 3, 16, 20, 24)
    padded = torch.nn.functional.pad(ctrl, (1,) * 6)
    m = [A.bspline_basis_matrix(n, 7, dtype=torch.float64) for n in (16, 20, 24)]
    x, y, z = 5, 13, 21
    direct = torch.einsum("bcijk,i,j,k->bc", padded, m[0][x], m[1][y], m[2][z])
    torch.testing.assert_close(field[:, :, x, y, z], direct)
    # convex combination: never larger than the largest control value of its component
    for c in range(3):
        assert field[:, c].abs().max() <= ctrl[:, c].abs().max() + 1e-12


def test_zero_control_points_give_identity():
    img = torch.rand(1, 1, 16, 16, 16)
    field = A.bspline_field(torch.zeros(1, 3, 5, 5, 5), (16, 16, 16))
    assert torch.count_nonzero(field) == 0
    out = A.augment_moving(img, field=field)
    torch.testing.assert_close(out["moving"], img, atol=1e-5, rtol=0)  # grid_sample round-off


def test_determinism_and_device():
    img = torch.rand(2, 1, 16, 16, 16)
    a = A.augment_moving(img, generator=torch.Generator().manual_seed(7))
    b = A.augment_moving(img, generator=torch.Generator().manual_seed(7))
    c = A.augment_moving(img, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a["field"], b["field"]) and torch.equal(a["moving"], b["moving"])
    assert not torch.equal(a["field"], c["field"])
    assert a["field"].device == img.device and a["field"].shape == (2, 3, 16, 16, 16)
    # the two samples of a batch get different fields
    assert not torch.equal(a["field"][0], a["field"][1])


def test_augment_seg_and_landmarks_consistent():
    size = 32
    g = torch.Generator().manual_seed(11)
    seg = torch.zeros(1, 1, size, size, size, dtype=torch.int64)
    seg[:, :, 10:20, 12:22, 8:24] = 3
    img = seg.float()
    pts = torch.tensor([[15.0, 17.0, 16.0], [5.5, 25.0, 9.25]], dtype=torch.float64)
    out = A.augment_moving(img, seg=seg, landmarks=[pts], generator=g)
    assert out["seg"].dtype == torch.int64
    assert set(out["seg"].unique().tolist()) <= {0, 3}
    assert out["field"].abs().max() > 0.1  # a real deformation
    y = out["landmarks"][0]
    # the augmented landmark y maps back onto the original point: y + field(y) = p
    back = y + sample_flow(out["field"][0].double(), y)
    torch.testing.assert_close(back, pts, atol=1e-3, rtol=0)
    # the warped label map agrees with the trilinearly warped image where the image is 0 or 3
    sure = (out["moving"] < 0.01) | (out["moving"] > 2.99)
    assert torch.equal(out["seg"][sure].float(), torch.round(out["moving"][sure]))
