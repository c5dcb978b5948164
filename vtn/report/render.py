"""3-D renderings like the paper's Figure 1 (fixed, moving, deformation grid, warped).

The paper renders volumes "by mapping grayscale to white with transparency (the more intense, the
more opaque) and dimetrically projecting the volume". :func:`render_volume` does exactly that:
the volume is rotated (scipy) so that the viewing direction is array axis 0 of the result, each
voxel of intensity ``v`` in [0, 1] gets opacity ``alpha = 1 - exp(-tau * v)`` and white colour,
and the voxels are composited front to back on a black background (emission-absorption,
orthographic). :func:`deformation_grid` builds the skewed grid of panel (c): grid lines drawn on
the *moving* image's grid, pulled onto the fixed grid by the displacement, so every line shows
where that fixed-grid line samples the moving image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["view_rotation", "render_volume", "grid_volume", "deformation_grid",
           "figure1_rendering"]

#: Dimetric view: two of the three axes equally foreshortened (azimuth 45°), tilted by 20.7°
#: (the elevation of the standard 1:2 dimetric projection).
DIMETRIC = {"azimuth": 45.0, "elevation": 20.7}


def view_rotation(azimuth: float = DIMETRIC["azimuth"],
                  elevation: float = DIMETRIC["elevation"]) -> np.ndarray:
    """Rotation ``R`` (3x3) taking volume coordinates to view coordinates (axis 0 = depth).

    First a rotation by ``azimuth`` degrees about array axis 2 (the body's long axis in LPS/RAS
    volumes), then by ``elevation`` degrees about the new axis 1.
    """
    a, e = np.deg2rad(azimuth), np.deg2rad(elevation)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[np.cos(e), 0.0, np.sin(e)], [0.0, 1.0, 0.0], [-np.sin(e), 0.0, np.cos(e)]])
    return ry @ rz


def render_volume(vol, azimuth: float = DIMETRIC["azimuth"],
                  elevation: float = DIMETRIC["elevation"], opacity: float = 4.0,
                  normalise: bool = True) -> np.ndarray:
    """Front-to-back white-on-black volume rendering of ``vol`` (orthographic).

    Args:
        vol: ``(D, H, W)`` array (voxel units; any intensity range).
        azimuth, elevation: view angles in degrees (:func:`view_rotation`).
        opacity: optical depth of a column of intensity 1 that crosses the whole volume; the
            opacity of one voxel is ``1 - exp(-opacity * v / L)`` with ``L`` the largest side.
        normalise: map the 1st..99.5th percentile of ``vol`` to [0, 1] first (else clip).

    Returns:
        ``(S, S)`` float array in [0, 1] (``S`` = the volume's diagonal in voxels), the
        accumulated white intensity; rows run along the rotated axis 1, columns along axis 2.
    """
    from scipy import ndimage

    vol = np.asarray(vol, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"render_volume needs a 3-D array, got shape {vol.shape}")
    if normalise:
        lo, hi = np.percentile(vol, [1.0, 99.5])
        vol = (vol - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)
    vol = np.clip(vol, 0.0, 1.0)
    size = int(np.ceil(np.linalg.norm(vol.shape)))
    R = view_rotation(azimuth, elevation)
    c_in = (np.asarray(vol.shape, float) - 1) / 2.0
    c_out = np.full(3, (size - 1) / 2.0)
    # output (view) point o -> input point R^T (o - c_out) + c_in
    M = R.T
    sampled = ndimage.affine_transform(vol, M, offset=c_in - M @ c_out, output_shape=(size,) * 3,
                                       order=1, mode="constant", cval=0.0)
    alpha = 1.0 - np.exp(-float(opacity) * np.clip(sampled, 0.0, 1.0) / max(vol.shape))
    # front-to-back: the viewer sits at depth index 0
    transmit = np.cumprod(np.concatenate([np.ones((1, size, size)), 1.0 - alpha[:-1]]), axis=0)
    return np.clip((alpha * transmit).sum(0), 0.0, 1.0)


def grid_volume(shape, spacing: int = 4, width: int = 1) -> np.ndarray:
    """Lines parallel to each axis every ``spacing`` voxels, 1 on the lines, 0 elsewhere.

    A voxel is on a line parallel to axis ``a`` when each of its two other coordinates ``i``
    satisfies ``(i - spacing // 2) % spacing < width`` (the lines start half a spacing inside,
    so that none lies on the border, which a border-clamped warp would smear).
    """
    if spacing < 1 or width < 1:
        raise ValueError(f"spacing and width must be >= 1, got {spacing}, {width}")
    idx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    on = [((i - spacing // 2) % spacing) < width for i in idx]
    lines = (on[1] & on[2]) | (on[0] & on[2]) | (on[0] & on[1])
    return lines.astype(np.float32)


def deformation_grid(flow, spacing: int = 4, upsample: int = 1) -> np.ndarray:
    """The grid of the moving image pulled onto the fixed grid by ``flow``.

    Args:
        flow: ``(3, D, H, W)`` displacement in voxels on the fixed grid (pulls from the moving
            image, the project's convention).
        spacing: grid line spacing in (original) voxels.
        upsample: integer factor: the flow is trilinearly resampled to ``upsample`` times the
            size (and its values scaled with it), so that lines are finer than a voxel.

    Returns:
        ``(upsample * D, upsample * H, upsample * W)`` float32 in [0, 1]: the warped lines.
    """
    import torch
    import torch.nn.functional as F

    from vtn.functional import warp

    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 4 or flow.shape[0] != 3:
        raise ValueError(f"flow must have shape (3, D, H, W), got {flow.shape}")
    if int(upsample) < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample}")
    k = int(upsample)
    f = torch.from_numpy(flow)[None]
    if k > 1:
        size = tuple(k * (n - 1) + 1 for n in flow.shape[1:])  # voxel i -> k * i exactly
        f = F.interpolate(f, size=size, mode="trilinear", align_corners=True) * k
    lines = grid_volume(f.shape[2:], spacing * k)
    out = warp(torch.from_numpy(lines)[None, None], f)
    return out[0, 0].numpy()


def _stretch(img):
    """Scale a rendering so that its 99.9th percentile is white (thin grid lines are faint)."""
    top = np.percentile(img, 99.9)
    return np.clip(img / top, 0.0, 1.0) if top > 0 else img


def figure1_rendering(fixed, moving, flow, warped, out_png, title: str = "",
                      spacing: int | None = None) -> Path:
    """Write the four panels of the paper's Figure 1 for one pair.

    Args:
        fixed, moving, warped: ``(D, H, W)`` images (the warped one on the fixed grid).
        flow: ``(3, D, H, W)`` displacement in voxels (fixed grid).
        out_png: output path.
        title: figure title (should name the data source and the method).
        spacing: grid line spacing in voxels (default: a quarter of the largest side, at
            least 2); volumes up to 64 voxels get a grid twice as fine as a voxel.

    Returns:
        ``out_png`` as a Path.
    """
    from vtn.report.figures import _plt, save_figure

    plt = _plt()
    side = max(np.shape(fixed))
    spacing = spacing or max(2, side // 4)
    lo, hi = np.percentile(np.concatenate([np.ravel(fixed), np.ravel(moving)]), [1.0, 99.5])

    def scaled(v):  # one intensity window for the three images, so they compare
        return (np.asarray(v, np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(np.shape(v))

    panels = [("(a) fixed", render_volume(scaled(fixed), normalise=False)),
              ("(b) moving", render_volume(scaled(moving), normalise=False)),
              ("(c) deformation (grid)", _stretch(render_volume(
                  deformation_grid(flow, spacing, upsample=2 if side <= 64 else 1),
                  normalise=False, opacity=8.0))),
              ("(d) warped moving", render_volume(scaled(warped), normalise=False))]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.6))
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, out_png, dpi=110)
