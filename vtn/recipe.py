"""A trained model that knows its preprocessing: the recipe and the model package
(``vtn package-model``).

``vtn package-model --checkpoint ckpt.pt --train-subjects prep/subjects.csv [CSV ...]
[--metrics metrics.csv] [--name NAME] [--source TEXT] --out model.pt``

writes ``model.pt``, a plain dict loadable with ``torch.load(weights_only=True)``:

* ``format`` (:data:`MODEL_FORMAT`), ``model_config``, ``model_state`` -- the trained network;
* ``recipe`` -- what inference needs to preprocess a new scan exactly as the training data was
  (read from the training subjects' ``<sid>_prep.json`` records, which must agree):
  ``organ``, ``size``, the canonical orientation, the crop rule (bounding box of the organ plus
  ``max(int(0.1 * box), 5)`` voxels per axis; without a mask the organ is found by the
  reference code's threshold liver finder with its ``median_radius`` (liver) or an Otsu
  foreground (brain)), the resampling convention, the intensity normalisation (liver CT window
  W 290 / L 120; brain 0.5/99.5 percentiles inside the brain mask), and the histogram matching
  (SimpleITK filter parameters and the **reference image itself**, embedded as an ``(S, S, S)``
  float32 tensor: the training reference preprocessed through steps 1-5 of
  :mod:`vtn.data.preprocess`, re-computed here from its raw file);
* ``card`` -- the model card: training data (subject tables, datasets, subjects, how their crops
  were found), training (steps, epochs, batch, wall time, config), the study's metrics on its
  test pairs (mean, std, n of every numeric column of ``--metrics``), versions. Also written as
  ``<out stem>.md`` next to the model.

:func:`apply_recipe` preprocesses a raw scan with a package's recipe through the very functions
of ``vtn preprocess`` (same crop, resampling, window, matching): for a subject of the training
data it returns the arrays of its ``prep/`` files bit for bit. ``package-model`` checks exactly
that on the first training subject (``--no-verify`` skips it) before writing anything.

Models trained on atlas pre-aligned data (the star variants, ``vtn prealign``): their inputs
are the preprocessed scans aligned to the atlas by ANTs (Rigid + Affine). Their recipe also
holds ``prealign``: the atlas image itself (``(S, S, S)`` float32 and its affine, as ``vtn
prealign`` read it), the ANTs preset and random seed. :func:`prealign_to_atlas` repeats that
registration for a new scan through the functions of :mod:`vtn.data.prealign` (no second
implementation); the aligned image is the network's input and ``atlas_to_prep`` enters the map
back to the original scan (:func:`vtn.native.model_to_raw`). Packaging verifies that the first
training subject, re-preprocessed and resampled with its recorded ``atlas_to_prep``, is the
aligned training image bit for bit (the ANTs registration itself is not re-run).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vtn.io import InputError, atomic_write, read_subjects

__all__ = ["MODEL_FORMAT", "build_recipe", "apply_recipe", "prealign_to_atlas", "package_model",
           "load_package", "model_card_markdown", "cli"]

MODEL_FORMAT = "vtn-model/1"

#: default disk radius of the threshold liver finder when a prep record predates its recording
_DEFAULT_MEDIAN_RADIUS = 35

#: prep-record keys that pre-aligned training subjects must also share
_SHARED_PREALIGN = ("prealign.atlas", "prealign.preset", "prealign.random_seed")

#: prep-record keys that every training subject must share (the recipe's parameters)
_SHARED = ("organ", "size", "seg_output", "intensity.method", "histogram_matching.reference",
           "histogram_matching.reference_seg", "histogram_matching.histogram_levels",
           "histogram_matching.match_points", "histogram_matching.threshold_at_mean_intensity",
           "histogram_matching.clip", "median_radius")


def _get(meta, dotted):
    cur = meta
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _read_prep_records(train_subjects):
    """``[(subject, prep.json path, record dict, prep row)]`` of the subject tables, in load
    order (the order of :func:`vtn.train.train`)."""
    import json

    records = []
    for csv in train_subjects:
        for row in read_subjects(csv):
            jp = Path(csv).parent / f"{row['subject']}_prep.json"
            if not jp.exists():
                raise InputError(f"{jp}: preprocessing record of {row['subject']} (listed in "
                                 f"{csv}) not found; package models trained on data written by "
                                 f"vtn preprocess")
            try:
                meta = json.loads(jp.read_text())
            except ValueError as exc:
                raise InputError(f"{jp}: not valid JSON ({exc})") from exc
            records.append((row["subject"], jp, meta, row))
    if not records:
        raise InputError(f"{', '.join(map(str, train_subjects))}: no training subjects listed")
    return records


def build_recipe(train_subjects, log=print) -> dict:
    """The preprocessing recipe of a model trained on ``train_subjects`` (module docstring).

    Args:
        train_subjects: preprocessed ``subjects.csv`` files (the model's training data).

    Returns:
        the ``recipe`` dict (plain types and one tensor).

    Raises:
        InputError: a missing record, records that disagree on a recipe parameter (or on the
            atlas pre-alignment), an unreadable histogram reference or atlas.
    """
    from vtn.data.preprocess import preprocess_subject

    records = _read_prep_records(train_subjects)
    first_sid, first_path, first, _ = records[0]
    prealigned = first.get("atlas_to_prep") is not None
    for sid, path, meta, _ in records:
        if (meta.get("atlas_to_prep") is not None) != prealigned:
            raise InputError(f"{path}: {sid} is {'not ' if prealigned else ''}pre-aligned to an "
                             f"atlas, {first_sid} ({first_path}) is{'' if prealigned else ' not'}; "
                             f"a model package needs one preprocessing recipe")
        for key in _SHARED + (_SHARED_PREALIGN if prealigned else ()):
            if key == "median_radius" and first.get("organ") != "liver":
                continue
            if _get(meta, key) != _get(first, key):
                raise InputError(f"{path}: {key} = {_get(meta, key)!r} differs from "
                                 f"{_get(first, key)!r} in {first_path}; a model package needs "
                                 f"one preprocessing recipe")
    organ, size = first["organ"], int(first["size"])
    hist = dict(first["histogram_matching"])
    if [float(c) for c in hist.get("clip", [0.0, 1.0])] != [0.0, 1.0]:
        raise InputError(f"{first_path}: matched intensities clipped to {hist['clip']}; "
                         f"vtn.data.preprocess.matched_image clips to [0, 1]")
    liver_labels = sorted({str(m.get("liver_label")) for _, _, m, _ in records})
    notes = []
    if organ == "liver" and len(liver_labels) > 1:
        notes.append(f"training datasets used liver labels {liver_labels}; the histogram "
                     f"reference is cropped with the first one ({first.get('liver_label')})")
    median_radius = first.get("median_radius")
    if median_radius is None:
        median_radius = _DEFAULT_MEDIAN_RADIUS
        notes.append(f"median_radius not recorded by preprocessing; the default "
                     f"{_DEFAULT_MEDIAN_RADIUS} of vtn preprocess is assumed")
    t0 = time.perf_counter()
    ref = preprocess_subject(hist["reference"], organ, size, seg=hist.get("reference_seg"),
                             liver_label=first.get("liver_label") or "5",
                             median_radius=int(median_radius))
    log(f"histogram reference {hist['reference']} preprocessed in {time.perf_counter() - t0:.1f} s")
    intensity = {k: v for k, v in first["intensity"].items() if k not in ("low", "high")}
    box_sources = sorted({m.get("box_source", "?") for _, _, m, _ in records})
    return {
        "organ": organ,
        "size": size,
        "orientation": "closest canonical RAS+ voxel order (nibabel io_orientation); a pure "
                       "permutation/flip of the array",
        "crop": {
            "rule": "bounding box of the organ mask plus max(int(0.1 * box size), 5) voxels per "
                    "axis, clipped to the image (crop_mask of the reference demo.py)",
            "margin_fraction": 0.1,
            "margin_min_voxels": 5,
            "organ_finder": ("threshold liver finder (reference demo.py auto_liver_mask)"
                             if organ == "liver" else
                             "Otsu foreground, largest 6-connected component, holes filled"),
            "median_radius": int(median_radius) if organ == "liver" else None,
            "liver_label": first.get("liver_label"),
            "training_crops_from": box_sources,
        },
        "resampling": first.get("resampling"),
        "intensity": intensity,
        "seg_output": first.get("seg_output", "full"),
        "histogram_matching": {
            "filter": hist.get("filter"),
            "histogram_levels": int(hist["histogram_levels"]),
            "match_points": int(hist["match_points"]),
            "threshold_at_mean_intensity": bool(hist["threshold_at_mean_intensity"]),
            "clip": [float(c) for c in hist.get("clip", [0.0, 1.0])],
            "reference": str(hist["reference"]),
            "reference_seg": hist.get("reference_seg"),
            "reference_image": torch.from_numpy(np.ascontiguousarray(ref.image, dtype=np.float32)),
        },
        "notes": notes,
        "prealign": _prealign_recipe(first, first_path, size) if prealigned else None,
    }


def _prealign_recipe(meta, path, size):
    """The ``prealign`` part of a recipe from a pre-aligned training subject's record."""
    from vtn.io import load_volume

    info = meta.get("prealign") or {}
    if not info.get("atlas"):
        raise InputError(f"{path}: pre-aligned record without 'prealign.atlas' (written by an "
                         f"older vtn prealign); re-run vtn prealign")
    try:
        atlas, atlas_aff = load_volume(info["atlas"])
    except (InputError, OSError) as exc:
        raise InputError(f"{path}: the atlas {info['atlas']} of the pre-alignment cannot be "
                         f"read ({exc})") from exc
    if atlas.shape != (size,) * 3:
        raise InputError(f"{info['atlas']}: atlas of shape {atlas.shape}, the model's grid is "
                         f"{size}^3")
    return {
        "method": "ANTs Rigid[0.1] then Affine[0.1], Mattes MI, atlas fixed, the preprocessed "
                  "scan moving (vtn.data.prealign.ants_affine_args)",
        "atlas": str(info["atlas"]),
        "atlas_image": torch.from_numpy(np.ascontiguousarray(atlas, dtype=np.float32)),
        "atlas_affine": np.asarray(atlas_aff, dtype=np.float64).tolist(),
        "preset": str(info.get("preset", "paper")),
        "random_seed": int(info.get("random_seed", 1)),
    }


def prealign_to_atlas(recipe: dict, image, affine, threads=None):
    """Align a preprocessed scan to the recipe's atlas as ``vtn prealign`` aligned the training
    data (star models).

    Args:
        recipe: a recipe with ``prealign`` (:func:`build_recipe` of pre-aligned training data).
        image: ``(S, S, S)`` float32 preprocessed (matched) image, as :func:`apply_recipe`
            returns it.
        affine: its prep affine (voxel -> RAS mm, ``PrepResult.affine``).
        threads: ITK threads of ANTs (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, honoured only
            before the process's first ANTs call); ``None`` leaves ITK's default. With 1 thread
            and the recipe's seed the result is deterministic (with more, ITK's thread pool
            changes it from run to run).

    Returns:
        ``(aligned (S, S, S) float32 on the atlas grid, atlas_to_prep 4x4, seconds)``.
    """
    import tempfile

    from vtn.data.prealign import _set_threads, apply_voxel_affine, register_affine
    from vtn.io import save_volume

    if threads is not None:
        _set_threads(threads)

    pa = recipe.get("prealign")
    if not pa:
        raise ValueError("recipe has no 'prealign' part (the model was not trained on "
                         "atlas pre-aligned data)")
    atlas = pa["atlas_image"]
    atlas = atlas.numpy() if isinstance(atlas, torch.Tensor) else np.asarray(atlas, np.float32)
    with tempfile.TemporaryDirectory(prefix="vtn-prealign-") as wd:
        atlas_path, image_path = Path(wd) / "atlas.nii.gz", Path(wd) / "image.nii.gz"
        save_volume(atlas_path, atlas, np.asarray(pa["atlas_affine"], dtype=np.float64))
        save_volume(image_path, np.asarray(image, dtype=np.float32), np.asarray(affine))
        try:
            a2p, _, seconds, _, _ = register_affine(atlas_path, image_path, wd,
                                                    preset=pa["preset"], seed=pa["random_seed"])
        except RuntimeError as exc:
            raise InputError(f"ANTs pre-alignment to the model's atlas failed ({exc})") from exc
    aligned = apply_voxel_affine(np.asarray(image, dtype=np.float32), a2p, atlas.shape, order=1)
    return aligned.astype(np.float32), a2p, seconds


def apply_recipe(recipe: dict, image, seg=None, landmarks=None, liver_label=None,
                 outside_crop="drop"):
    """Preprocess one raw scan with a recipe, exactly as ``vtn preprocess`` did the training data.

    Args:
        recipe: the ``recipe`` of a package.
        image: raw image path (NIfTI/Analyze, read by nibabel as in ``vtn preprocess``).
        seg: optional label map or organ mask (defines the crop; without it the recipe's organ
            finder does).
        landmarks: optional raw landmark CSV (``name,x,y,z`` RAS mm).
        liver_label: how ``seg`` marks the liver (default: the recipe's); ``"any"`` for a
            0/1 organ mask.
        outside_crop: see :func:`vtn.data.preprocess.preprocess_subject`.

    Returns:
        ``(matched image (S, S, S) float32, PrepResult)`` -- the image as written to
        ``prep/<sid>_image.nii.gz`` and the result of steps 1-5 and 7 (seg, affine, landmarks,
        ``meta`` with ``prep_to_raw``).
    """
    from vtn.data.preprocess import matched_image, preprocess_subject

    crop = recipe["crop"]
    hm = recipe["histogram_matching"]
    label = liver_label if liver_label is not None else (crop.get("liver_label") or "5")
    res = preprocess_subject(image, recipe["organ"], int(recipe["size"]), seg=seg,
                             landmarks=landmarks, liver_label=label,
                             median_radius=int(crop.get("median_radius") or _DEFAULT_MEDIAN_RADIUS),
                             seg_output=recipe.get("seg_output", "full"), outside_crop=outside_crop)
    ref = hm["reference_image"]
    ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, dtype=np.float32)
    matched = matched_image(res.image, ref, hm["histogram_levels"], hm["match_points"],
                            hm["threshold_at_mean_intensity"])
    return matched, res


def _metrics_summary(path):
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: metrics table not found")
    df = pd.read_csv(path)
    if not {"fixed", "moving"} <= set(df.columns):
        raise InputError(f"{path}: a per-pair metrics table needs columns fixed,moving "
                         f"(written by vtn evaluate)")
    summary = {}
    for col in df.columns:
        if col in ("fixed", "moving") or not pd.api.types.is_numeric_dtype(df[col]):
            continue
        vals = df[col].to_numpy(dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            summary[col] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if vals.size > 1
                            else 0.0, "n": int(vals.size)}
    text = {c: str(df[c].iloc[0]) for c in ("study", "method") if c in df.columns and len(df)}
    return {"file": str(path.resolve()), "n_pairs": int(len(df)), **text, "summary": summary}


def _dataset_name(csv):
    p = Path(csv).resolve().parent
    return p.parent.name if p.name in ("prep", "prep_atlas") else p.name


def package_model(checkpoint, train_subjects, out, metrics=None, name=None, source=None,
                  verify: bool = True, log=print) -> Path:
    """Write a model package (module docstring) and its Markdown card.

    Args:
        checkpoint: final checkpoint written by ``vtn train``.
        train_subjects: the preprocessed ``subjects.csv`` files the model was trained on, in
            the order given to ``vtn train`` (checked against the checkpoint's subject list).
        out: the package path (``.pt``); the card goes to ``out.with_suffix(".md")``.
        metrics: optional per-pair metrics CSV of the study's test pairs (``vtn evaluate``).
        name: model name for the card (default: the checkpoint's training config name or stem).
        source: free text describing the training data (default: the datasets' folder names).
        verify: re-preprocess the first training subject from its raw file with the recipe and
            require identical arrays.

    Returns:
        ``out``.
    """
    from vtn import __version__
    from vtn.io import load_volume
    from vtn.train.checkpoint import load_checkpoint

    out = Path(out)
    if out.suffix != ".pt":
        raise InputError(f"{out}: the package must be a .pt file")
    ckpt = load_checkpoint(checkpoint)
    train_subjects = [Path(p) for p in train_subjects]
    records = _read_prep_records(train_subjects)
    ids = [sid for sid, *_ in records]
    if list(ckpt["subjects"]) != ids:
        raise InputError(f"{checkpoint}: trained on subjects {list(ckpt['subjects'])}, but "
                         f"{', '.join(map(str, train_subjects))} list {ids}; give the subject "
                         f"tables the model was trained on, in the same order")
    recipe = build_recipe(train_subjects, log=log)
    size = ckpt["model_config"].get("image_size")
    if size not in (recipe["size"], [recipe["size"]] * 3):
        raise InputError(f"{checkpoint}: model image_size {size} but the training data is "
                         f"{recipe['size']}^3")
    if verify:
        sid, jp, meta, row = records[0]
        t0 = time.perf_counter()
        got, res = apply_recipe(recipe, meta["raw_image"], seg=meta.get("raw_seg"),
                                liver_label=meta.get("liver_label"))
        if recipe["prealign"] is not None:  # the recorded ANTs affine, as vtn prealign
            from vtn.data.prealign import apply_voxel_affine

            got = apply_voxel_affine(got, meta["atlas_to_prep"], got.shape, order=1).astype(np.float32)
        want, _ = load_volume(row["image"])
        if got.shape != want.shape or not np.array_equal(got, want):
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
            raise InputError(f"{row['image']}: the recipe does not reproduce this preprocessed "
                             f"image (max difference {diff:g}); the raw files or the "
                             f"preprocessing code changed since it was written")
        log(f"recipe verified on {sid}: identical to {row['image']} "
            f"({time.perf_counter() - t0:.1f} s)")
    cfg = ckpt["train_config"]
    card = {
        "name": name or cfg.get("name") or Path(checkpoint).parent.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(Path(checkpoint).resolve()),
        "architecture": {"type": ckpt["model_config"].get("type"),
                         "spec": ckpt["model_config"].get("spec"),
                         "image_size": recipe["size"],
                         "affine_subnet": str(ckpt["model_config"].get("spec", "")).startswith("A")},
        "training_data": {
            "source": source or ", ".join(dict.fromkeys(_dataset_name(c) for c in train_subjects)),
            "subject_tables": [str(c.resolve()) for c in train_subjects],
            "n_subjects": len(ids),
            "subjects": ids,
            "organ": recipe["organ"],
            "crops_from": recipe["crop"]["training_crops_from"],
        },
        "training": {"steps": int(ckpt["step"]), "finished": bool(ckpt["finished"]),
                     "epochs": cfg.get("epochs"), "iterations": cfg.get("iterations"),
                     "batch": cfg.get("batch"), "seconds": float(ckpt["elapsed"]),
                     "config": cfg},
        "metrics": _metrics_summary(metrics) if metrics is not None else None,
        "versions": {"vtn": __version__, "torch": str(torch.__version__),
                     "trained_with": dict(ckpt.get("versions") or {})},
    }
    package = {"format": MODEL_FORMAT, "model_config": ckpt["model_config"],
               "model_state": ckpt["model_state"], "recipe": recipe, "card": card}
    with atomic_write(out) as tmp:
        torch.save(package, tmp)
    md = out.with_suffix(".md")
    with atomic_write(md) as tmp:
        tmp.write_text(model_card_markdown(package))
    log(f"model package {out} ({out.stat().st_size / 1e6:.1f} MB), card {md}")
    return out


def load_package(path, device="cpu"):
    """Load a model package; returns ``(model in eval mode on device, package dict)``.

    Raises:
        InputError: missing/unreadable file, a training checkpoint without a recipe, a model
            that cannot be rebuilt.
    """
    from vtn.networks import build_model

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model package not found")
    try:
        pkg = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot read model package ({type(exc).__name__}: {exc})") from exc
    if not isinstance(pkg, dict) or pkg.get("format") != MODEL_FORMAT:
        if isinstance(pkg, dict) and str(pkg.get("format", "")).startswith("vtn-checkpoint"):
            raise InputError(f"{path}: a training checkpoint without a preprocessing recipe; "
                             f"package it first: vtn package-model --checkpoint {path} "
                             f"--train-subjects prep/subjects.csv --out model.pt")
        raise InputError(f"{path}: not a vtn model package (format {MODEL_FORMAT!r} expected)")
    for key in ("model_config", "model_state", "recipe", "card"):
        if key not in pkg:
            raise InputError(f"{path}: model package lacks {key!r}")
    try:
        model = build_model(pkg["model_config"])
        model.load_state_dict(pkg["model_state"])
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: cannot rebuild the model ({exc})") from exc
    return model.eval().to(device), pkg


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card_markdown(package: dict) -> str:
    """The model card as Markdown."""
    card, rec = package["card"], package["recipe"]
    td, tr = card["training_data"], card["training"]
    hm, crop = rec["histogram_matching"], rec["crop"]
    lines = [f"# Model card: {card['name']}", "",
             f"* Architecture: {card['architecture']['type']} "
             f"{card['architecture'].get('spec') or ''} at {rec['size']}^3 voxels"
             f" ({'with' if card['architecture']['affine_subnet'] else 'without'} an affine subnet)",
             f"* Organ: {rec['organ']}",
             f"* Training data: {td['source']}; {td['n_subjects']} subjects "
             f"(crops from: {', '.join(td['crops_from'])})",
             f"* Training: {tr['steps']} steps ({'finished' if tr['finished'] else 'NOT finished'}), "
             f"batch {tr['batch']}, {tr['seconds'] / 3600:.2f} h",
             f"* Created {card['created']} with vtn {card['versions']['vtn']}", "",
             "## Preprocessing recipe", "",
             f"* Orientation: {rec['orientation']}",
             f"* Crop: {crop['rule']}; without a mask: {crop['organ_finder']}"
             + (f" (median radius {crop['median_radius']} voxels)" if crop.get("median_radius") else ""),
             f"* Resampling: {rec['resampling']}",
             f"* Intensities: {', '.join(f'{k} {_fmt(v)}' for k, v in rec['intensity'].items())}",
             f"* Histogram matching: {hm['filter']}, {hm['histogram_levels']} levels, "
             f"{hm['match_points']} match points, threshold at mean "
             f"{hm['threshold_at_mean_intensity']}, clipped to {hm['clip']}; reference "
             f"{hm['reference']} (embedded, {tuple(hm['reference_image'].shape)})"]
    pa = rec.get("prealign")
    if pa:
        lines.append(f"* Atlas pre-alignment (star model): {pa['method']}, preset "
                     f"{pa['preset']}, seed {pa['random_seed']}; atlas {pa['atlas']} (embedded, "
                     f"{tuple(pa['atlas_image'].shape)})")
    for note in rec.get("notes", []):
        lines.append(f"* Note: {note}")
    lines += ["", "## Metrics on the study's test pairs", ""]
    met = card.get("metrics")
    if not met:
        lines.append("Not given (package-model without --metrics).")
    else:
        lines.append(f"{met['n_pairs']} pairs, {met.get('method', '')} in study "
                     f"{met.get('study', '')} ({met['file']}); mean (std), n:")
        lines += ["", "| metric | mean | std | n |", "|---|---|---|---|"]
        for k, s in met["summary"].items():
            lines.append(f"| {k} | {s['mean']:.4g} | {s['std']:.4g} | {s['n']} |")
    lines.append("")
    return "\n".join(lines)


def cli(argv=None) -> int:
    """``vtn package-model`` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="vtn package-model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="final checkpoint.pt of vtn train")
    ap.add_argument("--train-subjects", required=True, nargs="+", metavar="CSV",
                    help="the preprocessed subjects.csv files the model was trained on (in order)")
    ap.add_argument("--metrics", default=None, help="per-pair metrics CSV of the study's test pairs")
    ap.add_argument("--name", default=None, help="model name for the card")
    ap.add_argument("--source", default=None, help="free-text description of the training data")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip re-preprocessing the first training subject with the recipe")
    ap.add_argument("--out", required=True, help="model package to write (.pt; card: .md)")
    a = ap.parse_args(argv)
    try:
        package_model(a.checkpoint, a.train_subjects, a.out, metrics=a.metrics, name=a.name,
                      source=a.source, verify=not a.no_verify,
                      log=lambda s: print(s, file=sys.stderr))
    except (InputError, ValueError) as exc:
        print(f"vtn package-model: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
