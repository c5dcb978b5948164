"""Tests of vtn.train: config validation, lr schedule, learning, exact resume, checkpoints."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from vtn import train as T
from vtn.io import InputError, save_disp_l2r


def make_subjects(folder, n=4, size=16, seed=0, seg=True, landmarks=True, name="subjects.csv",
                  affine=None):
    """Fake preprocessed dataset: smooth blobs at random centres, float32 in [0, 1].

    Writes ``<subject>_image.nii.gz`` (+ seg, landmarks) and ``subjects.csv``; returns its path.
    The default affine is anisotropic with an offset so that affine handling is exercised.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij")).astype(np.float64)
    if affine is None:
        affine = np.diag([1.5, 1.0, 2.0, 1.0])
        affine[:3, 3] = [-20.0, 10.0, 5.0]
    rows = []
    for s in range(n):
        c = size / 2 + rng.uniform(-size / 8, size / 8, 3)
        r = np.sqrt(((g - c[:, None, None, None]) ** 2).sum(0))
        img = np.exp(-((r / (size / 5)) ** 2))
        img = img + 0.3 * np.exp(-(((g[0] - c[0] - size / 6) / (size / 10)) ** 2))
        img = (img / img.max()).astype(np.float32)
        sid = f"s{s:02d}"
        nib.save(nib.Nifti1Image(img, affine), str(folder / f"{sid}_image.nii.gz"))
        row = {"subject": sid, "image": f"{sid}_image.nii.gz", "seg": "", "landmarks": ""}
        if seg:
            lab = (r < size / 5).astype(np.uint8)
            nib.save(nib.Nifti1Image(lab, affine), str(folder / f"{sid}_seg.nii.gz"))
            row["seg"] = f"{sid}_seg.nii.gz"
        if landmarks:
            pts = c[None] + rng.uniform(-3, 3, (4, 3))
            pd.DataFrame({"name": [f"L{k}" for k in range(4)], "i": pts[:, 0], "j": pts[:, 1],
                          "k": pts[:, 2]}).to_csv(folder / f"{sid}_landmarks.csv", index=False)
            row["landmarks"] = f"{sid}_landmarks.csv"
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / name, index=False)
    return folder / name


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def _cfg(**kw):
    cfg = dict(type="vtn", cascade="AD", image_size=16, epochs=1, iterations=6, batch=2,
               lr=1e-4, augment=True, checkpoint_every=2, seed=3)
    cfg.update(kw)
    return cfg


# ---------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------


def test_config_validation(tmp_path):
    cfg = T.load_config({"cascade": "ADDD", "lr": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.batch == 8 and cfg.epochs == 5 and cfg.iterations == 20000
    with pytest.raises(InputError, match="'lerning_rate'"):
        T.load_config({"lerning_rate": 1e-4})
    with pytest.raises(InputError, match="'batch' must be int"):
        T.load_config({"batch": "8"})
    with pytest.raises(InputError, match="'augment' must be bool"):
        T.load_config({"augment": 1})
    with pytest.raises(InputError, match="'type'"):
        T.load_config({"type": "unet"})
    with pytest.warns(UserWarning, match="without augmentation"):
        assert T.load_config({"supervised": True}).augment is False
    with pytest.raises(InputError, match="loss_weights"):
        T.load_config({"cascade": "AD", "loss_weights": [{"sim": 1.0}]})
    path = tmp_path / "model.yaml"
    path.write_text("type: vtn\ncascade: AD\nlr: 1e-4\nbatchsize: 3\n")
    with pytest.raises(InputError, match=r"model\.yaml.*'batchsize'"):
        T.load_config(path)
    path.write_text("type: vtn\ncascade: AD\nlr: 1e-4\n")
    assert T.load_config(path).lr == 1e-4  # YAML reads 1e-4 as a string


def test_pair_schedule_covers_all_ordered_pairs():
    sched = T.PairSchedule(5, seed=1)
    f, m, _ = sched(0, 20)
    pairs = list(zip(f, m))
    assert sorted(pairs) == [(i, j) for i in range(5) for j in range(5) if i != j]
    # pure function of the position: a fresh schedule gives the same stream anywhere
    f2, m2, _ = T.PairSchedule(5, seed=1)(13, 10)
    assert list(zip(f2, m2))[:7] == pairs[13:]
    f3, m3, _ = sched(20, 20)  # the second pass is another permutation of the same set
    assert sorted(zip(f3, m3)) == sorted(pairs) and list(zip(f3, m3)) != pairs


# ---------------------------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------------------------


def test_loss_decreases(tmp_path):
    csv = make_subjects(tmp_path / "data", n=4, size=32)
    cfg = _cfg(cascade="D", image_size=32, iterations=30, lr=1e-3, augment=False,
               checkpoint_every=100)
    out = T.train([csv], cfg, tmp_path / "m" / "ckpt.pt", tmp_path / "m" / "log.csv",
                  device="cpu")
    log = pd.read_csv(tmp_path / "m" / "log.csv")
    assert list(log.columns) == ["step", "epoch", "lr", "seconds", "total", "sim_0", "tv_0",
                                 "probe"]
    # the probe (12 fixed pairs of 4 subjects): measured at 90 % and at the end, and it fell
    assert log.dropna(subset="probe")["step"].tolist() == [27, 30]
    assert log["step"].tolist() == list(range(1, 31))
    assert log["total"].tail(5).mean() < 0.5 * log["total"].head(5).mean()
    assert log["sim_0"].tail(5).mean() < log["sim_0"].head(5).mean()
    assert out == tmp_path / "m" / "ckpt.pt" and out.exists()


def test_checkpoint_weights_only_and_rebuild(tmp_path):
    from vtn.networks import build_model

    csv = make_subjects(tmp_path / "data", n=3)
    out = T.train([csv], _cfg(iterations=2), tmp_path / "ckpt.pt", tmp_path / "log.csv",
                  device="cpu")
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert set(ckpt) == set(T.CHECKPOINT_KEYS) | set(T.OPTIONAL_KEYS)
    log = pd.read_csv(tmp_path / "log.csv")
    assert ckpt["loss_start"] == pytest.approx(list(log["total"]), rel=1e-6)  # steps 1-2
    assert ckpt["step"] == 2 and ckpt["finished"] is True and ckpt["epoch"] == 0
    assert ckpt["model_config"]["spec"] == "AD" and ckpt["model_config"]["type"] == "vtn"
    assert ckpt["train_config"]["cascade"] == "AD" and ckpt["subjects"] == ["s00", "s01", "s02"]
    assert set(ckpt["rng"]) == {"torch_cpu", "torch_cuda", "numpy", "python"}
    assert ckpt["optimizer_state"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert ckpt["optimizer_state"]["param_groups"][0]["eps"] == 1e-8
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    # periodic checkpoints: atomically written, pruned to keep_checkpoints, same format
    periodic = sorted((tmp_path / "ckpt").glob("*.pt"))
    assert [p.name for p in periodic] == ["step000000002.pt"]
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))
    assert T.load_checkpoint(periodic[0])["finished"] is False
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.pt"):
        T.load_checkpoint(tmp_path / "bad.pt")


def test_lr_schedule_in_run(tmp_path):
    csv = make_subjects(tmp_path / "data", n=3)
    T.train([csv], _cfg(cascade="D", epochs=3, iterations=2, lr_halve_after=1,
                        checkpoint_every=10, augment=False),
            tmp_path / "c.pt", tmp_path / "log.csv", device="cpu")
    log = pd.read_csv(tmp_path / "log.csv")
    assert log["lr"].tolist() == [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5]
    assert log["epoch"].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("schedule, expected", [
    ("reference", [1e-4, 1e-4, 1e-4, 5e-5, 2.5e-5]),   # the authors' code: halved from epoch 3
    ("paper_text", [1e-4, 1e-4, 1e-4, 1e-4, 5e-5]),   # "halves every epoch after the 4th"
])
def test_lr_schedule_readings_in_run(tmp_path, schedule, expected):
    csv = make_subjects(tmp_path / "data", n=3)
    T.train([csv], _cfg(cascade="D", epochs=5, iterations=1, lr_schedule=schedule,
                        checkpoint_every=10, augment=False),
            tmp_path / "c.pt", tmp_path / "log.csv", device="cpu")
    assert pd.read_csv(tmp_path / "log.csv")["lr"].tolist() == expected


def test_inv_reverse_terms_reach_the_loss(tmp_path):
    csv = make_subjects(tmp_path / "data", n=3)
    cols = {}
    for terms in ("inv_only", "all"):
        T.train([csv], _cfg(cascade="AD", epochs=1, iterations=1, inv_weight=1e-3,
                            inv_reverse_terms=terms, checkpoint_every=10, augment=False),
                tmp_path / terms / "c.pt", tmp_path / terms / "log.csv", device="cpu")
        cols[terms] = set(pd.read_csv(tmp_path / terms / "log.csv").columns)
    assert "inv" in cols["inv_only"] and not any(c.endswith("_rev") for c in cols["inv_only"])
    assert any(c.endswith("_rev") for c in cols["all"])
    with pytest.raises(InputError, match="inv_reverse_terms"):
        T.load_config(_cfg(inv_reverse_terms="both"))


def test_exact_resume(tmp_path, monkeypatch):
    csv = make_subjects(tmp_path / "data", n=4)
    cfg = _cfg()  # AD, 6 steps, batch 2, augmentation on, checkpoint every 2
    full = T.train([csv], cfg, tmp_path / "a" / "c.pt", tmp_path / "a" / "log.csv", device="cpu")
    ref = torch.load(full, weights_only=True)

    # (1) stopped at step 4 by max_steps, then resumed
    part = T.train([csv], cfg, tmp_path / "b" / "c.pt", tmp_path / "b" / "log.csv",
                   device="cpu", max_steps=4)
    assert part == tmp_path / "b" / "ckpt" / "step000000004.pt"
    assert not (tmp_path / "b" / "c.pt").exists()
    done = T.train([csv], cfg, tmp_path / "b" / "c.pt", tmp_path / "b" / "log.csv", device="cpu")
    res = torch.load(done, weights_only=True)

    # (2) crashed in step 4 (after the checkpoint of step 2), then resumed
    import vtn.losses

    calls = {"n": 0}
    real = vtn.losses.VTNLoss.forward

    def crashing(self, *a, **k):
        calls["n"] += torch.is_grad_enabled()  # training steps only (the probe: no_grad)
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real(self, *a, **k)

    monkeypatch.setattr(vtn.losses.VTNLoss, "forward", crashing)
    with pytest.raises(KeyboardInterrupt):
        T.train([csv], cfg, tmp_path / "c" / "c.pt", tmp_path / "c" / "log.csv", device="cpu")
    monkeypatch.setattr(vtn.losses.VTNLoss, "forward", real)
    assert len(pd.read_csv(tmp_path / "c" / "log.csv")) == 3  # step 3 was logged, not saved
    crashed = T.train([csv], cfg, tmp_path / "c" / "c.pt", tmp_path / "c" / "log.csv",
                      device="cpu")
    cra = torch.load(crashed, weights_only=True)

    for other in (res, cra):
        assert other["step"] == ref["step"] == 6
        assert ref["model_state"].keys() == other["model_state"].keys()
        for k, v in ref["model_state"].items():
            assert torch.equal(v, other["model_state"][k]), k
        for pid, st in ref["optimizer_state"]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, other["optimizer_state"]["state"][pid][k])
    # the logs agree (the resumed log was truncated to the checkpoint, then continued)
    la = pd.read_csv(tmp_path / "a" / "log.csv").drop(columns="seconds")
    for d in ("b", "c"):
        lb = pd.read_csv(tmp_path / d / "log.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(la, lb)
    # and the weights did change during training
    init = torch.load(tmp_path / "a" / "ckpt" / "step000000004.pt", weights_only=True)
    assert any(not torch.equal(v, init["model_state"][k]) for k, v in ref["model_state"].items())


def test_progress_lines_in_the_job_log(tmp_path, capsys):
    """`vtn train` writes the device, then every `progress_every` steps a line with the step,
    rate, ETA, the loss and its terms, to stderr (the job's log), without a terminal."""
    import yaml

    csv = make_subjects(tmp_path / "data", n=3)
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(iterations=5, progress_every=2)))
    assert T.cli(["--subjects", str(csv), "--config", str(cfg), "--out", str(tmp_path / "c.pt"),
                  "--log", str(tmp_path / "l.csv"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "vtn train: device cpu (1 threads); vtn AD at 16^3, 3 subjects, batch 2, steps 0/5" \
        in err[0]
    steps = [ln.split("vtn train: ")[1] for ln in err if "vtn train: step " in ln]
    assert [s.split(" (")[0] for s in steps] == ["step 2/5", "step 4/5", "step 5/5"]
    log = pd.read_csv(tmp_path / "l.csv")
    for line, step in zip(steps, (2, 4, 5)):
        assert "steps/s, ETA" in line and " | lr 0.0001" in line
        row = log[log["step"] == step].iloc[0]
        assert f"loss {row['total']:.4g} (" in line  # the loss of that very step
        for term in ("sim_0", "ortho_0", "det_0", "sim_1", "tv_1"):
            assert f"{term} {row[term]:.4g}" in line
    assert "ETA 0.0s" in steps[-1] and "finished 5 steps" in err[-1]


def test_signal_checkpoints_the_current_step_and_resume_is_exact(tmp_path, monkeypatch):
    """SIGTERM (SLURM's time limit, pre-emption) in step 3 of 6: the step is finished and
    checkpointed although 3 is no checkpoint step, `vtn train` exits 75, and the rerun ends with
    the weights of an unbroken run."""
    import os
    import signal

    import vtn.train.loop as L

    csv = make_subjects(tmp_path / "data", n=4)
    cfg = _cfg()  # 6 steps, checkpoint every 2
    ref = torch.load(T.train([csv], cfg, tmp_path / "a" / "c.pt", tmp_path / "a" / "l.csv",
                             device="cpu"), weights_only=True)
    real = L._step

    def step_then_signal(run, autocast):
        real(run, autocast)
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(L, "_step", step_then_signal)
    with pytest.raises(T.TrainingInterrupted, match=r"SIGTERM after step 3/6") as exc:
        T.train([csv], cfg, tmp_path / "b" / "c.pt", tmp_path / "b" / "l.csv", device="cpu")
    assert exc.value.checkpoint == tmp_path / "b" / "ckpt" / "step000000003.pt"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert not (tmp_path / "b" / "c.pt").exists()
    # the command line says so and exits 75 (EX_TEMPFAIL)
    import yaml

    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--subjects", str(csv), "--config", str(tmp_path / "m.yaml"),
            "--out", str(tmp_path / "c" / "c.pt"), "--log", str(tmp_path / "c" / "l.csv"),
            "--device", "cpu"]
    assert T.cli(args) == T.EXIT_INTERRUPTED == 75
    monkeypatch.setattr(L, "_step", real)
    for d in ("b", "c"):
        done = T.train([csv], cfg, tmp_path / d / "c.pt", tmp_path / d / "l.csv", device="cpu")
        res = torch.load(done, weights_only=True)
        assert res["step"] == 6
        for k, v in ref["model_state"].items():
            assert torch.equal(v, res["model_state"][k]), (d, k)
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "l.csv").drop(columns="seconds"),
                                      pd.read_csv(tmp_path / d / "l.csv").drop(columns="seconds"))


def test_resume_refuses_other_config(tmp_path):
    csv = make_subjects(tmp_path / "data", n=3)
    T.train([csv], _cfg(cascade="D", iterations=2), tmp_path / "c.pt", tmp_path / "l.csv",
            device="cpu", max_steps=2)
    with pytest.raises(InputError, match="different run.*'lr'"):
        T.train([csv], _cfg(cascade="D", iterations=2, lr=1e-3), tmp_path / "c.pt",
                tmp_path / "l.csv", device="cpu")


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """``compile: true`` (inductor: model and loss, here AD + inv so that every loss term is
    compiled) trains the same model: the same loss terms to float32 rounding, and its checkpoint
    is a plain one (loads into an uncompiled model)."""
    csv = make_subjects(tmp_path / "data", n=3)
    logs, states = {}, {}
    for flag in (False, True):
        out = tmp_path / f"c{int(flag)}"
        T.train([csv], _cfg(cascade="AD", iterations=3, checkpoint_every=3, inv_weight=1e-3,
                            compile=flag),
                out / "c.pt", out / "log.csv", device="cpu")
        logs[flag] = pd.read_csv(out / "log.csv")
        states[flag] = T.load_checkpoint(out / "c.pt")["model_state"]
    assert set(states[True]) == set(states[False])  # no "_orig_mod." prefixes
    assert list(logs[True].columns) == list(logs[False].columns)
    assert {"inv", "det_0", "ortho_0", "sim_1"} <= set(logs[True].columns)
    np.testing.assert_allclose(logs[True]["total"], logs[False]["total"], rtol=1e-4)
    terms = [c for c in logs[False].columns if c not in ("step", "epoch", "lr", "seconds")]
    np.testing.assert_allclose(logs[True][terms], logs[False][terms], rtol=1e-3, atol=1e-6)
    for name, v in states[False].items():
        torch.testing.assert_close(states[True][name], v, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cascade,sync_every,term", [("AD", None, "tv_1"), ("D", 10, "tv_0")])
def test_nan_guard(tmp_path, monkeypatch, cascade, sync_every, term):
    """A NaN loss at step 3 names step 3 and its term, and no checkpoint is written after it --
    also when the loss is read back only at step 4 (``sync_every`` 10, checkpoint at 4)."""
    import vtn.losses

    csv = make_subjects(tmp_path / "data", n=3)
    real = vtn.losses.total_variation
    calls = {"n": 0}

    def poisoned(flow, *a, **k):
        calls["n"] += torch.is_grad_enabled()  # training steps only (the probe: no_grad)
        v = real(flow, *a, **k)
        return v * float("nan") if calls["n"] == 3 else v

    monkeypatch.setattr(vtn.losses, "total_variation", poisoned)
    with pytest.raises(T.NonFiniteLossError,
                       match=rf"step 3: .*{term}.*Last good checkpoint: .*step000000002\.pt"):
        T.train([csv], _cfg(cascade=cascade, sync_every=sync_every), tmp_path / "c.pt",
                tmp_path / "log.csv", device="cpu")
    assert calls["n"] == (4 if sync_every else 3)  # deferred: step 4 ran before the read-back
    assert not (tmp_path / "c.pt").exists()
    assert T.latest_checkpoint(tmp_path / "ckpt").name == "step000000002.pt"
    assert list(pd.read_csv(tmp_path / "log.csv")["step"]) == [1, 2]


def test_exploding_loss_stops_training(tmp_path, monkeypatch, capsys):
    """A finite loss that jumps far above its start (mean of steps 1-10) stops the run at that
    step, before any checkpoint of it, also when the reference was taken before a resume; with
    ``divergence_factor: 0`` the same run trains on. The poison adds a constant to one term,
    which leaves every gradient, hence the weights, unchanged."""
    import yaml

    import vtn.losses

    csv = make_subjects(tmp_path / "data", n=3)
    real = vtn.losses.total_variation
    calls = {"n": 0}

    def poisoned(flow, *a, **k):
        calls["n"] += torch.is_grad_enabled()  # training steps only (the probe: no_grad)
        return real(flow, *a, **k) + (1e6 if calls["n"] >= 13 else 0.0)

    monkeypatch.setattr(vtn.losses, "total_variation", poisoned)
    cfg = _cfg(cascade="D", iterations=16, checkpoint_every=4, keep_checkpoints=5)
    T.train([csv], cfg, tmp_path / "c.pt", tmp_path / "log.csv", device="cpu", max_steps=6)
    start = T.load_checkpoint(tmp_path / "ckpt" / "step000000006.pt")["loss_start"]
    assert start == pytest.approx(list(pd.read_csv(tmp_path / "log.csv")["total"]), rel=1e-6)
    assert len(start) == 6 and max(start) < 1e3
    with pytest.raises(T.LossExplodedError, match=r"step 13: the loss diverged: total 1e\+06 .*"
                       r"tv_0 1e\+06.*steps 1-10.*divergence_factor 100.*step000000012\.pt"):
        T.train([csv], cfg, tmp_path / "c.pt", tmp_path / "log.csv", device="cpu")
    assert not (tmp_path / "c.pt").exists()
    assert T.latest_checkpoint(tmp_path / "ckpt").name == "step000000012.pt"
    assert list(pd.read_csv(tmp_path / "log.csv")["step"]) == list(range(1, 13))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    assert T.cli(["--subjects", str(csv), "--config", str(tmp_path / "m.yaml"), "--out",
                  str(tmp_path / "c.pt"), "--log", str(tmp_path / "log.csv"),
                  "--device", "cpu"]) == 1  # resumes at step 12, stops at 13 again
    assert "the loss diverged" in capsys.readouterr().err

    calls["n"] = 0
    out = T.train([csv], dict(cfg, divergence_factor=0), tmp_path / "off" / "c.pt",
                  tmp_path / "off" / "log.csv", device="cpu")
    assert pd.read_csv(tmp_path / "off" / "log.csv")["total"].iloc[-1] > 1e5
    monkeypatch.undo()
    clean = T.train([csv], cfg, tmp_path / "clean" / "c.pt", tmp_path / "clean" / "log.csv",
                    device="cpu")
    a, b = (T.load_checkpoint(p)["model_state"] for p in (out, clean))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_deferred_loss_readback_changes_nothing(tmp_path):
    """``sync_every`` only changes when the host reads the losses: the same weights and log."""
    csv = make_subjects(tmp_path / "data", n=3)
    runs = {}
    for k in (1, 4):
        out = tmp_path / f"s{k}"
        T.train([csv], _cfg(cascade="D", iterations=7, checkpoint_every=3, sync_every=k),
                out / "c.pt", out / "log.csv", device="cpu")
        runs[k] = (T.load_checkpoint(out / "c.pt")["model_state"], pd.read_csv(out / "log.csv"))
    for name, v in runs[1][0].items():
        assert torch.equal(v, runs[4][0][name]), name
    a, b = (runs[k][1].drop(columns="seconds") for k in (1, 4))
    assert list(a["step"]) == list(range(1, 8))
    pd.testing.assert_frame_equal(a, b)
    assert runs[4][1]["seconds"].is_monotonic_increasing


@pytest.mark.filterwarnings("ignore:.*trains without augmentation")
def test_inv_voxelmorph_supervised_and_cli(tmp_path):
    csv = make_subjects(tmp_path / "data", n=3)
    # + inv: the model also runs on the swapped pair
    T.train([csv], _cfg(cascade="D", iterations=1, inv_weight=1e-3), tmp_path / "i.pt",
            tmp_path / "i.csv", device="cpu")
    cols = pd.read_csv(tmp_path / "i.csv").columns
    # the paper's "+ inv": the reverse run adds the invertibility term only
    assert "inv" in cols and not any(c.endswith("_rev") for c in cols)
    # VoxelMorph-2
    T.train([csv], _cfg(type="voxelmorph2", cascade="D", iterations=1, reg_weight=1.0),
            tmp_path / "v.pt", tmp_path / "v.csv", device="cpu", ckpt_dir=tmp_path / "vck")
    assert T.load_checkpoint(tmp_path / "v.pt")["model_config"]["type"] == "voxelmorph2"
    assert list(pd.read_csv(tmp_path / "v.csv").columns)[4:] == ["total", "ncc", "grad", "probe"]
    # supervised on listed pairs with a known target
    tdir = tmp_path / "targets"
    for f, m in (("s00", "s01"), ("s02", "s00")):
        save_disp_l2r(tdir / f"disp_{f}_{m}.nii.gz", np.full((3, 16, 16, 16), 0.5, np.float32),
                      np.eye(4))
    pd.DataFrame({"fixed": ["s00", "s02"], "moving": ["s01", "s00"]}).to_csv(
        tmp_path / "tp.csv", index=False)
    yaml = tmp_path / "sup.yaml"
    yaml.write_text("type: vtn\ncascade: D\nimage_size: 16\nepochs: 1\niterations: 2\nbatch: 2\n"
                    "augment: true\nsupervised: true\ncheckpoint_every: 5\n")
    rc = T.cli(["--subjects", str(csv), "--config", str(yaml), "--out", str(tmp_path / "s.pt"),
                "--log", str(tmp_path / "s.csv"), "--device", "cpu", "--targets", str(tdir),
                "--target-pairs", str(tmp_path / "tp.csv"), "--ckpt-dir", str(tmp_path / "sck")])
    assert rc == 0 and (tmp_path / "s.pt").exists()
    log = pd.read_csv(tmp_path / "s.csv")
    assert "epe" in log.columns and "sim_0" not in log.columns
    # errors name the file
    pd.DataFrame({"fixed": ["s00"], "moving": ["s09"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"bad\.csv.*'s09'"):
        T.train([csv], yaml, tmp_path / "x.pt", tmp_path / "x.csv", device="cpu",
                targets=tdir, target_pairs=tmp_path / "bad.csv", ckpt_dir=tmp_path / "xck")
    small = make_subjects(tmp_path / "small", n=2, size=8)
    rc = T.cli(["--subjects", str(small), "--config", str(yaml), "--out", str(tmp_path / "y.pt"),
                "--log", str(tmp_path / "y.csv"), "--device", "cpu"])
    assert rc == 1


def test_bench_json(capsys):
    import json

    from vtn import bench
    from vtn.cli import main

    assert bench.cli(["--size", "32", "--batch", "2", "--repeats", "1", "--device", "cpu",
                      "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("infer_ms_per_pair_b1", "infer_ms_per_pair", "train_ms_per_step"):
        assert res[key] > 0
    assert res["cascade"] == "ADDD" and res["size"] == 32 and res["batch"] == 2
    assert res["train_peak_mib"] is None and res["device"] == "cpu"
    assert res["params"] > 1_000_000
    # dispatched as `vtn bench`, human-readable output
    assert main(["bench", "--cascade", "D", "--size", "16", "--batch", "2", "--repeats", "1",
                 "--device", "cpu", "--inv"]) == 0
    text = capsys.readouterr().out
    assert "D +inv at 16^3" in text and "training step, batch 2:" in text


def test_nonfinite_parameters_are_not_checkpointed(tmp_path, monkeypatch):
    csv = make_subjects(tmp_path / "data", n=3)
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += torch.is_grad_enabled()  # training steps only (the probe: no_grad)
        out = real_step(self, *a, **k)
        if calls["n"] == 4:  # finite loss, but the update poisons a weight
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(T.NonFiniteLossError, match=r"step 4: .*parameters became NaN/Inf"):
        T.train(str(csv), _cfg(cascade="D", augment=False), tmp_path / "c.pt",
                tmp_path / "log.csv", device="cpu")
    assert T.latest_checkpoint(tmp_path / "ckpt").name == "step000000002.pt"
    state = T.load_checkpoint(tmp_path / "ckpt" / "step000000002.pt")["model_state"]
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize("total, every, expected", [
    (30, 100, [27, 30]), (6, 2, [2, 4, 5, 6]), (10, 5, [5, 9, 10]), (1, 1, [1]),
    (880, 110, [110, 220, 330, 440, 550, 660, 770, 792, 880])])
def test_probe_steps(total, every, expected):
    from vtn.train.probe import probe_steps

    assert sorted(probe_steps(total, every)) == expected


@pytest.mark.parametrize("total, every", [(0, 1), (5, 0)])
def test_probe_steps_bad_input(total, every):
    from vtn.train.probe import probe_steps

    with pytest.raises(ValueError, match="total" if total < 1 else "checkpoint_every"):
        probe_steps(total, every)


def test_probe_numbers_are_distinct_and_fixed():
    from vtn.train.probe import probe_numbers

    a = probe_numbers(12, 8, seed=3)
    assert len(set(a)) == 8 and all(0 <= v < 12 for v in a) and a == probe_numbers(12, 8, 3)
    assert a != probe_numbers(12, 8, seed=4)
    assert sorted(probe_numbers(6, 16, seed=3)) == list(range(6))  # capped at the pairs there are


def test_probe_is_logged_and_leaves_training_unchanged(tmp_path):
    from vtn.train.probe import ProbeSet

    csv = make_subjects(tmp_path / "data", n=4)
    cfg = _cfg(iterations=10, checkpoint_every=4, lr=1e-3)  # AD, batch 2, augmented
    with_probe = T.train([csv], dict(cfg, probe_pairs=5), tmp_path / "a" / "c.pt",
                         tmp_path / "a" / "log.csv", device="cpu")
    without = T.train([csv], dict(cfg, probe_pairs=0), tmp_path / "b" / "c.pt",
                      tmp_path / "b" / "log.csv", device="cpu")
    # the probe draws on generators of its own: the weights and the logged losses are identical
    wa = torch.load(with_probe, weights_only=True)["model_state"]
    wb = torch.load(without, weights_only=True)["model_state"]
    assert all(torch.equal(v, wb[k]) for k, v in wa.items())
    la, lb = (pd.read_csv(tmp_path / d / "log.csv") for d in "ab")
    assert "probe" not in lb.columns
    pd.testing.assert_frame_equal(la.drop(columns=["probe", "seconds"]),
                                  lb.drop(columns="seconds"))
    probed = la.dropna(subset="probe")
    assert probed["step"].tolist() == [4, 8, 9, 10]
    # independent recomputation of the last probe value: the final weights, a fresh model and
    # loss, the five probe pairs with their fixed augmentations, one pair at a time
    from vtn.train.data import load_subjects

    run_cfg = T.load_config(dict(cfg, probe_pairs=5))
    ids, images = load_subjects([csv], 16)
    schedule = T.PairSchedule(len(ids), run_cfg.seed)
    probe = ProbeSet(images, schedule, 5, run_cfg.seed, True)
    model, loss_fn = T.build_from_config(run_cfg)
    model.load_state_dict(wa)
    with torch.no_grad():
        values = [float(loss_fn(model(probe.fixed[k:k + 1], probe.moving[k:k + 1]),
                                probe.fixed[k:k + 1])[0]) for k in range(5)]
    assert probed["probe"].iloc[-1] == pytest.approx(np.mean(values), rel=1e-5)
    # not a trivial case: the augmentation changed the probe's moving images, and the probe
    # loss changed as the weights did
    assert not torch.equal(probe.moving, images[[schedule.pair(n)[1] for n in probe.numbers]])
    assert probed["probe"].nunique() == 4
