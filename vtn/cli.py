"""The ``vtn`` command line: ``vtn <command> [options]``.

Each command lives in the module that implements it and exposes ``cli(argv) -> int``; this file
only dispatches, so importing it stays cheap (no torch/ITK import before a command is chosen).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "fetch": ("vtn.data.resources", "download and verify the pinned registry packages"),
    "make-embedded": ("vtn.data.synth.generator", "generate an embedded (real-anatomy) dataset"),
    "ground-truth": ("vtn.data.synth.ground_truth", "ground-truth displacements of embedded test pairs"),
    "import": ("vtn.data.adapters", "list a user dataset (LiTS, SLIVER07, LPBA40, ...) as a table"),
    "preprocess": ("vtn.data.preprocess", "crop, resample, normalise, histogram-match"),
    "prealign": ("vtn.data.prealign", "ANTs affine pre-alignment to the atlas (brain star variants)"),
    "train": ("vtn.train.loop", "train a VTN cascade or VoxelMorph-2"),
    "register": ("vtn.register", "register pairs with a trained checkpoint"),
    "package-model": ("vtn.recipe", "a trained model + its preprocessing recipe + model card"),
    "register-images": ("vtn.register_images", "register two scans of your own, warp in their space"),
    "native-space": ("vtn.native", "a method's registrations in the original image space"),
    "baseline": ("vtn.baselines.run", "register pairs with ANTs or Elastix"),
    "gather": ("vtn.gather", "put a method's (or a pre-alignment's) chunks into one folder"),
    "evaluate": ("vtn.evaluate", "per-pair metrics of one method"),
    "tables": ("vtn.report.tables", "the paper's tables from per-pair metrics"),
    "figures": ("vtn.report.figures", "the paper's figures"),
    "claims": ("vtn.report.claims", "the claims table"),
    "convergence": ("vtn.report.convergence", "are the training curves at their plateau?"),
    "bench": ("vtn.bench", "inference / training-step benchmark"),
    "runtime": ("vtn.report.runtime", "summarise Snakemake benchmark files"),
}


def _usage() -> str:
    lines = ["usage: vtn <command> [options]", "", "commands:"]
    width = max(len(c) for c in COMMANDS)
    for name, (_, desc) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {desc}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vtn: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    func = getattr(module, "cli_" + name.replace("-", "_"), None) or module.cli
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
