"""vtn.study: the study design (models, training configs, report spec) as pure functions of the
validated config, and vtn.train.config.TrainConfig as the one source of the training keys."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from vtn import study as S
from vtn.modelspec import SPEC_PATTERN, VOXELMORPH2_DEC_NF, VOXELMORPH2_ENC_NF
from vtn.train.config import TrainConfig, load_config, study_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def validated(name: str) -> dict:
    """A config of config/ as Snakemake holds it: validated, schema defaults filled in."""
    cfg = yaml.safe_load((ROOT / "config" / name).read_text())
    validate(cfg, str(SCHEMA))
    return cfg


@pytest.fixture(scope="module")
def default():
    return validated("config.yaml")


@pytest.fixture(scope="module")
def ablation(default):
    """The default study with the liver study's "+ inv (all reverse terms)" ablation on."""
    cfg = copy.deepcopy(default)
    cfg["studies"]["liver"]["inv_ablation"] = True
    return cfg


def test_models_of_the_default_study(default, ablation):
    liver = S.models(default, "liver")
    assert list(liver) == ["D", "DD", "DDD", "AD", "ADD", "ADDD", "ADDD-inv",
                           "supervised", "voxelmorph", "ADDD-data-set-a", "ADDD-data-set-b"]
    assert list(S.models(ablation, "liver"))[6:8] == ["ADDD-inv", "ADDD-inv-all"]
    assert S.models(ablation, "liver")["ADDD-inv-all"]["ablation"]
    assert not liver["ADDD-inv"]["ablation"]
    assert liver["ADDD-inv"]["inv"] and liver["ADDD-inv"]["cascade"] == "ADDD"
    assert liver["voxelmorph"]["type"] == "voxelmorph2" and not liver["voxelmorph"]["star"]
    assert liver["ADDD-data-set-a"]["train"] == ["liver_a"]
    assert liver["ADDD-data-set-a"]["data_label"] == "set A"
    brain = S.models(default, "brain")
    assert list(brain) == ["AD", "ADD", "ADD-inv", "D-star", "DD-star", "DD-star-data-set-a"]
    assert brain["DD-star"]["star"] and brain["DD-star"]["display"] == "VTN DD\u2605"
    assert brain["DD-star-data-set-a"]["star"] and brain["DD-star-data-set-a"]["train"] == [
        "brain_a"]
    assert S.methods(default, "liver")[-2:] == ["ants", "elastix"]
    assert S.methods(default, "brain")[-2:] == ["ants", "elastix"]
    assert S.has_star(default, "brain") and not S.has_star(default, "liver")


def test_model_configs_are_valid_train_configs(default, ablation):
    for name in ("config.yaml", "gpu.yaml", "paper.yaml", "learn2reg-abdomenctct.yaml"):
        cfg = validated(name)
        for st in cfg["studies"]:
            for model in S.models(cfg, st):
                mc = S.model_config(cfg, st, model)
                tc = TrainConfig.from_dict(mc, f"{name}:{st}/{model}")  # no warning, no error
                assert tc.augment == mc["augment"]
    sup = S.model_config(default, "liver", "supervised")
    assert sup["supervised"] and sup["augment"] is False  # decided by resolve_augment
    # its own schedule, the same number of steps as the other models
    assert (sup["epochs"], sup["iterations"]) == (10, 80)
    assert sup["epochs"] * sup["iterations"] == (
        default["training"]["epochs"] * default["training"]["iterations"])
    assert S.model_config(default, "liver", "ADDD")["augment"] is True
    assert S.model_config(default, "liver", "ADDD-inv")["inv_weight"] == 1e-3
    assert S.model_config(default, "liver", "ADDD")["inv_weight"] == 0.0
    assert "inv_reverse_terms" not in S.model_config(default, "liver", "ADDD-inv")  # inv_only
    assert S.model_config(ablation, "liver", "ADDD-inv-all")["inv_reverse_terms"] == "all"
    vm = S.model_config(default, "liver", "voxelmorph")
    v = default["voxelmorph"]
    assert (vm["type"], vm["epochs"], vm["iterations"], vm["batch"], vm["lr"]) == (
        "voxelmorph2", v["epochs"], v["iterations"], v["batch"], v["lr"])
    assert "flow_init_scale" not in vm
    t = default["training"]
    d = S.model_config(default, "liver", "ADD")
    assert (d["epochs"], d["iterations"], d["lr"], d["lr_schedule"]) == (
        t["epochs"], t["iterations"], t["lr"], t["lr_schedule"])
    # cascade_iterations: the cascades without the affine subnet, star models too
    assert default["cascade_iterations"] == {"D": 200, "DDD": 200}
    for study, model in (("liver", "D"), ("liver", "DDD"), ("brain", "D-star")):
        assert S.model_config(default, study, model)["iterations"] == 200, model
    for study, model in (("liver", "ADDD"), ("liver", "DD"), ("brain", "DD-star-data-set-a")):
        assert S.model_config(default, study, model)["iterations"] == t["iterations"], model
    assert S.model_config(default, "liver", "voxelmorph")["iterations"] == v["iterations"]
    assert any(d_.startswith("cascade_iterations.D = 200 (paper: 20000")
               for d_ in S.recipe_departures(default))
    # divergence_factor, probe_pairs: in model.yaml only when not the default (existing models
    # keep their model.yaml, hence are not retrained), for every model type
    assert "divergence_factor" not in d and t["divergence_factor"] == 100
    assert "probe_pairs" not in d and t["probe_pairs"] == 16
    off = copy.deepcopy(default)
    off["training"].update(divergence_factor=0, probe_pairs=0)
    for model in ("ADDD", "voxelmorph", "supervised"):
        mc = TrainConfig.from_dict(S.model_config(off, "liver", model))
        assert mc.divergence_factor == 0 and mc.probe_pairs == 0, model


def test_recipe_departures_are_named():
    cfg = validated("paper.yaml")
    assert S.recipe_departures(cfg) == []  # the paper's own recipe
    cfg["training"]["lr"] = 1e-3
    cfg["voxelmorph"]["epochs"] = 5
    cfg["image_size"] = 32
    assert S.recipe_departures(cfg) == ["image_size = 32 (paper: 128)",
                                        "training.lr = 0.001 (paper: 0.0001)",
                                        "voxelmorph.epochs = 5 (paper: 1)"]
    spec = S.spec(cfg, "liver")
    assert any(n.startswith("Departures from the paper's training recipe") and
               "training.lr = 0.001" in n for n in spec["method_notes"])
    # a study's supervised schedule is named too, after the global keys
    cfg["studies"]["liver"]["supervised"].update(epochs=10, iterations=5)
    assert S.recipe_departures(cfg, "liver")[-2:] == [
        "studies.liver.supervised.epochs = 10 (paper: 5)",
        "studies.liver.supervised.iterations = 5 (paper: 20000)"]
    assert S.model_config(cfg, "liver", "supervised")["iterations"] == 5
    assert S.model_config(cfg, "liver", "ADDD")["iterations"] == 20000


def test_spec_of_the_default_study(default, ablation):
    spec = S.spec(default, "liver")
    assert spec["tables"]["methods"] == ["ants", "elastix", "voxelmorph", "ADDD", "ADDD-inv",
                                         "supervised"]
    assert spec["tables"]["ablation"] == []
    with_ablation = S.spec(ablation, "liver")
    assert with_ablation["tables"]["ablation"] == [{"method": "ADDD-inv-all", "versus": "ADDD-inv"}]
    assert with_ablation["methods"]["ADDD-inv-all"]["ablation"]
    assert spec["tables"]["cascades"] == ["D", "DD", "DDD", "AD", "ADD", "ADDD"]
    assert spec["tables"]["data_amount"][-1] == {"label": "liver_a + liver_b", "method": "ADDD"}
    assert {"a": "ADDD-inv", "b": "ADDD", "metrics": ["iou", "lm_dist_vox", "folding_pct"]} \
        in spec["comparisons"]
    assert spec["methods"]["ants"] == {"display": "ANTs", "kind": "baseline", "preset": "fast"}
    assert "encoder 16-32-32-32, decoder 32-32-32-32-32-16-16" in spec["method_notes"][0]
    assert spec["data_source"] == default["data_note"]
    brain = S.spec(default, "brain", "results/prealign/brain/brain_test/subjects.csv")
    assert brain["prealign_subjects"].endswith("subjects.csv")
    assert {"a": "ADD", "b": "DD-star", "metrics": ["lm_dist_vox", "iou"]} in brain["comparisons"]
    # the DD-star model trained on set A is a data-amount row, not a cascade (the cascade claim
    # compared D-star with it instead of with DD-star)
    assert brain["tables"]["cascades"] == ["D-star", "DD-star", "AD", "ADD"]
    assert [r["method"] for r in brain["tables"]["data_amount"]] == ["DD-star-data-set-a",
                                                                    "DD-star"]
    json.dumps(spec)  # what the workflow writes


def test_dataset_facts(default):
    assert S.test_pairs(default, "liver_test") == 12
    assert S.test_pairs(default, "liver_a") == 8  # the supervised training pairs
    assert S.test_pairs(default, "brain_a") == 0
    assert S.liver_label(default, "liver_test") == "5"
    cfg = copy.deepcopy(default)
    cfg["datasets"]["liver_test"] = {"source": "lits", "organ": "liver", "path": "x"}
    assert S.liver_label(cfg, "liver_test") == "any"
    cfg["datasets"]["liver_test"]["label"] = 3
    assert S.liver_label(cfg, "liver_test") == "3"
    assert S.data_source(cfg, "liver").startswith("user datasets: liver_test (lits)")


def test_check_names_the_key(default):
    cfg = copy.deepcopy(default)
    cfg["studies"]["liver"]["test"] = "nope"
    with pytest.raises(S.ConfigError, match=r"studies\.liver\.test: unknown dataset 'nope'"):
        S.check(cfg)
    cfg = copy.deepcopy(default)
    cfg["studies"]["liver"]["train"] = ["brain_a"]
    with pytest.raises(S.ConfigError, match=r"studies\.liver\.train\[0\].*brain"):
        S.check(cfg)
    cfg = copy.deepcopy(default)
    del cfg["studies"]["brain"]["atlas"]
    with pytest.raises(S.ConfigError, match=r"studies\.brain\.atlas"):
        S.check(cfg)
    cfg = copy.deepcopy(default)
    cfg["studies"]["liver"]["data_amount_model"] = "DD-star"
    with pytest.raises(S.ConfigError, match="data_amount_model"):
        S.check(cfg)
    S.check(default)


def test_schema_training_section_is_generated_from_trainconfig():
    schema = yaml.safe_load(SCHEMA.read_text())
    expected = study_schema()
    assert schema["properties"]["training"] == expected, (
        "workflow/schemas/config.schema.yaml `training` differs from "
        "vtn.train.config.study_schema():\n" + yaml.safe_dump(expected, sort_keys=False))
    # every key of the section is a TrainConfig key with the same validation
    for key in expected["properties"]:
        assert key in TrainConfig.__dataclass_fields__
    assert schema["definitions"]["spec"]["pattern"] == SPEC_PATTERN


def test_voxelmorph_widths_are_the_network_defaults():
    torch = pytest.importorskip("torch")  # noqa: F841
    from vtn import networks

    cfg = networks.build_model({"type": "voxelmorph2", "image_size": 16}).config
    assert cfg["enc_nf"] == list(VOXELMORPH2_ENC_NF)
    assert cfg["dec_nf"] == list(VOXELMORPH2_DEC_NF)


def test_learn2reg_datasets_packages_and_native_outputs(default, tmp_path):
    from test_learn2reg import make_task  # tests/ is on sys.path

    task, _ = make_task(tmp_path / "AbdomenCTCT")
    cfg = validated("learn2reg-abdomenctct.yaml")
    for d in cfg["datasets"].values():
        d["path"] = str(task)
    S.check(cfg)
    assert S.learn2reg_subset(cfg, "abdomen_train") == "train"
    assert S.task_pairs(cfg, "abdomen_val") and not S.task_pairs(cfg, "abdomen_train")
    assert not S.task_pairs(default, "liver_test")
    assert S.liver_label(cfg, "abdomen_val") == "6"
    assert S.data_source(cfg, "abdomen").startswith("user datasets: abdomen_val (learn2reg)")
    # optional outputs: native space off unless asked (schema default), packages' cards
    assert S.native_space(cfg) and not S.native_space(default)
    assert default["outputs"] == {"native_space": False}
    assert S.package_card(cfg, "abdomen", "ADDD") == {
        "name": "abdomen/ADDD: VTN ADDD",
        "source": "training datasets abdomen_train (learn2reg, train subset)"}
    star = S.package_card(default, "brain", "DD-star")
    assert star["name"] == "brain/DD-star: VTN DD\u2605"
    assert "brain_a (embedded)" in star["source"] and "NOT the paper" in star["source"]
    assert star["source"].endswith("pre-aligned to the atlas brain_atlas000")
    # errors name the key (and the liver label the task's JSON gives)
    bad = copy.deepcopy(cfg)
    del bad["datasets"]["abdomen_val"]["label"]
    with pytest.raises(S.ConfigError, match=r"datasets\.abdomen_val\.label: required .* set label: 6"):
        S.check(bad)
    bad["datasets"]["abdomen_val"]["path"] = str(tmp_path)
    with pytest.raises(S.ConfigError, match=r"datasets\.abdomen_val\.path: .*no <TASK>_dataset\.json"):
        S.check(bad)
    bad = copy.deepcopy(default)
    bad["datasets"]["liver_a"]["subset"] = "val"
    with pytest.raises(S.ConfigError, match=r"datasets\.liver_a\.subset: only for source learn2reg"):
        S.check(bad)


def test_study_and_train_config_import_no_torch():
    code = ("import sys, vtn.study, vtn.train.config; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_train_config_checks():
    assert load_config({"lr": "1e-4"}).lr == 1e-4
    with pytest.raises(Exception, match="'flow_init_scale' must be > 0"):
        load_config({"flow_init_scale": 0})
    with pytest.raises(Exception, match="'batch' must be >= 1"):
        load_config({"batch": 0})
    cfg = load_config({"type": "voxelmorph2", "enc_nf": [8, 8, 8, 8]})
    assert cfg.network_options() == {"enc_nf": [8, 8, 8, 8]}
    assert set(cfg.as_dict()) == set(TrainConfig.__dataclass_fields__)
