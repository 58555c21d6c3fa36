"""A study built by hand with known numbers: X = 0.8, teacher 100 GFLOPs, ratio 0.85 -> line at 0.68.

trial  GFLOPs  accuracy  state     note
0      100     0.80      COMPLETE  reference "teacher"; on the constrained front
1       50     0.75      COMPLETE  reference "pool 4x4"; on the front; finalized -> (50, 0.78)
2       20     0.70      COMPLETE  on the front; finalized -> (18, 0.71)
3       30     0.69      COMPLETE  feasible, dominated by 2
4       10     0.60      COMPLETE  infeasible; finalized -> (10, 0.69)
5       60     0.72      COMPLETE  feasible, dominated by 1
6        -      -        PRUNED    invalid config
7        -      -        FAIL
8       40     0.85*0.8  COMPLETE  exactly on the line: feasible; dominated by 2
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

X, TEACHER_GFLOPS, RATIO = 0.8, 100.0, 0.85
NAME = "synthetic"

DISTRIBUTIONS = {
    "token_grid": IntDistribution(1, 8),
    "view_size": CategoricalDistribution((256, 320, 384, 448, 512)),
    "max_grid_side": IntDistribution(1, 4),
    "n_drop_decoder": IntDistribution(0, 16),
    "n_drop_encoder": IntDistribution(0, 6),
    "resampler_width": CategoricalDistribution((0, 256, 512, 768)),
}
TEACHER_PARAMS = {
    "token_grid": 8,
    "view_size": 512,
    "max_grid_side": 4,
    "n_drop_decoder": 0,
    "n_drop_encoder": 0,
    "resampler_width": 0,
}
# (GFLOPs, accuracy, state, param changes from the teacher's, user attrs)
TRIALS = [
    (100.0, 0.80, TrialState.COMPLETE, {}, {"reference": "teacher"}),
    (50.0, 0.75, TrialState.COMPLETE, {"token_grid": 4}, {"reference": "pool 4x4"}),
    (20.0, 0.70, TrialState.COMPLETE, {"token_grid": 4, "max_grid_side": 1}, {}),
    (30.0, 0.69, TrialState.COMPLETE, {"view_size": 384, "n_drop_decoder": 4}, {}),
    (10.0, 0.60, TrialState.COMPLETE, {"token_grid": 2, "max_grid_side": 1}, {}),
    (60.0, 0.72, TrialState.COMPLETE, {"resampler_width": 256, "token_grid": 6}, {}),
    (None, None, TrialState.PRUNED, {"token_grid": 3}, {"invalid_reason": "token grid 3 does not fit"}),
    (None, None, TrialState.FAIL, {"n_drop_encoder": 2}, {"fail_reason": "RuntimeError: boom"}),
    (40.0, RATIO * X, TrialState.COMPLETE, {"n_drop_encoder": 1}, {}),
]
FINALIZED = {
    1: {"gflops": 50.0, "mcq_accuracy": 0.78, "ci_low": 0.75, "ci_high": 0.81, "da_accuracy": 0.55},
    2: {"gflops": 18.0, "mcq_accuracy": 0.71, "ci_low": 0.68, "ci_high": 0.74, "da_accuracy": 0.50},
    4: {"gflops": 10.0, "mcq_accuracy": 0.69, "ci_low": 0.66, "ci_high": 0.72, "da_accuracy": 0.45},
}
DECODER_LAYERS, ENCODER_LAYERS = 30, 12


def make_study(storage=None, name: str = NAME, finalized: bool = True) -> optuna.Study:
    """The study of this module's docstring, in `storage` (in memory by default)."""
    study = optuna.create_study(
        study_name=name, storage=storage, directions=["minimize", "maximize"], load_if_exists=False
    )
    study.set_user_attr(
        "baseline", {"accuracy": X, "ci_low": 0.77, "ci_high": 0.83, "n": 500, "gflops": TEACHER_GFLOPS}
    )
    study.set_user_attr("flop_convention", "2 FLOPs per multiply-add (test convention)")
    study.set_user_attr(
        "study_config",
        {
            "name": name,
            "model": {"teacher": "lusxvr/nanoVLM", "dtype": "float32"},
            "data": {"source": "HuggingFaceM4/A-OKVQA", "split": "validation", "subset_size": 500},
            "search": {"constraint_ratio": RATIO, "sampler": "tpe", "trials": 9},
        },
    )
    study.set_user_attr(
        "block_importance",
        {"decoder": [0.1] * DECODER_LAYERS, "encoder": [0.1] * ENCODER_LAYERS},
    )
    for gflops, accuracy, state, changes, attrs in TRIALS:
        params = {**TEACHER_PARAMS, **changes}
        user_attrs = dict(attrs)
        if state == TrialState.COMPLETE:
            user_attrs.update(
                ci_low=accuracy - 0.03,
                ci_high=accuracy + 0.03,
                views=13.0,
                image_tokens=13.0 * params["token_grid"] ** 2,
                encoder_layers_kept=ENCODER_LAYERS - params["n_drop_encoder"],
            )
            if params["n_drop_decoder"] == 0:  # the others' decoder depth comes from block_importance
                user_attrs["decoder_layers_kept"] = DECODER_LAYERS
        study.add_trial(
            create_trial(
                state=state,
                values=None if gflops is None else [gflops, accuracy],
                params=params,
                distributions=DISTRIBUTIONS,
                user_attrs=user_attrs,
                constraints=(
                    {"accuracy_floor": RATIO * X - accuracy} if state == TrialState.COMPLETE else None
                ),
            )
        )
    if finalized:
        for number, record in FINALIZED.items():
            study.set_user_attr(
                f"finalized:{number}",
                {
                    "trial": number,
                    "n": 1145,
                    "keeps_constraint": record["mcq_accuracy"] >= RATIO * X,
                    "posthoc_full_accuracy": None,
                    **record,
                },
            )
    return study


@pytest.fixture
def study() -> optuna.Study:
    return make_study()
