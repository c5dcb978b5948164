"""Elastix baseline (paper footnote 3: ``elastix -p Affine -p BSpline_1000``), via itk-elastix.

The paper's command runs elastix's default affine parameter map and then the default B-spline map
with ``MaximumNumberOfIterations 1000``. Here the two maps are itk-elastix's
``GetDefaultParameterMap("affine")`` and ``GetDefaultParameterMap("bspline")`` with that one
override (preset ``paper``); preset ``fast`` lowers the B-spline iterations for the small default
study.

The dense result comes from ``itk.transformix_deformation_field``: a vector image on the fixed grid
whose vectors are physical displacements in ITK's LPS frame (fixed point ``x`` maps to ``x + u(x)``
in the moving image). It is converted into the project's voxel convention
(``docs/design.md``): ``disp`` ``(3, D, H, W)`` on the fixed grid with
``moving_voxel = fixed_voxel + disp``; the moved physical point is mapped through the *moving*
image's own grid, so fixed and moving affines may differ.

``import itk`` costs ~20 s; it happens lazily, once per process.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vtn.io import InputError

__all__ = ["PRESETS", "parameter_maps", "register_elastix", "elastix_field_to_voxel",
           "elastix_version"]

#: Overrides of the default maps per preset (``None`` = keep the default map's value):
#: ``MaximumNumberOfIterations`` of each map, ``NumberOfResolutions`` (pyramid levels) of both
#: (the B-spline map's ``GridSpacingSchedule`` keeps its finest ``resolutions`` entries) and
#: further elastix ``parameters`` set in both maps.
#: ``paper`` is footnote 3 (default affine map, default B-spline map with 1000 iterations);
#: ``fast`` is sized for 32^3 images: 2 pyramid levels instead of the default maps' 4 (which
#: halve a 32^3 image down to 4^3), 250 B-spline iterations and elastix's
#: ``DisplacementDistribution`` step-size estimation (faster than the default ``Original``);
#: its accuracy against ``paper`` on the default study's pairs is in docs/reproduction.md.
PRESETS = {
    "paper": {"affine_iterations": None, "bspline_iterations": 1000, "resolutions": None},
    "fast": {"affine_iterations": None, "bspline_iterations": 250, "resolutions": 2,
             "parameters": {"ASGDParameterEstimationMethod": "DisplacementDistribution"}},
}

_ITK = None


def _itk():
    """Import itk once per process (slow)."""
    global _ITK
    if _ITK is None:
        import itk

        _ITK = itk
    return _ITK


def elastix_version() -> str:
    """Versions of itk and itk-elastix."""
    from importlib import metadata

    out = []
    for pkg in ("itk-elastix", "itk"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out) or "unknown"


def parameter_maps(preset="paper", affine_iterations=None, bspline_iterations=None):
    """The preset's elastix parameter maps as plain dicts (``{name: [values...]}``).

    Args:
        preset: a key of :data:`PRESETS` (``"paper"``: default affine + default bspline with
            1000 iterations).
        affine_iterations, bspline_iterations: override the preset's ``MaximumNumberOfIterations``.

    Returns:
        ``[affine_map, bspline_map]``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown Elastix preset {preset!r}; choose from {sorted(PRESETS)}")
    itk = _itk()
    po = itk.ParameterObject.New()
    maps = []
    p = PRESETS[preset]
    override = {"affine_iterations": affine_iterations, "bspline_iterations": bspline_iterations}
    for kind, key in (("affine", "affine_iterations"), ("bspline", "bspline_iterations")):
        m = {k: list(v) for k, v in dict(po.GetDefaultParameterMap(kind)).items()}
        it = override[key] if override[key] is not None else p[key]
        if it is not None:
            m["MaximumNumberOfIterations"] = [str(int(it))]
        levels = p.get("resolutions")
        if levels is not None:
            m["NumberOfResolutions"] = [str(int(levels))]
            if "GridSpacingSchedule" in m:
                m["GridSpacingSchedule"] = m["GridSpacingSchedule"][-int(levels):]
        for name, value in (p.get("parameters") or {}).items():
            m[name] = [str(value)]
        maps.append(m)
    return maps


def _grid_matrices(img):
    """``(origin (3,), M (3,3))`` of an itk image: LPS point = origin + M @ (x, y, z) index."""
    itk = _itk()
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    direction = np.asarray(itk.array_from_matrix(img.GetDirection()), dtype=np.float64)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    return origin, direction @ np.diag(spacing)


def elastix_field_to_voxel(field_zyx, fixed_img, moving_img):
    """transformix deformation field -> voxel displacement of our convention.

    Args:
        field_zyx: ``(Z, Y, X, 3)`` numpy view of the ITK vector image (index order reversed, as
            ``itk.array_from_image`` gives it); component ``c`` = LPS axis ``c`` in mm.
        fixed_img, moving_img: itk images defining the grids.

    Returns:
        ``(3, X, Y, Z)`` float32 displacement in voxels (array axes = NIfTI array axes = ITK index
        axes x, y, z): moving voxel index minus fixed voxel index.
    """
    field = np.transpose(np.asarray(field_zyx, dtype=np.float64), (2, 1, 0, 3))  # (X, Y, Z, 3)
    shape = field.shape[:3]
    o_f, m_f = _grid_matrices(fixed_img)
    o_m, m_m = _grid_matrices(moving_img)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    phys = o_f + idx @ m_f.T + field
    moved_idx = (phys - o_m) @ np.linalg.inv(m_m).T
    return np.moveaxis(moved_idx - idx, -1, 0).astype(np.float32)


def register_elastix(fixed_path, moving_path, preset="paper", threads=1, return_tool_warped=False,
                     affine_iterations=None, bspline_iterations=None):
    """Register ``moving`` to ``fixed`` with elastix (affine then B-spline).

    Args:
        fixed_path: fixed NIfTI image.
        moving_path: moving NIfTI image.
        preset: ``"paper"`` or ``"fast"`` (see :data:`PRESETS`).
        threads: elastix threads (ITK's global default number of threads).
        affine_iterations, bspline_iterations: override the preset's iteration counts (tests).
        return_tool_warped: also put elastix's own resampling of the moving image by the found
            transform in ``info["tool_warped"]`` (``(X, Y, Z)`` float32; transformix with
            ``FinalLinearInterpolator`` so that it is comparable with our trilinear warp).

    Returns:
        ``(disp, seconds, info)``: ``disp`` ``(3, D, H, W)`` float32 voxels on the fixed grid;
        ``seconds`` the wall time of the elastix registration only; ``info`` a dict with the
        parameter maps, preset, threads and versions.
    """
    for p in (fixed_path, moving_path):
        if not Path(p).exists():
            raise InputError(f"{p}: image file not found")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    itk = _itk()
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        fixed = itk.imread(str(fixed_path), itk.F)
        moving = itk.imread(str(moving_path), itk.F)
    except Exception as exc:  # itk raises RuntimeError for unreadable files
        raise InputError(f"cannot read {fixed_path} / {moving_path}: {exc}") from exc
    for p, img in ((fixed_path, fixed), (moving_path, moving)):
        if img.GetImageDimension() != 3:
            raise InputError(f"{p}: expected a 3-D image")

    maps = parameter_maps(preset, affine_iterations, bspline_iterations)
    po = itk.ParameterObject.New()
    for m in maps:
        po.AddParameterMap({k: tuple(v) for k, v in m.items()})
    elx = itk.ElastixRegistrationMethod.New(fixed, moving)
    elx.SetParameterObject(po)
    # Not elx.SetNumberOfThreads: with itk-elastix 0.25.4 it segfaults for values > 1 (measured
    # here); the ITK global default set above governs elastix's threads.
    elx.SetLogToConsole(False)
    elx.SetLogToFile(False)
    t0 = time.perf_counter()
    elx.UpdateLargestPossibleRegion()
    seconds = time.perf_counter() - t0

    tpo = elx.GetTransformParameterObject()
    # transformix writes deformationField.nii into its output directory (the working directory
    # unless told otherwise): keep it out of the user's folders.
    with tempfile.TemporaryDirectory(prefix="vtn-transformix-") as tmp:
        field = itk.transformix_deformation_field(moving, tpo, output_directory=tmp,
                                                  log_to_console=False)
        field_zyx = np.array(itk.array_from_image(field), copy=True)
    disp = elastix_field_to_voxel(field_zyx, fixed, moving)
    info = {
        "tool": "elastix (itk-elastix)",
        "version": elastix_version(),
        "preset": preset,
        "threads": int(threads),
        "arguments": ["-p", f"Affine (default map, MaximumNumberOfIterations "
                            f"{maps[0]['MaximumNumberOfIterations'][0]}, NumberOfResolutions "
                            f"{maps[0]['NumberOfResolutions'][0]})", "-p",
                      f"BSpline (default map, MaximumNumberOfIterations "
                      f"{maps[1]['MaximumNumberOfIterations'][0]}, NumberOfResolutions "
                      f"{maps[1]['NumberOfResolutions'][0]})"],
        "parameter_maps": maps,
    }
    if return_tool_warped:
        for i in range(tpo.GetNumberOfParameterMaps()):
            tpo.SetParameter(i, "ResampleInterpolator", "FinalLinearInterpolator")
        tool = itk.transformix_filter(moving, tpo, log_to_console=False)
        info["tool_warped"] = np.transpose(itk.array_from_image(tool), (2, 1, 0)).copy()
    return disp, seconds, info
