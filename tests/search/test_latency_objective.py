"""`[search] cost = "latency"` on the tiny world: objective 0 is the measured latency relative to the teacher
timed in the same process, FLOPs stay a user attribute, the study's metric names and its report say so, and a
study keeps the cost it was created with. No assertion on a time's value beyond its sign."""

from __future__ import annotations

import math

import pytest
import torch
from optuna.trial import TrialState

from ledger.records import LATENCY_OBJECTIVE_NAMES, OBJECTIVE_NAMES
from reports import data, figures
from search.run import main
from tests.search.conftest import STUDY, load, run_args, sqlite_url
from tests.tiny_world import tiny_study_toml
from vlm.processing import encode_example, mcq_user_text
from vlm.timing import relative_latency

LATENCY = {"cost": "latency", "latency_questions": 2, "latency_repeats": 2, "latency_warmup": 0}


@pytest.fixture(scope="module")
def latency_study(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("latency")
    toml = tiny_study_toml(root, STUDY, world.teacher, world.data, **LATENCY)
    url = sqlite_url(root / "tiny.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(run_args(toml, url, 6)) == 0  # the six reference configs
    return root, toml, url


def test_objective_is_latency_relative_to_the_teacher(latency_study):
    _, _, url = latency_study
    study = load(url)
    assert study.metric_names == LATENCY_OBJECTIVE_NAMES
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) >= 5
    for trial in complete:
        attrs = trial.user_attrs
        assert trial.values[0] == attrs["latency_ratio"] > 0
        low, high = attrs["latency_ratio_spread"]
        assert low <= attrs["latency_ratio"] <= high
        assert attrs["latency_s"] > 0 and attrs["teacher_latency_s"] > 0
        assert attrs["speedup"] == pytest.approx(1 / attrs["latency_ratio"])
        assert attrs["gflops"] > 0  # FLOPs are still counted
    teacher = next(t for t in complete if t.user_attrs.get("reference") == "teacher")
    assert teacher.user_attrs["gflops"] == pytest.approx(study.user_attrs["baseline"]["gflops"])


def test_report_labels_the_objective(latency_study):
    _, _, url = latency_study
    report = data.report_data(load(url))
    assert report.facts.latency_cost and report.facts.teacher_cost == 1.0
    trials = report.trials[report.trials["state"] == "COMPLETE"]
    assert (trials["cost"] == trials["latency_ratio"]).all()
    assert not (trials["gflops"] == trials["cost"]).any()  # GFLOPs from the user attribute, not objective 0
    fig = figures.pareto_figure(report)
    assert fig.layout.xaxis.title.text.startswith("latency relative to the teacher")
    assert "measured latency" in fig.layout.title.text
    assert report.hypervolume["hypervolume"].iloc[-1] > 0  # measured against 1.1 x the teacher's ratio


def test_a_study_keeps_its_cost(latency_study, world, capsys):
    root, _, url = latency_study
    (root / "flops").mkdir(exist_ok=True)
    flops_toml = tiny_study_toml(root / "flops", STUDY, world.teacher, world.data)  # same name, cost = flops
    assert main(run_args(flops_toml, url, 7)) == 2
    err = capsys.readouterr().err
    assert "latency_vs_teacher" in err and "new study name" in err
    assert load(url).metric_names == LATENCY_OBJECTIVE_NAMES != OBJECTIVE_NAMES


def test_relative_latency_of_a_model_to_itself(world_teacher, world_validation):
    teacher, tokenizer = world_teacher
    prompts = [
        encode_example(
            tokenizer, teacher.cfg, teacher.image_spec, e.image, mcq_user_text(e.question, e.choices)
        )
        for e in world_validation[:2]
    ]
    with torch.random.fork_rng(devices=[]):
        timing = relative_latency(teacher, teacher, prompts, prompts, tokenizer.pad_token_id, 1, 3)
    assert timing["rounds"] == 3 and timing["questions"] == 2
    assert timing["ratio_min"] <= timing["ratio"] <= timing["ratio_max"]
    assert math.isfinite(timing["ratio"]) and timing["ratio"] > 0
    with pytest.raises(ValueError, match="same, non-empty"):
        relative_latency(teacher, teacher, prompts, prompts[:1], tokenizer.pad_token_id)
