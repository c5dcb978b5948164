"""Opt-in fast inference path for VTN cascades (CPU with AVX512-BF16/AMX, and CUDA).

The default models (:mod:`vtn.networks`) run in float32, contiguous ``NCDHW``. On the CPUs of this
project (Sapphire-Rapids class, ``avx512_bf16`` and ``amx_bf16`` flags) oneDNN runs a bfloat16
``channels_last_3d`` 3x3x3 convolution about 7x faster than the float32 one, but three things
throw most of that away when one simply wraps the model in ``torch.autocast``:

* autocast re-casts every weight on every call (``aten::copy_``);
* the transposed convolutions (``ConvTranspose3d(k=4, s=2, p=1)``, the decoder and the
  full-resolution ``pred0``) take a slow oneDNN path (~190 ms for ``pred0`` at 128^3);
* the flow arithmetic (grid construction for ``grid_sample``) is memory-bound and rebuilt every
  call.

:func:`fast_model` returns the same :class:`vtn.networks.Cascade` (one forward) with other
subnets and a cached grid, which fixes the three:

* weights stored once in ``dtype`` (bfloat16 by default) and ``channels_last_3d``;
* every ``ConvTranspose3d(k=4, s=2, p=1)`` replaced by :class:`SubpixelConvTranspose3d`, an
  *exact* rewrite as one ``2x2x2`` convolution with ``8 * C_out`` output channels (one group per
  output parity) followed by a pixel shuffle (identical in float32 up to summation order);
* the affine head (``conv7_W``/``conv7_b``), the ``x 20`` flow scaling, the affine flow, the
  compositions and all warps in float32 (as under autocast in :class:`vtn.networks.Cascade`);
* warps through :func:`vtn.functional.warp` with the normalised identity grid computed once
  (``Cascade(..., cached_grid=True)``).

The output dict is the :class:`vtn.networks.Cascade` one (float32 flows and warped images).
With ``dtype=torch.float32`` the fast model equals the default model up to float32 rounding
(tested in ``tests/test_perf.py``); with bfloat16 the difference is bounded in the same tests and
measured at 128^3 in ``docs/performance.md``.

This is an inference path: the returned module is a copy (the original is untouched); it can be
trained (gradients flow), but training with it has not been validated.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtn import functional as vf
from vtn import networks

__all__ = ["SubpixelConvTranspose3d", "fast_model", "subpixel_convert_", "bf16_supported",
           "damp_flow_heads_", "compare_fast"]

# output parity p (0 = even, 1 = odd) along an axis -> the two ConvTranspose3d kernel taps used by
# the 2-tap window starting at input index j - 1 + p (see SubpixelConvTranspose3d).
_TAPS = {0: (3, 1), 1: (2, 0)}
_PARITIES = [(p0, p1, p2) for p0 in (0, 1) for p1 in (0, 1) for p2 in (0, 1)]


class SubpixelConvTranspose3d(nn.Module):
    """Exact sub-pixel rewrite of ``ConvTranspose3d(C_in, C_out, 4, stride=2, padding=1)``.

    Output voxel ``o = 2 j + p`` of a k=4, s=2, p=1 transposed convolution receives input
    ``i = j - 1`` (tap 3) and ``i = j`` (tap 1) for ``p = 0``, and ``i = j`` (tap 2) and
    ``i = j + 1`` (tap 0) for ``p = 1``: per output parity a ``2x2x2`` window. One
    ``Conv3d(C_in, 8 C_out, 2, padding=1)`` evaluates the 8 parity kernels at every window start
    (``n + 1`` per axis) and the pixel shuffle picks window ``j + p`` for output ``2 j + p``.
    Same FLOPs as the transposed convolution, but a plain strided-free convolution that oneDNN
    runs on its fast (AMX/AVX-512) kernels.

    Args:
        ct: the ``nn.ConvTranspose3d`` to convert (kernel 4, stride 2, padding 1, no output
            padding, groups 1, dilation 1); its weights are copied (no gradient link).

    Input ``(B, C_in, D, H, W)`` -> output ``(B, C_out, 2D, 2H, 2W)``.
    """

    def __init__(self, ct: nn.ConvTranspose3d):
        super().__init__()
        if not isinstance(ct, nn.ConvTranspose3d):
            raise ValueError(f"expected nn.ConvTranspose3d, got {type(ct).__name__}")
        if (tuple(ct.kernel_size) != (4, 4, 4) or tuple(ct.stride) != (2, 2, 2)
                or tuple(ct.padding) != (1, 1, 1) or tuple(ct.output_padding) != (0, 0, 0)
                or ct.groups != 1 or tuple(ct.dilation) != (1, 1, 1)):
            raise ValueError("SubpixelConvTranspose3d only converts ConvTranspose3d(k=4, s=2, "
                             f"p=1, output_padding=0, groups=1, dilation=1), got {ct}")
        w = ct.weight.detach()  # (C_in, C_out, 4, 4, 4)
        self.c_out = int(w.shape[1])
        parts = []
        for p0, p1, p2 in _PARITIES:
            k = w[:, :, list(_TAPS[p0])][:, :, :, list(_TAPS[p1])][:, :, :, :, list(_TAPS[p2])]
            parts.append(k.transpose(0, 1))  # (C_out, C_in, 2, 2, 2)
        self.weight = nn.Parameter(torch.cat(parts, 0).contiguous())
        if ct.bias is not None:
            self.bias = nn.Parameter(ct.bias.detach().repeat(8).clone())
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, D, H, W = x.shape
        y = F.conv3d(x, self.weight, self.bias, padding=1)  # (B, 8 C_out, D+1, H+1, W+1)
        fmt = (torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d)
               and not x.is_contiguous() else torch.contiguous_format)
        out = torch.empty((B, self.c_out, 2 * D, 2 * H, 2 * W), dtype=y.dtype, device=y.device,
                          memory_format=fmt)
        c = self.c_out
        for g, (p0, p1, p2) in enumerate(_PARITIES):
            out[:, :, p0::2, p1::2, p2::2] = y[:, g * c:(g + 1) * c,
                                               p0:p0 + D, p1:p1 + H, p2:p2 + W]
        return out


def subpixel_convert_(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``ConvTranspose3d(k=4, s=2, p=1)`` child by its sub-pixel form.

    Returns ``module``. Other transposed convolutions are left alone.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ConvTranspose3d):
            try:
                setattr(module, name, SubpixelConvTranspose3d(child))
            except ValueError:
                pass
        else:
            subpixel_convert_(child)
    return module


class _FastDense(nn.Module):
    """A :class:`vtn.networks.DenseSubnet` run in ``dtype``/``memory_format``, flow out in fp32."""

    def __init__(self, net: networks.DenseSubnet, dtype, memory_format, subpixel: bool):
        super().__init__()
        self.net = copy.deepcopy(net)
        if subpixel:
            subpixel_convert_(self.net)
        self.net.to(dtype=dtype)
        self.net.to(memory_format=memory_format)
        self.dtype, self.memory_format = dtype, memory_format

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = torch.cat([fixed, moving], dim=1).to(self.dtype).contiguous(
            memory_format=self.memory_format)
        return n.scale_flow(n.raw_flow(x).float()).contiguous()


class _FastAffine(nn.Module):
    """A :class:`vtn.networks.AffineSubnet`: encoder in ``dtype``, the W/b head in float32."""

    def __init__(self, net: networks.AffineSubnet, dtype, memory_format):
        super().__init__()
        self.net = copy.deepcopy(net)
        self.net.encoder.to(dtype=dtype)
        self.net.encoder.to(memory_format=memory_format)
        self.dtype, self.memory_format = dtype, memory_format

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor):
        n = self.net
        x = torch.cat([fixed, moving], dim=1).to(self.dtype).contiguous(
            memory_format=self.memory_format)
        x = n.encoder(x)[-1].float().contiguous()
        B = x.shape[0]
        return n.conv7_W(x).reshape(B, 3, 3), n.conv7_b(x).reshape(B, 3)


def bf16_supported() -> bool:
    """Whether this CPU advertises native bfloat16 arithmetic (``avx512_bf16`` or ``amx_bf16``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_model(model: nn.Module, dtype=torch.bfloat16, channels_last: bool = True,
               subpixel: bool = True, compile: bool = False) -> nn.Module:
    """Fast inference copy of a VTN cascade (see the module docstring).

    Args:
        model: a :class:`vtn.networks.Cascade` (in eval mode for inference); it is not modified.
        dtype: compute dtype of the convolutions (``torch.bfloat16`` or ``torch.float32``).
        channels_last: store weights/activations as ``channels_last_3d``.
        subpixel: replace the k=4/s=2 transposed convolutions by :class:`SubpixelConvTranspose3d`.
        compile: wrap the result in ``torch.compile`` (inductor, ``freezing=True``: weights
            become constants, so compile the model *after* loading its weights); the first call
            compiles (minutes on 2 CPU cores), run it under ``torch.inference_mode()``.

    Returns:
        a :class:`vtn.networks.Cascade` with the fast subnets and a cached sampling grid
        (``cached_grid=True``), on ``model``'s device (or its compiled wrapper), in the
        training mode of ``model``; its ``config`` is ``model``'s.

    Raises:
        ValueError: ``model`` is not a VTN cascade (VoxelMorph-2 has no fast path) or bad dtype.
    """
    if dtype not in (torch.bfloat16, torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, "
                         f"got {dtype!r}")
    if not isinstance(model, networks.Cascade):
        raise ValueError(f"fast_model supports VTN cascades only, got {type(model).__name__}")
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    subnets = [_FastAffine(net, dtype, fmt) if kind == "A"
               else _FastDense(net, dtype, fmt, subpixel)
               for kind, net in zip(model.subnet_kinds, model.subnets)]
    options = model.config
    del options["type"]
    fm = networks.Cascade(options.pop("spec"), options.pop("image_size"), **options,
                          subnets=subnets, cached_grid=True)
    fm.fast_options = {"dtype": str(dtype).replace("torch.", ""),
                       "channels_last": bool(channels_last), "subpixel": bool(subpixel)}
    fm.to(next(model.parameters()).device)  # the grid buffers follow the model's device
    fm.train(model.training)
    if compile:
        # freezing lets inductor constant-fold the weights and fuse conv + LeakyReLU into oneDNN
        # kernels with pre-packed weights (4x faster than eager at 128^3 on CPU, measured).
        return torch.compile(fm, options={"freezing": True})
    return fm


def damp_flow_heads_(model: nn.Module, factor: float) -> nn.Module:
    """Multiply the final flow layer (``pred0``) of every dense subnet by ``factor``, in place.

    For benchmarks with *random* weights only: an untrained cascade predicts flows of tens of
    voxels (the ``x 20`` output scaling), far from a trained model's few voxels, and a chaotic
    cascade amplifies any rounding difference; damping ``pred0`` gives flows of a realistic
    magnitude. Returns ``model``.
    """
    for m in model.modules():
        if isinstance(m, networks.DenseSubnet):
            m.damp_flow_head_(factor)
    return model


def compare_fast(model: nn.Module, fast: nn.Module, fixed: torch.Tensor, moving: torch.Tensor,
                 fixed_seg=None, moving_seg=None, fixed_landmarks=None,
                 moving_landmarks=None) -> dict:
    """Run the reference and the fast model on one pair and compare the results.

    Args:
        model: reference model (float32).
        fast: its fast-path copy (:func:`fast_model`).
        fixed, moving: ``(1, 1, D, H, W)`` float32 images on the models' device.
        fixed_seg, moving_seg: optional ``(D, H, W)`` integer label arrays (NumPy or torch).
        fixed_landmarks, moving_landmarks: optional ``(N, 3)`` voxel positions (fixed image's
            landmarks are carried into the moving image and compared with the moving ones).

    Returns:
        dict with ``max_abs_flow_diff`` / ``mean_abs_flow_diff`` / ``p99_abs_flow_diff``
        (voxels, over all voxels and components of the final flow), ``max_abs_flow``
        (reference), ``max_abs_warped_diff`` (intensity), and when given ``dice_ref``,
        ``dice_fast``, ``dice_diff`` (foreground = label > 0 of the warped moving segmentation
        against the fixed one), ``lm_dist_ref``, ``lm_dist_fast``, ``lm_dist_diff`` (mean
        landmark distance, voxels) and ``lm_max_point_diff`` (largest movement of a transported
        landmark between the two models, voxels).
    """
    import numpy as np

    from vtn import metrics

    with torch.inference_mode():
        ref = model(fixed, moving)
        out = fast(fixed, moving)
    fr, ff = ref["flow"].float(), out["flow"].float()
    d = (fr - ff).abs()
    res = {
        "max_abs_flow_diff": float(d.max()),
        "mean_abs_flow_diff": float(d.mean()),
        "p99_abs_flow_diff": float(torch.quantile(d.flatten()[:: max(1, d.numel() // 2**22)],
                                                  0.99)),
        "max_abs_flow": float(fr.abs().max()),
        "max_abs_warped_diff": float((ref["warped"][-1] - out["warped"][-1]).abs().max()),
    }
    if fixed_seg is not None and moving_seg is not None:
        ms = torch.as_tensor(np.asarray(moving_seg)).to(torch.int64).view(1, 1, *fr.shape[2:])
        fs = np.asarray(fixed_seg) > 0
        dr = metrics.dice(fs, vf.warp_labels(ms.to(fr.device), fr)[0, 0].cpu().numpy() > 0)
        dfast = metrics.dice(fs, vf.warp_labels(ms.to(ff.device), ff)[0, 0].cpu().numpy() > 0)
        res.update(dice_ref=dr, dice_fast=dfast, dice_diff=dfast - dr)
    if fixed_landmarks is not None and moving_landmarks is not None:
        pts = torch.as_tensor(np.asarray(fixed_landmarks), dtype=torch.float64)
        pr = vf.transport_points(pts, fr[0].double().cpu()).numpy()
        pf = vf.transport_points(pts, ff[0].double().cpu()).numpy()
        lr = metrics.landmark_distance(pr, moving_landmarks)
        lf = metrics.landmark_distance(pf, moving_landmarks)
        res.update(lm_dist_ref=lr, lm_dist_fast=lf, lm_dist_diff=lf - lr,
                   lm_max_point_diff=float(np.linalg.norm(pr - pf, axis=1).max()))
    return res
