"""``vtn baseline``: register every pair with ANTs or Elastix and write the output contract.

Output (``docs/design.md``, "Output contract of every registration method"), in ``--out``:
``disp_<f>_<m>.nii.gz`` (Learn2Reg voxel displacement on the fixed grid), ``warped_<f>_<m>.nii.gz``
(the moving image warped with *our* trilinear, border-clamped warp through the converted field,
fixed affine), ``warpedseg_<f>_<m>.nii.gz`` (nearest neighbour, when the moving subject has a
segmentation), ``landmarks_<f>_<m>.csv`` (fixed landmarks carried into the moving image,
``p + disp(p)``, when the fixed subject has landmarks), ``times.csv``
(``fixed,moving,seconds,device,threads``; seconds = the tool's registration call only, without
file I/O and field conversion) and ``method.json`` (tool, preset, full argument list / parameter
maps, versions, threads).

The same command produces the target flows of the supervised VTN variant: call it with a pairs CSV
of training pairs.

``--rows START:STOP`` registers only those rows of the pairs table (0-based, header excluded, STOP
exclusive): one job of the workflow per chunk of pairs, gathered into the method's folder by
``vtn gather`` (:mod:`vtn.gather`). Rows beyond the table's end (preprocessing dropped a subject)
give an empty chunk: a ``times.csv`` without rows and no ``method.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from vtn.contract import write_pair, write_times
from vtn.io import (DISP_DTYPES, InputError, atomic_write_json, load_volume, read_pairs,
                    read_subjects)
from vtn.jobs import parse_rows
from vtn.progress import Progress, logger

__all__ = ["METHODS", "run_baseline", "cli"]

METHODS = ("ants", "elastix")
_AFFINE_ATOL = 1e-3  # mm; two headers within this are the same grid


def _header(path):
    """``(shape, affine)`` of a NIfTI file without reading its voxels."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise InputError(f"{path}: cannot read NIfTI header ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {shape}")
    return shape, np.asarray(img.affine, dtype=np.float64)


def _check_inputs(subjects, pairs, subjects_csv, pairs_csv):
    """Validate every file a pair needs before any (slow) registration starts."""
    used = sorted({s for p in pairs for s in p})
    for s in used:
        if s not in subjects:
            raise InputError(f"{pairs_csv}: subject {s!r} is not listed in {subjects_csv}")
    grids = {}
    for s in used:
        row = subjects[s]
        if row["image"] is None:
            raise InputError(f"{subjects_csv}: subject {s!r} has no image")
        shape, aff = _header(row["image"])
        grids[s] = (shape, aff)
        if row["seg"] is not None:
            sshape, saff = _header(row["seg"])
            if sshape != shape or not np.allclose(saff, aff, atol=_AFFINE_ATOL):
                raise InputError(
                    f"{row['seg']}: segmentation grid (shape {sshape}) does not match its image "
                    f"{row['image']} (shape {shape}) in shape or affine")
        if row["landmarks"] is not None and not Path(row["landmarks"]).exists():
            raise InputError(f"{row['landmarks']}: landmark file not found")
    for f, m in pairs:
        if grids[f][0] != grids[m][0]:
            raise InputError(
                f"moving image {subjects[m]['image']} has shape {grids[m][0]} but fixed image "
                f"{subjects[f]['image']} has shape {grids[f][0]}; resample to one size first "
                f"(vtn preprocess)")


def _register(method, fixed, moving, preset, threads, seed):
    if method == "ants":
        from vtn.baselines.ants import register_ants

        return register_ants(fixed, moving, preset=preset, threads=threads, seed=seed)
    if method == "elastix":
        from vtn.baselines.elastix import register_elastix

        return register_elastix(fixed, moving, preset=preset, threads=threads)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_baseline(method, subjects_csv, pairs_csv, out_dir, preset="paper", threads=1, seed=1,
                 rows=None, disp_dtype="float32"):
    """Register every pair of ``pairs_csv`` (or rows ``start:stop`` of it) with ANTs or Elastix
    and write the output contract.

    Args:
        method: ``"ants"`` or ``"elastix"``.
        subjects_csv: ``subjects.csv`` (``subject,image,seg,landmarks``).
        pairs_csv: ``fixed,moving`` subject ids.
        out_dir: output folder (created; files are overwritten).
        preset: ``"paper"`` (the paper's footnote 2/3 settings) or ``"fast"``.
        threads: ITK threads of the tool.
        seed: ANTs ``--random-seed`` (Elastix uses its own fixed default seed).
        rows: ``(start, stop)``: only these rows of the pairs table (a chunk of the workflow);
            none there gives an empty ``times.csv``. ``None``: every pair (at least one).
        disp_dtype: on-disk type of the displacement files (:data:`vtn.io.DISP_DTYPES`).

    Returns:
        ``out_dir`` as a :class:`Path`.

    Raises:
        InputError: a missing/unreadable file, a pair naming an unknown subject, a segmentation
            whose grid differs from its image, fixed and moving of different shapes.
    """
    import torch

    from vtn.functional import warp

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    out_dir = Path(out_dir)
    say = logger(f"vtn baseline {method}")
    subjects = {r["subject"]: r for r in read_subjects(subjects_csv)}
    pairs = read_pairs(pairs_csv)
    if rows is None and not pairs:
        raise InputError(f"{pairs_csv}: no pairs listed")
    if rows is not None:
        start, stop = rows
        say(f"rows {start}:{stop} of {pairs_csv} ({len(pairs)} rows)")
        pairs = pairs[start:stop]
    _check_inputs(subjects, pairs, subjects_csv, pairs_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not pairs:
        say("no pairs in these rows (the table is shorter: preprocessing dropped a subject?); "
            "writing an empty times.csv")
        write_times(out_dir, [])
        return out_dir

    times, infos = [], []
    progress = Progress(len(pairs), unit="pair")
    for k, (f, m) in enumerate(pairs, 1):
        fpath, mpath = subjects[f]["image"], subjects[m]["image"]
        disp, seconds, info = _register(method, fpath, mpath, preset, threads, seed)
        infos.append(info)
        _, faff = load_volume(fpath)
        mov, _ = load_volume(mpath)
        if disp.shape[1:] != mov.shape:
            raise RuntimeError(f"{method} returned a field of shape {disp.shape} for {fpath}")
        flow = torch.from_numpy(np.ascontiguousarray(disp)).unsqueeze(0)  # (1, 3, D, H, W)
        with torch.no_grad():
            warped = warp(torch.from_numpy(mov).view(1, 1, *mov.shape), flow)[0, 0].numpy()
        write_pair(out_dir, f, m, flow, warped, faff, subjects[m]["seg"],
                   subjects[f]["landmarks"], disp_dtype=disp_dtype)
        times.append({"fixed": f, "moving": m, "seconds": float(seconds), "device": "cpu",
                      "threads": int(threads)})
        say(f"pair {progress.status(k)} | {f} <- {m}: {seconds:.1f} s ({preset} preset, "
            f"{threads} threads)")

    write_times(out_dir, times)

    first = infos[0]
    meta = {
        "method": method,
        "tool": first["tool"],
        "preset": preset,
        "threads": int(threads),
        "device": "cpu",
        "timing": "wall time of the tool's registration call only (no I/O, no field conversion)",
        "disp_dtype": disp_dtype,
        "versions": {"tool": first["version"]},
        # the first pair's arguments; the others differ only in file and temporary paths
        "arguments": first["arguments"],
        "warp": "moving image resampled with vtn.functional.warp (trilinear, border clamp) "
                "through the converted voxel field; segmentations nearest neighbour",
    }
    if method == "ants":
        meta["seed"] = int(seed)
        meta["precision"] = first["precision"]
    else:
        meta["parameter_maps"] = first["parameter_maps"]
    from vtn import __version__

    meta["versions"]["vtn"] = __version__
    atomic_write_json(out_dir / "method.json", meta)
    return out_dir


def cli(argv=None) -> int:
    """``vtn baseline --method ants|elastix --preset paper|fast --subjects CSV --pairs CSV
    --out DIR --threads T [--seed S]``."""
    ap = argparse.ArgumentParser(prog="vtn baseline",
                                 description="register pairs with ANTs or Elastix")
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--preset", default="paper", choices=("paper", "fast"),
                    help="paper: the paper's settings (footnotes 2-3); fast: fewer iterations")
    ap.add_argument("--subjects", required=True, help="subjects.csv")
    ap.add_argument("--pairs", required=True, help="pairs.csv (fixed,moving)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--threads", type=int, default=1, help="ITK threads of the tool")
    ap.add_argument("--seed", type=int, default=1, help="ANTs --random-seed (non-zero)")
    ap.add_argument("--rows", default=None, metavar="START:STOP",
                    help="only these rows of the pairs table (0-based, header excluded)")
    ap.add_argument("--disp-dtype", default="float32", choices=DISP_DTYPES,
                    help="on-disk type of disp_<f>_<m>.nii.gz (int16: scaled, 16 bits)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.seed == 0:
        ap.error("--seed must be non-zero (ANTs treats 0 as 'seed from the clock')")
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(line_buffering=True)
    try:
        rows = parse_rows(args.rows) if args.rows is not None else None
    except ValueError as exc:
        ap.error(str(exc))
    try:
        run_baseline(args.method, args.subjects, args.pairs, args.out, preset=args.preset,
                     threads=args.threads, seed=args.seed, rows=rows,
                     disp_dtype=args.disp_dtype)
    except InputError as exc:
        print(f"vtn baseline: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
