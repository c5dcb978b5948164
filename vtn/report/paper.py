"""The paper's published numbers (Zhao et al., "Unsupervised 3D End-to-End Medical Image
Registration with Volume Tweening Network", IEEE JBHI 2020), transcribed from Tables I-IX of
``/work/shared/paper/vtn-paper.txt``.

Conventions: ``iou`` = Seg. IoU, ``lm`` = Lm. Dist. (voxels of the 128³ crop), ``time_gpu`` /
``time_cpu`` = seconds per pair ("Time" / "Time (w/o GPU)"; ``None`` = "N/A"), ``jac_std`` /
``folding`` = (mean, std across pairs) with folding in percent. Keys ending in ``*`` are the
"★" methods with ANTs atlas pre-alignment (the text file renders ★ as "?"; a "?" after a number
is the table's "best among pre-aligned methods" mark and is dropped here).
These values are the paper's (LiTS/BFH/MICCAI'07 liver CT, ADNI/ABIDE/ADHD/LPBA40 brain MR) and
are only ever shown next to ours for reference.
"""

from __future__ import annotations

# Table I: ratio of loss functions (liver ADDD): (subnetwork, loss, ratio)
TABLE_I = [
    ("Affine", "Similarity", 1.0),
    ("Affine", "Determinant", 0.1),
    ("Affine", "Orthogonality", 0.1),
    ("Dense 1", "Similarity", 0.0),
    ("Dense 1", "Total variation", 1.0),
    ("Dense 2", "Similarity", 0.05),
    ("Dense 2", "Total variation", 1.0),
    ("Dense 3", "Similarity", 1.0),
    ("Dense 3", "Total variation", 1.0),
]

# Table II: comparison among methods (liver)
TABLE_II = {
    "ANTs": {"iou": 0.8124, "lm": 11.93, "time_gpu": None, "time_cpu": 748.0},
    "Elastix": {"iou": 0.8365, "lm": 12.36, "time_gpu": None, "time_cpu": 115.0},
    "VoxelMorph-2": {"iou": 0.6796, "lm": 18.10, "time_gpu": 0.20, "time_cpu": 17.0},
    "ADDD": {"iou": 0.8868, "lm": 12.04, "time_gpu": 0.13, "time_cpu": 26.0},
    "ADDD + inv": {"iou": 0.8882, "lm": 11.42, "time_gpu": 0.13, "time_cpu": 26.0},
    "supervised": {"iou": 0.7680, "lm": 13.38, "time_gpu": 0.13, "time_cpu": 26.0},
}

# Table III: std of the Jacobian determinant and folding % (liver), (mean, std)
TABLE_III = {
    "ANTs": {"jac_std": (0.241, 0.030), "folding": (0.194, 0.145)},
    "Elastix": {"jac_std": (0.264, 0.072), "folding": (0.001, 0.006)},
    "ADDD": {"jac_std": (0.787, 0.171), "folding": (0.365, 0.268)},
    "ADDD + inv": {"jac_std": (0.770, 0.169), "folding": (0.288, 0.240)},
}

# Table IV: amount of unlabeled training data, VTN ADDD (liver)
TABLE_IV = {
    "LITS": {"iou": 0.8712, "lm": 13.11},
    "BFH": {"iou": 0.8815, "lm": 12.78},
    "LITS + BFH": {"iou": 0.8868, "lm": 12.04},
}

# Table V: cascades (liver)
TABLE_V = {
    "D": {"iou": 0.8119, "lm": 14.44, "time_gpu": 0.08, "time_cpu": 10.0},
    "DD": {"iou": 0.8556, "lm": 12.97, "time_gpu": 0.10, "time_cpu": 20.0},
    "DDD": {"iou": 0.8709, "lm": 12.49, "time_gpu": 0.12, "time_cpu": 28.0},
    "AD": {"iou": 0.8323, "lm": 13.20, "time_gpu": 0.09, "time_cpu": 9.0},
    "ADD": {"iou": 0.8703, "lm": 12.28, "time_gpu": 0.11, "time_cpu": 19.0},
    "ADDD": {"iou": 0.8868, "lm": 12.04, "time_gpu": 0.13, "time_cpu": 26.0},
}

# Table VI: comparison among methods (brain)
TABLE_VI = {
    "ANTs": {"iou": 0.9387, "lm": 2.85, "time_gpu": None, "time_cpu": 764.0},
    "Elastix": {"iou": 0.9180, "lm": 3.23, "time_gpu": None, "time_cpu": 121.0},
    "VoxelMorph-2*": {"iou": 0.9268, "lm": 2.84, "time_gpu": 0.19, "time_cpu": 14.0},
    "DD*": {"iou": 0.9305, "lm": 2.83, "time_gpu": 0.09, "time_cpu": 19.0},
    "ADD": {"iou": 0.9270, "lm": 2.62, "time_gpu": 0.10, "time_cpu": 17.0},
    "ADD + inv": {"iou": 0.9278, "lm": 2.64, "time_gpu": 0.10, "time_cpu": 17.0},
    "supervised": {"iou": 0.9060, "lm": 2.94, "time_gpu": 0.10, "time_cpu": 19.0},
}

# Table VII: std of the Jacobian determinant and folding % (brain), (mean, std)
TABLE_VII = {
    "ANTs": {"jac_std": (0.230, 0.037), "folding": (0.294, 0.228)},
    "Elastix": {"jac_std": (0.171, 0.034), "folding": (0.000, 0.000)},
    "ADD": {"jac_std": (0.339, 0.126), "folding": (0.018, 0.043)},
    "ADD + inv": {"jac_std": (0.332, 0.122), "folding": (0.017, 0.055)},
}

# Table VIII: amount of unlabeled training data, VTN DD* (brain)
TABLE_VIII = {
    "ADNI + ABIDE-1": {"iou": 0.9299, "lm": 2.90},
    "ADNI + ABIDE-1 + ABIDE-2": {"iou": 0.9312, "lm": 2.86},
    "ADNI + ABIDE-1 + ABIDE-2 + ADHD": {"iou": 0.9305, "lm": 2.83},
}

# Table IX: cascades, ANTs pre-alignment vs integrated affine subnetwork (brain)
TABLE_IX = {
    "D*": {"iou": 0.9241, "lm": 2.91, "time_gpu": 0.07, "time_cpu": 10.0},
    "DD*": {"iou": 0.9305, "lm": 2.83, "time_gpu": 0.09, "time_cpu": 19.0},
    "DDD*": {"iou": 0.9320, "lm": 2.85, "time_gpu": 0.10, "time_cpu": 28.0},
    "AD": {"iou": 0.9214, "lm": 2.73, "time_gpu": 0.08, "time_cpu": 9.0},
    "ADD": {"iou": 0.9270, "lm": 2.62, "time_gpu": 0.10, "time_cpu": 17.0},
    "ADDD": {"iou": 0.9286, "lm": 2.63, "time_gpu": 0.11, "time_cpu": 26.0},
}

#: Mean ANTs atlas pre-alignment time per brain image (Section V-B), seconds.
PREALIGN_SECONDS = 73.94
#: Abstract: speed-up over traditional optimisation-based methods with / without a GPU.
SPEEDUP_GPU = 880.0
SPEEDUP_CPU = 3.3

#: Tables per organ: methods, smoothness, data amount, cascades.
BY_ORGAN = {
    "liver": {"methods": TABLE_II, "smoothness": TABLE_III, "data_amount": TABLE_IV,
              "cascades": TABLE_V},
    "brain": {"methods": TABLE_VI, "smoothness": TABLE_VII, "data_amount": TABLE_VIII,
              "cascades": TABLE_IX},
}


def paper_key(name: str, entry: dict | None = None) -> str | None:
    """Key of a study method in the paper's tables (e.g. ``"ADDD + inv"``, ``"DD*"``, ``"ANTs"``).

    Args:
        name: the method's key in the study spec (``"ants"``, ``"ADDD-inv"``, ``"DD-star"``...).
        entry: its spec entry (``kind``, ``cascade``, ``inv``, ``star``, ``display``).

    Returns:
        the paper row name, or ``None`` when the method has no counterpart in the paper.
    """
    entry = entry or {}
    low = name.lower()
    disp = str(entry.get("display", "")).lower()
    kind = entry.get("kind", "")
    star = bool(entry.get("star", False)) or "star" in low or "★" in disp
    if "ants" in low or disp == "ants":
        return "ANTs"
    if "elastix" in low or "elastix" in disp:
        return "Elastix"
    if "voxelmorph" in low or "voxelmorph" in disp or kind == "voxelmorph":
        return "VoxelMorph-2*" if star else "VoxelMorph-2"
    if "supervised" in low or entry.get("supervised"):
        return "supervised"
    cascade = entry.get("cascade")
    if not cascade:
        import re

        mt = re.match(r"^(A?D+)", name)
        cascade = mt.group(1) if mt else None
    if cascade:
        inv = bool(entry.get("inv", False)) or "inv" in low
        return cascade + (" + inv" if inv else "") + ("*" if star else "")
    return None
