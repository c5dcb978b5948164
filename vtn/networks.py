"""VTN registration networks (Zhao et al., IEEE JBHI 2020) and the VoxelMorph-2 baseline.

Models take ``fixed`` and ``moving`` images ``(B, 1, D, H, W)`` and return a dict (see
``docs/design.md``, "Models"):

* ``flows``: the flow predicted by each subnet (the affine subnet's dense affine flow), voxels;
* ``agg``: the composed flow after each subnet, ``agg[-1]`` the final one;
* ``warped``: ``warp(moving, agg[k])``, always resampled once from the original moving image;
* ``affine``: ``(W (B, 3, 3), b (B, 3))`` of the affine subnet, or ``None``;
* ``flow``: ``agg[-1]``;
* ``fixed`` / ``moving``: the inputs (references, for losses that need them).

All flows are displacements in voxels of the fixed grid that pull from the moving image,
``warped(x) = moving(x + flow(x))`` (channel ``k`` = array axis ``k``).

Architecture sources: the paper (Sec. IV-B, V-A1) and the only public implementation of the VTN
networks, ``microsoft/Recursive-Cascaded-Networks`` (summarised in
``/work/shared/reference-facts.md`` sections 1-3, 10, 11). Where the two differ the paper is the
default and the reference behaviour an option:

* The affine subnet downsamples to ``4^3`` at ``128^3`` input (paper) before its fully-connected
  head; the reference code goes to ``2^3`` (``affine_final_size=2``).
* The dense flow is ``pred0 * 20 * flow_multiplier`` with ``flow_multiplier=1`` (the VTN paper);
  RCN uses ``1 / n_dense`` (``flow_multiplier="1/n"``).

Padding: PyTorch ``padding=1`` for the stride-2 3x3x3 convolutions pads one voxel on both sides;
TensorFlow ``SAME`` on an even-sized input pads 0 before and 1 after, which shifts the sampling grid
of every stride-2 level by one input voxel. ``tf_same_padding=True`` reproduces TF exactly with an
explicit ``(0, 1)`` pad per spatial dimension followed by an unpadded convolution; the default
(``False``) uses the symmetric PyTorch padding. Stride-1 convolutions and the ``k=4, s=2, p=1``
transposed convolutions are identical in both frameworks.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtn import functional as vf
from vtn.modelspec import SPEC_PATTERN, VOXELMORPH2_DEC_NF, VOXELMORPH2_ENC_NF

__all__ = [
    "MAX_LEVELS",
    "check_spec",
    "uniform_scaling_",
    "num_levels",
    "DenseSubnet",
    "AffineSubnet",
    "Cascade",
    "VoxelMorph2",
    "build_cascade",
    "build_model",
    "count_parameters",
]

MAX_LEVELS = 6
"""Number of stride-2 levels of the reference VTN subnet at 128^3 (ending at 2^3)."""

FLOW_SCALE = 20.0
"""Factor on the output of a dense subnet's ``pred0`` (reference code: ``pred0 * 20``)."""

_SPEC_RE = re.compile(SPEC_PATTERN)


def check_spec(spec) -> str:
    """Return ``spec`` if it names a VTN cascade (``"A"`` or ``A?D+``), else raise ``ValueError``."""
    if not isinstance(spec, str) or not _SPEC_RE.match(spec):
        raise ValueError(
            f"invalid cascade spec {spec!r}: expected 'A', or an optional 'A' followed by one "
            "or more 'D' (e.g. 'D', 'AD', 'ADDD')"
        )
    return spec


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def uniform_scaling_(weight: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """tflearn ``uniform_scaling`` init in place: ``U(-sqrt(3 f / fan), +sqrt(3 f / fan))``.

    ``fan`` is the product of all TF kernel dims except the last: ``k^3 * C_in`` for a
    convolution and ``k^3 * C_out`` for a transposed convolution (TF stores its kernel as
    ``[k, k, k, C_out, C_in]``). PyTorch stores ``Conv3d`` weights as ``(C_out, C_in, k, k, k)``
    and ``ConvTranspose3d`` weights as ``(C_in, C_out, k, k, k)``, so in both cases
    ``fan = weight[0].numel()``.
    """
    fan = weight[0].numel()
    limit = math.sqrt(3.0 * factor / fan)
    with torch.no_grad():
        weight.uniform_(-limit, limit)
    return weight


def _as_shape(image_size) -> tuple[int, int, int]:
    """``int`` or 3-sequence -> ``(D, H, W)``; raises ValueError otherwise."""
    if isinstance(image_size, bool):
        raise ValueError(f"image_size must be an int or 3 ints, got {image_size!r}")
    if isinstance(image_size, int):
        shape = (image_size,) * 3
    else:
        try:
            shape = tuple(int(s) for s in image_size)
        except TypeError as exc:
            raise ValueError(f"image_size must be an int or 3 ints, got {image_size!r}") from exc
        if len(shape) != 3 or any(int(s) != s for s in image_size):
            raise ValueError(f"image_size must be an int or 3 ints, got {image_size!r}")
    if any(s < 1 for s in shape):
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return shape


def num_levels(image_size, final_size: int = 2, max_levels: int = MAX_LEVELS) -> int:
    """Number of stride-2 levels for an input size.

    The largest ``L <= max_levels`` with every dim divisible by ``2^L`` and the smallest dim
    divided by ``2^L`` at least ``final_size``: 128 -> 6 (ending at 2^3), 64 -> 5, 32 -> 4,
    16 -> 3, 48 -> 4 (with ``final_size=2``; the affine subnet uses ``final_size=4``: 128 -> 5).

    Raises:
        ValueError: if fewer than 2 levels fit (dims too small or not divisible by 4).
    """
    shape = _as_shape(image_size)
    best = 0
    for L in range(1, max_levels + 1):
        if all(s % (2**L) == 0 for s in shape) and min(shape) // (2**L) >= final_size:
            best = L
    if best < 2:
        raise ValueError(
            f"image size {shape} is not supported: every dim must be divisible by 4 and at "
            f"least {4 * final_size} (2 stride-2 levels ending at >= {final_size} voxels)"
        )
    return best


def _check_levels(shape, levels: int, what: str) -> None:
    if not 2 <= levels <= MAX_LEVELS:
        raise ValueError(f"{what}: levels must be in [2, {MAX_LEVELS}], got {levels}")
    bad = [s for s in shape if s % (2**levels) != 0]
    if bad:
        raise ValueError(
            f"{what}: image size {tuple(shape)} is not divisible by 2^{levels}={2**levels} "
            f"along every axis (offending sizes {bad}); use sizes that are multiples of "
            f"{2**levels} or fewer levels"
        )


def _width(level: int, channels: int) -> int:
    """Output channels of encoder level ``level`` (1-based): ``c * 2^(level-1)``."""
    return channels * 2 ** (level - 1)


class _ConvLReLU(nn.Module):
    """3x3x3 conv (bias, zero-init) -> LeakyReLU(slope); optional TF-SAME stride-2 padding."""

    def __init__(self, c_in: int, c_out: int, stride: int, slope: float = 0.1,
                 tf_same_padding: bool = False):
        super().__init__()
        self.tf_pad = bool(tf_same_padding) and stride == 2
        self.conv = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=0 if self.tf_pad else 1)
        uniform_scaling_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_pad:
            x = F.pad(x, (0, 1, 0, 1, 0, 1))
        return F.leaky_relu(self.conv(x), self.slope)


def _upconv(c_in: int, c_out: int) -> nn.ConvTranspose3d:
    """Bias-free ``ConvTranspose3d(k=4, s=2, p=1)`` (exact 2x), uniform_scaling init."""
    m = nn.ConvTranspose3d(c_in, c_out, 4, stride=2, padding=1, bias=False)
    uniform_scaling_(m.weight)
    return m


def _pred_conv(c_in: int) -> nn.Conv3d:
    """Linear 3x3x3 flow prediction ``c_in -> 3`` with zero-init bias."""
    m = nn.Conv3d(c_in, 3, 3, padding=1)
    uniform_scaling_(m.weight)
    nn.init.zeros_(m.bias)
    return m


class _Encoder(nn.Module):
    """VTN encoder: ``conv1, conv2, conv3, conv3_1, ..., conv<L>, conv<L>_1``.

    Level ``k`` (1-based) is a stride-2 conv to ``c * 2^(k-1)`` channels, followed for
    ``k >= 3`` by a stride-1 conv of the same width; every conv is followed by LeakyReLU(0.1).
    ``forward`` returns the skip feature of each level (``conv1``, ``conv2``, ``conv3_1``, ...).
    """

    def __init__(self, in_channels: int, levels: int, channels: int = 16,
                 tf_same_padding: bool = False):
        super().__init__()
        self.levels = levels
        self.down = nn.ModuleList()
        self.same = nn.ModuleList()
        c_prev = in_channels
        for k in range(1, levels + 1):
            c = _width(k, channels)
            self.down.append(_ConvLReLU(c_prev, c, 2, tf_same_padding=tf_same_padding))
            self.same.append(_ConvLReLU(c, c, 1) if k >= 3 else nn.Identity())
            c_prev = c
        self.out_channels = c_prev

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for down, same in zip(self.down, self.same):
            x = same(down(x))
            feats.append(x)
        return feats


# --------------------------------------------------------------------------------------------
# subnets
# --------------------------------------------------------------------------------------------


class DenseSubnet(nn.Module):
    """VTN dense deformable subnet (paper Fig. 4; reference-facts sections 1.2-1.4).

    Encoder ``conv1 ... conv<L>_1`` (widths 16, 32, 64, 128, 256, 512), FlowNet-style decoder:
    at each level ``k`` from ``L-1`` down to 1, ``upsamp(k+1)to(k)`` (bias-free linear
    ``ConvTranspose3d`` of the coarser prediction), ``deconv<k>`` (bias-free ``ConvTranspose3d`` +
    LeakyReLU(0.1)) and ``concat<k> = [skip_k, deconv_k, upsampled flow]``; ``pred<k>`` (linear
    3x3x3 conv with bias) for ``k >= 2``; the full-resolution flow ``pred0`` is a bias-free
    ``ConvTranspose3d`` on ``concat1``. Output flow = ``pred0 * 20 * flow_multiplier``.

    ``levels`` defaults to :func:`num_levels` of ``image_size`` (6 at 128^3, ending at 2^3; the
    deepest levels are dropped for smaller inputs, as in RCN issue #50). About 28.25 M parameters
    at 6 levels.

    Args:
        image_size: int or ``(D, H, W)``; every dim divisible by ``2^levels``.
        channels: base width ``c`` (16 in the paper).
        flow_multiplier: extra factor on the output flow (1 = VTN paper; RCN uses ``1/n``).
        tf_same_padding: TF-SAME ``(0, 1)`` padding for the stride-2 convs (module docstring).
        levels: override the number of stride-2 levels.
        flow_init_scale: factor on the initial weights of ``pred0`` (1 = the reference
            initialisation, whose untrained flows reach tens of voxels through the ``x 20``
            scaling; a small value starts near the identity, for short trainings).
    """

    def __init__(self, image_size, channels: int = 16, flow_multiplier: float = 1.0,
                 tf_same_padding: bool = False, levels: int | None = None,
                 flow_init_scale: float = 1.0):
        super().__init__()
        shape = _as_shape(image_size)
        self.levels = num_levels(shape, 2) if levels is None else int(levels)
        _check_levels(shape, self.levels, "DenseSubnet")
        self.flow_multiplier = float(flow_multiplier)
        L = self.levels
        self.encoder = _Encoder(2, L, channels, tf_same_padding)
        # index k in the ModuleDicts below is the level number (as in the reference names).
        self.pred = nn.ModuleDict()
        self.upsamp = nn.ModuleDict()
        self.deconv = nn.ModuleDict()
        c_in = _width(L, channels)  # input of pred_L / deconv_{L-1}: conv<L>_1
        self.pred[str(L)] = _pred_conv(c_in)
        for k in range(L - 1, 0, -1):
            c_k = _width(k, channels)
            self.upsamp[str(k)] = _upconv(3, 3)
            self.deconv[str(k)] = _upconv(c_in, c_k)
            c_in = 2 * c_k + 3  # concat<k> = [skip, deconv, upsampled flow]
            if k >= 2:
                self.pred[str(k)] = _pred_conv(c_in)
        self.pred0 = _upconv(c_in, 3)
        if flow_init_scale != 1.0:
            self.damp_flow_head_(flow_init_scale)

    def damp_flow_head_(self, factor: float) -> "DenseSubnet":
        """Multiply the weights of the final flow layer ``pred0`` by ``factor``, in place."""
        with torch.no_grad():
            self.pred0.weight.mul_(float(factor))
        return self

    def scale_flow(self, raw: torch.Tensor) -> torch.Tensor:
        """The flow in voxels from :meth:`raw_flow`: ``raw * FLOW_SCALE * flow_multiplier``."""
        return raw * (FLOW_SCALE * self.flow_multiplier)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Predict the flow that pulls ``moving`` onto ``fixed``.

        Args:
            fixed: ``(B, 1, D, H, W)``.
            moving: ``(B, 1, D, H, W)`` (the currently warped moving image in a cascade).

        Returns:
            ``(B, 3, D, H, W)`` flow in voxels.
        """
        return self.scale_flow(self.raw_flow(torch.cat([fixed, moving], dim=1)))

    def raw_flow(self, pair: torch.Tensor) -> torch.Tensor:
        """Encoder + FlowNet decoder on the stacked pair ``(B, 2, D, H, W)``: the output of
        ``pred0`` before :meth:`scale_flow`, in the input's dtype."""
        feats = self.encoder(pair)
        L = self.levels
        x = feats[-1]
        pred = self.pred[str(L)](x)
        for k in range(L - 1, 0, -1):
            up = self.upsamp[str(k)](pred)
            de = F.leaky_relu(self.deconv[str(k)](x), 0.1)
            x = torch.cat([feats[k - 1], de, up], dim=1)
            if k >= 2:
                pred = self.pred[str(k)](x)
        return self.pred0(x)


class AffineSubnet(nn.Module):
    """VTN affine subnet (paper Fig. 3, eq. 11; reference-facts section 2).

    The dense subnet's encoder down to ``final_size`` voxels (``4^3`` at ``128^3``, i.e. 5
    levels, per the paper; ``final_size=2`` gives the reference code's 6 levels ending at
    ``2^3``), then two bias-free "full-extent" convolutions (kernel = remaining spatial extent,
    valid padding: a fully connected layer with two heads) giving ``W`` (9 values, row-major
    3x3) and ``b`` (3). ``A = I + W``; with the uniform_scaling init ``W`` starts small.
    The head's kernel size depends on ``image_size``; no size-dependent buffers are stored.

    Args:
        image_size: int or ``(D, H, W)``.
        channels: base width (16).
        final_size: spatial size at which the encoder stops (4 = paper, 2 = reference code).
        tf_same_padding: see module docstring.
        levels: override the number of stride-2 levels.
    """

    def __init__(self, image_size, channels: int = 16, final_size: int = 4,
                 tf_same_padding: bool = False, levels: int | None = None):
        super().__init__()
        shape = _as_shape(image_size)
        self.levels = num_levels(shape, final_size) if levels is None else int(levels)
        _check_levels(shape, self.levels, "AffineSubnet")
        self.encoder = _Encoder(2, self.levels, channels, tf_same_padding)
        extent = tuple(s // 2**self.levels for s in shape)
        c = self.encoder.out_channels
        self.conv7_W = nn.Conv3d(c, 9, extent, bias=False)
        self.conv7_b = nn.Conv3d(c, 3, extent, bias=False)
        uniform_scaling_(self.conv7_W.weight)
        uniform_scaling_(self.conv7_b.weight)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor):
        """Returns ``(W (B, 3, 3), b (B, 3))`` in voxels (about the volume centre)."""
        x = self.encoder(torch.cat([fixed, moving], dim=1))[-1]
        B = x.shape[0]
        W = self.conv7_W(x).reshape(B, 3, 3)
        b = self.conv7_b(x).reshape(B, 3)
        return W, b


# --------------------------------------------------------------------------------------------
# cascade
# --------------------------------------------------------------------------------------------


class Cascade(nn.Module):
    """A VTN cascade such as ``"ADDD"`` (paper Sec. IV-A, Fig. 2).

    ``agg_0`` is the flow of subnet 0; subnet ``k >= 1`` sees ``[fixed, warped_{k-1}]`` and
    predicts ``f_k``; ``agg_k = compose(agg_{k-1}, f_k) = f_k + warp(agg_{k-1}, f_k)`` (paper
    eq. 3) and ``warped_k = warp(moving, agg_k)`` from the original moving image. When the
    previous aggregate is exactly the affine flow (``agg_0`` of an ``A...`` cascade) and
    ``affine_compose="analytic"`` (default), ``agg_1 = f_1 + W f_1 + agg_0`` is used instead:
    this is the composition evaluated exactly (the affine flow is defined everywhere), as in the
    reference code; ``"warp"`` interpolates the affine field and clamps sample points at the
    border (identical inside the volume up to rounding). Gradients flow through every warp.

    Build with :func:`build_cascade`; ``config`` rebuilds through :func:`build_model`.

    ``subnets`` (one module per letter of ``spec``, same call contract as :class:`AffineSubnet`
    / :class:`DenseSubnet`, outputs in any float dtype) replaces the subnets that would be
    built; ``cached_grid=True`` keeps the :func:`vtn.functional.sampling_grid` of the image
    shape as (non-persistent) buffers and passes it to every warp. The fast inference path
    (:func:`vtn.perf.fast_model`) is this class with both: one forward for every model.
    """

    def __init__(self, spec: str, image_size, channels: int = 16,
                 flow_multiplier: float | str = 1.0, tf_same_padding: bool = False,
                 affine_final_size: int = 4, affine_compose: str = "analytic",
                 dense_levels: int | None = None, affine_levels: int | None = None,
                 flow_init_scale: float = 1.0, *, subnets: Sequence[nn.Module] | None = None,
                 cached_grid: bool = False):
        super().__init__()
        check_spec(spec)
        if affine_compose not in ("analytic", "warp"):
            raise ValueError(f"affine_compose must be 'analytic' or 'warp', got {affine_compose!r}")
        shape = _as_shape(image_size)
        n_dense = spec.count("D")
        if isinstance(flow_multiplier, str):
            if flow_multiplier not in ("1/n", "rcn"):
                raise ValueError(
                    f"flow_multiplier must be a number or '1/n', got {flow_multiplier!r}")
            fm = 1.0 / max(n_dense, 1)
        else:
            fm = float(flow_multiplier)
        self.spec = spec
        self.image_shape = shape
        self.subnet_kinds = list(spec)
        self.affine_compose = affine_compose
        self._config = {
            "type": "vtn",
            "spec": spec,
            "image_size": image_size if isinstance(image_size, int) else list(shape),
            "channels": int(channels),
            "flow_multiplier": flow_multiplier if isinstance(flow_multiplier, str) else fm,
            "tf_same_padding": bool(tf_same_padding),
            "affine_final_size": int(affine_final_size),
            "affine_compose": affine_compose,
            "dense_levels": dense_levels,
            "affine_levels": affine_levels,
            "flow_init_scale": float(flow_init_scale),
        }
        if subnets is None:
            subnets = []
            for kind in spec:
                if kind == "A":
                    subnets.append(AffineSubnet(shape, channels, affine_final_size,
                                                tf_same_padding, affine_levels))
                else:
                    subnets.append(DenseSubnet(shape, channels, fm, tf_same_padding,
                                               dense_levels, flow_init_scale))
        elif len(subnets) != len(spec):
            raise ValueError(f"subnets: {len(subnets)} modules for the {len(spec)} subnets of "
                             f"{spec!r}")
        self.subnets = nn.ModuleList(subnets)
        self.cached_grid = bool(cached_grid)
        if self.cached_grid:
            base, scale = vf.sampling_grid(shape)
            self.register_buffer("grid_base", base, persistent=False)
            self.register_buffer("grid_scale", scale, persistent=False)

    @property
    def config(self) -> dict:
        """Plain dict rebuilding this model with :func:`build_model`."""
        return dict(self._config)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict:
        """Register ``moving`` to ``fixed``.

        Args:
            fixed: ``(B, 1, D, H, W)`` fixed image.
            moving: ``(B, 1, D, H, W)`` moving image.

        Returns:
            dict with ``flows``, ``agg``, ``warped`` (lists, one per subnet), ``affine``
            (``(W, b)`` or ``None``), ``flow`` (``agg[-1]``), ``fixed``, ``moving``.
        """
        _check_pair(fixed, moving, self.image_shape)
        grid = (self.grid_base, self.grid_scale) if self.cached_grid else None
        flows, agg, warped = [], [], []
        affine = None
        for k, (kind, net) in enumerate(zip(self.subnet_kinds, self.subnets)):
            current = moving if k == 0 else warped[-1]
            pred = net(fixed, current)
            # flow arithmetic (affine grid, composition, warps) in full precision even under
            # autocast: bf16 would cost ~0.25 voxel at 64 voxels from the centre.
            with _full_precision(fixed):
                if kind == "A":
                    W, b = (_fp32(t) for t in pred)
                    affine = (W, b)
                    f = vf.affine_flow(W, b, fixed.shape[2:])
                    a = f
                else:
                    f = _fp32(pred)
                    if k == 0:
                        a = f
                    elif k == 1 and affine is not None and self.affine_compose == "analytic":
                        W = affine[0]
                        a = f + torch.einsum("bij,bjdhw->bidhw", W, f) + agg[0]
                    else:
                        a = vf.compose(agg[-1], f, grid=grid)
                flows.append(f)
                agg.append(a)
                warped.append(vf.warp(moving, a, grid=grid))
        return {"flows": flows, "agg": agg, "warped": warped, "affine": affine,
                "flow": agg[-1], "fixed": fixed, "moving": moving}


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """Cast half/bfloat16 (autocast outputs) to float32; leave float32/float64 alone."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _full_precision(ref: torch.Tensor):
    """Context disabling autocast on ``ref``'s device type."""
    return torch.autocast(device_type=ref.device.type, enabled=False)


def _check_pair(fixed: torch.Tensor, moving: torch.Tensor, shape) -> None:
    for name, t in (("fixed", fixed), ("moving", moving)):
        if t.dim() != 5 or t.shape[1] != 1:
            raise ValueError(f"{name} must have shape (B, 1, D, H, W), got {tuple(t.shape)}")
        if tuple(t.shape[2:]) != tuple(shape):
            raise ValueError(
                f"{name} has spatial size {tuple(t.shape[2:])} but the model was built for "
                f"{tuple(shape)}"
            )
    if fixed.shape[0] != moving.shape[0]:
        raise ValueError(f"batch sizes differ: fixed {fixed.shape[0]} vs moving {moving.shape[0]}")


# --------------------------------------------------------------------------------------------
# VoxelMorph-2
# --------------------------------------------------------------------------------------------


class _VMConv(nn.Module):
    """VoxelMorph ``conv_block``: 3x3x3 conv (he_normal, zero bias) -> LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, tf_same_padding: bool = False):
        super().__init__()
        self.tf_pad = bool(tf_same_padding) and stride == 2
        self.conv = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=0 if self.tf_pad else 1)
        # Keras he_normal: truncated normal (2 std), std = sqrt(2 / fan_in).
        std = math.sqrt(2.0 / self.conv.weight[0].numel())
        nn.init.trunc_normal_(self.conv.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_pad:
            x = F.pad(x, (0, 1, 0, 1, 0, 1))
        return F.leaky_relu(self.conv(x), 0.2)


class VoxelMorph2(nn.Module):
    """VoxelMorph-2 (Balakrishnan et al., CVPR 2018, ``cvpr2018_net``; reference-facts 11.1).

    Input ``concat([moving, fixed])`` (the original's source-then-target order); encoder
    ``[16, 32, 32, 32]`` all stride 2 (to 1/16); decoder ``[32, 32, 32, 32, 32, 16, 16]`` with
    x2 nearest upsampling and skip concatenations ``[upsampled, skip]``; every conv 3x3x3 +
    LeakyReLU(0.2), he_normal init; the flow conv (3 channels, bias) is initialised N(0, 1e-5).
    About 0.30 M parameters. No integration (the CVPR 2018 model predicts the displacement
    directly). Same ``forward(fixed, moving)`` and output dict as :class:`Cascade` (one "D").

    Args:
        image_size: int or ``(D, H, W)``, every dim divisible by 16.
        enc_nf / dec_nf: feature widths (vm2 defaults; vm1 is ``dec_nf=[32,32,32,32,8,8]``).
        tf_same_padding: TF-SAME padding for the stride-2 convs.
    """

    def __init__(self, image_size, enc_nf: Sequence[int] = VOXELMORPH2_ENC_NF,
                 dec_nf: Sequence[int] = VOXELMORPH2_DEC_NF,
                 tf_same_padding: bool = False):
        super().__init__()
        shape = _as_shape(image_size)
        enc_nf, dec_nf = [int(c) for c in enc_nf], [int(c) for c in dec_nf]
        if len(enc_nf) != 4 or len(dec_nf) not in (6, 7):
            raise ValueError("VoxelMorph2 needs 4 encoder widths and 6 or 7 decoder widths")
        if any(s % 16 for s in shape):
            raise ValueError(f"VoxelMorph2: image size {shape} must be divisible by 16 per axis")
        self.image_shape = shape
        self.subnet_kinds = ["D"]
        self._config = {
            "type": "voxelmorph2",
            "image_size": image_size if isinstance(image_size, int) else list(shape),
            "enc_nf": enc_nf,
            "dec_nf": dec_nf,
            "tf_same_padding": bool(tf_same_padding),
        }
        self.enc = nn.ModuleList()
        c_prev = 2
        for c in enc_nf:
            self.enc.append(_VMConv(c_prev, c, 2, tf_same_padding))
            c_prev = c
        e = [2] + enc_nf  # channels of x_enc[0..4]
        self.dec = nn.ModuleList([
            _VMConv(e[4], dec_nf[0]),                 # at 1/16, then up + concat enc(1/8)
            _VMConv(dec_nf[0] + e[3], dec_nf[1]),     # up + concat enc(1/4)
            _VMConv(dec_nf[1] + e[2], dec_nf[2]),     # up + concat enc(1/2)
            _VMConv(dec_nf[2] + e[1], dec_nf[3]),
            _VMConv(dec_nf[3], dec_nf[4]),            # up + concat input
            _VMConv(dec_nf[4] + e[0], dec_nf[5]),
        ])
        self.extra = _VMConv(dec_nf[5], dec_nf[6]) if len(dec_nf) == 7 else None
        self.flow = nn.Conv3d(dec_nf[-1], 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow.bias)

    @property
    def config(self) -> dict:
        """Plain dict rebuilding this model with :func:`build_model`."""
        return dict(self._config)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict:
        """Register ``moving`` to ``fixed``; output dict as :meth:`Cascade.forward`."""
        _check_pair(fixed, moving, self.image_shape)
        x_enc = [torch.cat([moving, fixed], dim=1)]
        for conv in self.enc:
            x_enc.append(conv(x_enc[-1]))

        def up(t):
            return F.interpolate(t, scale_factor=2, mode="nearest")

        x = self.dec[0](x_enc[4])
        x = self.dec[1](torch.cat([up(x), x_enc[3]], 1))
        x = self.dec[2](torch.cat([up(x), x_enc[2]], 1))
        x = self.dec[3](torch.cat([up(x), x_enc[1]], 1))
        x = self.dec[4](x)
        x = self.dec[5](torch.cat([up(x), x_enc[0]], 1))
        if self.extra is not None:
            x = self.extra(x)
        flow = _fp32(self.flow(x))
        with _full_precision(fixed):
            warped = vf.warp(moving, flow)
        return {"flows": [flow], "agg": [flow], "warped": [warped], "affine": None,
                "flow": flow, "fixed": fixed, "moving": moving}


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


def build_cascade(spec: str, image_size, **options) -> Cascade:
    """Build a VTN cascade.

    Args:
        spec: ``"A"``, or ``A?D+`` such as ``"D"``, ``"AD"``, ``"ADDD"``.
        image_size: int (cubic) or ``(D, H, W)``.
        **options: ``flow_init_scale`` (1.0 = reference initialisation of ``pred0``),
            ``channels`` (16), ``flow_multiplier`` (1.0, or ``"1/n"`` as in RCN),
            ``tf_same_padding`` (False), ``affine_final_size`` (4 = paper, 2 = reference code),
            ``affine_compose`` (``"analytic"`` or ``"warp"``), ``dense_levels`` /
            ``affine_levels`` (override the automatic level counts).

    Raises:
        ValueError: bad spec (named in the message), unsupported size or option.
    """
    return Cascade(spec, image_size, **options)


def build_model(config: dict) -> nn.Module:
    """Rebuild a model from ``model.config`` (``config["type"]``: ``"vtn"`` or ``"voxelmorph2"``).

    Unknown keys raise ``ValueError`` so that a typo in a model YAML is not silently ignored.
    """
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"model config must be a dict with a 'type' key, got {config!r}")
    cfg = dict(config)
    kind = cfg.pop("type")
    try:
        if kind == "vtn":
            spec = cfg.pop("spec")
            size = cfg.pop("image_size")
            return build_cascade(spec, size, **cfg)
        if kind == "voxelmorph2":
            size = cfg.pop("image_size")
            return VoxelMorph2(size, **cfg)
    except KeyError as exc:
        raise ValueError(f"model config of type {kind!r} lacks key {exc.args[0]!r}") from exc
    except TypeError as exc:
        raise ValueError(f"bad model config for type {kind!r}: {exc}") from exc
    raise ValueError(f"unknown model type {kind!r} (expected 'vtn' or 'voxelmorph2')")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
