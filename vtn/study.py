"""The study design, decided here once: from the validated study config (a dict, as Snakemake
holds it after ``workflow/schemas/config.schema.yaml``) to

* the models each study trains (:func:`models`: name -> description, in table order), the
  baselines (:func:`baselines`) and all methods (:func:`methods`);
* each model's training config (:func:`model_config`, the ``model.yaml`` of ``vtn train``);
* the report's design (:func:`spec`, the ``results/specs/<study>.json`` read by ``vtn tables``,
  ``vtn figures`` and ``vtn claims``);
* the facts of datasets the rules need (:func:`test_pairs`, :func:`liver_label`,
  :func:`data_source`, the Learn2Reg ones :func:`learn2reg_subset`, :func:`task_pairs`) and the
  cross-key checks the schema cannot express (:func:`check`);
* the optional outputs: each model's package card (:func:`package_card`), the native-space
  outputs (:func:`native_space`).

Pure functions of the config, no torch and no Snakemake: ``workflow/rules/common.smk`` imports
this module and keeps only paths and rule inputs. A new kind of model is one more ``add(...)`` in
:func:`models` (and, where the report shows it apart, a line in :func:`spec`).
"""

from __future__ import annotations

import re
from pathlib import Path

from vtn.modelspec import VOXELMORPH2_DEC_NF, VOXELMORPH2_ENC_NF
from vtn.train.config import TrainConfig, resolve_augment

__all__ = ["STAR", "BASELINE_TOOLS", "PAPER_RECIPE", "SUPERVISED_SCHEDULE", "ConfigError", "check",
           "models", "baselines", "methods", "model_config", "recipe_departures", "data_source",
           "spec", "test_pairs", "liver_label", "has_star", "supervised_dataset",
           "learn2reg_subset", "task_pairs", "package_card", "native_space"]

STAR = "\u2605"  # the paper's mark of ANTs-pre-aligned methods
BASELINE_TOOLS = {"ants": "ANTs", "elastix": "Elastix"}  # tool -> display name


class ConfigError(ValueError):
    """A study config the schema accepts but the study cannot use (names the key)."""


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()


def _model_names(s: dict) -> list:
    """The names :func:`models` gives the cascades of study ``s`` (for the data-amount check)."""
    return [s["main"]] + list(s.get("cascades") or []) + [f"{c}-star"
                                                         for c in s.get("star_cascades") or []]


def check(config: dict) -> None:
    """Cross-key checks the JSON schema cannot express; raises :class:`ConfigError` naming the
    key (``studies.<study>.<key>`` or ``datasets.<name>.<key>``)."""
    datasets, studies = config["datasets"], config["studies"]
    for study, s in studies.items():
        for key in ["test"] + [f"train[{i}]" for i in range(len(s["train"]))]:
            name = s["test"] if key == "test" else s["train"][int(key[6:-1])]
            if name not in datasets:
                raise ConfigError(f"studies.{study}.{key}: unknown dataset {name!r}")
            if datasets[name]["organ"] != s["organ"]:
                raise ConfigError(
                    f"studies.{study}.{key}: dataset {name!r} is {datasets[name]['organ']}, "
                    f"the study is {s['organ']}"
                )
        for label, sets in (s.get("data_amount") or {}).items():
            for name in sets:
                if name not in datasets:
                    raise ConfigError(f"studies.{study}.data_amount.{label}: unknown dataset "
                                      f"{name!r}")
        base = s.get("data_amount_model", s["main"])
        if s.get("data_amount") and base not in _model_names(s):
            raise ConfigError(f"studies.{study}.data_amount_model: {base!r} is not a model of "
                              "the study")
        needs_atlas = s.get("star_cascades") or (s.get("voxelmorph") and s["organ"] == "brain")
        if needs_atlas and "atlas" not in s:
            raise ConfigError(f"studies.{study}.atlas: required for the star (ANTs pre-aligned) "
                              "variants")
        if "atlas" in s and s["atlas"]["dataset"] not in datasets:
            raise ConfigError(f"studies.{study}.atlas.dataset: unknown dataset "
                              f"{s['atlas']['dataset']!r}")
    for name, d in datasets.items():
        if d["source"] == "embedded":
            for key in ("n", "seed"):
                if key not in d:
                    raise ConfigError(f"datasets.{name}.{key}: required for embedded datasets")
        elif "path" not in d:
            raise ConfigError(f"datasets.{name}.path: required for source {d['source']!r}")
        else:
            for key in ("path", "landmarks"):
                if key in d and not Path(d[key]).exists():
                    raise ConfigError(
                        f"datasets.{name}.{key}: {d[key]} does not exist "
                        f"(dataset {name!r}, source {d['source']!r})"
                    )
    _check_learn2reg(datasets)


# ---------------------------------------------------------------------------------------------
# models and methods
# ---------------------------------------------------------------------------------------------


def models(config: dict, study: str) -> dict:
    """The models a study trains: name -> description, in table order.

    A description has ``type`` (``"vtn"`` | ``"voxelmorph2"``), ``cascade``, ``inv``,
    ``supervised``, ``star`` (trained and tested on ANTs-pre-aligned images), ``train`` (the
    training datasets), ``display``, ``ablation`` (a variant reported in the notes only, not in
    the claims) and, for the data-amount variants, ``data_label``; the "+ inv" ablation also
    ``inv_reverse_terms``.
    """
    s = config["studies"][study]
    main = s["main"]
    out = {}

    def add(name, **kw):
        d = dict(type="vtn", cascade=main, inv=False, supervised=False, star=False,
                 ablation=False, train=list(s["train"]), display=f"VTN {name}")
        d.update(kw)
        out[name] = d

    for spec_ in list(s.get("cascades") or []) + [main]:
        add(spec_, cascade=spec_, display=f"VTN {spec_}")
    if s.get("inv"):
        add(f"{main}-inv", inv=True, display=f"VTN {main} + inv")
    if s.get("inv_ablation"):
        # the reverse run also trains on its own terms (not eq. 12 alone): Table II's notes
        add(f"{main}-inv-all", inv=True, inv_reverse_terms="all", ablation=True,
            display=f"VTN {main} + inv (reverse run with all terms)")
    if s.get("supervised"):
        add("supervised", supervised=True, display="supervised")
    for spec_ in s.get("star_cascades") or []:
        add(f"{spec_}-star", cascade=spec_, star=True, display=f"VTN {spec_}{STAR}")
    if s.get("voxelmorph"):
        star = s["organ"] == "brain"  # the paper ran VoxelMorph on pre-aligned brains
        add("voxelmorph-star" if star else "voxelmorph", type="voxelmorph2", cascade="D",
            star=star, display="VoxelMorph-2" + (STAR if star else ""))
    base = s.get("data_amount_model", main)
    spec_, star = base.replace("-star", ""), base.endswith("-star")
    for label, sets in (s.get("data_amount") or {}).items():
        add(f"{base}-data-{_slug(label)}", cascade=spec_, star=star, train=list(sets),
            data_label=label, display=f"VTN {spec_}{STAR if star else ''} ({label})")
    return out


def baselines(config: dict, study: str) -> dict:
    """Baseline tool -> preset (``"paper"`` | ``"fast"``) of a study."""
    return dict(config["studies"][study].get("baselines") or {})


def methods(config: dict, study: str) -> list:
    """Every method a study evaluates: its models, then its baselines."""
    return list(models(config, study)) + list(baselines(config, study))


def has_star(config: dict, study: str) -> bool:
    """Whether a study has models on ANTs-pre-aligned images (its test set is pre-aligned)."""
    return any(m["star"] for m in models(config, study).values())


def model_config(config: dict, study: str, model: str) -> dict:
    """The training config (``model.yaml``, keys of :class:`vtn.train.config.TrainConfig`) of a
    model of a study: the study's ``training`` section (``voxelmorph`` for VoxelMorph-2), the
    model's cascade and variant."""
    m = models(config, study)[model]
    train, vxm = config["training"], config["voxelmorph"]
    cfg = {
        "type": m["type"],
        "cascade": m["cascade"],
        "image_size": config["image_size"],
        "epochs": train["epochs"],
        "iterations": train["iterations"],
        "batch": train["batch"],
        "lr": train["lr"],
        "lr_schedule": train["lr_schedule"],
        "seed": train["seed"],
        "augment": resolve_augment(train["augment"], m["supervised"]),
        "checkpoint_every": train["checkpoint_every"],
        "inv_weight": train["inv_weight"] if m["inv"] else 0.0,
        "supervised": m["supervised"],
        "fast": train["fast"],
    }
    if m.get("inv_reverse_terms"):
        cfg["inv_reverse_terms"] = m["inv_reverse_terms"]
    weights = (train.get("loss_weights") or {}).get(m["cascade"])
    if weights and m["type"] == "vtn":
        cfg["loss_weights"] = weights
    if train["compile"]:
        cfg["compile"] = True
    for key in ("divergence_factor", "probe_pairs"):  # in model.yaml only when not the default
        if train[key] != getattr(TrainConfig, key):
            cfg[key] = train[key]
    if m["type"] == "vtn" and train["flow_init_scale"] != 1.0:
        cfg["flow_init_scale"] = train["flow_init_scale"]
    if m["type"] == "voxelmorph2":
        cfg.update(batch=vxm["batch"], iterations=vxm["iterations"], epochs=vxm["epochs"],
                   reg_weight=vxm["reg_weight"], lr=vxm["lr"])
    per_cascade = (config.get("cascade_iterations") or {}).get(m["cascade"])
    if per_cascade and m["type"] == "vtn" and not m["supervised"]:
        cfg["iterations"] = per_cascade
    if m["supervised"]:
        cfg.update({k: v for k, v in config["studies"][study]["supervised"].items()
                    if k in SUPERVISED_SCHEDULE})
    return cfg


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------


def supervised_dataset(config: dict, study: str) -> str:
    """The dataset whose pairs get ANTs target flows for the supervised model: the first
    training dataset of the study."""
    return config["studies"][study]["train"][0]


def test_pairs(config: dict, dataset: str) -> int:
    """Pairs written for a dataset: the test pairs of a study (``max_pairs``), or the
    supervised training pairs; 0 (no pairs file needed)."""
    studies = config["studies"]
    for s in studies.values():
        if s["test"] == dataset and s.get("max_pairs"):
            return s["max_pairs"]
    for st, s in studies.items():
        if s.get("supervised") and supervised_dataset(config, st) == dataset:
            return s["supervised"]["pairs"]
    return 0


def liver_label(config: dict, dataset: str) -> str:
    """Liver label of a dataset (:mod:`vtn.labels` vocabulary): the config's ``label``, 5 in
    the TotalSegmentator maps of the embedded data, ``"any"`` label >= 1 otherwise."""
    d = config["datasets"][dataset]
    if "label" in d:
        return str(d["label"])
    return "5" if d["source"] == "embedded" else "any"


def data_source(config: dict, study: str) -> str:
    """What data a study ran on, as every table and figure states it."""
    s = config["studies"][study]
    datasets = config["datasets"]
    names = [s["test"]] + list(s["train"])
    if all(datasets[n]["source"] == "embedded" for n in names):
        return config["data_note"]
    return "user datasets: " + ", ".join(f"{n} ({datasets[n]['source']})" for n in names)


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


#: the paper's recipe (Sec. V-A; VoxelMorph-2: batch 4, 5,000 iterations, the CVPR 2018 loss),
#: as (config section, key) -> value; the study config's departures from it are named in every
#: table's notes (:func:`recipe_departures`)
PAPER_RECIPE = {
    (None, "image_size"): 128,
    ("training", "epochs"): 5, ("training", "iterations"): 20000, ("training", "batch"): 8,
    ("training", "lr"): 1e-4, ("training", "lr_schedule"): "reference",
    ("training", "augment"): True, ("training", "flow_init_scale"): 1.0,
    ("training", "inv_weight"): 1e-3,
    ("voxelmorph", "batch"): 4, ("voxelmorph", "epochs"): 1, ("voxelmorph", "iterations"): 5000,
    ("voxelmorph", "lr"): 1e-4, ("voxelmorph", "reg_weight"): 1.0,
}


#: keys of a study's ``supervised`` section that override ``training`` for the supervised model
SUPERVISED_SCHEDULE = ("epochs", "iterations")


def recipe_departures(config: dict, study: str | None = None) -> list:
    """Every key of the study config that departs from the paper's recipe (:data:`PAPER_RECIPE`),
    as ``"training.lr = 0.001 (paper: 0.0001)"``; with ``study``, also the supervised model's
    own schedule (``studies.<study>.supervised.epochs``/``iterations``; the paper trains it like
    every VTN)."""
    out = []
    for (section, key), paper in PAPER_RECIPE.items():
        value = config[key] if section is None else config[section][key]
        if value != paper:
            name = key if section is None else f"{section}.{key}"
            out.append(f"{name} = {value:g} (paper: {paper:g})"
                       if isinstance(value, (int, float)) and not isinstance(value, bool)
                       else f"{name} = {value} (paper: {paper})")
    for spec_, n in sorted((config.get("cascade_iterations") or {}).items()):
        out.append(f"cascade_iterations.{spec_} = {n} (paper: "
                   f"{PAPER_RECIPE[('training', 'iterations')]}, as every cascade)")
    sup = (config["studies"][study].get("supervised") or {}) if study else {}
    for key in SUPERVISED_SCHEDULE:
        paper = PAPER_RECIPE[("training", key)]
        if key in sup and sup[key] != paper:
            out.append(f"studies.{study}.supervised.{key} = {sup[key]} (paper: {paper})")
    return out


def _voxelmorph_note(m: dict, vxm: dict) -> str:
    return (f"{m['display']}: our PyTorch re-implementation of the CVPR 2018 recipe "
            f"(VoxelMorph-2 U-Net, encoder {'-'.join(map(str, VOXELMORPH2_ENC_NF))}, decoder "
            f"{'-'.join(map(str, VOXELMORPH2_DEC_NF))}, "
            f"local NCC 9^3 + {vxm['reg_weight']} x gradient-L2 loss, Adam lr {vxm['lr']}, "
            f"batch {vxm['batch']}, {vxm['epochs']} x {vxm['iterations']} iterations)"
            + (", on ANTs-pre-aligned images" if m["star"] else "") + ".")


def spec(config: dict, study: str, prealign_subjects: str | None = None) -> dict:
    """The JSON description of a study read by ``vtn tables``, ``vtn figures`` and
    ``vtn claims``: methods and their display names, the tables' rows, the Wilcoxon
    comparisons, method notes.

    Args:
        prealign_subjects: path of the pre-aligned test subjects (studies with star models).
    """
    s = config["studies"][study]
    ms = models(config, study)
    bl = baselines(config, study)
    main = s["main"]
    methods_ = {}
    for name, m in ms.items():
        methods_[name] = {k: m[k] for k in ("display", "cascade", "inv", "star", "train", "type",
                                            "ablation")}
        methods_[name]["kind"] = "vtn" if m["type"] == "vtn" else "voxelmorph"
    for tool, preset in bl.items():
        methods_[tool] = {"display": BASELINE_TOOLS[tool], "kind": "baseline", "preset": preset}
    vxm = [n for n, m in ms.items() if m["type"] == "voxelmorph2"]
    stars = [n for n, m in ms.items()
             if m["star"] and m["type"] == "vtn" and "data_label" not in m]
    plain = [n for n, m in ms.items()
             if m["type"] == "vtn" and not (m["inv"] or m["supervised"] or m["star"]
                                            or "data_label" in m)]
    inv = [n for n, m in ms.items() if m["inv"] and not m["ablation"]]
    ablation = [n for n, m in ms.items() if m["ablation"]]
    sup = [n for n, m in ms.items() if m["supervised"]]
    cascades = stars + [n for n in plain if n in (s.get("cascades") or []) or n == main]
    data_amount = [{"label": m["data_label"], "method": n} for n, m in ms.items()
                   if "data_label" in m]
    if data_amount:
        data_amount.append({"label": " + ".join(s["train"]),
                            "method": s.get("data_amount_model", main)})
    comparisons = []
    for b in bl:
        for a in [main] + inv:
            comparisons.append({"a": a, "b": b, "metrics": ["iou", "lm_dist_vox"]})
    for a in inv:
        comparisons.append({"a": a, "b": main, "metrics": ["iou", "lm_dist_vox", "folding_pct"]})
    for a in vxm:
        comparisons.append({"a": main, "b": a, "metrics": ["iou", "lm_dist_vox"]})
    for a in stars:
        if a.replace("-star", "") != main:
            comparisons.append({"a": main, "b": a, "metrics": ["lm_dist_vox", "iou"]})
    train = config["training"]
    weights = (train.get("loss_weights") or {}).get(main)
    notes = [_voxelmorph_note(ms[n], config["voxelmorph"]) for n in vxm]
    for tool, preset in bl.items():
        if preset != "paper":
            notes.append(f"{BASELINE_TOOLS[tool]}: preset '{preset}' (not the paper's command; "
                         "see docs/reproduction.md).")
    departures = recipe_departures(config, study)
    if departures:
        notes.append("Departures from the paper's training recipe (config keys, "
                     "config/README.md): " + "; ".join(departures) + ".")
    return {
        "study": study,
        "organ": s["organ"],
        "data_source": data_source(config, study),
        "findings": s.get("findings", ""),
        "image_size": config["image_size"],
        "training": {"epochs": train["epochs"], "iterations": train["iterations"],
                     "batch": train["batch"]},
        "main": main,
        "methods": methods_,
        "loss_weights": {main: weights} if weights else {main: None},
        "tables": {
            "methods": list(bl) + vxm + stars + [main] + inv + sup,
            "smoothness": list(bl) + [main] + inv,
            "data_amount": data_amount,
            "cascades": cascades,
            "ablation": [{"method": n, "versus": inv[0] if inv else main} for n in ablation],
        },
        "comparisons": comparisons,
        "method_notes": notes,
        "prealign_subjects": prealign_subjects,
    }


# ---------------------------------------------------------------------------------------------
# Learn2Reg datasets, model packages, native-space outputs
# ---------------------------------------------------------------------------------------------


def learn2reg_subset(config: dict, dataset: str) -> str:
    """The images of a ``source: learn2reg`` dataset (:data:`vtn.data.learn2reg.SUBSETS`):
    its ``subset`` key, default ``all``."""
    return str(config["datasets"][dataset].get("subset", "all"))


def task_pairs(config: dict, dataset: str) -> bool:
    """Whether a dataset's pairs are the ones its source lists rather than random ordered pairs:
    Learn2Reg ``val`` / ``test`` subsets take the task's ``registration_val`` /
    ``registration_test`` pairs (the challenge's evaluation pairs); ``train`` / ``all`` and
    every other source get ordered pairs (``vtn.data.preprocess.make_pairs``)."""
    d = config["datasets"][dataset]
    return d["source"] == "learn2reg" and learn2reg_subset(config, dataset) in ("val", "test")


def _check_learn2reg(datasets: dict) -> None:
    for name, d in datasets.items():
        if "subset" in d and d["source"] != "learn2reg":
            raise ConfigError(f"datasets.{name}.subset: only for source learn2reg (dataset "
                              f"{name!r} is {d['source']!r})")
        if d["source"] != "learn2reg" or d["organ"] != "liver" or "label" in d:
            continue
        from vtn.data.learn2reg import task_liver_label
        from vtn.io import InputError

        try:
            found = task_liver_label(d["path"])
        except InputError as exc:
            raise ConfigError(f"datasets.{name}.path: {exc}") from None
        hint = (f"the task's JSON names the liver {found}: set label: {found}" if found
                else "the task's JSON names no liver label")
        raise ConfigError(f"datasets.{name}.label: required for a learn2reg liver dataset "
                          f"({hint})")


def package_card(config: dict, study: str, model: str) -> dict:
    """Name and training-data text of a model's package card (``vtn package-model --name
    --source``): ``<study>/<model>`` and the model's training datasets with their sources."""
    m = models(config, study)[model]
    datasets = config["datasets"]
    names = [f"{n} ({datasets[n]['source']}" + (f", {learn2reg_subset(config, n)} subset"
                                                 if datasets[n]["source"] == "learn2reg" else "")
             + ")" for n in m["train"]]
    source = "training datasets " + ", ".join(names)
    if all(datasets[n]["source"] == "embedded" for n in m["train"]):
        source += f"; {config['data_note']}"
    if m["star"]:
        source += "; pre-aligned to the atlas " + config["studies"][study]["atlas"]["subject"]
    return {"name": f"{study}/{model}: {m['display']}", "source": source}


def native_space(config: dict) -> bool:
    """Whether the workflow writes every method's test registrations in the original image
    space (``outputs: native_space``)."""
    return bool((config.get("outputs") or {}).get("native_space", False))
