#!/usr/bin/env python
"""CPU scaling of VTN: inference / training-step time vs image size and vs number of cascades.

Sections (``--sections``, default all):

* ``size``: ADDD inference at batch 1 (float32 default path and the ``vtn.perf`` fast path) and
  the float32 training step at ``--train-batch`` (default 1) for sizes ``--sizes`` (64 96 128 160);
* ``cascade``: the same at ``--cascade-size`` (128) for D, DD, DDD, ADDD;
* ``study``: the float32 training step at the default study's size (``--study-size`` 32,
  ``--study-batch`` 2) for D, DD, DDD, AD, ADD, ADDD, ADDD+inv and VoxelMorph-2 -- the figures
  behind the recommended ``config/config.yaml`` values in ``docs/performance.md``.

Every figure is the mean of ``--repeats`` timed calls after one warm-up call, via
:func:`vtn.bench.run_bench`; weights are random (timing does not depend on them). Prints one line
per measurement and with ``--json-out`` writes all of them.

Example::

    python scripts/bench_scaling.py --threads 2 --json-out /tmp/perf/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", default=["size", "cascade", "study"],
                    choices=["size", "cascade", "study"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 96, 128, 160])
    ap.add_argument("--cascades", nargs="+", default=["D", "DD", "DDD", "ADDD"])
    ap.add_argument("--cascade-size", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=1)
    ap.add_argument("--no-train-above", type=int, default=160,
                    help="skip the training step for sizes above this")
    ap.add_argument("--study-size", type=int, default=32)
    ap.add_argument("--study-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    import torch

    from vtn.bench import run_bench

    torch.set_num_threads(args.threads)
    rows = []

    def record(section, label, **kw):
        t0 = time.perf_counter()
        res = run_bench(device="cpu", repeats=args.repeats, warmup=1, threads=args.threads, **kw)
        res.update(section=section, label=label, wall_s=time.perf_counter() - t0,
                   loadavg=list(os.getloadavg()))
        rows.append(res)
        tr = res.get("train_ms_per_step")
        print(f"[{section}] {label:<22} size {res['size']:>3}  infer b1 "
              f"{res['infer_ms_per_pair_b1'] / 1000:7.3f} s"
              + (f"  train step b{res['batch']} {tr / 1000:7.3f} s" if tr is not None else "")
              + f"  (load {os.getloadavg()[0]:.2f})", flush=True)
        return res

    if "size" in args.sections:
        for s in args.sizes:
            record("size", "ADDD fp32", cascade="ADDD", size=s, batch=args.train_batch,
                   skip_train=s > args.no_train_above)
            record("size", "ADDD fast", cascade="ADDD", size=s, batch=1, fast=True,
                   skip_train=True)
    if "cascade" in args.sections:
        for c in args.cascades:
            record("cascade", f"{c} fp32", cascade=c, size=args.cascade_size,
                   batch=args.train_batch)
            record("cascade", f"{c} fast", cascade=c, size=args.cascade_size, batch=1, fast=True,
                   skip_train=True)
    if "study" in args.sections:
        for c in ["D", "DD", "DDD", "AD", "ADD", "ADDD"]:
            record("study", f"{c}", cascade=c, size=args.study_size, batch=args.study_batch)
        record("study", "ADDD+inv", cascade="ADDD", size=args.study_size,
               batch=args.study_batch, inv=True)
        record("study", "voxelmorph2", model_type="voxelmorph2", size=args.study_size,
               batch=args.study_batch)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
