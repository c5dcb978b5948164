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
