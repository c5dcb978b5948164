"""Inference with a trained checkpoint (``vtn register``).

Writes the output contract of ``docs/design.md`` for every pair of ``pairs.csv``:
``disp_<f>_<m>.nii.gz`` (Learn2Reg voxel displacement, fixed grid), ``warped_<f>_<m>.nii.gz``
(moving image on the fixed grid, fixed affine), ``warpedseg_<f>_<m>.nii.gz`` (nearest neighbour,
when the moving subject has a segmentation), ``landmarks_<f>_<m>.csv`` (the fixed landmarks carried
into the moving image, ``p + flow(p)``, when the fixed subject has landmarks), for cascades with
an affine subnet ``affine_<f>_<m>.json`` (the affine part ``{W, b}`` of the flow, paper eq. 11:
``vtn native-space`` continues the map with it outside the crop box), ``times.csv`` and
``method.json``; with ``itk_warp`` also ``warp_<f>_<m>.nii.gz`` (ANTs/ITK displacement transform,
LPS mm, usable as an ``antsApplyTransforms`` transform).

Timing: ``seconds`` is the model forward pass only (inputs already on the device, output
synchronised with ``torch.cuda.synchronize`` on GPU); one warm-up pass on the first pair is run
before and not counted. File I/O, model loading and the label/landmark warps are excluded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vtn.contract import write_affine_part, write_pair, write_times
from vtn.device import describe_device, resolve_device
from vtn.io import (DISP_DTYPES, InputError, atomic_write_json, load_volume, read_pairs,
                    read_subjects, save_itk_warp)
from vtn.progress import Progress, logger

__all__ = ["load_model", "register_pairs", "cli"]


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return "cpu"


def load_model(checkpoint, device="cpu"):
    """Rebuild the model of a :func:`vtn.train.train` checkpoint (``weights_only`` load).

    Returns:
        ``(model in eval mode on device, checkpoint dict)``.
    """
    from vtn.networks import build_model
    from vtn.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    try:
        model = build_model(ckpt["model_config"])
        model.load_state_dict(ckpt["model_state"])
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{checkpoint}: cannot rebuild the model ({exc})") from exc
    model.eval().to(device)
    return model, ckpt


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def register_pairs(checkpoint, subjects_csv, pairs_csv, out_dir, device: str = "auto",
                   itk_warp: bool = False, fast: bool = False,
                   disp_dtype: str = "float32") -> Path:
    """Register every pair of ``pairs_csv`` with a trained model and write the output contract.

    Args:
        checkpoint: checkpoint written by ``vtn train``.
        subjects_csv: preprocessed ``subjects.csv`` (images at the model's size).
        pairs_csv: ``fixed,moving`` subject ids.
        out_dir: output folder (created).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        itk_warp: also write ``warp_<f>_<m>.nii.gz`` (ANTs/ITK transform, LPS mm).
        fast: run VTN cascades through :func:`vtn.perf.fast_model` (bfloat16 convolutions,
            channels-last, sub-pixel transposed convolutions; flows and warps stay float32) on
            CUDA or on CPUs with native bfloat16; otherwise (and for VoxelMorph-2) float32.
        disp_dtype: on-disk type of the displacement files (:data:`vtn.io.DISP_DTYPES`).

    Returns:
        ``out_dir``.

    Raises:
        InputError: unreadable checkpoint, pairs naming unknown subjects, images of the wrong
            size (messages name the file).
    """
    out_dir = Path(out_dir)
    say = logger("vtn register")
    dev = resolve_device(device, log=say)
    model, ckpt = load_model(checkpoint, dev)
    shape = tuple(getattr(model, "image_shape", ()))
    precision = "float32"
    if fast and ckpt["model_config"].get("type") == "vtn":
        from vtn.perf import bf16_supported, fast_model

        if dev.type == "cuda" or bf16_supported():
            model = fast_model(model)
            precision = "bfloat16 convolutions (vtn.perf.fast_model), float32 flows and warps"
    subjects = {r["subject"]: r for r in read_subjects(subjects_csv)}
    pairs = read_pairs(pairs_csv)
    if not pairs:
        raise InputError(f"{pairs_csv}: no pairs listed")
    for f, m in pairs:
        for s in (f, m):
            if s not in subjects:
                raise InputError(f"{pairs_csv}: subject {s!r} is not listed in {subjects_csv}")

    cache: dict = {}

    def image(sid):
        if sid not in cache:
            path = subjects[sid]["image"]
            data, affine = load_volume(path)
            if shape and data.shape != shape:
                raise InputError(f"{path}: image of shape {data.shape}, but the model in "
                                 f"{checkpoint} was trained at {shape}")
            t = torch.from_numpy(np.ascontiguousarray(data)).view(1, 1, *data.shape).to(dev)
            cache[sid] = (t, affine)
        return cache[sid]

    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    rows = []
    affine_part = False
    say(f"device {describe_device(dev)}; {len(pairs)} pairs, {precision}")
    with torch.inference_mode():
        f0, m0 = pairs[0]
        model(image(f0)[0], image(m0)[0])  # warm-up (allocations, cuDNN autotuning)
        _sync(dev)
        progress = Progress(len(pairs), unit="pair")
        for k, (f, m) in enumerate(pairs, 1):
            fixed, faff = image(f)
            moving, maff = image(m)
            _sync(dev)
            t0 = time.perf_counter()
            out = model(fixed, moving)
            _sync(dev)
            seconds = time.perf_counter() - t0
            flow = out["flow"].float()
            warped = out["warped"][-1][0, 0].float().cpu().numpy()
            write_pair(out_dir, f, m, flow, warped, faff, subjects[m]["seg"],
                       subjects[f]["landmarks"], disp_dtype=disp_dtype)
            affine_part = out["affine"] is not None
            if affine_part:
                write_affine_part(out_dir, f, m, out["affine"][0][0], out["affine"][1][0])
            if itk_warp:
                save_itk_warp(out_dir / f"warp_{f}_{m}.nii.gz", flow[0].cpu().numpy(), faff, maff)
            rows.append({"fixed": f, "moving": m, "seconds": seconds,
                         "device": _device_name(dev), "threads": threads})
            say(f"pair {progress.status(k)} | {f} <- {m}: forward {seconds:.3f} s")

    write_times(out_dir, rows)
    from vtn import __version__

    atomic_write_json(out_dir / "method.json", {
        "method": "vtn",
        "model_type": ckpt["model_config"].get("type"),
        "checkpoint": str(Path(checkpoint).resolve()),
        "model_config": ckpt["model_config"],
        "train_config": ckpt["train_config"],
        "train_step": int(ckpt["step"]),
        "device": _device_name(dev),
        "threads": threads,
        "precision": precision,
        "timing": "model forward only, one warm-up pass excluded",
        "itk_warp": bool(itk_warp),
        "disp_dtype": disp_dtype,
        "affine_part": "affine_<f>_<m>.json" if affine_part else None,
        "versions": {"vtn": __version__, "torch": str(torch.__version__)},
    })
    return out_dir


def cli(argv=None) -> int:
    """``vtn register --checkpoint PT --subjects CSV --pairs CSV --out DIR``."""
    ap = argparse.ArgumentParser(prog="vtn register",
                                 description="register pairs with a trained checkpoint")
    ap.add_argument("--checkpoint", required=True, help="checkpoint.pt written by vtn train")
    ap.add_argument("--subjects", required=True, help="preprocessed subjects.csv")
    ap.add_argument("--pairs", required=True, help="pairs.csv (fixed,moving)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--itk-warp", action="store_true",
                    help="also write warp_<f>_<m>.nii.gz (ANTs/ITK displacement transform)")
    ap.add_argument("--fast", action="store_true",
                    help="bfloat16 fast path on CUDA or bf16-capable CPUs (see vtn.perf)")
    ap.add_argument("--disp-dtype", default="float32", choices=DISP_DTYPES,
                    help="on-disk type of disp_<f>_<m>.nii.gz (int16: scaled, 16 bits)")
    args = ap.parse_args(argv)
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(line_buffering=True)
    try:
        register_pairs(args.checkpoint, args.subjects, args.pairs, args.out, device=args.device,
                       itk_warp=args.itk_warp, fast=args.fast, disp_dtype=args.disp_dtype)
    except InputError as exc:
        print(f"vtn register: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
