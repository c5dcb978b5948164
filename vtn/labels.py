"""The organ mask of a segmentation: one rule and one vocabulary for every stage.

``liver_label`` names the liver in a label map: a label id (an int or a digit string; 5 in the
TotalSegmentator maps of the embedded data) or ``"any"`` (every label >= 1: LiTS, SLIVER07 and
the reference HDF5 masks, where liver = 1 and tumour = 2 or 255). A map whose labels are only
0/1 is a liver mask already and is used as it is. The brain mask is every label >= 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ANY", "check_liver_label", "organ_mask", "describe_mask"]

ANY = "any"


def check_liver_label(liver_label) -> str:
    """``liver_label`` as text (``"any"`` or a label id), or ``ValueError`` naming it."""
    text = str(liver_label).strip().lower()
    if text == ANY:
        return ANY
    try:
        value = int(text)
    except ValueError:
        hint = " (the old word 'nonzero' is now 'any')" if text == "nonzero" else ""
        raise ValueError(f"liver_label must be a label id or '{ANY}', got {liver_label!r}"
                         f"{hint}") from None
    if value < 1:
        raise ValueError(f"liver_label must be a label id >= 1 or '{ANY}', got {liver_label!r}")
    return str(value)


def organ_mask(seg, organ: str, liver_label="5") -> np.ndarray:
    """Binary organ mask of a label map (see the module docstring).

    Args:
        seg: ``(D, H, W)`` label map (integers, or floats holding integers).
        organ: ``"liver"`` or ``"brain"``.
        liver_label: label id or ``"any"`` (liver only).

    Returns:
        ``(D, H, W)`` bool array.
    """
    s = np.rint(np.asarray(seg)).astype(np.int64)
    if organ == "brain":
        return s >= 1
    if organ != "liver":
        raise ValueError(f"organ must be liver or brain, got {organ!r}")
    label = check_liver_label(liver_label)
    if label == ANY or s.max(initial=0) <= 1:
        return s >= 1
    return s == int(label)


def describe_mask(organ: str, liver_label="5") -> str:
    """What :func:`organ_mask` selects, in words (for error messages)."""
    if organ == "brain":
        return "brain labels (> 0)"
    label = check_liver_label(liver_label)
    return "liver (label > 0)" if label == ANY else f"liver label {label}"
