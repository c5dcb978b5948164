# Python helpers of the workflow (the only place with Python logic in the workflow).
import json
import re
from pathlib import Path

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")

DATASETS = config["datasets"]
STUDIES = config["studies"]
TRAIN = config["training"]
VXM = config["voxelmorph"]
SIZE = config["image_size"]
THREADS = config["threads"]
RES = config["resources"]
BASELINE_TOOLS = ("ants", "elastix")
USE_GPU = 0 if config["device"] == "cpu" else 1


STAR = "\u2605"  # the paper's mark of ANTs-pre-aligned methods


class ConfigError(ValueError):
    pass


def _slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()


def study_models_names(study):
    s = STUDIES[study]
    return [s["main"]] + list(s.get("cascades") or []) + [f"{c}-star" for c in s.get("star_cascades") or []]


def _check_config():
    """Cross-key checks the JSON schema cannot express; each names the offending key."""
    for study, s in STUDIES.items():
        for key in ["test"] + [f"train[{i}]" for i in range(len(s["train"]))]:
            name = s["test"] if key == "test" else s["train"][int(key[6:-1])]
            if name not in DATASETS:
                raise ConfigError(f"studies.{study}.{key}: unknown dataset {name!r}")
            if DATASETS[name]["organ"] != s["organ"]:
                raise ConfigError(
                    f"studies.{study}.{key}: dataset {name!r} is {DATASETS[name]['organ']}, "
                    f"the study is {s['organ']}"
                )
        for label, sets in (s.get("data_amount") or {}).items():
            for name in sets:
                if name not in DATASETS:
                    raise ConfigError(f"studies.{study}.data_amount.{label}: unknown dataset {name!r}")
        base = s.get("data_amount_model", s["main"])
        if s.get("data_amount") and base not in study_models_names(study):
            raise ConfigError(f"studies.{study}.data_amount_model: {base!r} is not a model of the study")
        needs_atlas = s.get("star_cascades") or (s.get("voxelmorph") and s["organ"] == "brain")
        if needs_atlas and "atlas" not in s:
            raise ConfigError(f"studies.{study}.atlas: required for the star (ANTs pre-aligned) variants")
        if "atlas" in s and s["atlas"]["dataset"] not in DATASETS:
            raise ConfigError(f"studies.{study}.atlas.dataset: unknown dataset {s['atlas']['dataset']!r}")
    for name, d in DATASETS.items():
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


_check_config()

EMBEDDED = [n for n, d in DATASETS.items() if d["source"] == "embedded"]
USER = [n for n, d in DATASETS.items() if d["source"] != "embedded"]


def _alt(names):
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!x)x"


# ---------------------------------------------------------------------------------------------
# Models and methods of each study
# ---------------------------------------------------------------------------------------------


def study_models(study):
    """name -> model description, in table order."""
    s = STUDIES[study]
    main = s["main"]
    models = {}

    def add(name, **kw):
        d = dict(type="vtn", cascade=main, inv=False, supervised=False, star=False,
                 train=list(s["train"]), display=f"VTN {name}")
        d.update(kw)
        models[name] = d

    for spec in list(s.get("cascades") or []) + [main]:
        add(spec, cascade=spec, display=f"VTN {spec}")
    if s.get("inv"):
        add(f"{main}-inv", inv=True, display=f"VTN {main} + inv")
    if s.get("supervised"):
        add("supervised", supervised=True, display="supervised")
    for spec in s.get("star_cascades") or []:
        add(f"{spec}-star", cascade=spec, star=True, display=f"VTN {spec}{STAR}")
    if s.get("voxelmorph"):
        star = s["organ"] == "brain"
        add("voxelmorph-star" if star else "voxelmorph", type="voxelmorph2", cascade="D",
            star=star, display="VoxelMorph-2" + (STAR if star else ""))
    base = s.get("data_amount_model", main)
    spec, star = base.replace("-star", ""), base.endswith("-star")
    for label, sets in (s.get("data_amount") or {}).items():
        add(f"{base}-data-{_slug(label)}", cascade=spec, star=star, train=list(sets),
            data_label=label, display=f"VTN {spec}{STAR if star else ''} ({label})")
    return models


def study_baselines(study):
    return dict(STUDIES[study].get("baselines") or {})


def study_methods(study):
    return list(study_models(study)) + list(study_baselines(study))


ALL_MODELS = sorted({m for st in STUDIES for m in study_models(st)})
ALL_METHODS = sorted({m for st in STUDIES for m in study_methods(st)})


wildcard_constraints:
    study=_alt(STUDIES),
    dataset=_alt(DATASETS),
    embedded=_alt(EMBEDDED),
    user=_alt(USER),
    model=_alt(ALL_MODELS),
    method=_alt(ALL_METHODS),
    tool=_alt(BASELINE_TOOLS),


def model_desc(wc):
    return study_models(wc.study)[wc.model]


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def raw_csv(dataset):
    return f"results/data/{dataset}/raw/subjects.csv"


def prep_csv(dataset):
    return f"results/data/{dataset}/prep/subjects.csv"


def pairs_csv(dataset):
    return f"results/data/{dataset}/pairs.csv"


def prealigned_csv(study, dataset):
    return f"results/prealign/{study}/{dataset}/subjects.csv"


def subjects_for(study, dataset, star):
    return prealigned_csv(study, dataset) if star else prep_csv(dataset)


def resource_manifest(organ):
    return f"{RES}/{organ}.done"


def organ_reference(dataset):
    """Histogram-matching reference: subject 0 of the first dataset (config order) of the organ."""
    organ = DATASETS[dataset]["organ"]
    first = next(n for n, d in DATASETS.items() if d["organ"] == organ)
    return raw_csv(first)


def max_pairs(dataset):
    """Pairs written for a dataset: the test pairs of a study, or the supervised training pairs."""
    for s in STUDIES.values():
        if s["test"] == dataset and s.get("max_pairs"):
            return s["max_pairs"]
    for s in STUDIES.values():
        if s.get("supervised") and s["train"][0] == dataset:
            return s["supervised"]["pairs"]
    return 0


def is_test_dataset(dataset):
    return any(s["test"] == dataset for s in STUDIES.values())


# ---------------------------------------------------------------------------------------------
# Inputs of rules
# ---------------------------------------------------------------------------------------------


def train_inputs(wc):
    m = model_desc(wc)
    return [subjects_for(wc.study, d, m["star"]) for d in m["train"]]


def supervised_inputs(wc):
    m = model_desc(wc)
    if not m["supervised"]:
        return {}
    first = STUDIES[wc.study]["train"][0]
    return {"targets": f"results/targets/{wc.study}/times.csv", "pairs": pairs_csv(first)}


def model_config(wc):
    """The model YAML handed to `vtn train` (stored in the checkpoint)."""
    m = model_desc(wc)
    cfg = {
        "type": m["type"],
        "cascade": m["cascade"],
        "image_size": SIZE,
        "epochs": TRAIN["epochs"],
        "iterations": TRAIN["iterations"],
        "batch": TRAIN["batch"],
        "lr": TRAIN["lr"],
        "lr_halve_after": TRAIN["lr_halve_after"],
        "seed": TRAIN["seed"],
        # targets (ANTs flows) do not follow a random deformation of the moving image
        "augment": TRAIN["augment"] and not m["supervised"],
        "checkpoint_every": TRAIN["checkpoint_every"],
        "inv_weight": TRAIN["inv_weight"] if m["inv"] else 0.0,
        "supervised": m["supervised"],
        "fast": TRAIN["fast"],
    }
    weights = (TRAIN.get("loss_weights") or {}).get(m["cascade"])
    if weights and m["type"] == "vtn":
        cfg["loss_weights"] = weights
    if TRAIN["compile"]:
        cfg["compile"] = True
    if m["type"] == "vtn" and TRAIN["flow_init_scale"] != 1.0:
        cfg["flow_init_scale"] = TRAIN["flow_init_scale"]
    if m["type"] == "voxelmorph2":
        cfg.update(batch=VXM["batch"], iterations=VXM["iterations"], epochs=1,
                   reg_weight=VXM["reg_weight"], lr=VXM["lr"])
    return cfg


def register_inputs(wc):
    m = model_desc(wc)
    test = STUDIES[wc.study]["test"]
    return {
        "ckpt": f"results/models/{wc.study}/{wc.model}/checkpoint.pt",
        "subjects": subjects_for(wc.study, test, m["star"]),
        "pairs": pairs_csv(test),
    }


def method_is_star(study, method):
    models = study_models(study)
    return method in models and models[method]["star"]


def evaluate_inputs(wc):
    test = STUDIES[wc.study]["test"]
    star = method_is_star(wc.study, wc.method)
    inputs = {
        "reg": f"results/registrations/{wc.study}/{wc.method}",
        "subjects": subjects_for(wc.study, test, star),
        "pairs": pairs_csv(test),
    }
    if DATASETS[test]["source"] == "embedded" and not star:
        inputs["gt"] = f"results/data/{test}/gt"
    if star:
        inputs["orig"] = prep_csv(test)
    return inputs


def evaluate_extra(wc):
    test = STUDIES[wc.study]["test"]
    args = []
    if "gt" in evaluate_inputs(wc):
        args.append(f"--gt results/data/{test}/gt")
    if method_is_star(wc.study, wc.method):
        args.append(f"--prealigned --orig-subjects {prep_csv(test)}")
    if DATASETS[test]["organ"] == "liver":
        args.append(f"--liver-label {liver_label(test)}")
    return " ".join(args)


def liver_label(dataset):
    """Liver label value: config `label`, 5 in TotalSegmentator maps, any non-zero label otherwise."""
    d = DATASETS[dataset]
    if "label" in d:
        return str(d["label"])
    return "5" if d["source"] == "embedded" else "any"


def star_test_subjects(study):
    """The pre-aligned test subjects of a study with star variants ([] otherwise)."""
    models = study_models(study)
    if any(m["star"] for m in models.values()):
        return [prealigned_csv(study, STUDIES[study]["test"])]
    return []


def data_source(study):
    s = STUDIES[study]
    names = [s["test"]] + list(s["train"])
    if all(DATASETS[n]["source"] == "embedded" for n in names):
        return config["data_note"]
    return "user datasets: " + ", ".join(f"{n} ({DATASETS[n]['source']})" for n in names)


def study_spec(study):
    """The JSON description of a study read by `vtn tables/figures/claims`."""
    s = STUDIES[study]
    models = study_models(study)
    main = s["main"]
    methods = {}
    for name, m in models.items():
        methods[name] = {k: m[k] for k in ("display", "cascade", "inv", "star", "train", "type")}
        methods[name]["kind"] = "vtn" if m["type"] == "vtn" else "voxelmorph"
    display = {"ants": "ANTs", "elastix": "Elastix"}
    for tool, preset in study_baselines(study).items():
        methods[tool] = {"display": display[tool], "kind": "baseline", "preset": preset}
    baselines = list(study_baselines(study))
    vxm = [n for n in models if models[n]["type"] == "voxelmorph2"]
    stars = [n for n in models if models[n]["star"] and models[n]["type"] == "vtn"]
    plain = [n for n, m in models.items()
             if m["type"] == "vtn" and not (m["inv"] or m["supervised"] or m["star"] or "data_label" in m)]
    inv = [n for n in models if models[n]["inv"]]
    sup = [n for n in models if models[n]["supervised"]]
    cascades = stars + [n for n in plain if n in (s.get("cascades") or []) or n == main]
    data_amount = [{"label": m["data_label"], "method": n} for n, m in models.items() if "data_label" in m]
    if data_amount:
        data_amount.append({"label": " + ".join(s["train"]), "method": s.get("data_amount_model", main)})
    comparisons = []
    for b in baselines:
        for a in [main] + inv:
            comparisons.append({"a": a, "b": b, "metrics": ["iou", "lm_dist_vox"]})
    for a in inv:
        comparisons.append({"a": a, "b": main, "metrics": ["iou", "lm_dist_vox", "folding_pct"]})
    for a in vxm:
        comparisons.append({"a": main, "b": a, "metrics": ["iou", "lm_dist_vox"]})
    for a in stars:
        if a.replace("-star", "") != main:
            comparisons.append({"a": main, "b": a, "metrics": ["lm_dist_vox", "iou"]})
    weights = (TRAIN.get("loss_weights") or {}).get(main)
    notes = []
    for name in vxm:
        notes.append(
            f"{models[name]['display']}: our PyTorch re-implementation of the CVPR 2018 recipe "
            "(VoxelMorph-2 U-Net, encoder 16-32-32-32, decoder 32-32-32-32-32-16-16, "
            f"local NCC 9^3 + {VXM['reg_weight']} x gradient-L2 loss, Adam lr {VXM['lr']}, "
            f"batch {VXM['batch']}, {VXM['iterations']} iterations)"
            + (", on ANTs-pre-aligned images" if models[name]["star"] else "")
            + "."
        )
    for tool, preset in study_baselines(study).items():
        if preset != "paper":
            notes.append(
                f"{display[tool]}: preset '{preset}' (fewer iterations than the paper's command)."
            )
    return {
        "study": study,
        "organ": s["organ"],
        "data_source": data_source(study),
        "image_size": SIZE,
        "training": {"epochs": TRAIN["epochs"], "iterations": TRAIN["iterations"], "batch": TRAIN["batch"]},
        "main": main,
        "methods": methods,
        "loss_weights": {main: weights} if weights else {main: None},
        "tables": {
            "methods": baselines + vxm + stars + [main] + inv + sup,
            "smoothness": baselines + [main] + inv,
            "data_amount": data_amount,
            "cascades": cascades,
        },
        "comparisons": comparisons,
        "method_notes": notes,
        "prealign_subjects": (star_test_subjects(study) or [None])[0],
    }


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def final_outputs():
    out = []
    for study in STUDIES:
        out += [f"results/metrics/{study}/{m}.csv" for m in study_methods(study)]
        out += [f"results/tables/{study}", f"results/figures/{study}"]
    for name in EMBEDDED:
        out.append(f"results/figures/data/{name}.png")
    out += ["results/claims.md", "results/runtime.md"]
    return out

