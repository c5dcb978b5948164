#!/usr/bin/env python
"""Profile one VTN / VoxelMorph-2 training step on CPU (what dominates at small sizes).

Times ``--steps`` steps (forward, loss, backward, Adam, with the training augmentation) after two
warm-up steps, then prints the ``torch.profiler`` table (self CPU time) over 3 steps.

Example::

    python scripts/bench_profile_step.py --cascade ADDD --size 32 --batch 2 --threads 2
    python scripts/bench_profile_step.py --type voxelmorph2 --size 32 --batch 2 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cascade", default="ADDD")
    ap.add_argument("--type", default="vtn", choices=["vtn", "voxelmorph2"])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args(argv)

    import torch
    from torch.profiler import profile

    from vtn import losses, networks
    from vtn.augment import augment_moving

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    S = args.size
    if args.type == "vtn":
        model = networks.build_cascade(args.cascade, S)
        loss_fn = losses.VTNLoss(args.cascade)
    else:
        model = networks.build_model({"type": "voxelmorph2", "image_size": S})
        loss_fn = losses.VoxelMorphLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    f = torch.rand(args.batch, 1, S, S, S)
    m = torch.rand(args.batch, 1, S, S, S)

    def step(k):
        mm = augment_moving(m, generator=torch.Generator().manual_seed(k))["moving"]
        loss, _ = loss_fn(model(f, mm), f)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for k in range(2):
        step(k)
    t0 = time.perf_counter()
    for k in range(args.steps):
        step(k)
    print(f"{args.type} {args.cascade if args.type == 'vtn' else ''} {S}^3 batch {args.batch}: "
          f"{(time.perf_counter() - t0) / args.steps * 1000:.1f} ms/step "
          f"({torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    for k in range(args.steps):
        augment_moving(m, generator=torch.Generator().manual_seed(k))
    print(f"augmentation alone: {(time.perf_counter() - t0) / args.steps * 1000:.1f} ms/step")
    with profile() as prof:
        for k in range(3):
            step(k)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
