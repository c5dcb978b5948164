# Validation, paths and rule inputs. The study design (which models a study trains, their
# training configs, the report's spec) is decided in vtn/study.py; this file only asks it.
import json
import re
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir).resolve()))  # the repo's vtn, also without install
sys.path.insert(0, str(Path(workflow.basedir).resolve().parent))
from vtn import jobs as J  # noqa: E402  (no torch)
from vtn import study as S  # noqa: E402
from vtn.device import gpu_request  # noqa: E402  (torch imported only when a device is used)


validate(config, "../schemas/config.schema.yaml")
S.check(config)

DATASETS = config["datasets"]
STUDIES = config["studies"]
THREADS = config["threads"]
RES = config["resources"]
SIZE = config["image_size"]
# GPU jobs (train, register_model): the `gpu` resource they ask for (device: cuda -> 1, cpu -> 0,
# auto -> 1 when this machine has an NVIDIA GPU; without one, trainings run side by side up to
# --cores), their threads and the --device they pass (cuda fails at once without CUDA).
USE_GPU = gpu_request(config["device"])
GPU_THREADS = config["gpu_threads"] if USE_GPU else THREADS
DEVICE = "cuda" if USE_GPU else "cpu"
EMBEDDED = [n for n, d in DATASETS.items() if d["source"] == "embedded"]
LEARN2REG = [n for n, d in DATASETS.items() if d["source"] == "learn2reg"]
USER = [n for n, d in DATASETS.items() if d["source"] not in ("embedded", "learn2reg")]


def _alt(names):
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!x)x"


MODELS = {st: S.models(config, st) for st in STUDIES}
BASELINES = {st: S.baselines(config, st) for st in STUDIES}
METHODS = {st: S.methods(config, st) for st in STUDIES}


wildcard_constraints:
    study=_alt(STUDIES),
    dataset=_alt(DATASETS),
    embedded=_alt(EMBEDDED),
    user=_alt(USER),
    l2r=_alt(LEARN2REG),
    model=_alt({m for st in STUDIES for m in MODELS[st]}),
    method=_alt({m for st in STUDIES for m in METHODS[st]}),
    tool=_alt(S.BASELINE_TOOLS),
    chunk=r"\d+-\d+",


def model_desc(wc):
    return MODELS[wc.study][wc.model]


def is_star(study, method):
    return method in MODELS[study] and MODELS[study][method]["star"]


def test_set(study):
    return STUDIES[study]["test"]


# ---------------------------------------------------------------------------------------------
# Paths (every rule names its files through these; wildcards pass through as "{study}" etc.)
# ---------------------------------------------------------------------------------------------


def raw_csv(dataset):
    return f"results/data/{dataset}/raw/subjects.csv"


def prep_csv(dataset):
    return f"results/data/{dataset}/prep/subjects.csv"


def pairs_csv(dataset):
    return f"results/data/{dataset}/pairs.csv"


def task_pairs_csv(dataset):
    """The pairs a Learn2Reg task lists for the dataset's images (``vtn import --pairs-out``)."""
    return f"results/data/{dataset}/raw/pairs.csv"


def gt_dir(dataset):
    return f"results/data/{dataset}/gt"


def prealigned_csv(study, dataset):
    return f"results/prealign/{study}/{dataset}/subjects.csv"


def subjects_for(study, dataset, star):
    return prealigned_csv(study, dataset) if star else prep_csv(dataset)


def resource_manifest(organ):
    return f"{RES}/{organ}.done"


def models_root(study):
    return f"results/models/{study}"


def model_dir(study, model):
    return f"{models_root(study)}/{model}"


def model_file(study, model, name):
    return f"{model_dir(study, model)}/{name}"


def regs_root(study):
    return f"results/registrations/{study}"


def reg_dir(study, method):
    return f"{regs_root(study)}/{method}"


def metrics_csv(study, method):
    return f"results/metrics/{study}/{method}.csv"


def package_file(study, model):
    return model_file(study, model, "model.pt")


def native_dir(study, method):
    return f"results/native/{study}/{method}"


def targets_dir(study):
    return f"results/targets/{study}"


def spec_json(study):
    return f"results/specs/{study}.json"


def tables_dir(study):
    return f"results/tables/{study}"


def figures_dir(study):
    return f"results/figures/{study}"


def data_figure(dataset):
    return f"results/figures/data/{dataset}.png"


def benchmark(rule, *keys):
    return str(Path("benchmarks", rule, *keys)) + ".tsv"


def chunk_dir(study, kind, chunk):
    """One chunk job's folder (temporary: gathered by hard links); kind: the tool, "targets" or
    "prealign/<dataset>"."""
    return f"results/chunks/{study}/{kind}/{chunk}"


# ---------------------------------------------------------------------------------------------
# Chunks: known when the DAG is built (vtn.jobs), no checkpoint
# ---------------------------------------------------------------------------------------------

_SUBJECTS = {}


def n_subjects(dataset):
    if dataset not in _SUBJECTS:
        _SUBJECTS[dataset] = J.n_subjects(config, dataset)
    return _SUBJECTS[dataset]


def pair_chunks(dataset):
    """Chunk names of the rows of a dataset's pairs.csv, baseline_chunk pairs each."""
    return J.chunks(J.n_pairs(config, dataset, n_subjects(dataset)), config["baseline_chunk"])


def subject_chunks(dataset):
    """Chunk names of the rows of a dataset's preprocessed subjects.csv, prealign_chunk each."""
    return J.chunks(n_subjects(dataset), config["prealign_chunk"])


def test_pair_count(study):
    test = test_set(study)
    return J.n_pairs(config, test, n_subjects(test))


def chunk_items(chunk):
    start, stop = J.chunk_rows(chunk)
    return stop - start


def rows_arg(chunk):
    return ":".join(map(str, J.chunk_rows(chunk)))


def organ_reference(dataset):
    """Histogram-matching reference: subject 0 of the first dataset (config order) of the organ."""
    organ = DATASETS[dataset]["organ"]
    first = next(n for n, d in DATASETS.items() if d["organ"] == organ)
    return raw_csv(first)


def star_test_subjects(study):
    """The pre-aligned test subjects of a study with star variants ([] otherwise)."""
    return [prealigned_csv(study, test_set(study))] if S.has_star(config, study) else []


def study_metrics(study):
    return [metrics_csv(study, m) for m in METHODS[study]]


# ---------------------------------------------------------------------------------------------
# Inputs of rules
# ---------------------------------------------------------------------------------------------


def train_inputs(wc):
    m = model_desc(wc)
    inputs = {"config": model_file(wc.study, wc.model, "model.yaml"),
              "subjects": [subjects_for(wc.study, d, m["star"]) for d in m["train"]]}
    if m["supervised"]:
        inputs["targets"] = targets_dir(wc.study)
        inputs["pairs"] = pairs_csv(S.supervised_dataset(config, wc.study))
    return inputs


def register_inputs(wc):
    m = model_desc(wc)
    test = test_set(wc.study)
    return {
        "ckpt": model_file(wc.study, wc.model, "checkpoint.pt"),
        "subjects": subjects_for(wc.study, test, m["star"]),
        "pairs": pairs_csv(test),
    }


def package_inputs(wc):
    """A model's package: its checkpoint, training tables (in training order), metrics."""
    return {
        "ckpt": model_file(wc.study, wc.model, "checkpoint.pt"),
        "subjects": train_inputs(wc)["subjects"],
        "metrics": metrics_csv(wc.study, wc.model),
    }


def native_inputs(wc):
    """A method's test registrations and the subjects they were registered on (star methods:
    the pre-aligned ones, whose records carry ``atlas_to_prep``)."""
    test = test_set(wc.study)
    return {
        "reg": reg_dir(wc.study, wc.method),
        "subjects": subjects_for(wc.study, test, is_star(wc.study, wc.method)),
        "pairs": pairs_csv(test),
    }


def preprocess_pairs_from(wc):
    """The task's pair list for Learn2Reg val/test datasets (``vtn.study.task_pairs``), else none."""
    return [task_pairs_csv(wc.dataset)] if S.task_pairs(config, wc.dataset) else []


def evaluate_inputs(wc):
    test = test_set(wc.study)
    star = is_star(wc.study, wc.method)
    inputs = {
        "reg": reg_dir(wc.study, wc.method),
        "subjects": subjects_for(wc.study, test, star),
        "pairs": pairs_csv(test),
    }
    if DATASETS[test]["source"] == "embedded" and not star:
        inputs["gt"] = gt_dir(test)
    if star:
        inputs["orig"] = prep_csv(test)
    return inputs


def evaluate_extra(wc, input):
    test = test_set(wc.study)
    args = []
    if "gt" in input.keys():
        args.append(f"--gt {input.gt}")
    if "orig" in input.keys():
        args.append(f"--prealigned --orig-subjects {input.orig}")
    if DATASETS[test]["organ"] == "liver":
        args.append(f"--liver-label {S.liver_label(config, test)}")
    return " ".join(args)


def liver_label_arg(dataset):
    if DATASETS[dataset]["organ"] != "liver":
        return ""
    return f"--liver-label {S.liver_label(config, dataset)}"


# ---------------------------------------------------------------------------------------------
# Benchmarks: the runtime summary reads exactly the benchmark files of the jobs of this DAG
# ---------------------------------------------------------------------------------------------


def _prep_datasets():
    """Datasets whose preprocessed table some job reads."""
    used = []
    for st, s in STUDIES.items():
        used.append(s["test"])
        for m in MODELS[st].values():
            used += m["train"]
        if "atlas" in s:
            used.append(s["atlas"]["dataset"])
    return list(dict.fromkeys(used))


def benchmark_files():
    files = [benchmark("make_embedded", n) for n in EMBEDDED]
    files += [benchmark("preprocess", d) for d in _prep_datasets()]
    for st, s in STUDIES.items():
        test = s["test"]
        needs_gt = any(not is_star(st, m) for m in METHODS[st])
        if DATASETS[test]["source"] == "embedded" and needs_gt:
            files.append(benchmark("ground_truth", test))
        prealigned = {d for m in MODELS[st].values() if m["star"] for d in m["train"] + [test]}
        files += [benchmark("prealign", st, d, c) for d in sorted(prealigned)
                  for c in subject_chunks(d)]
        if any(m["supervised"] for m in MODELS[st].values()):
            files += [benchmark("supervision_targets", st, c)
                      for c in pair_chunks(S.supervised_dataset(config, st))]
        files += [benchmark("train", st, m) for m in MODELS[st]]
        files += [benchmark("register", st, m) for m in MODELS[st]]
        files += [benchmark("baseline", st, t, c) for t in BASELINES[st]
                  for c in pair_chunks(test)]
        files += [benchmark("evaluate", st, m) for m in METHODS[st]]
        files += [benchmark("package_model", st, m) for m in MODELS[st]]
        if S.native_space(config):
            files += [benchmark("native_space", st, m) for m in METHODS[st]]
        files.append(benchmark("figures", st))
    return list(dict.fromkeys(files))


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def final_outputs():
    out = []
    for study in STUDIES:
        out += study_metrics(study)
        out += [tables_dir(study), figures_dir(study)]
        out += [package_file(study, m) for m in MODELS[study]]
        if S.native_space(config):
            out += [native_dir(study, m) for m in METHODS[study]]
    out += [data_figure(name) for name in EMBEDDED]
    out += ["results/claims.md", "results/runtime.md"]
    return out
