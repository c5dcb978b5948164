"""The training config of one model (``model.yaml``): :class:`TrainConfig` is the one source of
its keys, defaults, types and checks; the ``training`` section of the study config
(``workflow/schemas/config.schema.yaml``) is generated from it (:func:`study_schema`, checked by
``tests/test_study.py``). No torch here: the workflow imports this module.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from vtn.io import InputError

__all__ = ["TrainConfig", "load_config", "resolve_augment", "study_schema", "VTN_NET_KEYS",
           "VOXELMORPH_NET_KEYS", "RESUME_FREE"]

#: network options of each model type (passed to the network builder when not None)
VTN_NET_KEYS = ("flow_multiplier", "affine_final_size", "tf_same_padding", "channels",
                "affine_compose", "flow_init_scale")
VOXELMORPH_NET_KEYS = ("tf_same_padding", "enc_nf", "dec_nf")
#: keys that may change between a checkpoint and the resumed run
RESUME_FREE = frozenset({"name", "epochs", "checkpoint_every", "keep_checkpoints", "log_every",
                         "sync_every", "progress_every", "fast", "compile", "divergence_factor",
                         "probe_pairs"})


def _key(default, types, help, minimum=None, exclusive_minimum=None, study=None, choices=None):
    """A config key: ``types`` accepted (an int is stored as a float where float is accepted and
    str is not), bounds, allowed values (``choices``), help text; ``study``: how the key appears
    in the study config's ``training`` section (a dict of schema overrides, e.g. another
    default), or None."""
    return field(default=default, metadata={
        "types": types, "help": help, "minimum": minimum,
        "exclusive_minimum": exclusive_minimum, "study": study, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Training config of one model; ``None``: decided at run time / the network's default."""

    name: str = _key("", (str,), "free text, for the logs")
    type: str = _key("vtn", (str,), "'vtn' | 'voxelmorph2'")
    cascade: str = _key("ADDD", (str,), "cascade spec A?D+ (vtn only)")
    image_size: int = _key(128, (int,), "edge of the cubic images", minimum=1)
    epochs: int = _key(5, (int,), "passes of `iterations` steps", minimum=1, study={})
    iterations: int = _key(20000, (int,), "optimisation steps per epoch", minimum=1, study={})
    batch: int = _key(8, (int,), "image pairs per step", minimum=1, study={})
    lr: float = _key(1e-4, (float, int), "Adam learning rate", exclusive_minimum=0, study={})
    lr_schedule: str = _key("reference", (str,), "reading of 'halves every epoch after the "
                            "4th' (vtn.schedule): 'reference' (the authors' code: halved from "
                            "epoch index 3 on) or 'paper_text' (from epoch index 4 on)",
                            choices=("reference", "paper_text"),
                            study={"description": True})
    lr_halve_after: int | None = _key(None, (int,), "override of the schedule's first halved "
                                      "epoch index (None: the schedule's)", minimum=0)
    seed: int = _key(0, (int,), "seed of every random choice", study={})
    augment: bool = _key(True, (bool,), "random B-spline augmentation of the moving image "
                         "(never with supervised: true)", study={})
    inv_weight: float = _key(0.0, (float, int), "weight of the invertibility loss (0: none)",
                             minimum=0, study={
                                 "default": 1.0e-3, "description": "weight of the invertibility "
                                 "loss of the '+ inv' variants (the other models train with 0)"})
    inv_reverse_terms: str = _key("inv_only", (str,), "what the reverse run of '+ inv' adds: "
                                  "'inv_only' (only the invertibility term, eq. 12) or 'all' "
                                  "(also its own similarity/TV/det/ortho terms)",
                                  choices=("inv_only", "all"))
    loss_weights: list | None = _key(None, (list,), "per-subnet dicts (vtn.losses."
                                     "default_weights format)", study={"schema": {
                                         "description": "per-cascade override of Table I, e.g. "
                                         "ADDD: [{sim: 1, det: 0.1, ortho: 0.1}, {sim: 0, tv: 1}, "
                                         "...]",
                                         "type": "object",
                                         "additionalProperties": {"type": "array", "items": {
                                             "type": "object", "additionalProperties": False,
                                             "properties": {k: {"type": "number", "minimum": 0}
                                                            for k in ("sim", "tv", "det",
                                                                      "ortho")}}}}})
    supervised: bool = _key(False, (bool,), "endpoint-error training on --targets/"
                            "--target-pairs (implies augment: false)")
    reg_weight: float = _key(1.0, (float, int), "voxelmorph2 smoothness weight", minimum=0)
    checkpoint_every: int = _key(1000, (int,), "steps between periodic checkpoints", minimum=1,
                                 study={"default": 500})
    keep_checkpoints: int = _key(2, (int,), "periodic checkpoints kept in ckpt_dir", minimum=1)
    log_every: int = _key(1, (int,), "steps between CSV log rows", minimum=1)
    progress_every: int = _key(100, (int,), "steps between progress lines on stderr (the job "
                               "log): step, losses, steps/s, ETA, GPU memory", minimum=1,
                               study={"description": True})
    sync_every: int | None = _key(None, (int,), "steps between host reads of the loss (NaN "
                                  "check, log rows, progress lines); None: 1 on CPU, 50 on CUDA",
                                  minimum=1)
    divergence_factor: float = _key(100.0, (float, int), "stop training when the total loss "
                                    "rises above its start (mean of the first 10 steps) by more "
                                    "than this many times max(|start|, 0.01); 0: never",
                                    minimum=0, study={"description": True})
    probe_pairs: int = _key(16, (int,), "fixed training pairs (each with a fixed augmentation) "
                            "whose loss is logged at every checkpoint and at 90 % of the steps "
                            "(column 'probe'): the plateau check compares the weights, not the "
                            "batches (vtn.train.probe); 0: none", minimum=0,
                            study={"description": True})
    fast: bool | None = _key(None, (bool,), "bf16 autocast + channels_last; None: on CUDA",
                             study={"default": True})
    compile: bool = _key(False, (bool,), "torch.compile the training forward pass and loss "
                         "(inductor); meant for GPUs (no gain on the CPU)",
                         study={"description": True})
    flow_multiplier: float | str | None = _key(None, (float, int, str), "vtn: factor on the "
                                               "dense flows (or '1/n')")
    flow_init_scale: float | None = _key(None, (float, int), "factor on the initial weights of "
                                         "each dense subnet's final flow layer (1 = reference "
                                         "initialisation)", exclusive_minimum=0,
                                         study={"default": 1.0, "description": True})
    affine_final_size: int | None = _key(None, (int,), "vtn: size at which the affine encoder "
                                         "stops (4 paper, 2 reference)")
    tf_same_padding: bool | None = _key(None, (bool,), "TF-SAME padding of stride-2 convs")
    channels: int | None = _key(None, (int,), "vtn: base width")
    affine_compose: str | None = _key(None, (str,), "vtn: 'analytic' | 'warp'")
    enc_nf: list | None = _key(None, (list,), "voxelmorph2 encoder widths")
    dec_nf: list | None = _key(None, (list,), "voxelmorph2 decoder widths")

    @classmethod
    def from_dict(cls, config: dict, source: str = "config") -> "TrainConfig":
        """Validate ``config`` (unknown keys, types, bounds, keys of the other model type) and
        fill in the defaults; raises :class:`InputError` naming ``source`` and the key."""
        if not isinstance(config, dict):
            raise InputError(f"{source}: the config must be a mapping of keys to values")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise InputError(f"{source}: unknown config key(s) {unknown}; "
                             f"allowed: {sorted(fields)}")
        values = {}
        for key, val in config.items():
            if val is not None:
                values[key] = _checked(source, key, val, fields[key].metadata)
        cfg = cls(**values)
        cfg._check(source)
        if cfg.supervised and cfg.augment:
            warnings.warn(f"{source}: 'supervised: true' trains without augmentation "
                          "('augment' set to false)", stacklevel=3)
            cfg = dataclasses.replace(cfg, augment=resolve_augment(cfg.augment, cfg.supervised))
        return cfg

    def _check(self, source: str) -> None:
        if self.type not in ("vtn", "voxelmorph2"):
            raise InputError(f"{source}: key 'type' must be 'vtn' or 'voxelmorph2', "
                             f"got {self.type!r}")
        if self.type == "voxelmorph2":
            if self.inv_weight > 0:
                raise InputError(f"{source}: key 'inv_weight' is only supported for type 'vtn'")
            if self.supervised:
                raise InputError(f"{source}: key 'supervised' is only supported for type 'vtn'")
            bad = [k for k in VTN_NET_KEYS
                   if k not in VOXELMORPH_NET_KEYS and getattr(self, k) is not None]
            if bad or self.loss_weights is not None:
                raise InputError(f"{source}: key(s) {bad or ['loss_weights']} do not apply to "
                                 "type 'voxelmorph2'")
        else:
            bad = [k for k in ("enc_nf", "dec_nf") if getattr(self, k) is not None]
            if bad:
                raise InputError(f"{source}: key(s) {bad} only apply to type 'voxelmorph2'")
        if self.loss_weights is not None:
            if not all(isinstance(w, dict) for w in self.loss_weights):
                raise InputError(f"{source}: key 'loss_weights' must be a list of mappings "
                                 "(one per subnet)")
            if len(self.loss_weights) != len(self.cascade):
                raise InputError(f"{source}: key 'loss_weights' has {len(self.loss_weights)} "
                                 f"entries but cascade {self.cascade!r} has "
                                 f"{len(self.cascade)} subnets")

    def as_dict(self) -> dict:
        """Every key and its value (the ``train_config`` stored in checkpoints)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def network_options(self) -> dict:
        """The network options that are set, for the network builder of ``type``."""
        keys = VTN_NET_KEYS if self.type == "vtn" else VOXELMORPH_NET_KEYS
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iterations


def _checked(source: str, key: str, val, meta):
    """``val`` of ``key`` converted to its stored type, or an InputError."""
    ok = meta["types"]
    names = "/".join(t.__name__ for t in ok)
    if isinstance(val, str) and float in ok and str not in ok:
        try:  # PyYAML reads "1e-4" (no dot) as a string
            val = float(val)
        except ValueError:
            pass
    if isinstance(val, bool) and bool not in ok:
        raise InputError(f"{source}: key {key!r} must be {names}, got {val!r}")
    if not isinstance(val, ok):
        raise InputError(f"{source}: key {key!r} must be {names}, got {type(val).__name__} "
                         f"{val!r}")
    if float in ok and isinstance(val, int) and str not in ok:
        val = float(val)
    if meta["choices"] is not None and val not in meta["choices"]:
        raise InputError(f"{source}: key {key!r} must be one of {list(meta['choices'])}, "
                         f"got {val!r}")
    if meta["minimum"] is not None and val < meta["minimum"]:
        raise InputError(f"{source}: key {key!r} must be >= {meta['minimum']}, got {val}")
    if meta["exclusive_minimum"] is not None and val <= meta["exclusive_minimum"]:
        raise InputError(f"{source}: key {key!r} must be > {meta['exclusive_minimum']}, "
                         f"got {val}")
    return val


def resolve_augment(augment: bool, supervised: bool) -> bool:
    """Whether a model trains with augmentation: never when supervised (the target
    displacements do not follow a random deformation of the moving image)."""
    return bool(augment) and not supervised


def load_config(config, source: str = "config") -> TrainConfig:
    """:class:`TrainConfig` of a dict, or of the path of a YAML file holding one.

    Raises:
        InputError: missing file, bad YAML, unknown key, wrong type or invalid value (the
            message names the file and key).
    """
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        source = str(path)
        if not path.exists():
            raise InputError(f"{path}: config file not found")
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: invalid YAML ({exc})") from exc
    return TrainConfig.from_dict(config, source)


_JSON_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}


def study_schema() -> dict:
    """The JSON schema of the study config's ``training`` section, generated from
    :class:`TrainConfig`: the keys marked ``study``, with their types, bounds and defaults (the
    study's default where it differs, e.g. ``inv_weight`` of the ``+ inv`` variants)."""
    props = {}
    for f in dataclasses.fields(TrainConfig):
        study = f.metadata["study"]
        if study is None:
            continue
        if "schema" in study:
            props[f.name] = study["schema"]
            continue
        entry = {}
        if study.get("description"):
            entry["description"] = (f.metadata["help"] if study["description"] is True
                                    else study["description"])
        entry["type"] = _JSON_TYPE[f.metadata["types"][0]]
        if f.metadata["choices"] is not None:
            entry["enum"] = list(f.metadata["choices"])
        if f.metadata["minimum"] is not None:
            entry["minimum"] = f.metadata["minimum"]
        if f.metadata["exclusive_minimum"] is not None:
            entry["exclusiveMinimum"] = f.metadata["exclusive_minimum"]
        entry["default"] = study.get("default", f.default)
        props[f.name] = entry
    return {"type": "object", "additionalProperties": False, "default": {}, "properties": props}
