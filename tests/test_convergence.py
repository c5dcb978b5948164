"""The plateau criterion of vtn.report.convergence on curves with known answers."""

import numpy as np
import pandas as pd
import pytest

from vtn.io import InputError
from vtn.report import convergence as cv


def test_exact_windows():
    # T = 100: S_prev = mean(steps 81..90) = 2, S_end = mean(steps 91..100) = 1.97 -> 1.5 %
    steps = np.arange(1, 101)
    loss = np.where(steps > 90, 1.97, np.where(steps > 80, 2.0, 5.0))
    res = cv.plateau(steps, loss)
    assert res["steps"] == 100
    assert res["loss_prev"] == pytest.approx(2.0) and res["loss_end"] == pytest.approx(1.97)
    assert res["drop_pct"] == pytest.approx(1.5)
    assert res["flat"]
    # 2.5 % is still falling
    loss2 = np.where(steps > 90, 1.95, loss)
    assert cv.plateau(steps, loss2)["drop_pct"] == pytest.approx(2.5)
    assert not cv.plateau(steps, loss2)["flat"]
    assert res["drop_se_pct"] == 0.0  # constant windows: no noise


def test_standard_error_of_the_drop():
    # windows of k = 10 rows: prev alternates 1.9 / 2.1 (mean 2, sample var 0.01 * 10/9),
    # end alternates 1.8 / 2.2 (mean 2, sample var 0.04 * 10/9): SE = sqrt((v1 + v2) / 10) / 2
    steps = np.arange(1, 101)
    alt = np.where(steps % 2 == 0, 1.0, -1.0)
    loss = np.where(steps > 90, 2 + 0.2 * alt, np.where(steps > 80, 2 + 0.1 * alt, 9.0))
    res = cv.plateau(steps, loss)
    v1, v2 = 0.01 * 10 / 9, 0.04 * 10 / 9
    assert res["drop_pct"] == pytest.approx(0.0, abs=1e-9)
    assert res["drop_se_pct"] == pytest.approx(100 * np.sqrt((v1 + v2) / 10) / 2)
    assert res["drop_se_pct"] == pytest.approx(
        100 * np.sqrt(np.var(loss[80:90], ddof=1) / 10 + np.var(loss[90:], ddof=1) / 10) / 2)
    assert cv.plateau([1, 2], [2.0, 1.0])["drop_se_pct"] == 0.0  # one-row windows


def test_sparse_log_and_exponential_curve():
    # exp(-t/tau) + c logged every 5 steps: the drop is known in closed form
    T, tau, c = 1000, 150.0, 0.5
    steps = np.arange(5, T + 1, 5)
    loss = np.exp(-steps / tau) + c
    prev = loss[(steps > 800) & (steps <= 900)].mean()
    end = loss[steps > 900].mean()
    res = cv.plateau(steps, loss)
    assert res["drop_pct"] == pytest.approx(100 * (prev - end) / prev)
    assert res["flat"]  # the tail is e^-6 small against c
    fast = cv.plateau(steps, np.exp(-steps / 2000.0) + c)
    assert not fast["flat"]  # a slowly decaying curve is not flat


def test_negative_loss_sign_convention():
    # VoxelMorph-2 loss is negative: falling from -0.30 to -0.33 is a +10 % drop
    steps = np.arange(1, 21)
    loss = np.where(steps > 18, -0.33, -0.30)
    assert cv.plateau(steps, loss)["drop_pct"] == pytest.approx(10.0)
    # a rising loss is flat (negative drop), with its sign kept
    assert cv.plateau(steps, -loss)["drop_pct"] < 0 and cv.plateau(steps, -loss)["flat"]


def test_short_run_compares_its_last_rows():
    # 4 steps: a window is one row (ceil(0.4)); S_prev = step 3, S_end = step 4
    res = cv.plateau([1, 2, 3, 4], [4.0, 3.0, 2.0, 1.5])
    assert res["loss_prev"] == 2.0 and res["loss_end"] == 1.5 and not res["flat"]


@pytest.mark.parametrize("steps, losses, window", [
    ([1, 2, 3], [1.0, 2.0], 0.1),          # lengths differ
    ([], [], 0.1),                          # empty log
    ([7], [1.0], 0.1),                      # one logged row
    ([1, 2, 3], [1.0, 1.0, 1.0], 0.7),     # window too large
])
def test_bad_input(steps, losses, window):
    with pytest.raises(ValueError):
        cv.plateau(steps, losses, window)


def test_check_logs_and_summary(tmp_path):
    steps = np.arange(1, 201)
    flat = pd.DataFrame({"step": steps, "total": 1 + np.exp(-steps / 10.0)})
    falling = pd.DataFrame({"step": steps, "total": 2 - steps / 200.0})
    flat.to_csv(tmp_path / "a.csv", index=False)
    falling.to_csv(tmp_path / "b.csv", index=False)
    table = cv.check_logs({"A": tmp_path / "a.csv", "B": tmp_path / "b.csv"})
    assert list(table["model"]) == ["A", "B"]
    assert list(table["flat"]) == [True, False]
    line = cv.summary_line(table)
    assert "1 of 2 models" in line and "B (" in line and "A (" not in line
    with pytest.raises(InputError, match="c.csv"):
        cv.check_logs({"C": tmp_path / "c.csv"})
    pd.DataFrame({"step": steps}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(InputError, match="'total'"):
        cv.check_logs({"D": tmp_path / "d.csv"})


@pytest.mark.parametrize("total, start", [(1, 0), (5, 4), (10, 9), (30, 27), (100, 90),
                                          (880, 792), (1120, 1008)])
def test_last_window_start(total, start):
    # 0.1 * 30 is 3.0000000000000004 in floating point: the window still holds 3 steps
    assert cv.last_window_start(total) == start


def test_the_probe_decides_where_the_log_has_one(tmp_path):
    # T = 100: the logged loss "falls" 5 % over the last 10 steps (easier batches there), but the
    # probe (the same pairs with the weights of step 90 and of step 100) is flat: 1 %
    steps = np.arange(1, 101)
    total = np.where(steps > 90, 0.95, 1.0)
    probe = np.full(100, np.nan)
    probe[[49, 89, 99]] = [1.5, 1.00, 0.99]  # steps 50, 90, 100
    log = pd.DataFrame({"step": steps, "total": total, "probe": probe})
    log.to_csv(tmp_path / "easy_batches.csv", index=False)
    probe2 = probe.copy()
    probe2[99] = 0.95  # the weights still improve: 5 %
    log.assign(probe=probe2).to_csv(tmp_path / "learning.csv", index=False)
    log.drop(columns="probe").to_csv(tmp_path / "old.csv", index=False)
    log.assign(probe=np.where(steps == 90, np.nan, probe)).to_csv(tmp_path / "no90.csv",
                                                                   index=False)
    table = cv.check_logs({n: tmp_path / f"{n}.csv"
                           for n in ("easy_batches", "learning", "old", "no90")})
    assert list(table.columns) == cv.COLUMNS
    assert list(table["basis"]) == ["probe", "probe", "log", "log"]
    assert list(table["flat"]) == [True, False, False, False]
    assert table["drop_pct"].tolist() == pytest.approx([5.0] * 4)
    assert table["probe_drop_pct"].iloc[:2].tolist() == pytest.approx([1.0, 5.0])
    assert table["probe_prev"].iloc[0] == 1.0 and table["probe_end"].iloc[0] == 0.99
    assert table["probe_drop_pct"].iloc[2:].isna().all()
    line = cv.summary_line(table)
    assert line.startswith("Training curves: 1 of 4 models are at their plateau (the loss of "
                           "the fixed probe pairs (2 models) or, without a probe, the smoothed")
    assert "learning (5.0 %)" in line and "old (5.0 ± 0.0 % of the logged loss)" in line
    assert "easy_batches" not in line
    only_probe = cv.summary_line(table.iloc[:2])
    assert "(the loss of the fixed probe pairs drops by < 2 %" in only_probe
    assert cv.probe_drop([1, 2, 3], [np.nan, np.nan, np.nan]) is None
