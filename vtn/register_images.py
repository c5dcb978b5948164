"""``vtn register-images``: two scans in, a warp in their own space out, with a packaged model.

``vtn register-images --model MODEL.pt FIXED MOVING --out DIR [--moving-seg S]
[--fixed-landmarks L] [--fixed-mask M] [--moving-mask M] [--organ liver|brain] [--device auto]
[--threads T] [--overwrite]``

``FIXED``/``MOVING``: NIfTI/Analyze, MetaImage, NRRD, MGH, or a folder holding one DICOM series;
any orientation and spacing. ``MODEL.pt``: a package of ``vtn package-model`` (weights +
preprocessing recipe + model card). Stages, one progress line each:

1. load the package (its progress line names the model); ``--organ`` (optional) must match the
   organ it was trained on;
2. read and check the inputs (3-D, one volume, finite, labels/masks on their image's grid);
   non-NIfTI inputs are converted to NIfTI in a temporary folder (geometry kept);
3. preprocess the fixed and 4. the moving scan with the recipe
   (:func:`vtn.recipe.apply_recipe`): crop box from ``--fixed-mask``/``--moving-mask``
   (any voxel > 0 is organ) or, without a mask, the recipe's organ finder;
   models trained on atlas pre-aligned data (star models) then align both preprocessed scans
   to the atlas embedded in the package with ANTs, as ``vtn prealign`` did their training data
   (:func:`vtn.recipe.prealign_to_atlas`; one more stage; ``--threads`` ITK threads, default
   1: deterministic), and that affine enters the map back;
5. the network on the two ``S^3`` images (``--device auto``: CUDA when available);
6. the native-space outputs (:mod:`vtn.native`): the crop/resample maps composed with the
   network's flow on the original fixed grid; outside the crop box the network's affine part
   when it has an affine subnet (``A...`` cascades), else zero network flow (the crop boxes
   mapped onto each other) -- ``outside`` in the JSON says which;
7. a PNG overlay and ``registration_<stem>.json``; then one summary line (time, folding).

Files in ``DIR`` (``<stem>``: Learn2Reg naming ``<fixed case>_<moving case>`` when both files are
named ``<TASK>_<case>_<modality>``, else ``<fixed name>_<moving name>``): ``warp_<stem>.nii.gz``
(ANTs/ITK transform, LPS mm), ``disp_<stem>.nii.gz`` (Learn2Reg, voxels, original fixed grid),
``warped_<stem>.nii.gz``, ``warpedseg_<stem>.nii.gz`` (with ``--moving-seg``),
``landmarks_<stem>.csv`` (with ``--fixed-landmarks``: ``name,x,y,z`` RAS mm in the moving scan),
``overlay_<stem>.png``, ``registration_<stem>.json``. Existing files are an error without
``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vtn.io import NIFTI_SUFFIXES, InputError, atomic_write_json, load_raw_landmarks, read_scan, save_volume

__all__ = ["OUTPUT_PREFIXES", "register_images", "cli"]

#: the files written per pair: ``<prefix><stem><suffix>``
OUTPUT_PREFIXES = (("warp_", ".nii.gz"), ("disp_", ".nii.gz"), ("warped_", ".nii.gz"),
                   ("warpedseg_", ".nii.gz"), ("landmarks_", ".csv"), ("overlay_", ".png"),
                   ("registration_", ".json"))


def _as_nifti(path, tmp: Path, tag: str, labels: bool = False):
    """Read and check a scan; returns ``(NIfTI path for vtn.data.preprocess, array, affine)``."""
    arr, aff = read_scan(path, labels=labels)
    p = Path(path)
    if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES):
        return p, arr, aff
    dst = tmp / f"{tag}.nii.gz"
    save_volume(dst, arr, aff)
    return dst, arr, aff


def _same_grid(path, arr, aff, image_path, image_arr, image_aff, what):
    if arr.shape != image_arr.shape:
        raise InputError(f"{path}: {what} of shape {arr.shape} is not on the grid of "
                         f"{image_path} {image_arr.shape}")
    if not np.allclose(aff, image_aff, atol=1e-3):
        raise InputError(f"{path}: {what} geometry (affine) differs from {image_path}")


def register_images(model, fixed, moving, out, moving_seg=None, fixed_landmarks=None,
                    fixed_mask=None, moving_mask=None, organ=None, device="auto",
                    overwrite=False, threads=1, log=print) -> dict:
    """Register ``moving`` to ``fixed`` with a model package (module docstring).

    Returns:
        the summary dict written to ``registration_<stem>.json``.

    Raises:
        InputError: bad model/inputs (the message names the file), an organ mismatch, existing
            outputs without ``overwrite``.
    """
    from vtn.data.learn2reg import pair_stem
    from vtn.native import (NATIVE_CONVENTIONS, NativeGrids, check_landmarks_inside,
                            folding_percent, model_to_raw, write_native, write_overlay)
    from vtn.recipe import apply_recipe, load_package, prealign_to_atlas
    from vtn.device import resolve_device

    t_start = time.perf_counter()
    times = {}
    out = Path(out)
    stem = pair_stem(fixed, moving)
    existing = [out / f"{p}{stem}{s}" for p, s in OUTPUT_PREFIXES if (out / f"{p}{stem}{s}").exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]}: exists (pass --overwrite to replace the outputs of "
                         f"this pair)")

    dev = resolve_device(device)
    net, pkg = load_package(model, dev)
    recipe, card = pkg["recipe"], pkg["card"]
    prealign = recipe.get("prealign")
    n_stages, done = 7 + bool(prealign), []

    def stage(text):
        done.append(text)
        log(f"[{len(done)}/{n_stages}] {text} ({time.perf_counter() - t_start:.1f} s)")

    stage(f"loaded model package {model} ({card['name']}, {recipe['organ']}, "
          f"{recipe['size']}^3{', atlas pre-aligned' if prealign else ''})")
    if organ is not None and organ != recipe["organ"]:
        raise InputError(f"{model}: model '{card['name']}' was trained on {recipe['organ']} "
                         f"scans ({card['training_data']['source']}), but --organ {organ} was "
                         f"given; use a model trained on {organ} scans")

    with tempfile.TemporaryDirectory(prefix="vtn-register-images-") as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        stage("reading the inputs")
        f_path, f_arr, f_aff = _as_nifti(fixed, tmp, "fixed")
        m_path, m_arr, m_aff = _as_nifti(moving, tmp, "moving")
        seg = None
        if moving_seg is not None:
            _, seg, s_aff = _as_nifti(moving_seg, tmp, "moving_seg", labels=True)
            _same_grid(moving_seg, seg, s_aff, moving, m_arr, m_aff, "label map")
        masks = {}
        for tag, mask, img, arr, aff in (("fixed_mask", fixed_mask, fixed, f_arr, f_aff),
                                          ("moving_mask", moving_mask, moving, m_arr, m_aff)):
            if mask is not None:
                mp, marr, maff = _as_nifti(mask, tmp, tag, labels=True)
                _same_grid(mask, marr, maff, img, arr, aff, "organ mask")
                if not (marr > 0).any():
                    raise InputError(f"{mask}: organ mask is empty (no voxel > 0)")
                masks[tag] = mp
        lms = None
        if fixed_landmarks is not None:
            lms = load_raw_landmarks(fixed_landmarks)
            check_landmarks_inside(fixed_landmarks, *lms, f_aff, f_arr.shape)
        times["read"] = time.perf_counter() - t0

        prep = {}
        for tag, path, mask in (("fixed", f_path, masks.get("fixed_mask")),
                                ("moving", m_path, masks.get("moving_mask"))):
            finder = "organ mask" if mask is not None else recipe["crop"]["organ_finder"]
            stage(f"preprocessing the {tag} scan with the model's recipe "
                     f"({recipe['organ']}, {recipe['size']}^3, crop from the {finder})")
            t0 = time.perf_counter()
            try:
                img, res = apply_recipe(recipe, path, seg=mask, liver_label="any")
            except InputError as exc:
                src = {"fixed": fixed, "moving": moving}[tag]
                raise InputError(str(exc).replace(str(path), str(src))) from exc
            prep[tag] = (img, res)
            times[f"preprocess_{tag}"] = time.perf_counter() - t0

    aligned = {}
    if prealign:
        stage(f"pre-aligning both scans to the model's atlas ({prealign['method']}, preset "
              f"{prealign['preset']})")
        for tag, (img, res) in prep.items():
            aligned[tag], a2p, seconds = prealign_to_atlas(recipe, img, res.affine,
                                                           threads=threads)
            res.meta["atlas_to_prep"] = a2p.tolist()
            res.meta["prealign_seconds"] = seconds
            times[f"prealign_{tag}"] = seconds

    stage(f"inference on {dev}")
    t0 = time.perf_counter()
    S = recipe["size"]
    with torch.inference_mode():
        f_t = torch.from_numpy(aligned.get("fixed", prep["fixed"][0])).view(1, 1, S, S, S).to(dev)
        m_t = torch.from_numpy(aligned.get("moving", prep["moving"][0])).view(1, 1, S, S, S).to(dev)
        res = net(f_t, m_t)
        flow = res["flow"][0].double().cpu()
        affine = None
        if res.get("affine") is not None:
            W, b = res["affine"]
            affine = (W[0].double().cpu().numpy(), b[0].double().cpu().numpy())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    times["inference"] = time.perf_counter() - t0
    folding = folding_percent(flow)

    stage("native-space warp on the original fixed grid")
    fmeta, mmeta = prep["fixed"][1].meta, prep["moving"][1].meta
    grids = NativeGrids(fixed_shape=f_arr.shape, fixed_affine=np.asarray(fmeta["raw_affine"]),
                        fixed_map=model_to_raw(fmeta), moving_shape=m_arr.shape,
                        moving_affine=np.asarray(mmeta["raw_affine"]),
                        moving_map=model_to_raw(mmeta), model_shape=(S, S, S))
    nat = write_native(out, stem, grids, flow, m_arr, affine=affine, moving_seg=seg,
                       fixed_landmarks=lms, log=log)
    times["native"] = nat["seconds"]

    stage("overlay and summary")
    t0 = time.perf_counter()
    from vtn.io import load_volume

    warped, _ = load_volume(nat["files"]["warped"])
    centre = (grids.fixed_map @ np.r_[[(S - 1) / 2.0] * 3, 1.0])[:3]
    window = recipe["intensity"].get("hu_range")  # the CT window the network sees
    png = write_overlay(out / f"overlay_{stem}.png", f_arr, warped, grids.fixed_affine, centre,
                        title=f"{Path(moving).name} -> {Path(fixed).name} ({card['name']})",
                        window=window)
    times["overlay"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_start
    files = dict(nat["files"], overlay=str(png))
    summary = {
        "stem": stem,
        "inputs": {"fixed": str(Path(fixed).resolve()), "moving": str(Path(moving).resolve()),
                   "moving_seg": str(Path(moving_seg).resolve()) if moving_seg else None,
                   "fixed_landmarks": str(Path(fixed_landmarks).resolve()) if fixed_landmarks else None,
                   "fixed_mask": str(Path(fixed_mask).resolve()) if fixed_mask else None,
                   "moving_mask": str(Path(moving_mask).resolve()) if moving_mask else None},
        "model": {"package": str(Path(model).resolve()), "name": card["name"],
                  "organ": recipe["organ"], "size": S,
                  "architecture": card["architecture"]},
        "device": str(dev),
        "prealign_threads": int(threads) if prealign and threads is not None else None,
        "preprocessing": {tag: {k: prep[tag][1].meta[k] for k in
                                ("raw_shape", "raw_affine", "crop_box", "box_source",
                                 "prep_to_raw", "intensity", "atlas_to_prep")
                                if k in prep[tag][1].meta} for tag in prep},
        "outside_crop": nat["outside"],
        "outside_crop_rule": nat["outside_rule"],
        "inside_crop_percent": nat["inside_crop_percent"],
        "folding_percent": folding,
        "folding_definition": "share of model-grid voxels with det(I + grad u) <= 0 (forward "
                              "differences), the network's flow",
        "conventions": NATIVE_CONVENTIONS,
        "seconds": times,
        "files": files,
    }
    atomic_write_json(out / f"registration_{stem}.json", summary)
    log(f"vtn register-images: {stem}: {times['total']:.1f} s (preprocessing "
        f"{times['preprocess_fixed'] + times['preprocess_moving']:.1f} s, inference "
        f"{times['inference']:.2f} s on {dev}, native outputs {times['native']:.1f} s); "
        f"folding {folding:.3f} % (det J <= 0, model grid); "
        f"{nat['inside_crop_percent']:.1f} % of the fixed scan inside the crop box, outside: "
        f"{nat['outside']} -> {out}")
    return summary


def cli(argv=None) -> int:
    """``vtn register-images`` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="vtn register-images", description=__doc__.split("\n\n")[0])
    ap.add_argument("fixed", help="fixed scan (file or DICOM folder)")
    ap.add_argument("moving", help="moving scan (file or DICOM folder)")
    ap.add_argument("--model", required=True, help="model package written by vtn package-model")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--moving-seg", default=None, help="label map of the moving scan (warped, nearest)")
    ap.add_argument("--fixed-landmarks", default=None,
                    help="CSV name,x,y,z (RAS mm) of fixed landmarks to carry into the moving scan")
    ap.add_argument("--fixed-mask", default=None, help="organ mask of the fixed scan (> 0) for the crop")
    ap.add_argument("--moving-mask", default=None, help="organ mask of the moving scan (> 0) for the crop")
    ap.add_argument("--organ", choices=["liver", "brain"], default=None,
                    help="the organ of your scans (checked against the model's)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=1,
                    help="ITK threads of the ANTs atlas pre-alignment of star models (1: "
                         "deterministic)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs of this pair")
    a = ap.parse_args(argv)
    try:
        register_images(a.model, a.fixed, a.moving, a.out, moving_seg=a.moving_seg,
                        fixed_landmarks=a.fixed_landmarks, fixed_mask=a.fixed_mask,
                        moving_mask=a.moving_mask, organ=a.organ, device=a.device,
                        overwrite=a.overwrite, threads=a.threads,
                        log=lambda s: print(s, file=sys.stderr))
    except InputError as exc:
        print(f"vtn register-images: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
