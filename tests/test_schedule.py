"""The two readings of the paper's learning-rate schedule (vtn.schedule)."""

import pytest

from vtn.schedule import SCHEDULES, learning_rate


def test_reference_schedule_is_the_authors_code():
    # RCN train.py: learningRates[step // 20000] = 1e-4, 1e-4, 1e-4, 1e-4/2, 1e-4/4, 1e-4/8, ...
    assert [learning_rate(e, 1e-4) for e in range(7)] == [
        1e-4, 1e-4, 1e-4, 5e-5, 2.5e-5, 1.25e-5, 6.25e-6]
    assert [learning_rate(e, 1e-4, "reference") for e in range(5)] == [
        1e-4, 1e-4, 1e-4, 5e-5, 2.5e-5]


def test_paper_text_schedule_halves_after_the_fourth_epoch():
    assert [learning_rate(e, 1e-4, "paper_text") for e in range(7)] == [
        1e-4, 1e-4, 1e-4, 1e-4, 5e-5, 2.5e-5, 1.25e-5]


def test_scaling_override_and_errors():
    # scaling the base rate scales the schedule; halve_after overrides the schedule's start
    assert [learning_rate(e, 2e-3, "reference") for e in range(5)] == [
        2e-3, 2e-3, 2e-3, 1e-3, 5e-4]
    assert learning_rate(0, 2e-3, halve_after=0) == 1e-3
    assert learning_rate(3, 1.0, "paper_text", halve_after=2) == 0.25
    assert set(SCHEDULES) == {"reference", "paper_text"}
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, 1e-4, "cosine")
    with pytest.raises(ValueError, match="epoch"):
        learning_rate(-1, 1e-4)
