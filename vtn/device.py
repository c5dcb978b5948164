"""The compute device: :func:`resolve_device` (``--device auto|cpu|cuda|cuda:N``) and host ->
device copies that do not synchronise the host with the GPU (:func:`to_device`).

``tensor.to("cuda")`` from ordinary (pageable) host memory waits for the copy, and with it for
all GPU work queued before it, so a training step that copies its pair indices or its random
augmentation control points that way stalls the host once per step. :func:`to_device` copies
through page-locked memory with ``non_blocking=True`` instead; PyTorch's pinned-memory allocator
keeps the staging buffer alive until the copy has run.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "to_device"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA device without CUDA is an InputError."""
    from vtn.io import InputError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return dev


def to_device(tensor: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` (any shape, on the CPU) on ``device``, optionally cast to ``dtype`` first.

    On a CUDA device the copy is asynchronous (pinned staging buffer, ``non_blocking=True``);
    on the CPU (or ``device=None``) it is ``tensor.to(dtype=dtype)``, without a copy when
    nothing changes. The values are identical either way.
    """
    if dtype is not None:
        tensor = tensor.to(dtype=dtype)
    if device is None:
        return tensor
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
