"""Promotion rule on a real (in-memory) optuna study: Pareto set, near-threshold savings, one per config."""

from __future__ import annotations

import optuna
from optuna.distributions import IntDistribution

from ledger.rules import promoted_trials

X = 0.40
RATIO = 0.85  # threshold 0.34


def _add(study: optuna.Study, grid: int, gflops: float, accuracy: float) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            params={"token_grid": grid},
            distributions={"token_grid": IntDistribution(1, 8)},
            values=[gflops, accuracy],
            constraints={"accuracy_floor": RATIO * X - accuracy},  # feasible when <= 0
        )
    )


def test_pareto_set_near_threshold_savings_and_one_trial_per_config():
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_user_attr("baseline", {"accuracy": X, "gflops": 1.0})
    study.set_user_attr(
        "study_config", {"search": {"constraint_ratio": RATIO}}
    )  # the ratio it was searched at
    _add(study, 8, 1.0, 0.40)  # 0: teacher, on the front
    _add(study, 6, 0.6, 0.36)  # 1: front
    _add(study, 5, 0.7, 0.35)  # 2: dominated by 1
    _add(study, 4, 0.4, 0.345)  # 3: front, cheapest feasible
    _add(study, 4, 0.4, 0.345)  # 4: same config as 3 again (TPE repeats): not promoted twice
    _add(study, 2, 0.2, 0.32)  # 5: infeasible, within the 0.03 margin and cheaper: near-threshold
    _add(study, 1, 0.1, 0.25)  # 6: infeasible, too far below the line
    rows = promoted_trials(study, margin=0.03)
    assert [(r.trial, r.why) for r in rows] == [
        (5, "near-threshold"),
        (3, "pareto"),
        (1, "pareto"),
        (0, "pareto"),
    ]
