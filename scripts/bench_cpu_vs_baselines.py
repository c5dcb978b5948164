#!/usr/bin/env python
"""VTN (ADDD) inference vs Elastix vs ANTs on the same real pair, CPU, one run.

Prints (and with ``--json-out`` writes) the per-pair registration time of

* VTN ``ADDD`` float32 (the default ``vtn register`` path),
* VTN ``ADDD`` fast path (:func:`vtn.perf.fast_model`: bfloat16 + channels_last_3d + sub-pixel
  transposed convolutions), eager and, with ``--compile``, ``torch.compile``-d (compile time
  reported separately),
* Elastix (``vtn.baselines.elastix.register_elastix``, preset ``paper``: default affine + default
  B-spline map with 1000 iterations), in a subprocess with a time limit,
* ANTs (``vtn.baselines.ants.register_ants``, preset ``paper``: the paper's stages), in a
  subprocess with a time limit (reported as "did not finish in N min" when it runs out),

and the fast path's accuracy against float32 on the pair (max/mean flow difference in voxels,
Dice of the warped liver mask, mean landmark distance).

Model weights are RANDOM (seed 0) with ``pred0`` damped by ``--flow-scale`` (default 0.1) so that
flows have a realistic magnitude (a few voxels): inference time does not depend on the weights;
the accuracy figures compare two evaluations of the same (untrained) network.

Example::

    python scripts/bench_cpu_vs_baselines.py --prep /tmp/perf/prep --threads 2 \
        --ants-timeout-min 15 --compile --json-out /tmp/perf/cpu_vs_baselines.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

_CHILD = r"""
import json, sys
tool, fixed, moving, threads, preset = (sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                         sys.argv[5])
if tool == "elastix":
    from vtn.baselines.elastix import register_elastix as reg
else:
    from vtn.baselines.ants import register_ants as reg
disp, seconds, info = reg(fixed, moving, preset=preset, threads=threads)
print("RESULT " + json.dumps({"seconds": seconds, "version": str(info.get("version")),
                              "threads": info.get("threads"), "preset": preset}))
"""


def run_baseline(tool: str, fixed: str, moving: str, threads: int, timeout_min: float,
                 preset: str = "paper") -> dict:
    """Run one baseline registration in a subprocess; ``{"seconds", "status", ...}``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, tool, fixed, moving, str(threads),
                               preset],
                              capture_output=True, text=True, timeout=timeout_min * 60, env=env)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "status": f"did not finish in {timeout_min:g} min",
                "seconds": None, "wall_seconds": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res.update(tool=tool, status="ok", wall_seconds=wall)
            return res
    return {"tool": tool, "status": f"failed (exit {proc.returncode}): {proc.stderr[-500:]}",
            "seconds": None, "wall_seconds": wall}


def machine() -> dict:
    """CPU model name, core count and load average."""
    name = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "loadavg": list(os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prep", required=True, help="preprocessed folder with subjects.csv (128^3)")
    ap.add_argument("--fixed", default=None, help="fixed subject id (default: first)")
    ap.add_argument("--moving", default=None, help="moving subject id (default: second)")
    ap.add_argument("--cascade", default="ADDD")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flow-scale", type=float, default=0.1,
                    help="damping of the random pred0 weights (realistic flow magnitude)")
    ap.add_argument("--compile", action="store_true", help="also time the compiled fast path")
    ap.add_argument("--elastix-timeout-min", type=float, default=30.0)
    ap.add_argument("--ants-timeout-min", type=float, default=15.0)
    ap.add_argument("--baseline-preset", default="paper", choices=["paper", "fast"],
                    help="preset of both baselines (paper: the paper's settings)")
    ap.add_argument("--skip-elastix", action="store_true")
    ap.add_argument("--skip-ants", action="store_true")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from vtn import networks, perf
    from vtn.io import load_landmarks, load_volume, read_subjects

    torch.set_num_threads(args.threads)
    subjects = read_subjects(Path(args.prep) / "subjects.csv")
    ids = [r["subject"] for r in subjects]
    by_id = {r["subject"]: r for r in subjects}
    fid = args.fixed or ids[0]
    mid = args.moving or ids[1]
    fimg, _ = load_volume(by_id[fid]["image"])
    mimg, _ = load_volume(by_id[mid]["image"])
    size = fimg.shape
    fixed = torch.from_numpy(np.ascontiguousarray(fimg)).view(1, 1, *size)
    moving = torch.from_numpy(np.ascontiguousarray(mimg)).view(1, 1, *size)

    torch.manual_seed(0)
    model = perf.damp_flow_heads_(networks.build_cascade(args.cascade, size), args.flow_scale)
    model.eval()
    fast = perf.fast_model(model)

    def timed(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        return (time.perf_counter() - t0) / args.repeats

    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "pair": [fid, mid], "size": list(size), "cascade": args.cascade,
           "weights": f"random (seed 0), pred0 x {args.flow_scale}", "repeats": args.repeats}
    res["baseline_preset"] = args.baseline_preset
    with torch.inference_mode():
        res["vtn_fp32_s"] = timed(lambda: model(fixed, moving))
        res["vtn_fast_s"] = timed(lambda: fast(fixed, moving))
        if args.compile:
            comp = perf.fast_model(model, compile=True)
            t0 = time.perf_counter()
            comp(fixed, moving)
            res["vtn_fast_compile_s"] = time.perf_counter() - t0
            res["vtn_fast_compiled_s"] = timed(lambda: comp(fixed, moving))
    print(f"VTN {args.cascade} at {size}: fp32 {res['vtn_fp32_s']:.3f} s/pair, fast (bf16) "
          f"{res['vtn_fast_s']:.3f} s/pair" + (
              f", fast compiled {res['vtn_fast_compiled_s']:.3f} s/pair (compile "
              f"{res['vtn_fast_compile_s']:.0f} s)" if args.compile else ""), flush=True)

    def lm(sid):
        p = by_id[sid]["landmarks"]
        return load_landmarks(p)[1] if p is not None else None

    def seg(sid):
        p = by_id[sid]["seg"]
        return load_volume(p, dtype=None)[0] if p is not None else None

    acc = perf.compare_fast(model, fast, fixed, moving, seg(fid), seg(mid), lm(fid), lm(mid))
    res["accuracy_fast_vs_fp32"] = acc
    print("fast vs fp32: " + ", ".join(f"{k} {v:.4g}" for k, v in acc.items()), flush=True)

    best = min(v for k, v in res.items() if k in ("vtn_fp32_s", "vtn_fast_s",
                                                   "vtn_fast_compiled_s"))
    for tool, skip, limit in (("elastix", args.skip_elastix, args.elastix_timeout_min),
                              ("ants", args.skip_ants, args.ants_timeout_min)):
        if skip:
            continue
        r = run_baseline(tool, str(by_id[fid]["image"]), str(by_id[mid]["image"]),
                         args.threads, limit, args.baseline_preset)
        if r["seconds"] is not None:
            r["ratio_vs_vtn_fp32"] = r["seconds"] / res["vtn_fp32_s"]
            r["ratio_vs_vtn_best"] = r["seconds"] / best
            print(f"{tool}: {r['seconds']:.1f} s/pair -> VTN fp32 is {r['ratio_vs_vtn_fp32']:.0f}x "
                  f"faster, VTN best is {r['ratio_vs_vtn_best']:.0f}x faster", flush=True)
        else:
            print(f"{tool}: {r['status']}", flush=True)
        res[tool] = r
    res["loadavg_end"] = list(os.getloadavg())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
