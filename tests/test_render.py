"""3-D renderings (Figure 1): exact projections, compositing and grid geometry."""

import numpy as np
import pytest

from vtn.report.render import (deformation_grid, figure1_rendering, grid_volume, render_volume,
                               view_rotation)


def test_view_rotation_is_a_rotation():
    R = view_rotation()
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(view_rotation(0.0, 0.0), np.eye(3))
    # azimuth 90: axis 0 of the volume becomes axis 1 of the view
    np.testing.assert_allclose(view_rotation(90.0, 0.0) @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)


def test_render_projection_and_compositing_exact():
    n = 16
    size = int(np.ceil(np.sqrt(3) * n))  # 28: the view volume, centred on the volume
    off = (size - n) // 2
    assert render_volume(np.zeros((n, n, n)), normalise=False).max() == 0.0
    # one bright voxel, view along axis 0 (no rotation): a spot at (h, w) + offset, of opacity
    # 1 - exp(-tau / n)
    vol = np.zeros((n, n, n))
    vol[5, 3, 9] = 1.0
    img = render_volume(vol, azimuth=0.0, elevation=0.0, opacity=4.0, normalise=False)
    assert img.shape == (size, size)
    assert np.unravel_index(img.argmax(), img.shape) == (3 + off, 9 + off)
    assert img.max() == pytest.approx(1.0 - np.exp(-4.0 / n))
    # a solid cube: every column through it holds n voxels of opacity a, so the accumulated
    # white is 1 - (1 - a)^n = 1 - exp(-tau)
    img = render_volume(np.ones((n, n, n)), azimuth=0.0, elevation=0.0, opacity=4.0,
                        normalise=False)
    assert img[off + n // 2, off + n // 2] == pytest.approx(1.0 - np.exp(-4.0))
    assert img[0, 0] == 0.0
    # two voxels in one column compose as 1 - (1 - a1)(1 - a2)
    two = np.zeros((n, n, n))
    two[2, 8, 8], two[12, 8, 8] = 1.0, 0.5
    img = render_volume(two, azimuth=0.0, elevation=0.0, opacity=8.0, normalise=False)
    a1, a2 = 1.0 - np.exp(-8.0 / n), 1.0 - np.exp(-4.0 / n)
    assert img[8 + off, 8 + off] == pytest.approx(1.0 - (1.0 - a1) * (1.0 - a2))
    with pytest.raises(ValueError, match="3-D"):
        render_volume(np.zeros((4, 4)))


def test_grid_volume_lines():
    g = grid_volume((8, 8, 8), spacing=4)
    # lines at coordinates 2 and 6 on each axis: 3 directions x 4 lines x 8 voxels, minus the
    # 8 crossing points counted 3 times
    assert g.sum() == 3 * 4 * 8 - 2 * 8
    assert g[2, 6, :].min() == 1.0 and g[:, 2, 2].min() == 1.0 and g[3, 3, 3] == 0.0
    # no line on the border: slice 0 holds only the crossings of the 4 lines along axis 0
    assert g[0].sum() == 4 and g[2].sum() == 2 * 8 + 2 * 8 - 4
    with pytest.raises(ValueError):
        grid_volume((4, 4, 4), spacing=0)


def test_deformation_grid_follows_the_field():
    shape = (12, 12, 12)
    flow = np.zeros((3,) + shape, np.float32)
    np.testing.assert_allclose(deformation_grid(flow, 4), grid_volume(shape, 4), atol=1e-5)
    # an integer shift by +1 along axis 2 pulls the lines one voxel back (interior)
    flow[2] = 1.0
    shifted = deformation_grid(flow, 4)
    np.testing.assert_allclose(shifted[:, :, :-1], grid_volume(shape, 4)[:, :, 1:], atol=1e-5)
    # upsampled: the identity gives the fine grid of twice the spacing, and the values of a
    # constant flow are scaled with the grid
    up = deformation_grid(np.zeros((3,) + shape, np.float32), 4, upsample=2)
    np.testing.assert_allclose(up, grid_volume((23, 23, 23), 8), atol=1e-5)
    up_shift = deformation_grid(flow, 4, upsample=2)
    np.testing.assert_allclose(up_shift[:, :, :-2], grid_volume((23, 23, 23), 8)[:, :, 2:],
                               atol=1e-5)
    with pytest.raises(ValueError, match="flow"):
        deformation_grid(np.zeros((2, 4, 4, 4)))


def test_figure1_rendering_writes_four_panels(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"))
    blob = np.exp(-(((g - 8.0) ** 2).sum(0)) / 20.0)
    flow = rng.normal(0, 0.3, (3, 16, 16, 16)).astype(np.float32)
    out = figure1_rendering(blob, np.roll(blob, 2, 0), flow, blob, tmp_path / "f1.png",
                            title="test")
    img = mpimg.imread(out)
    assert img.shape[1] > 3 * img.shape[0] and img.std() > 0.05
