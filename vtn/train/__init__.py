"""Training of VTN cascades and VoxelMorph-2 (``vtn train``).

* :mod:`vtn.train.config` -- :class:`TrainConfig`, the keys, defaults and checks of a model's
  training config (no torch: the workflow imports it);
* :mod:`vtn.train.data` -- training images, supervised targets, the pair schedule;
* :mod:`vtn.train.probe` -- the fixed probe pairs whose loss the plateau check compares;
* :mod:`vtn.train.checkpoint` -- checkpoint format, save / load / resume helpers;
* :mod:`vtn.train.loop` -- :func:`train` and the command line.

The names below are imported from those modules on first use, so that ``import vtn.train.config``
stays free of torch.
"""

from __future__ import annotations

import importlib

_HOME = {
    "TrainConfig": "config", "load_config": "config", "resolve_augment": "config",
    "CHECKPOINT_FORMAT": "checkpoint", "CHECKPOINT_KEYS": "checkpoint",
    "OPTIONAL_KEYS": "checkpoint",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "PairSchedule": "data",
    "NonFiniteLossError": "loop", "LossExplodedError": "loop", "TrainingDiverged": "loop",
    "TrainingInterrupted": "loop", "EXIT_INTERRUPTED": "loop",
    "build_from_config": "loop",
    "train": "loop", "cli": "loop",
}

__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"vtn.train.{_HOME[name]}"), name)
    raise AttributeError(f"module 'vtn.train' has no attribute {name!r}")
