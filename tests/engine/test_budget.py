"""The time budget alone: seconds and iterations in, max_iter out. Every expectation is worked out
by hand in the comment beside it (cost = spent + remaining iterations x seconds per iteration +
(evaluations still to come + the final one) x seconds per evaluation)."""

import logging

import pytest

from detkit.engine.budget import TimeBudget


def feed(budget, seconds_per_iteration, first, last):
    """Iterations first..last, each taking ``seconds_per_iteration``; the max_iter after each."""
    return [budget.after_step(it, seconds_per_iteration) for it in range(first, last + 1)]


def test_fits_without_evaluations():
    budget = TimeBudget(1.0, 100)  # 60 s
    # 20 s spent at iteration 10, 2 s per iteration: 20 + 2 (n - 10) <= 60 -> n = 30
    assert budget.fits(10, spent=20.0, per_iter=2.0, per_eval=0.0) == 30
    # the final evaluation counts too: 20 + 2 (n - 10) + 10 <= 60 -> n = 25
    assert budget.fits(10, spent=20.0, per_iter=2.0, per_eval=10.0) == 25


def test_fits_counts_the_periodic_evaluations_still_to_come():
    budget = TimeBudget(1.0, 100, eval_period=10)  # 60 s
    # from iteration 10 to n = 35: evaluations at 20 and 30 and the final one (3 x 5 s), 25
    # iterations of 1 s: 20 + 25 + 15 = 60 fits; n = 36: 20 + 26 + 15 = 61 does not
    assert budget.fits(10, spent=20.0, per_iter=1.0, per_eval=5.0) == 35


def test_fits_stays_within_the_current_iteration_and_solver_max_iter():
    assert TimeBudget(10.0, 40).fits(3, spent=3.0, per_iter=1.0, per_eval=0.0) == 40
    assert TimeBudget(1.0, 40).fits(7, spent=100.0, per_iter=1.0, per_eval=0.0) == 7


def test_measured_twice_then_stopped_when_spent(caplog):
    budget = TimeBudget(0.5, 40, measure_iters=(3, 6))  # 30 s
    with caplog.at_level(logging.INFO, logger="detkit"):
        # 2 s per iteration; iteration 1 is not timed: 4 s over 2..3, 6 s spent at iteration 3;
        # 6 + 2 (n - 3) <= 30 -> n = 15
        assert feed(budget, 2.0, 1, 3) == [40, 40, 15]
        # then 1 s: 3 s over 4..6, 9 s spent at iteration 6; 9 + (n - 6) <= 30 -> n = 27
        assert feed(budget, 1.0, 4, 6) == [15, 15, 27]
    assert "max_iter 40 -> 15 (2.000 s per iteration over iterations 2..3;" in caplog.text
    assert "max_iter 15 -> 27 (1.000 s per iteration over iterations 4..6;" in caplog.text
    assert budget.stage == 2 and budget.sec_per_iter == 1.0
    # measured twice: a machine that slows to 5 s per iteration stops once 30 s are spent:
    # 14, 19, 24, 29 s after iterations 7..10, 34 s after iteration 11
    assert feed(budget, 5.0, 7, 11) == [27, 27, 27, 27, 11]
    assert budget.train_seconds == 34.0


def test_an_evaluation_fits_max_iter_again_at_its_cost(caplog):
    budget = TimeBudget(0.5, 40, eval_period=5, measure_iters=(3, 6))  # 30 s
    # 1 s per iteration over 2..3, no evaluation timed yet: 3 + (n - 3) <= 30 -> n = 30
    assert feed(budget, 1.0, 1, 5) == [40, 40, 30, 30, 30]
    with caplog.at_level(logging.INFO, logger="detkit"):
        # the evaluation at 5 took 4 s: 9 s spent. n = 15: 10 iterations, evaluations at 10 and at
        # the end: 9 + 10 + 8 = 27 fits; n = 16 adds the one at 15: 9 + 11 + 12 = 32 does not
        assert budget.after_eval(5, 4.0) == 15
    assert "max_iter 30 -> 15 (4.0 s per evaluation;" in caplog.text
    assert budget.evals == 1 and budget.eval_seconds == 4.0
    # measured again at 6 (1 s per iteration, 10 s spent): 10 + 9 + 8 = 27 for 15 still, kept
    assert budget.after_step(6, 1.0) == 15


def test_the_decisions_use_the_averaged_seconds():
    # two ranks where the other one has spent nothing: every total is halved
    budget = TimeBudget(0.5, 40, measure_iters=(2, 100), average=lambda xs: [x / 2 for x in xs])
    # halved: 1 s per iteration, 2 s spent at iteration 2: 2 + (n - 2) <= 30 -> n = 30 (15 with
    # this rank's own 2 s per iteration)
    assert feed(budget, 2.0, 1, 2) == [40, 30]


def test_no_budget_keeps_max_iter_and_still_counts_the_training_time():
    budget = TimeBudget(0.0, 40, measure_iters=(1, 2))
    assert not budget.enabled
    assert feed(budget, 100.0, 1, 3) == [40, 40, 40]
    assert budget.after_eval(3, 50.0) == 40 and budget.evals == 0
    assert budget.train_seconds == 300.0 and budget.state_dict()["applied"] is False


def test_resume_continues_the_saved_budget():
    budget = TimeBudget(0.5, 40, measure_iters=(3, 6))
    feed(budget, 2.0, 1, 3)  # max_iter 15, as in test_measured_twice_then_stopped_when_spent
    budget.setup_seconds = 5.0
    saved = budget.state_dict()
    assert saved == {
        "max_time_minutes": 0.5,
        "solver_max_iter": 40,
        "max_iter": 15,
        "applied": True,
        "stage": 1,
        "train_seconds": 6.0,
        "eval_seconds": 0.0,
        "setup_seconds": 5.0,
        "evals": 0,
        "sec_per_iter": 2.0,
    }
    resumed = TimeBudget(0.5, 40, measure_iters=(3, 6))
    resumed.setup_seconds = 1.0  # this process's own setup adds to the saved one
    assert resumed.load_state_dict(saved) == 15
    assert resumed.stage == 1 and resumed.sec_per_iter == 2.0
    assert (resumed.train_seconds, resumed.setup_seconds) == (6.0, 6.0)


def test_resume_with_another_budget_measures_again(caplog):
    saved = TimeBudget(0.5, 40, measure_iters=(3, 6))
    feed(saved, 2.0, 1, 3)
    resumed = TimeBudget(1.0, 40, measure_iters=(3, 6))
    with caplog.at_level(logging.WARNING, logger="detkit"):
        assert resumed.load_state_dict(saved.state_dict()) == 40
    assert "the time budget is measured again" in caplog.text
    assert resumed.stage == 0 and resumed.train_seconds == 6.0  # the time spent still counts


@pytest.mark.parametrize("saved", [None, {}])
def test_resume_without_a_saved_budget(saved):
    assert TimeBudget(0.5, 40).load_state_dict(saved) == 40
