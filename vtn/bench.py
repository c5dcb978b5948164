"""Inference / training-step benchmark (``vtn bench``, ``python -m vtn.bench``).

Measures, on random inputs of size ``S^3``:

* ``infer_ms_per_pair_b1``: model forward at batch 1 (no gradients), ms per pair;
* ``infer_ms_per_pair``: model forward at ``--batch`` pairs, ms per pair;
* ``train_ms_per_step``: one optimisation step at ``--batch`` pairs (forward, :class:`VTNLoss`
  or :class:`VoxelMorphLoss`, backward, Adam), ms per step; with ``--inv`` the model also runs on
  the swapped pair and the invertibility term is added (the "+inv" variants);
* on CUDA the peak allocated memory of each phase (MiB).

``--type voxelmorph-package`` times the *peer*: the ``voxelmorph`` package's own dense model
(``voxelmorph.nn.models.VxmPairwise``, its defaults: a 5-level U-Net of 16 features, 5
scaling-and-squaring steps; version >= 0.3, pure PyTorch) with its own spatial transformer,
forward returning the displacement and the warped moving image; its training step uses MSE + the
L2 gradient penalty (weight 0.01). Not a dependency: install it beside the project
(``pip install --no-deps voxelmorph neurite pystrum``) to measure it.

Warm-up iterations (``--warmup``, default 1; more with ``--compile``) are run first and excluded;
every timed region ends with ``torch.cuda.synchronize``. Default precision is plain float32;
``--bf16`` (autocast), ``--channels-last`` and ``--compile`` (``torch.compile``) enable the fast
path used by ``vtn train`` on CUDA (``fast: true``).

``--fast`` (VTN cascades only) times inference through :func:`vtn.perf.fast_model` (bfloat16
weights, ``channels_last_3d``, sub-pixel transposed convolutions, float32 flow arithmetic; with
``--compile`` also ``torch.compile(freezing=True)``) and the training step under bf16 autocast +
``channels_last_3d`` (as ``vtn train`` with ``fast: true``). With ``--compile`` the first call of
each phase is timed separately (``*_first_call_s``: compilation included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

__all__ = ["run_bench", "cli"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_reset(dev):
    if dev.type == "cuda":
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mib(dev):
    if dev.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(dev) / 2**20


def _voxelmorph_package_peer(device: str):
    """The voxelmorph package's own dense model (its defaults) and an MSE + 0.01 * L2-gradient
    loss on its ``(displacement, warped moving)`` output."""
    try:
        import voxelmorph as vxm
    except ImportError as exc:
        raise ValueError("--type voxelmorph-package needs the voxelmorph package (>= 0.3): "
                         "pip install --no-deps voxelmorph neurite pystrum") from exc

    class Peer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = vxm.nn.models.VxmPairwise(ndim=3, source_channels=1, target_channels=1,
                                                 device=str(device))

        def forward(self, fixed, moving):  # vtn's argument order; vxm's is (source, target)
            return self.net(moving, fixed, return_warped_source=True)

    def loss_fn(out, fixed):
        disp, warped = out
        grad = sum((disp.diff(dim=d) ** 2).mean() for d in (2, 3, 4))
        return ((warped - fixed) ** 2).mean() + 0.01 * grad

    return Peer(), loss_fn


def run_bench(cascade: str = "ADDD", size: int = 128, batch: int = 8, device: str = "cpu",
              repeats: int = 5, warmup: int = 1, inv: bool = False, model_type: str = "vtn",
              bf16: bool = False, channels_last: bool = False, compile: bool = False,
              seed: int = 0, fast: bool = False, threads: int | None = None,
              skip_train: bool = False) -> dict:
    """Run the benchmark and return its results as a dict (see module docstring for keys).

    ``fast`` implies ``bf16`` and ``channels_last`` for the training step and uses
    :func:`vtn.perf.fast_model` for inference; ``threads`` sets ``torch.set_num_threads``;
    ``skip_train`` leaves out the training step (``train_ms_per_step`` is then ``None``).
    """
    from vtn import losses, networks, perf

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ValueError("need repeats >= 1, warmup >= 0, batch >= 1")
    if threads is not None:
        torch.set_num_threads(int(threads))
    if fast:
        if model_type != "vtn":
            raise ValueError("--fast is only defined for VTN cascades")
        bf16 = channels_last = True
    torch.manual_seed(seed)
    if model_type == "vtn":
        model = networks.build_cascade(cascade, size)
        loss_fn = losses.VTNLoss(cascade, inv_weight=1e-3 if inv else 0.0)
    elif model_type == "voxelmorph2":
        if inv:
            raise ValueError("--inv is only defined for VTN cascades")
        model = networks.build_model({"type": "voxelmorph2", "image_size": size})
        loss_fn = losses.VoxelMorphLoss()
    elif model_type == "voxelmorph-package":
        if inv:
            raise ValueError("--inv is only defined for VTN cascades")
        model, loss_fn = _voxelmorph_package_peer(device)
    else:
        raise ValueError(f"unknown model type {model_type!r}")
    n_params = sum(p.numel() for p in model.parameters())
    model.to(dev)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=fmt)
    fwd = torch.compile(model) if compile else model
    infer_model = fwd
    if fast:
        model.eval()
        infer_model = perf.fast_model(model, dtype=torch.bfloat16, channels_last=True,
                                      compile=compile)
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())

    def images(b):
        g = torch.Generator().manual_seed(seed + b)
        f = torch.rand(b, 1, size, size, size, generator=g)
        m = torch.rand(b, 1, size, size, size, generator=g)
        return (f.to(dev).contiguous(memory_format=fmt), m.to(dev).contiguous(memory_format=fmt))

    def timed(fn, n_warm):
        for _ in range(n_warm):
            fn()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(dev)
        return (time.perf_counter() - t0) / repeats

    result = {
        "model_type": model_type, "cascade": cascade if model_type == "vtn" else "D",
        "size": size, "batch": batch, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup, "inv": inv,
        "bf16": bf16, "channels_last": channels_last, "compile": compile,
        "params": n_params, "torch": str(torch.__version__), "fast": fast,
    }

    # inference
    model.eval()
    infer_ctx = contextlib.nullcontext() if fast else autocast
    for b, key in ((1, "infer_ms_per_pair_b1"), (batch, "infer_ms_per_pair")):
        if fast:  # the fast model takes plain float32 NCDHW inputs and converts them itself
            g = torch.Generator().manual_seed(seed + b)
            f = torch.rand(b, 1, size, size, size, generator=g).to(dev)
            m = torch.rand(b, 1, size, size, size, generator=g).to(dev)
        else:
            f, m = images(b)

        def infer():
            with torch.inference_mode(), infer_ctx:
                infer_model(f, m)

        _peak_reset(dev)
        if compile:
            _sync(dev)
            t0 = time.perf_counter()
            infer()
            _sync(dev)
            result[key.replace("ms_per_pair", "first_call_s")] = time.perf_counter() - t0
        sec = timed(infer, warmup)
        result[key] = sec * 1000.0 / b
        result[key.replace("infer_ms_per_pair", "infer_peak_mib")] = _peak_mib(dev)
        del f, m

    if skip_train:
        result["train_ms_per_step"] = None
        result["train_peak_mib"] = None
        return result

    # training step
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    f, m = images(batch)

    def step():
        with autocast:
            out = fwd(f, m)
            out_rev = fwd(m, f) if inv else None
            if model_type == "vtn":
                loss, _ = loss_fn(out, f, out_reverse=out_rev)
            elif model_type == "voxelmorph-package":
                loss = loss_fn(out, f)
            else:
                loss, _ = loss_fn(out, f)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    _peak_reset(dev)
    if compile:
        _sync(dev)
        t0 = time.perf_counter()
        step()
        _sync(dev)
        result["train_first_call_s"] = time.perf_counter() - t0
    sec = timed(step, warmup)
    result["train_ms_per_step"] = sec * 1000.0
    result["train_peak_mib"] = _peak_mib(dev)
    return result


def cli(argv=None) -> int:
    """``vtn bench --cascade ADDD --size 128 --batch 8 --device cpu|cuda [--json]``."""
    ap = argparse.ArgumentParser(prog="vtn bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cascade", default="ADDD", help="VTN cascade spec (A?D+)")
    ap.add_argument("--type", default="vtn", choices=["vtn", "voxelmorph2", "voxelmorph-package"],
                    dest="model_type", help="voxelmorph-package: the peer (see above)")
    ap.add_argument("--size", type=int, default=128, help="image size S (S^3 volumes)")
    ap.add_argument("--batch", type=int, default=8, help="pairs per batch")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--repeats", type=int, default=5, help="timed iterations per measurement")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed warm-up iterations (default 1, 3 with --compile)")
    ap.add_argument("--inv", action="store_true", help="training step of the '+inv' variant")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    ap.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--fast", action="store_true",
                    help="vtn.perf fast inference path (bf16 + channels_last + sub-pixel deconv); "
                         "training step under bf16 autocast + channels_last")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--no-train", action="store_true", help="skip the training step")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    try:
        res = run_bench(args.cascade, args.size, args.batch, args.device, args.repeats, warmup,
                        args.inv, args.model_type, args.bf16, args.channels_last, args.compile,
                        fast=args.fast, threads=args.threads, skip_train=args.no_train)
    except ValueError as exc:
        print(f"vtn bench: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res))
    else:
        name = {"vtn": res["cascade"], "voxelmorph2": "VoxelMorph-2"}.get(
            args.model_type, "voxelmorph package (VxmPairwise)")
        print(f"{name}{' +inv' if args.inv else ''} at {args.size}^3 on {res['device_name']} "
              f"({res['threads']} threads, {res['params'] / 1e6:.2f} M parameters)")
        rows = [("inference, batch 1", res["infer_ms_per_pair_b1"], "ms/pair"),
                (f"inference, batch {args.batch}", res["infer_ms_per_pair"], "ms/pair"),
                (f"training step, batch {args.batch}", res["train_ms_per_step"], "ms/step")]
        for label, value, unit in rows:
            if value is None:
                continue
            print(f"  {(label + ':').ljust(28)}{value:10.1f} {unit}")
        if res["infer_peak_mib"] is not None:
            print(f"  peak memory: inference b1 {res['infer_peak_mib_b1']:.0f} MiB, "
                  f"b{args.batch} {res['infer_peak_mib']:.0f} MiB"
                  + (f", training {res['train_peak_mib']:.0f} MiB"
                     if res["train_peak_mib"] is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
