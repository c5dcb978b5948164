#!/usr/bin/env python
"""One-command GPU benchmark + fast-path correctness check (H100/H200), ~6 min.

Steps (each guarded by a time budget; a step that fails or runs out is recorded, not fatal):

0. ``bench`` (first, the essential figures): see 4 below, without compilation.
1. ``correctness``: ADDD at ``--size`` on smooth random images, damped random weights (realistic
   few-voxel flows): float32 vs the ``vtn.perf`` fast path (bf16 + channels_last_3d + sub-pixel
   transposed convolutions), eager and ``torch.compile``-d: max / mean |flow difference| (voxels).
2. ``loss_curves``: a short same-seed training (``--train-steps`` steps, ADDD at
   ``--train-size``, batch 2) in float32 and with ``vtn train``'s fast path (bf16 autocast +
   channels_last_3d); both loss curves and their max relative difference.
3. ``train_loop``: the real ``vtn train`` loop (augmentation, indexing, deferred loss
   read-back) at 128³, batch 8, ADDD and ADDD + inv, 40 steps: ms per step from its log.
   ``sync_check``: counts CUDA host synchronisations of ``vtn train`` (sync debug mode) for 6
   and 12 steps; no more for 12 than for 6 = none inside a step. Last, if time is left:
   ``train_loop_compiled`` (``compile: true``).
4. ``bench``: ``python -m vtn.bench --cascade ADDD --size 128 --batch 8 --device cuda --json``
   plain, ``--fast``, ``--inv``, the peer (``--type voxelmorph-package``: the voxelmorph
   package's own dense model, its defaults) and ``--inv --bf16 --channels-last``, and last
   ``--fast --compile --no-train`` (compiled inference), each in a subprocess with a timeout (peak
   memory from ``torch.cuda.max_memory_allocated``); ``correctness_compiled`` repeats step 1 with
   ``torch.compile``.

Everything is written to ``<out>/gpu_bench.json`` (``--out``, default ``$OUT``) and summarised on
stdout. ``--device cpu --dry`` runs the same logic at tiny sizes on CPU (a syntax/logic check).

Usage on the device machine::

    bash scripts/bench_gpu.sh            # = python scripts/bench_gpu.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def smooth_pair(size: int, device, seed: int = 0):
    """A smooth random image ``(1, 1, S, S, S)`` in [0, 1] (blurred noise) and a shifted copy."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, size // 4, size // 4, size // 4, generator=g)
    img = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=True)
    img = (img - img.min()) / (img.max() - img.min())
    mov = torch.roll(img, shifts=(2, -1, 1), dims=(2, 3, 4))
    return img.to(device), mov.to(device)


def step_correctness(args, dev, compiled: bool = False) -> dict:
    import torch

    from vtn import networks, perf

    torch.manual_seed(0)
    size = args.size
    model = perf.damp_flow_heads_(networks.build_cascade("ADDD", size), 0.1).to(dev).eval()
    f, m = smooth_pair(size, dev)
    res = {"size": size}
    if not compiled:
        fast = perf.fast_model(model)
        res["eager_bf16"] = perf.compare_fast(model, fast, f, m)
    else:
        t0 = time.perf_counter()
        comp = perf.fast_model(model, compile=True)
        with torch.inference_mode():
            comp(f, m)
        res["compile_s"] = time.perf_counter() - t0
        res["compiled_bf16"] = perf.compare_fast(model, comp, f, m)
    return res


def step_loss_curves(args, dev) -> dict:
    import contextlib

    import torch

    from vtn import losses, networks

    size, steps = args.train_size, args.train_steps
    f, m = smooth_pair(size, dev, seed=1)
    f2, m2 = smooth_pair(size, dev, seed=2)
    fixed, moving = torch.cat([f, f2]), torch.cat([m, m2])
    curves = {}
    for name, fast in (("fp32", False), ("fast", True)):
        torch.manual_seed(0)
        model = networks.build_cascade("ADDD", size).to(dev)
        loss_fn = losses.VTNLoss("ADDD")
        fx, mv = fixed, moving
        if fast:
            model.to(memory_format=torch.channels_last_3d)
            fx = fx.contiguous(memory_format=torch.channels_last_3d)
            mv = mv.contiguous(memory_format=torch.channels_last_3d)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        ac = (torch.autocast(dev.type, dtype=torch.bfloat16) if fast
              else contextlib.nullcontext())
        vals = []
        t0 = time.perf_counter()
        for _ in range(steps):
            with ac:
                loss, _ = loss_fn(model(fx, mv), fx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            vals.append(float(loss.detach()))
        curves[name] = {"loss": vals, "seconds": time.perf_counter() - t0}
    a, b = curves["fp32"]["loss"], curves["fast"]["loss"]
    rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)]
    return {"size": size, "steps": steps, "batch": 2, "curves": curves,
            "max_rel_diff": max(rel), "final_rel_diff": rel[-1]}


def _subjects(folder: Path, size: int, n: int = 4) -> Path:
    """``n`` smooth random images at ``size^3`` and their ``subjects.csv`` (for ``vtn train``)."""
    import numpy as np

    from vtn.io import save_volume

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["subject,image"]
    for k in range(n):
        img, _ = smooth_pair(size, "cpu", seed=10 + k)
        save_volume(folder / f"s{k}.nii.gz", img[0, 0].numpy(), np.eye(4))
        lines.append(f"s{k},s{k}.nii.gz")
    (folder / "subjects.csv").write_text("\n".join(lines) + "\n")
    return folder / "subjects.csv"


TRAIN_VARIANTS = {"ADDD": {}, "ADDD+inv": {"inv_weight": 1e-3},
                  "ADDD compiled": {"compile": True}}


def step_train_loop(args, dev, variants=("ADDD", "ADDD+inv")) -> dict:
    """The real ``vtn train`` loop at ``--bench-size``, batch ``--bench-batch``: pair indexing,
    GPU-side B-spline augmentation, bf16 autocast, deferred loss read-back (here every 10 steps,
    so that the logged time at step 10 is exact: between read-backs the host runs ahead of the
    GPU). Variants from :data:`TRAIN_VARIANTS` (ADDD, ADDD + inv, compiled ADDD). ms per step
    from the log's ``seconds`` column after 10 warm-up steps (compilation is in the first)."""
    import tempfile

    import pandas as pd

    from vtn import train as T

    size, batch, steps = args.bench_size, args.bench_batch, args.loop_steps
    res = {"size": size, "batch": batch, "steps": steps}
    with tempfile.TemporaryDirectory() as d:
        csv = _subjects(Path(d) / "data", size)
        for name in variants:
            cfg = dict(cascade="ADDD", image_size=size, epochs=1, iterations=steps, batch=batch,
                       checkpoint_every=10**6, sync_every=10, **TRAIN_VARIANTS[name])
            run = Path(d) / name
            t0 = time.perf_counter()
            T.train([csv], cfg, run / "c.pt", run / "log.csv", device=str(dev))
            log = pd.read_csv(run / "log.csv")
            sec = log["seconds"].to_numpy()
            warm = min(10, steps - 2)
            res[name] = {"ms_per_step": 1000.0 * (sec[-1] - sec[warm - 1]) / (steps - warm),
                         "wall_s": time.perf_counter() - t0,
                         "final_loss": float(log["total"].iloc[-1])}
            print(f"  vtn train loop {name}: {res[name]['ms_per_step']:.1f} ms/step", flush=True)
    return res


def step_sync_check(args, dev) -> dict:
    """Host synchronisations of ``vtn train`` (``torch.cuda.set_sync_debug_mode("warn")``) for
    two run lengths: no more for the longer run means no synchronisation inside a step (only the final read-back
    and checkpoint synchronise)."""
    import tempfile
    import warnings

    import torch

    from vtn import train as T

    if dev.type != "cuda":
        return {"skipped": "needs CUDA"}
    counts, first = {}, {}
    with tempfile.TemporaryDirectory() as d:
        csv = _subjects(Path(d) / "data", 32)
        for steps in (6, 12):
            cfg = dict(cascade="ADDD", image_size=32, epochs=1, iterations=steps, batch=2,
                       checkpoint_every=10**6, sync_every=10**6)
            run = Path(d) / f"n{steps}"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    T.train([csv], cfg, run / "c.pt", run / "log.csv", device=str(dev))
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            msgs = [str(w.message).splitlines()[0] for w in caught
                    if "synchroniz" in str(w.message).lower()]
            counts[steps] = len(msgs)
            first[steps] = sorted(set(msgs))[:5]
    return {"sync_warnings": counts, "examples": first,
            "per_step_sync": counts[12] > counts[6]}


def step_bench(args, deadline, variants) -> list:
    out = []
    for extra in variants:
        left = deadline - time.time()
        if left < 20:
            out.append({"args": extra, "status": "skipped (time budget)"})
            continue
        cmd = [sys.executable, "-m", "vtn.bench", "--cascade", "ADDD", "--size",
               str(args.bench_size), "--batch", str(args.bench_batch), "--device", args.device,
               "--repeats", str(args.repeats), "--json"] + extra
        try:
            p = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=min(args.bench_timeout, left))
        except subprocess.TimeoutExpired:
            out.append({"args": extra, "status": "timeout"})
            continue
        if p.returncode != 0:
            out.append({"args": extra, "status": f"exit {p.returncode}",
                        "stderr": p.stderr[-2000:]})
            continue
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
        r = json.loads(line)
        r.update(args=extra, status="ok")
        out.append(r)
        train = (f"{r['train_ms_per_step']:.1f} ms/step" if r["train_ms_per_step"] is not None
                 else "not run")
        print(f"  vtn.bench {' '.join(extra) or '(plain)'}: infer b1 "
              f"{r['infer_ms_per_pair_b1']:.1f} ms/pair, b{r['batch']} "
              f"{r['infer_ms_per_pair']:.1f} ms/pair, train {train},"
              f" peak infer {r['infer_peak_mib']} MiB, train {r['train_peak_mib']} MiB",
              flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry", action="store_true", help="tiny sizes (CPU logic check)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="overall time budget")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)
    if args.dry:
        args.size, args.train_size, args.train_steps = 32, 32, 3
        args.bench_size, args.bench_batch, args.repeats, args.bench_timeout = 32, 2, 1, 300
        args.loop_steps = 12
    else:
        args.size, args.train_size, args.train_steps = 128, 64, 30
        args.bench_size, args.bench_batch, args.repeats, args.bench_timeout = 128, 8, 5, 150
        args.loop_steps = 40

    import torch

    t_start = time.time()
    deadline = t_start + args.budget_s
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available (use --device cpu --dry for a logic check)",
              file=sys.stderr)
        return 2
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "dry": args.dry}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def save():
        res["elapsed_s"] = time.time() - t_start
        (out_dir / "gpu_bench.json").write_text(json.dumps(res, indent=2))

    # most important first: the plain/fast/inv timings, then the checks, compiled variants last
    res["bench"] = step_bench(args, deadline, [[], ["--fast"], ["--inv"],
                                               ["--type", "voxelmorph-package"],
                                               ["--inv", "--bf16", "--channels-last"]])
    save()

    def run_step(name, fn, min_left=60.0):
        """Run one step; record its result or error and its time; never lose the others."""
        if time.time() > deadline - min_left:
            res[name] = {"status": "skipped (time budget)"}
            return
        t0 = time.perf_counter()
        try:
            res[name] = fn()
            res[name]["status"] = "ok"
        except Exception as exc:  # record and go on: one failing step must not lose the rest
            res[name] = {"status": f"error: {type(exc).__name__}: {exc}"}
        res[name]["step_s"] = time.perf_counter() - t0
        print(f"{name}: {json.dumps(res[name])[:600]}", flush=True)
        save()

    run_step("train_loop", lambda: step_train_loop(args, dev))
    run_step("sync_check", lambda: step_sync_check(args, dev))
    run_step("correctness", lambda: step_correctness(args, dev))
    run_step("loss_curves", lambda: step_loss_curves(args, dev))
    if not args.no_compile:
        run_step("correctness_compiled", lambda: step_correctness(args, dev, True))
        res["bench"] += step_bench(args, deadline, [["--fast", "--compile", "--no-train"]])
        save()
        run_step("train_loop_compiled", lambda: step_train_loop(args, dev, ("ADDD compiled",)),
                 min_left=90.0)
    save()
    print(f"wrote {out_dir / 'gpu_bench.json'} in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
