"""ANTs SyN baseline, run with the paper's exact ``antsRegistration`` stages (footnote 2).

antspyx ships no ``antsRegistration`` program; its raw entry point
``ants.registration(fixed=<list of antsRegistration arguments>, moving=None)`` passes the list to
the bundled library unchanged, so the paper's three stages (Rigid, Affine with Mattes MI, SyN
with local CC) run exactly as written. Images are passed as file paths; the outputs go to a
temporary prefix (``<prefix>0GenericAffine.mat`` = the collapsed rigid+affine, ``<prefix>1Warp``
= the SyN field, ANTs' default ``--collapse-output-transforms 1``).

The result is converted into the project's single displacement convention (``docs/design.md``):
``(3, D, H, W)`` voxel displacement on the fixed grid that pulls from the moving image,
``moving_voxel = fixed_voxel + disp(fixed_voxel)``. The conversion composes the transforms into
one physical displacement field on the fixed grid with ``antsApplyTransforms -o [field,1]``
(LPS mm, fixed -> moving point mapping), then maps every moved physical point into the *moving*
image's voxel grid, so fixed and moving images may have different affines.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vtn.io import InputError

__all__ = ["PRESETS", "ants_arguments", "register_ants", "ants_field_to_voxel", "ants_version"]

#: Stage parameters of the presets: iterations, smoothing sigmas (voxels) and shrink factors of
#: the linear (Rigid, Affine) and SyN stages, one entry per pyramid level, and the radius
#: (voxels) of SyN's CC metric.
#: ``paper`` is footnote 2 verbatim. ``fast`` is sized for the 32^3 images of the default study:
#: the paper's stages and metrics with fewer linear iterations, three SyN levels (the paper's
#: coarsest shrinks 128^3 by 6; on 32^3 it would be 5^3 voxels) and a smaller CC window
#: (radius 2 instead of 4: radius 4 spans a quarter of a 32^3 image and costs twice the time;
#: radius 1, the paper's window scaled to the grid, is weaker on the brain pairs). On the
#: default study's liver and brain pairs ``fast`` is at least as accurate as ``paper``, at half
#: its time per brain pair (docs/reproduction.md).
PRESETS = {
    "paper": {
        "linear_iterations": "2000x2000x2000", "linear_smooth": "2x1x0", "linear_shrink": "4x2x1",
        "syn_iterations": "100x100x100x50", "syn_smooth": "3x2x1x0", "syn_shrink": "6x4x2x1",
        "cc_radius": 4,
    },
    "fast": {
        "linear_iterations": "200x100x50", "linear_smooth": "2x1x0", "linear_shrink": "4x2x1",
        "syn_iterations": "100x70x50", "syn_smooth": "2x1x0", "syn_shrink": "4x2x1",
        "cc_radius": 2,
    },
}


def ants_arguments(fixed, moving, outprefix, preset="paper", seed=1, linear_iterations=None,
                   syn_iterations=None):
    """The raw ``antsRegistration`` argument list of a preset.

    Args:
        fixed: fixed image path (``F`` of the paper's command).
        moving: moving image path (``M``).
        outprefix: output prefix (``-o``); transforms are written as ``<prefix>0GenericAffine.mat``
            and ``<prefix>1Warp.nii.gz``.
        preset: a key of :data:`PRESETS` (``"paper"``: footnote 2).
        seed: ``--random-seed`` (non-zero int); ANTs is deterministic with one thread and a seed.
        linear_iterations, syn_iterations: override the preset's ``-c`` iteration schedules
            (e.g. ``"20x10x5"``, ``"10x5x2x0"``; tests only; the level counts must not change).

    Returns:
        list of str, the command line without the program name.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown ANTs preset {preset!r}; choose from {sorted(PRESETS)}")
    if int(seed) == 0:
        raise ValueError("ANTs needs a non-zero --random-seed")
    p = dict(PRESETS[preset])
    if linear_iterations is not None:
        p["linear_iterations"] = str(linear_iterations)
    if syn_iterations is not None:
        p["syn_iterations"] = str(syn_iterations)
    for stage in ("linear", "syn"):
        levels = {len(p[f"{stage}_{k}"].split("x")) for k in ("iterations", "smooth", "shrink")}
        if len(levels) != 1:
            raise ValueError(f"ANTs preset {preset!r}: the {stage} iterations, smoothing and "
                             f"shrink factors need one entry per level each, got "
                             f"{[p[f'{stage}_{k}'] for k in ('iterations', 'smooth', 'shrink')]}")
    F, M = str(fixed), str(moving)
    lin = ["-c", f"[{p['linear_iterations']},1e-9,15]", "-s", p["linear_smooth"],
           "-f", p["linear_shrink"]]
    return [
        "-d", "3", "-u", "1", "-w", "[0.025,0.975]",
        "-r", f"[{F},{M},1]",
        "-t", "Rigid[0.1]",
        "-m", f"MI[{F},{M},1,32,Regular,0.2]", *lin,
        "-t", "Affine[0.1]",
        "-m", f"MI[{F},{M},1,32,Regular,0.1]", *lin,
        "-t", "SyN[0.15,3.0,0.0]",
        "-m", f"CC[{F},{M},1,{p['cc_radius']}]",
        "-c", f"[{p['syn_iterations']},1e-9,15]", "-s", p["syn_smooth"], "-f", p["syn_shrink"],
        "--random-seed", str(int(seed)),
        "-o", str(outprefix),
    ]


_THREADS_IN_PROCESS = None


def _set_threads(threads):
    """Set ITK's thread count for antspyx.

    The ITK inside antspyx reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, at its first use
    in the process (measured: a later change is not honoured, and runs are then no longer
    bit-identical). ``vtn baseline`` therefore sets it before any ANTs call; a second, different
    request in the same process only warns.
    """
    global _THREADS_IN_PROCESS
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if _THREADS_IN_PROCESS is None:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
        _THREADS_IN_PROCESS = threads
    elif threads != _THREADS_IN_PROCESS:
        import warnings

        warnings.warn(f"ANTs already runs with {_THREADS_IN_PROCESS} ITK thread(s) in this "
                      f"process; the request for {threads} has no effect", RuntimeWarning)


def ants_version() -> str:
    """antspyx version string."""
    import ants

    return str(getattr(ants, "__version__", "unknown"))


def _grid_matrices(img):
    """``(origin (3,), M (3,3))`` of an ANTsImage: LPS point = origin + M @ index."""
    origin = np.asarray(img.origin, dtype=np.float64)
    direction = np.asarray(img.direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.spacing, dtype=np.float64)
    return origin, direction @ np.diag(spacing)


def ants_field_to_voxel(field_lps, fixed_img, moving_img):
    """Physical LPS displacement on the fixed grid -> voxel displacement of our convention.

    Args:
        field_lps: ``(X, Y, Z, 3)`` array in ITK index order (= NIfTI array order), component
            ``c`` = LPS axis ``c`` in mm; the fixed point ``x`` maps to ``x + u(x)`` in the
            moving image (ANTs/ITK resampling convention).
        fixed_img, moving_img: ANTsImages giving the grids (origin, spacing, direction, in LPS).

    Returns:
        ``(3, X, Y, Z)`` float32 displacement in voxels: moving voxel index minus fixed voxel index.
    """
    field_lps = np.asarray(field_lps, dtype=np.float64)
    shape = field_lps.shape[:3]
    o_f, m_f = _grid_matrices(fixed_img)
    o_m, m_m = _grid_matrices(moving_img)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    phys = o_f + idx @ m_f.T + field_lps  # moved points, LPS mm
    moved_idx = (phys - o_m) @ np.linalg.inv(m_m).T
    return np.moveaxis(moved_idx - idx, -1, 0).astype(np.float32)


def register_ants(fixed_path, moving_path, preset="paper", threads=1, seed=1, workdir=None,
                  return_tool_warped=False, linear_iterations=None, syn_iterations=None):
    """Register ``moving`` to ``fixed`` with antsRegistration and return a dense voxel field.

    Args:
        fixed_path: fixed NIfTI image.
        moving_path: moving NIfTI image.
        preset: ``"paper"`` or ``"fast"`` (see :data:`PRESETS`).
        threads: ITK threads (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``; honoured only at the
            first ANTs use of the process, see :func:`_set_threads`); with 1 thread and a fixed
            ``seed`` the result is bit-identical between runs.
        seed: ``--random-seed``.
        workdir: folder for ANTs' transform files (a temporary folder, removed, if ``None``).
        return_tool_warped: also put ANTs' own linearly resampled moving image
            (``antsApplyTransforms``, ``(X, Y, Z)`` float) in ``info["tool_warped"]``.
        linear_iterations, syn_iterations: override the preset's iterations (see
            :func:`ants_arguments`).

    Returns:
        ``(disp, seconds, info)``: ``disp`` ``(3, D, H, W)`` float32 voxels on the fixed grid,
        ``moving(x + disp(x))`` aligns with ``fixed(x)``; ``seconds`` the wall time of the
        ``antsRegistration`` call only; ``info`` a dict with ``arguments`` (the raw command with
        the temporary paths), ``preset``, ``seed``, ``threads``, ``version``.
    """
    for p in (fixed_path, moving_path):
        if not Path(p).exists():
            raise InputError(f"{p}: image file not found")
    _set_threads(threads)
    import ants

    fixed_img = ants.image_read(str(fixed_path))
    moving_img = ants.image_read(str(moving_path))
    for p, img in ((fixed_path, fixed_img), (moving_path, moving_img)):
        if img.dimension != 3 or img.components != 1:
            raise InputError(f"{p}: expected a scalar 3-D image, got dimension {img.dimension} "
                             f"with {img.components} components")

    with tempfile.TemporaryDirectory(prefix="vtn-ants-", dir=workdir) as tmp:
        prefix = os.path.join(tmp, "reg_")
        args = ants_arguments(fixed_path, moving_path, prefix, preset=preset, seed=seed,
                              linear_iterations=linear_iterations, syn_iterations=syn_iterations)
        t0 = time.perf_counter()
        ants.registration(fixed=list(args), moving=None)
        seconds = time.perf_counter() - t0
        affine = prefix + "0GenericAffine.mat"
        warp = prefix + "1Warp.nii.gz"
        for f in (affine, warp):
            if not os.path.exists(f):
                raise RuntimeError(f"antsRegistration did not write {f}")
        fwd = [warp, affine]  # antsApplyTransforms order: the affine acts first on a fixed point
        comp = ants.apply_transforms(fixed=fixed_img, moving=moving_img, transformlist=fwd,
                                     compose=os.path.join(tmp, "comp_"))
        if comp is None or not os.path.exists(comp):
            raise RuntimeError("antsApplyTransforms could not compose the ANTs transforms")
        field = ants.image_read(comp).numpy()  # (X, Y, Z, 3), LPS mm
        disp = ants_field_to_voxel(field, fixed_img, moving_img)
        info = {
            "tool": "antsRegistration (antspyx)",
            "version": ants_version(),
            "preset": preset,
            "seed": int(seed),
            "threads": int(_THREADS_IN_PROCESS),
            "arguments": args,
            "precision": "double (antsRegistration default; no --float)",
        }
        if return_tool_warped:
            info["tool_warped"] = ants.apply_transforms(
                fixed=fixed_img, moving=moving_img, transformlist=fwd,
                interpolator="linear").numpy()
    return disp, seconds, info
