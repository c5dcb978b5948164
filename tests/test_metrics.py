"""Metrics: exact values on hand-made cases and cross-checks against SimpleITK."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from vtn import metrics
from vtn.functional import affine_flow


def _boxes(shape=(8, 8, 8)):
    a = np.zeros(shape, np.uint8)
    b = np.zeros(shape, np.uint8)
    a[0:4, 0:4, 0:4] = 1  # 64 voxels
    b[2:6, 0:4, 0:4] = 1  # 64 voxels, 32 shared
    return a, b


def test_iou_dice_exact_boxes():
    a, b = _boxes()
    assert metrics.iou(a, b) == pytest.approx(32 / 96)
    assert metrics.dice(a, b) == pytest.approx(2 * 32 / 128)
    assert metrics.iou(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(1 / 3)
    assert metrics.iou(a, a) == 1.0


def test_iou_empty_union_is_nan_or_given_value():
    z = np.zeros((4, 4, 4))
    assert math.isnan(metrics.iou(z, z))
    assert math.isnan(metrics.dice(z, z))
    assert metrics.iou(z, z, empty=1.0) == 1.0
    a, _ = _boxes((4, 4, 4))
    assert metrics.iou(a, z) == 0.0
    with pytest.raises(ValueError):
        metrics.iou(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))


def _random_labels(rng, shape, labels):
    # smooth random label map: argmax of blurred noise channels
    noise = ndimage.gaussian_filter(rng.normal(size=(len(labels),) + shape), (0, 1.5, 1.5, 1.5))
    return np.asarray(labels)[noise.argmax(0)].astype(np.int16)


def test_label_overlap_matches_simpleitk():
    rng = np.random.default_rng(1)
    labels = [0, 21, 22, 41, 182]
    fixed = _random_labels(rng, (16, 16, 16), labels)
    warped = _random_labels(rng, (16, 16, 16), labels)
    table = metrics.label_overlap(fixed, warped)
    assert list(table["label"]) == [21, 22, 41, 182]
    flt = sitk.LabelOverlapMeasuresImageFilter()
    flt.Execute(sitk.GetImageFromArray(fixed), sitk.GetImageFromArray(warped))
    for rec in table.itertuples():
        assert rec.iou == pytest.approx(flt.GetJaccardCoefficient(int(rec.label)), abs=1e-12)
        assert rec.dice == pytest.approx(flt.GetDiceCoefficient(int(rec.label)), abs=1e-12)
    res = metrics.mean_label_overlap(fixed, warped, metrics.LPBA40_LABELS)
    assert res["n_labels"] == 4
    assert res["iou"] == pytest.approx(table["iou"].mean())


def test_mean_label_overlap_only_labels_present_in_fixed():
    fixed = np.zeros((6, 6, 6), int)
    warped = np.zeros((6, 6, 6), int)
    fixed[:3] = 21
    warped[:3] = 21
    warped[3:] = 22  # 22 absent from the fixed image: not averaged
    fixed[3:, :3] = 23
    warped[3:, :3] = 23  # overwritten 22 there
    res = metrics.mean_label_overlap(fixed, warped, labels=[21, 22, 23])
    assert res["n_labels"] == 2
    assert res["iou"] == pytest.approx(1.0)
    assert len(metrics.LPBA40_LABELS) == 56 and len(set(metrics.LPBA40_LABELS)) == 56


def test_landmark_distance_units():
    true = np.array([[10.0, 10, 10], [5, 5, 5]])
    pred = true + np.array([3.0, 4.0, 0.0])
    assert metrics.landmark_distance(pred, true) == pytest.approx(5.0)
    # anisotropic spacing: (2*3, 1*4, 0) -> sqrt(52)
    assert metrics.landmark_distance(pred, true, spacing=(2, 1, 1)) == pytest.approx(math.sqrt(52))
    # an affine with a rotation keeps lengths at unit spacing; translation is ignored
    rot = np.eye(4)
    rot[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    rot[:3, 3] = [100, -50, 7]
    assert metrics.landmark_distance(pred, true, affine=rot) == pytest.approx(5.0)
    # correction matrix (pre-aligned methods) applied before the mm affine
    corr = np.diag([0.5, 0.5, 0.5, 1.0])
    assert metrics.landmark_distance(pred, true, matrix=corr) == pytest.approx(2.5)
    assert metrics.landmark_distance(pred, true, matrix=corr, spacing=2.0) == pytest.approx(5.0)
    np.testing.assert_allclose(metrics.landmark_errors(pred, true), [5.0, 5.0])


def test_jacobian_of_affine_field_is_exact_and_matches_simpleitk():
    W = torch.tensor([[[0.10, 0.02, 0.0], [0.0, -0.2, 0.05], [0.03, 0.0, 0.15]]],
                     dtype=torch.float64)
    b = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    flow = affine_flow(W, b, (10, 11, 12))[0].numpy()
    expected = float(np.linalg.det(np.eye(3) + W[0].numpy()))
    fw = metrics.jacobian_determinant(flow)
    assert fw.shape == (9, 10, 11)
    np.testing.assert_allclose(fw, expected, atol=1e-12)
    assert metrics.jacobian_std(flow) == pytest.approx(0.0, abs=1e-12)
    # SimpleITK (central differences): identical on an affine field. ITK vectors are (x, y, z)
    # = array axes (2, 1, 0), hence the channel reversal.
    img = sitk.GetImageFromArray(np.moveaxis(flow[::-1], 0, -1), isVector=True)
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminantFilter().Execute(img))
    np.testing.assert_allclose(det[1:-1, 1:-1, 1:-1], expected, atol=1e-12)


def test_central_jacobian_matches_simpleitk_on_smooth_random_field():
    rng = np.random.default_rng(0)
    flow = ndimage.gaussian_filter(rng.normal(size=(3, 14, 15, 16)), (0, 2, 2, 2)) * 8
    img = sitk.GetImageFromArray(np.moveaxis(flow[::-1], 0, -1), isVector=True)
    ref = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminantFilter().Execute(img))
    ours = metrics.jacobian_determinant(flow, method="central")
    # ITK treats the border differently (zero-flux); the interior is the same central scheme
    np.testing.assert_allclose(ours[1:-1, 1:-1, 1:-1], ref[1:-1, 1:-1, 1:-1], atol=1e-10)
    assert np.std(ours) > 0.05  # the field is not trivially smooth


def test_folding_fraction_exact():
    flow = np.zeros((3, 8, 5, 5))
    flow[0, 5:] = -1.5  # forward difference -1.5 between i=4 and 5 -> det = -0.5 on one slab
    assert metrics.folding_fraction(flow) == pytest.approx(1 / 7)
    dets = metrics.jacobian_determinant(torch.from_numpy(flow).unsqueeze(0))
    assert sorted(np.unique(np.round(dets, 6))) == [-0.5, 1.0]
    assert metrics.jacobian_std(flow) == pytest.approx(np.std([1.0] * 6 + [-0.5]))


def test_folding_counts_negative_determinants_only():
    """The paper's folding is a NEGATIVE Jacobian determinant: det == 0 is not folding."""
    flow0 = np.zeros((3, 8, 5, 5))
    flow0[0, 5:] = -1.0  # det exactly 0 on one slab of the 7
    dets = metrics.jacobian_determinant(flow0)
    assert (dets == 0).mean() == pytest.approx(1 / 7)  # the case is not trivial
    assert metrics.folding_fraction(flow0) == 0.0
    flow0[0, 5:] = -1.25  # det -0.25: folding
    assert metrics.folding_fraction(flow0) == pytest.approx(1 / 7)


def _boundary_bruteforce(m):
    """Mask voxels with a 6-neighbour outside the mask or the array (an independent
    implementation of the boundary)."""
    p = np.pad(m, 1)
    inner = np.ones_like(m)
    for ax in range(3):
        for sh in (-1, 1):
            inner &= np.roll(p, sh, axis=ax)[1:-1, 1:-1, 1:-1]
    return m & ~inner


def _hd_bruteforce(a, b, q, spacing=(1.0, 1.0, 1.0)):
    from scipy.spatial.distance import cdist

    pa = np.argwhere(_boundary_bruteforce(a)) * np.asarray(spacing)
    pb = np.argwhere(_boundary_bruteforce(b)) * np.asarray(spacing)
    d = cdist(pa, pb)
    return max(np.percentile(d.min(1), q), np.percentile(d.min(0), q))


def test_hd95_of_shifted_boxes_by_hand():
    # two 4^3 boxes, shifted by 2 along axis 0. Boundary voxels of A (56) to the boundary of B:
    # face x0=0: 16 at distance 2; ring x0=1: 12 at 1; ring x0=2 and ring x0=3: 24 at 0 (they
    # are boundary voxels of B); the 4 inner voxels of face x0=3: 1 (B's inside). Sorted, the
    # 95th percentile (rank 0.95 * 55 = 52.25 of 0..55) falls among the 16 twos; symmetric.
    a = np.zeros((10, 6, 6), bool)
    b = np.zeros((10, 6, 6), bool)
    a[1:5, 1:5, 1:5] = True
    b[3:7, 1:5, 1:5] = True
    assert metrics.hausdorff_distance(a, b) == pytest.approx(2.0)
    assert metrics.hausdorff_distance(a, b, 50) == pytest.approx(1.0)  # rank 27.5: ones
    assert metrics.hausdorff_distance(a, b, spacing=3.0) == pytest.approx(6.0)
    assert metrics.hausdorff_distance(a, a) == 0.0
    assert np.isnan(metrics.hausdorff_distance(a, np.zeros_like(a)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5)])
def test_hausdorff_matches_simpleitk_and_bruteforce(spacing):
    g = np.indices((26, 22, 20)).astype(float)

    def ellipsoid(c, radii):
        return sum(((g[k] - c[k]) / radii[k]) ** 2 for k in range(3)) <= 1.0

    a = ellipsoid((10, 10, 9), (7.5, 6, 4.8))
    b = ellipsoid((14, 11, 10), (5, 5, 5)) | ellipsoid((7, 6, 12), (2, 3, 2))
    flt = sitk.HausdorffDistanceImageFilter()
    ia, ib = (sitk.GetImageFromArray(m.astype(np.uint8)) for m in (a, b))
    for img in (ia, ib):
        img.SetSpacing(spacing[::-1])  # ITK (x, y, z) = array axes (2, 1, 0)
    flt.Execute(ia, ib)
    hd = metrics.hausdorff_distance(a, b, 100, spacing=spacing)
    assert hd == pytest.approx(flt.GetHausdorffDistance(), rel=1e-12)
    hd95 = metrics.hausdorff_distance(a, b, 95, spacing=spacing)
    assert hd95 == pytest.approx(_hd_bruteforce(a, b, 95, spacing), rel=1e-12)
    assert 0 < hd95 < hd  # the percentile is not the maximum here
    table = metrics.label_overlap(a.astype(int) * 21, b.astype(int) * 21, spacing=spacing)
    assert table.loc[0, "hd95"] == pytest.approx(metrics.hausdorff_distance(a, b))
    assert table.loc[0, "hd95_mm"] == pytest.approx(hd95)


def test_sdlogj_closed_form():
    # u_0 = c x_0^2: the central difference is exact, 2 c x_0, so J = 1 + 2 c x_0; Learn2Reg
    # crops 2 voxels per side before the std of the log
    D, c = 14, 0.03
    flow = np.zeros((3, D, 9, 8))
    flow[0] = c * np.arange(D, dtype=float)[:, None, None] ** 2
    x = np.arange(2, D - 2, dtype=float)
    assert metrics.sdlogj(flow) == pytest.approx(np.log(1 + 2 * c * x).std(), rel=1e-12)
    assert metrics.sdlogj(flow, shift=3) == pytest.approx(np.log(4 + 2 * c * x).std(), rel=1e-12)
    assert metrics.sdlogj(flow) > 0.1
    # folding voxels are clipped to 1e-9 before the log, as in Learn2Reg
    flow[0] = -0.08 * np.arange(D, dtype=float)[:, None, None] ** 2
    j = 1 - 0.16 * x
    assert (j < 0).any()
    expected = np.log(np.clip(j, 1e-9, 1e9)).std()
    assert metrics.sdlogj(flow) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("a", [1.5, 2.25])
def test_non_diffeomorphic_volume_closed_form(a):
    """A slab folding along axis 0 (displacement -a beyond index k): every cell between k-1
    and k maps to signed volume 1 - a, i.e. each of its 8 corner tetrahedra has det 1 - a and
    its two central ones 2 (1 - a); (8 + 2 * 2)(a - 1) / 6 / 2 = a - 1 per cell, one cell per
    (j, k) column with the edge-replicated border: NDV = (a - 1) H W voxels."""
    D, H, W = 8, 5, 6
    flow = np.zeros((3, D, H, W))
    flow[0, 4:] = -a
    vol, pct = metrics.non_diffeomorphic_volume(flow)
    assert vol == pytest.approx((a - 1) * H * W, rel=1e-12)
    assert pct == pytest.approx(100 * (a - 1) * H * W / (D * H * W), rel=1e-12)
    assert metrics.non_diffeomorphic_volume(np.ones((3, D, H, W)) * 2.5) == (0.0, 0.0)


def test_non_diffeomorphic_volume_matches_the_package():
    dd = pytest.importorskip("digital_diffeomorphism.core",
                             reason="digital-diffeomorphism (pip install --no-deps)")
    rng = np.random.default_rng(0)
    flow = ndimage.gaussian_filter(rng.normal(size=(3, 14, 15, 16)), (0, 1, 1, 1)) * 6
    vol, pct = metrics.non_diffeomorphic_volume(flow)
    ref = dd.ndv(np.moveaxis(flow, 0, -1).copy(), is_disp=True)
    assert vol > 10  # a folding field
    assert vol == pytest.approx(float(ref[0]), rel=1e-5)  # the package computes in float32
    assert pct == pytest.approx(float(ref[1]), rel=1e-5)


def test_endpoint_error():
    gt = np.zeros((3, 4, 4, 4))
    flow = gt.copy()
    flow[0] = 3.0
    flow[1] = 4.0
    assert metrics.endpoint_error(flow, gt) == pytest.approx(5.0)
    mask = np.zeros((4, 4, 4), bool)
    flow[:, 0] = 0.0
    mask[0] = True
    assert metrics.endpoint_error(flow, gt, mask=mask) == 0.0
    assert metrics.endpoint_error(flow, gt) == pytest.approx(5.0 * 3 / 4)
    with pytest.raises(ValueError):
        metrics.endpoint_error(flow, gt[:, :3])
