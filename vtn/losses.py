"""Loss functions of VTN (paper eqs. 5-10, 12) and of the VoxelMorph-2 baseline.

Per-sample functions return ``(B,)`` tensors; :class:`VTNLoss` and :class:`VoxelMorphLoss`
combine them into a scalar.

Conventions: images ``(B, 1, D, H, W)``; flows ``(B, 3, D, H, W)`` in voxels of the fixed grid,
pulling from the moving image (``docs/design.md``). ``|Omega|`` always denotes the number of voxels
``D * H * W`` of the grid on which the images / flows are defined.

Scale conventions relative to the reference TensorFlow code (reference-facts section 4): the
reference sums every term over the batch and uses ``tf.nn.l2_loss`` (a factor 1/2) in the TV and
determinant terms. Here the paper's formulas are used (no 1/2) and the batch is averaged by
default (``reduction="sum"`` reproduces the batch sum). Since every term is scaled the same way by
the batch reduction, the relative weights of Table I keep their meaning.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtn import functional as vf
from vtn.functional import check_flow as _check_flow
from vtn.networks import check_spec

__all__ = [
    "correlation_coefficient",
    "correlation_loss",
    "total_variation",
    "orthogonality_loss",
    "determinant_loss",
    "invertibility_loss",
    "endpoint_error",
    "local_ncc_loss",
    "gradient_l2_loss",
    "default_weights",
    "INV_REVERSE_TERMS",
    "VTNLoss",
    "VoxelMorphLoss",
]

#: what the reverse run of the "+ inv" variants adds to the loss (see :class:`VTNLoss`)
INV_REVERSE_TERMS = ("inv_only", "all")


def _check_image_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() < 2 or a.shape != b.shape:
        raise ValueError(
            f"images must have the same shape (B, C, ...), got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def _check_matrix(W: torch.Tensor) -> None:
    if W.dim() != 3 or tuple(W.shape[1:]) != (3, 3):
        raise ValueError(f"W must have shape (B, 3, 3), got {tuple(W.shape)}")


# --------------------------------------------------------------------------------------------
# similarity
# --------------------------------------------------------------------------------------------


def correlation_coefficient(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pearson correlation of two images per sample (paper eqs. 5-6).

    Population statistics over the whole volume of each sample:
    ``cov / sqrt((var_a + eps) (var_b + eps))`` with
    ``cov = mean(a b) - mean(a) mean(b)`` (computed on centred values, which is the same number
    with less round-off), as in the reference code (``eps = 1e-6``).

    Args:
        a: ``(B, C, D, H, W)`` image (e.g. the fixed image).
        b: same shape (e.g. the warped moving image).
        eps: added to each variance; makes constant images finite (r = 0).

    Returns:
        ``(B,)`` correlation in ``[-1, 1]`` (slightly shrunk towards 0 by ``eps``).
    """
    _check_image_pair(a, b)
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    da = a - a.mean(dim=1, keepdim=True)
    db = b - b.mean(dim=1, keepdim=True)
    cov = (da * db).mean(dim=1)
    var_a = (da * da).mean(dim=1)
    var_b = (db * db).mean(dim=1)
    return cov / torch.sqrt((var_a + eps) * (var_b + eps))


def correlation_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``1 - correlation_coefficient(a, b)`` per sample (paper eq. 7); ``(B,)``, in ``[0, 2]``."""
    return 1.0 - correlation_coefficient(a, b, eps)


def local_ncc_loss(a: torch.Tensor, b: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Negative local normalised cross-correlation (VoxelMorph legacy ``NCC``), per sample.

    With box sums over a ``window^3`` neighbourhood (zero padding, 'same' size):
    ``cross = S_ab - u_b S_a - u_a S_b + u_a u_b n``, ``var_a = S_aa - 2 u_a S_a + u_a^2 n``,
    ``cc = cross^2 / (var_a var_b + 1e-5)``, loss ``= -mean(cc)`` over voxels.

    Args:
        a, b: ``(B, 1, D, H, W)`` images (symmetric in ``a`` and ``b``).
        window: odd window side in voxels.

    Returns:
        ``(B,)`` values in ``[-1, 0]``.
    """
    _check_image_pair(a, b)
    if a.dim() != 5 or a.shape[1] != 1:
        raise ValueError(f"local_ncc_loss expects (B, 1, D, H, W) images, got {tuple(a.shape)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    n = float(window**3)
    pad = window // 2

    def box(t):
        # the window^3 box sum with zero padding is separable: three 1-D box means
        # (avg_pool3d counting the padding) times n -- 30x faster on the CPU than one conv3d
        # with a window^3 kernel and free of the cumulative-sum round-off of integral images
        for axis in range(3):
            k, p = [1, 1, 1], [0, 0, 0]
            k[axis], p[axis] = window, pad
            t = F.avg_pool3d(t, tuple(k), stride=1, padding=tuple(p), count_include_pad=True)
        return t * n

    s_a, s_b = box(a), box(b)
    s_aa, s_bb, s_ab = box(a * a), box(b * b), box(a * b)
    u_a, u_b = s_a / n, s_b / n
    cross = s_ab - u_b * s_a - u_a * s_b + u_a * u_b * n
    var_a = s_aa - 2 * u_a * s_a + u_a * u_a * n
    var_b = s_bb - 2 * u_b * s_b + u_b * u_b * n
    cc = cross * cross / (var_a * var_b + 1e-5)
    return -cc.reshape(cc.shape[0], -1).mean(dim=1)


# --------------------------------------------------------------------------------------------
# flow regularisers
# --------------------------------------------------------------------------------------------


def total_variation(flow: torch.Tensor, reference: bool = False) -> torch.Tensor:
    """Squared-difference "total variation" of a flow (paper eq. 8), per sample.

    ``L_TV = 1 / (3 |Omega|) * sum_x sum_{i=1..3} ||f(x + e_i) - f(x)||^2`` where the inner sum
    runs over the forward differences that exist (``x + e_i`` inside the grid) and ``|Omega|``
    is the number of voxels ``D * H * W`` of the grid (not the number of differences, and not
    multiplied by the 3 channels); ``||.||`` is the Euclidean norm over the 3 flow components.

    Args:
        flow: ``(B, 3, D, H, W)`` in voxels.
        reference: if True return half of it, the value of the reference code
            (``tf.nn.l2_loss`` halves the sum of squares).

    Returns:
        ``(B,)`` in voxels^2.
    """
    _check_flow(flow)
    total = sum(d.pow(2).reshape(d.shape[0], -1).sum(dim=1) for d in vf.forward_differences(flow))
    omega = flow.shape[2] * flow.shape[3] * flow.shape[4]
    out = total / (3.0 * omega)
    return out / 2.0 if reference else out


def gradient_l2_loss(flow: torch.Tensor) -> torch.Tensor:
    """VoxelMorph ``Grad('l2')``: mean squared forward difference per axis, averaged over axes.

    ``(mean(d0^2) + mean(d1^2) + mean(d2^2)) / 3`` where each mean runs over the channels and
    the voxels where the difference exists. ``(B,)``, voxels^2.
    """
    _check_flow(flow)
    return sum(d.pow(2).reshape(d.shape[0], -1).mean(dim=1)
               for d in vf.forward_differences(flow)) / 3.0


def orthogonality_loss(W: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Orthogonality loss of ``A = I + W`` (paper eq. 9) without an SVD, per sample.

    Eq. 9 is ``-6 + sum_i (s_i^2 + s_i^-2)`` over the singular values ``s_i`` of ``I + W``. As in
    the reference code it is computed from the characteristic polynomial of
    ``C = A^T A + eps I`` (eigenvalues ``l_i = s_i^2 + eps``): ``s1 = trace C = sum l_i``,
    ``s2 = sum of principal 2x2 minors``, ``s3 = det C``, ``sum 1/l_i = s2 / s3``, and

        ``loss = s1 + (1 + eps)^2 s2 / s3 - 6 (1 + eps)``,

    which is 0 when every ``l_i = 1 + eps`` (``A`` orthogonal) and tends to eq. 9 as
    ``eps -> 0``. To stay finite for any input (``A`` singular or zero) the polynomial is
    evaluated in float64 and ``s2``, ``s3`` are clamped at their exact lower bounds
    ``3 eps^2`` and ``eps^3`` (which only round-off can violate); the result is cast back to
    ``W``'s dtype.

    Args:
        W: ``(B, 3, 3)`` residual matrix (voxel units; ``A = I + W``).
        eps: regulariser of ``C`` (1e-5 as in the reference).

    Returns:
        ``(B,)`` non-negative values.
    """
    _check_matrix(W)
    Wd = W.to(torch.float64) if W.dtype != torch.float64 else W
    A = Wd + torch.eye(3, dtype=Wd.dtype, device=Wd.device)
    C = A.transpose(1, 2) @ A + eps * torch.eye(3, dtype=Wd.dtype, device=Wd.device)
    s1 = C[:, 0, 0] + C[:, 1, 1] + C[:, 2, 2]
    s2 = (C[:, 0, 0] * C[:, 1, 1] + C[:, 1, 1] * C[:, 2, 2] + C[:, 2, 2] * C[:, 0, 0]
          - C[:, 0, 1] * C[:, 1, 0] - C[:, 1, 2] * C[:, 2, 1] - C[:, 2, 0] * C[:, 0, 2])
    s3 = vf.det3(C)
    s2 = torch.clamp(s2, min=3 * eps**2)
    s3 = torch.clamp(s3, min=eps**3)
    loss = s1 + (1 + eps) ** 2 * s2 / s3 - 6 * (1 + eps)
    return loss.to(W.dtype)


def determinant_loss(W: torch.Tensor) -> torch.Tensor:
    """``(det(I + W) - 1)^2`` per sample (paper eq. 10; the reference code halves it).

    Args:
        W: ``(B, 3, 3)`` residual matrix.

    Returns:
        ``(B,)``.
    """
    _check_matrix(W)
    A = W + torch.eye(3, dtype=W.dtype, device=W.device)
    return (vf.det3(A) - 1.0) ** 2


def _central(t: torch.Tensor) -> torch.Tensor:
    """Central region of a ``(B, C, D, H, W)`` tensor: drop the first and last quarter per side
    (indices ``n // 4`` to ``n - n // 4`` along each axis)."""
    sl = [slice(n // 4, n - n // 4) for n in t.shape[2:]]
    return t[:, :, sl[0], sl[1], sl[2]]


def invertibility_loss(f12: torch.Tensor, f21: torch.Tensor, central: bool = True) -> torch.Tensor:
    """Round-trip (invertibility) loss, paper eq. 12, per sample.

    ``L_inv = ||f12 * f21||^2 + ||f21 * f12||^2`` with ``*`` the composition of eq. 3,
    ``f12 * f21 = f21 + warp(f12, f21)`` (:func:`vtn.functional.compose`). For the pull flows of
    this package ``F`` (fixed -> moving) and ``R`` (the model run with the images swapped),
    ``F + warp(R, F)`` is the displacement of the round trip ``x -> x + F(x) -> ... + R(.)``,
    so both compositions vanish for exact inverses.

    Normalisation (the paper gives none and weights the term 1e-3): each squared norm is the
    MEAN over the voxels of the evaluated region of the squared Euclidean norm of the composed
    displacement (voxels^2). With ``central=True`` (paper, Sec. V-A3) the region is the centre
    of the volume, the first and last quarter of each side removed (``n // 4`` voxels each side);
    the compositions themselves sample the full fields.

    Args:
        f12: ``(B, 3, D, H, W)`` flow of the forward registration, voxels.
        f21: ``(B, 3, D, H, W)`` flow of the reverse registration, voxels.
        central: restrict to the central region.

    Returns:
        ``(B,)`` in voxels^2.
    """
    _check_flow(f12, "f12")
    _check_flow(f21, "f21")
    if f12.shape != f21.shape:
        raise ValueError(f"f12 and f21 differ in shape: {tuple(f12.shape)} vs {tuple(f21.shape)}")
    total = 0
    for c in (vf.compose(f12, f21), vf.compose(f21, f12)):
        if central:
            c = _central(c)
        total = total + c.pow(2).sum(dim=1).reshape(c.shape[0], -1).mean(dim=1)
    return total


def endpoint_error(flow: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean end-point error: mean over voxels of ``||flow - target||_2`` per sample (voxels)."""
    _check_flow(flow)
    _check_flow(target, "target")
    if flow.shape != target.shape:
        raise ValueError(
            f"flow and target differ in shape: {tuple(flow.shape)} vs {tuple(target.shape)}")
    err = torch.linalg.vector_norm(flow - target.to(flow.dtype), dim=1)
    return err.reshape(err.shape[0], -1).mean(dim=1)


# --------------------------------------------------------------------------------------------
# weights and combined losses
# --------------------------------------------------------------------------------------------


def default_weights(spec: str) -> list[dict]:
    """Per-subnet loss weights (paper Table I for ``"ADDD"``).

    Affine subnet: ``{"sim": 1, "det": 0.1, "ortho": 0.1}``. Dense subnets:
    ``{"sim": w, "tv": 1}`` with ``w = 1`` for the last dense subnet, 0.05 for the one before
    it and 0 for earlier ones (ADDD: 0, 0.05, 1 as in Table I).
    """
    check_spec(spec)
    n_dense = spec.count("D")
    out = []
    j = 0
    for kind in spec:
        if kind == "A":
            out.append({"sim": 1.0, "det": 0.1, "ortho": 0.1})
        else:
            j += 1
            from_last = n_dense - j
            w = 1.0 if from_last == 0 else (0.05 if from_last == 1 else 0.0)
            out.append({"sim": w, "tv": 1.0})
    return out


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    return x.mean() if reduction == "mean" else x.sum()


class VTNLoss(nn.Module):
    """Training loss of a VTN cascade (paper Sec. III-B, Table I, eq. 12).

    For subnet ``k`` with weights ``weights[k]``:

    * ``sim_k = correlation_loss(fixed, out["warped"][k])`` times ``weights[k]["sim"]`` (skipped
      when the weight is 0);
    * dense subnets: ``tv_k = total_variation(out["flows"][k])`` (the subnet's own flow, not the
      aggregate) times ``weights[k]["tv"]``;
    * affine subnet: ``det_k = determinant_loss(W)`` and ``ortho_k = orthogonality_loss(W)``
      on ``out["affine"][0]``.

    With ``inv_weight > 0`` the model must also have been run on the swapped pair (``out_reverse
    = model(moving, fixed)``): the loss adds ``inv_weight * invertibility_loss(out["flow"],
    out_reverse["flow"])`` (term ``"inv"``). What else the reverse run contributes is
    ``inv_reverse_terms``:

    * ``"inv_only"`` (default; the paper's "+ inv": eq. 12 added to the loss of the forward
      pair) -- nothing else: the reverse run enters the loss only through ``L_inv``, so
      "ADDD + inv" differs from "ADDD" by the invertibility term alone;
    * ``"all"`` -- also the similarity/regularisation terms of the reverse run with the same
      weights (named with a ``_rev`` suffix; the reverse fixed image is the original moving
      image, taken from ``out_reverse["fixed"]`` or the ``moving`` argument), which trains on
      both directions of every pair (this package's earlier behaviour).

    With ``target`` (supervised variant, paper "supervised" row) the loss adds
    ``endpoint_error(out["flow"], target)`` (weight 1, name ``"epe"``) and keeps the
    regularisation terms but drops the similarity terms unless ``supervised_similarity=True``.

    Each per-sample term is reduced over the batch (``"mean"``, or ``"sum"`` as the reference
    code). ``terms`` holds the detached, *unweighted* reduced values; ``total`` is the weighted
    sum (a differentiable scalar).

    Args:
        spec: cascade spec, e.g. ``"ADDD"``.
        weights: list of per-subnet dicts (default :func:`default_weights`).
        inv_weight: weight of the invertibility loss (paper: 1e-3 for "ADDD + inv").
        reduction: ``"mean"`` or ``"sum"`` over the batch.
        supervised_similarity: keep similarity terms when a target is given.
        tv_reference: use the reference code's TV (half of eq. 8).
        inv_central: evaluate the invertibility loss on the central region (paper).
        inv_reverse_terms: ``"inv_only"`` (default) or ``"all"``, see above.
    """

    def __init__(self, spec: str, weights: list[dict] | None = None, inv_weight: float = 0.0,
                 reduction: str = "mean", supervised_similarity: bool = False,
                 tv_reference: bool = False, inv_central: bool = True,
                 inv_reverse_terms: str = "inv_only"):
        super().__init__()
        check_spec(spec)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if inv_reverse_terms not in INV_REVERSE_TERMS:
            raise ValueError(f"inv_reverse_terms must be one of {INV_REVERSE_TERMS}, got "
                             f"{inv_reverse_terms!r}")
        weights = default_weights(spec) if weights is None else [dict(w) for w in weights]
        if len(weights) != len(spec):
            raise ValueError(
                f"weights has {len(weights)} entries but spec {spec!r} has {len(spec)} subnets")
        allowed = {"A": {"sim", "det", "ortho"}, "D": {"sim", "tv"}}
        for k, (kind, w) in enumerate(zip(spec, weights)):
            bad = set(w) - allowed[kind]
            if bad:
                raise ValueError(f"weights[{k}] ({kind}) has unknown keys {sorted(bad)}; "
                                 f"allowed {sorted(allowed[kind])}")
        self.spec = spec
        self.weights = weights
        self.inv_weight = float(inv_weight)
        self.reduction = reduction
        self.supervised_similarity = bool(supervised_similarity)
        self.tv_reference = bool(tv_reference)
        self.inv_central = bool(inv_central)
        self.inv_reverse_terms = inv_reverse_terms

    def _direction(self, out: dict, fixed: torch.Tensor, suffix: str, similarity: bool):
        if len(out["warped"]) != len(self.spec) or len(out["flows"]) != len(self.spec):
            raise ValueError(
                f"model output has {len(out['warped'])} subnets but the loss was built for "
                f"spec {self.spec!r}")
        total = 0.0
        terms = {}
        for k, (kind, w) in enumerate(zip(self.spec, self.weights)):
            ws = float(w.get("sim", 0.0))
            if similarity and ws != 0.0:
                v = _reduce(correlation_loss(fixed, out["warped"][k]), self.reduction)
                terms[f"sim_{k}{suffix}"] = v
                total = total + ws * v
            if kind == "D":
                wt = float(w.get("tv", 0.0))
                if wt != 0.0:
                    v = _reduce(total_variation(out["flows"][k], self.tv_reference),
                                self.reduction)
                    terms[f"tv_{k}{suffix}"] = v
                    total = total + wt * v
            else:
                if out.get("affine") is None:
                    raise ValueError("spec has an affine subnet but out['affine'] is None")
                W = out["affine"][0]
                for name, fn in (("det", determinant_loss), ("ortho", orthogonality_loss)):
                    wv = float(w.get(name, 0.0))
                    if wv != 0.0:
                        v = _reduce(fn(W), self.reduction)
                        terms[f"{name}_{k}{suffix}"] = v
                        total = total + wv * v
        return total, terms

    def forward(self, out: dict, fixed: torch.Tensor, out_reverse: dict | None = None,
                target: torch.Tensor | None = None, moving: torch.Tensor | None = None):
        """Compute the loss.

        Args:
            out: model output for ``(fixed, moving)``.
            fixed: ``(B, 1, D, H, W)`` fixed image.
            out_reverse: model output for ``(moving, fixed)`` (needed when ``inv_weight > 0``).
            target: ``(B, 3, D, H, W)`` ground-truth flow (supervised variant), voxels.
            moving: the moving image, used as the reverse run's fixed image if
                ``out_reverse`` has no ``"fixed"`` entry.

        Returns:
            ``(total, terms)``: differentiable scalar and dict of detached scalar tensors.
        """
        similarity = target is None or self.supervised_similarity
        total, terms = self._direction(out, fixed, "", similarity)
        if self.inv_weight > 0:
            if out_reverse is None:
                raise ValueError("inv_weight > 0 needs out_reverse = model(moving, fixed)")
            if self.inv_reverse_terms == "all":
                rev_fixed = out_reverse.get("fixed", moving) if moving is None else moving
                if rev_fixed is None:
                    raise ValueError("the reverse direction needs the moving image: pass moving=")
                t_rev, terms_rev = self._direction(out_reverse, rev_fixed, "_rev", similarity)
                total = total + t_rev
                terms.update(terms_rev)
            v = _reduce(invertibility_loss(out["flow"], out_reverse["flow"], self.inv_central),
                        self.reduction)
            terms["inv"] = v
            total = total + self.inv_weight * v
        if target is not None:
            v = _reduce(endpoint_error(out["flow"], target), self.reduction)
            terms["epe"] = v
            total = total + v
        if not torch.is_tensor(total):
            total = torch.zeros((), dtype=fixed.dtype, device=fixed.device)
        return total, {k: v.detach() for k, v in terms.items()}


class VoxelMorphLoss(nn.Module):
    """VoxelMorph-2 (CVPR 2018) loss: ``local_ncc_loss(fixed, warped) + reg_weight * Grad-l2``.

    ``reg_weight=1.0`` is VoxelMorph's recommendation for NCC. Terms ``"ncc"`` (the negative
    NCC) and ``"grad"``; with ``target`` also ``"epe"`` (weight 1). Same ``forward`` signature and
    return as :class:`VTNLoss`; ``out_reverse`` is not supported (ValueError).
    """

    def __init__(self, reg_weight: float = 1.0, window: int = 9, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reg_weight = float(reg_weight)
        self.window = int(window)
        self.reduction = reduction

    def forward(self, out: dict, fixed: torch.Tensor, out_reverse: dict | None = None,
                target: torch.Tensor | None = None, moving: torch.Tensor | None = None):
        """Returns ``(total, terms)`` as :meth:`VTNLoss.forward`."""
        if out_reverse is not None:
            raise ValueError("VoxelMorphLoss has no invertibility term (out_reverse given)")
        ncc = _reduce(local_ncc_loss(fixed, out["warped"][-1], self.window), self.reduction)
        grad = _reduce(gradient_l2_loss(out["flow"]), self.reduction)
        total = ncc + self.reg_weight * grad
        terms = {"ncc": ncc, "grad": grad}
        if target is not None:
            epe = _reduce(endpoint_error(out["flow"], target), self.reduction)
            terms["epe"] = epe
            total = total + epe
        return total, {k: v.detach() for k, v in terms.items()}
