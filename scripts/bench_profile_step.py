#!/usr/bin/env python
"""Profile one VTN / VoxelMorph-2 training step (what dominates), on CPU or CUDA.

Times ``--steps`` steps (forward, loss, backward, Adam, with the training augmentation) after two
warm-up steps, then prints the ``torch.profiler`` table over 3 steps: self CPU time on a CPU;
on CUDA self device time, and the share of the step's wall time that kernels keep the GPU busy
(near 100 %: the kernels dominate; far below: the host cannot launch them fast enough).

Example::

    python scripts/bench_profile_step.py --cascade ADDD --size 32 --batch 2 --threads 2
    python scripts/bench_profile_step.py --type voxelmorph2 --size 32 --batch 2 --threads 2
    python scripts/bench_profile_step.py --cascade ADDD --size 128 --batch 8 --device cuda [--bf16]
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (vtn train's fast path)")
    args = ap.parse_args(argv)

    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

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
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    f = torch.rand(args.batch, 1, S, S, S, device=dev)
    m = torch.rand(args.batch, 1, S, S, S, device=dev)
    ac = torch.autocast(dev.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def step(k):
        mm = augment_moving(m, generator=torch.Generator().manual_seed(k))["moving"]
        with ac:
            loss, _ = loss_fn(model(f, mm), f)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for k in range(2):
        step(k)
    sync()
    t0 = time.perf_counter()
    for k in range(args.steps):
        step(k)
    sync()
    ms = (time.perf_counter() - t0) / args.steps * 1000
    name = torch.cuda.get_device_name(dev) if cuda else f"{torch.get_num_threads()} threads"
    print(f"{args.type} {args.cascade if args.type == 'vtn' else ''} {S}^3 batch {args.batch}"
          f"{' bf16' if args.bf16 else ''}: {ms:.1f} ms/step ({name})")
    t0 = time.perf_counter()
    for k in range(args.steps):
        augment_moving(m, generator=torch.Generator().manual_seed(k))
    sync()
    print(f"augmentation alone: {(time.perf_counter() - t0) / args.steps * 1000:.1f} ms/step")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for k in range(3):
            step(k)
        sync()
    events = prof.key_averages()
    if cuda:
        # kernel rows only: an operator row's self device time repeats its kernels' time (the
        # first H200 run summed both and printed 200 % busy)
        from torch.autograd import DeviceType

        busy = sum(e.self_device_time_total for e in events
                   if e.device_type == DeviceType.CUDA) / 1000 / 3
        print(f"GPU kernels: {busy:.1f} ms per step of {ms:.1f} ms wall "
              f"({100 * busy / ms:.0f} % busy)")
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows))
    else:
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
