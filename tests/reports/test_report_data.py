"""The report's numbers, checked on the hand-built study of conftest.py."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from ledger.rules import is_feasible
from reports import data
from tests.reports.conftest import DECODER_LAYERS, RATIO, TEACHER_GFLOPS, X, make_study
from vlm.cli import UsageError


@pytest.fixture
def report(study) -> data.ReportData:
    return data.report_data(study, RATIO)


def test_facts_come_from_the_study_and_the_ratio(study):
    facts = data.study_facts(study, RATIO)
    assert (facts.accuracy, facts.gflops, facts.n) == (X, TEACHER_GFLOPS, 500)
    assert facts.threshold == pytest.approx(0.68)
    assert "test convention" in facts.convention
    assert data.study_facts(study).ratio == RATIO  # read back from the "study_config" attribute
    assert data.study_facts(study, 0.5).threshold == pytest.approx(0.4)


def test_a_study_without_baseline_is_refused():
    study = optuna.create_study(directions=["minimize", "maximize"])
    with pytest.raises(UsageError, match="no baseline"):
        data.study_facts(study, RATIO)


def test_feasible_split_by_ratio_times_x(report):
    trials = report.trials.set_index("number")
    assert list(trials["state"]) == ["COMPLETE"] * 6 + ["PRUNED", "FAIL", "COMPLETE"]
    feasible = set(trials.index[trials["feasible"]])
    assert feasible == {0, 1, 2, 3, 5, 8}  # 8 sits exactly on the line: accuracy >= 0.85 X is feasible
    assert not trials.at[4, "feasible"]
    assert math.isnan(trials.at[6, "gflops"]) and trials.at[6, "reason"] == "token grid 3 does not fit"
    assert trials.at[7, "reason"] == "RuntimeError: boom"


def test_a_lower_ratio_moves_the_line(study):
    trials = data.trials_frame(study, data.study_facts(study, 0.7))
    assert trials.set_index("number").at[4, "feasible"]  # 0.60 >= 0.7 * 0.8 = 0.56


def test_trial_columns(report):
    trials = report.trials.set_index("number")
    assert trials.at[1, "reduction_pct"] == pytest.approx(50.0)
    assert trials.at[0, "reference"] == "teacher" and trials.at[2, "reference"] == ""
    assert trials.at[1, "image_tokens"] == 13 * 16
    assert trials.at[0, "decoder_layers_kept"] == DECODER_LAYERS  # recorded by the objective
    assert trials.at[3, "decoder_layers_kept"] == DECODER_LAYERS - 4  # derived: depth minus drops
    assert trials.at[2, "config"] == "4x4 tok, 512px, global only"
    assert trials.at[3, "config"] == "8x8 tok, 384px, grid<=4, -4 dec"
    assert report.params == [
        "token_grid",
        "view_size",
        "max_grid_side",
        "n_drop_decoder",
        "n_drop_encoder",
        "resampler_width",
    ]


def test_config_label_names_every_knob():
    params = {
        "token_grid": 6,
        "view_size": 384,
        "max_grid_side": 2,
        "n_drop_decoder": 3,
        "n_drop_encoder": 1,
        "resampler_width": 256,
    }
    assert data.config_label(params) == "6x6 tok, 384px, grid<=2, -3 dec, -1 enc, resampler 256"


def test_state_counts(report):
    assert data.state_counts(report.trials) == {"COMPLETE": 7, "FAIL": 1, "PRUNED": 1}


def test_pareto_rows_are_the_constrained_front(report):
    # Trial 4 (10 GFLOPs, 0.60) would lead an unconstrained front; below the line it is left out.
    assert list(report.front["number"]) == [2, 1, 0]
    assert list(report.front["gflops"]) == [20.0, 50.0, 100.0]
    assert list(report.front["accuracy"]) == [0.70, 0.75, 0.80]


def test_finalized_rows_and_arrows(report):
    finalized = report.finalized
    assert list(finalized["trial"]) == [4, 2, 1]  # fewest distilled FLOPs first
    arrows = {a.trial: a for a in data.arrows(finalized)}
    assert arrows[1] == data.Arrow(1, 50.0, 0.75, 50.0, 0.78)  # post-hoc point -> distilled point
    assert arrows[2] == data.Arrow(2, 20.0, 0.70, 18.0, 0.71)
    assert arrows[4] == data.Arrow(4, 10.0, 0.60, 10.0, 0.69)
    row = finalized.set_index("trial").loc[2]
    assert row["da_accuracy"] == 0.50 and row["distilled_reduction_pct"] == pytest.approx(82.0)


def test_distilled_reduction_uses_the_teachers_flops_on_the_same_questions(study):
    record = dict(study.user_attrs["finalized:2"], teacher_gflops=90.0)  # full split: shorter prompts
    study.set_user_attr("finalized:2", record)
    row = data.report_data(study, RATIO).finalized.set_index("trial").loc[2]
    assert row["distilled_reduction_pct"] == pytest.approx(80.0)  # 18 of 90, not of the subset's 100


def test_a_resampled_config_is_listed_once_on_the_front(study):
    again = study.trials[2]  # TPE sampling trial 2's config again: same params, same scores
    study.add_trial(
        create_trial(
            state=again.state,
            values=again.values,
            params=again.params,
            distributions=again.distributions,
            user_attrs=again.user_attrs,
        )
    )
    assert list(data.report_data(study, RATIO).front["number"]) == [2, 1, 0]


def test_summary_joins_front_and_finalized(report):
    summary = report.summary
    assert list(summary["number"]) == [4, 2, 1, 0]
    assert list(summary["role"]) == ["finalized", "pareto, finalized", "pareto, finalized", "pareto"]
    row = summary.set_index("number").loc[1]
    assert (row["distilled_accuracy"], row["da_accuracy"], row["views"]) == (0.78, 0.55, 13.0)
    assert math.isnan(summary.set_index("number").at[0, "distilled_accuracy"])


def test_hypervolume_of_two_points_by_hand():
    # Boxes [1, 4] x [0, 0.5] and [2, 4] x [0, 0.8]: 3 * 0.5 + 2 * (0.8 - 0.5) = 2.1.
    assert data.hypervolume_2d([(1, 0.5), (2, 0.8)], (4, 0.0)) == pytest.approx(2.1)
    assert data.hypervolume_2d([(2, 0.8), (1, 0.5)], (4, 0.0)) == pytest.approx(2.1)  # order-free
    assert data.hypervolume_2d([(1, 0.5), (3, 0.4)], (4, 0.0)) == pytest.approx(1.5)  # dominated adds 0
    assert data.hypervolume_2d([(5, 0.9), (1, -0.1)], (4, 0.0)) == 0.0  # outside the reference box
    assert data.hypervolume_2d([], (4, 0.0)) == 0.0


def test_hypervolume_curve_uses_feasible_trials_so_far(report):
    reference = data.hypervolume_reference(report.facts)
    assert reference == (pytest.approx(110.0), 0.0)
    curve = report.hypervolume.set_index("number")["hypervolume"]
    assert curve[0] == pytest.approx(10 * 0.8)  # the teacher alone
    assert curve[1] == pytest.approx(60 * 0.75 + 10 * 0.05)
    assert curve[2] == pytest.approx(90 * 0.70 + 60 * 0.05 + 10 * 0.05)
    assert curve[8] == pytest.approx(curve[2])  # later trials are dominated, and 4 is infeasible
    assert list(curve.index) == list(range(9))
    assert report.hypervolume.set_index("number").at[8, "feasible_so_far"] == 6


def test_spearman_on_hand_data():
    assert data.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert data.spearman([0.1, 0.5, 0.2], [10, 30, 20]) == pytest.approx(1.0)
    assert data.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their average rank: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4).
    assert data.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_rank_correlation_of_finalized_trials(report):
    corr = report.correlation  # three finalized trials: too few to show one
    assert corr.rho is None and corr.n == 3 and "needs at least 5" in corr.note
    shown = data.rank_correlation(report.finalized, min_n=3)
    assert shown.rho == pytest.approx(1.0)  # post-hoc 0.60 < 0.70 < 0.75, distilled too
    assert "95% CI" in shown.note and shown.ci_low <= shown.rho <= shown.ci_high
    tied = report.finalized.assign(distilled_accuracy=0.5)
    assert data.rank_correlation(tied, min_n=3).rho is None


def test_spearman_interval_by_hand():
    # z = atanh(0.5) = 0.5493, se = sqrt(1 + 0.5^2 / 2) / sqrt(10 - 3) = 0.4009, half-width 1.96 se = 0.7858
    low, high = data.spearman_interval(0.5, 10)
    assert (low, high) == (
        pytest.approx(math.tanh(0.5493 - 0.7858), abs=1e-3),
        pytest.approx(0.8707, abs=1e-3),
    )
    assert data.spearman_interval(0.9, 3) == (-1.0, 1.0)  # undefined below 4 points: the whole range


def test_importances_skip_small_studies(report):
    imp = report.importances
    assert imp.frame.empty
    assert set(imp.notes) == {"gflops_per_question", "accuracy"}
    assert all("skipped" in note for note in imp.notes.values())


def test_importances_per_objective():
    study = optuna.create_study(directions=["minimize", "maximize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["gflops_per_question", "accuracy"])
    dists = {"token_grid": IntDistribution(1, 8), "n_drop_decoder": IntDistribution(0, 16)}
    for i in range(40):
        k, drop = 1 + i % 8, (7 * i) % 17
        # FLOPs follow the token grid only; accuracy follows the dropped layers only.
        study.add_trial(
            create_trial(
                values=[10.0 * k, 1.0 - drop / 20],
                params={"token_grid": k, "n_drop_decoder": drop},
                distributions=dists,
            )
        )
    imp = data.importances(study)
    assert imp.notes == {}
    table = imp.frame.set_index(["objective", "param"])["importance"]
    assert table["gflops_per_question", "token_grid"] > table["gflops_per_question", "n_drop_decoder"]
    assert table["accuracy", "n_drop_decoder"] > table["accuracy", "token_grid"]
    for objective in ("gflops_per_question", "accuracy"):
        assert table[objective].sum() == pytest.approx(1.0)


def test_a_study_without_finalized_trials():
    bare = data.report_data(make_study(finalized=False), RATIO)
    assert bare.finalized.empty and list(bare.summary["number"]) == [2, 1, 0]
    assert bare.correlation.rho is None and bare.correlation.n == 0


def test_headline_names_the_cheapest_feasible_trial_post_hoc_and_distilled(report):
    line = data.headline(report)
    cheapest = report.front.sort_values("gflops").iloc[0]
    assert line.posthoc.trial == int(cheapest["number"]) and line.posthoc.cost == cheapest["gflops"]
    keeping = report.finalized[report.finalized["distilled_accuracy"] >= report.facts.threshold]
    best = keeping.sort_values("distilled_gflops").iloc[0]
    assert (
        line.distilled.trial == int(best["trial"]) and line.distilled.accuracy == best["distilled_accuracy"]
    )
    assert line.distilled.ci_low <= line.distilled.accuracy <= line.distilled.ci_high
    assert f"#{line.posthoc.trial}" in line.text and f"#{line.distilled.trial}" in line.text
    assert "% fewer" in line.text and "what-if" not in line.text


def test_a_different_ratio_is_a_labelled_what_if(study):
    own = data.report_data(study)
    assert not own.facts.what_if
    # Feasibility is the search's own verdict (optuna's constraints), the same as promote's.
    assert set(own.trials.loc[own.trials["feasible"], "number"]) == {
        t.number for t in study.trials if is_feasible(t)
    }
    lower = data.report_data(study, ratio=0.5)
    assert lower.facts.what_if and "what-if" in data.headline(lower).text
    assert lower.trials["feasible"].sum() >= own.trials["feasible"].sum()
