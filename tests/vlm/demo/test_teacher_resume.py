"""A stopped teacher run resumes to the very weights an uninterrupted one reaches; the kind curriculum
asks what it says; the CLI refuses what it cannot do."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

import vlm.demo.teacher as teacher_module
import vlm.demo.vision_pretrain as vision_module
from tests.vlm.demo.tiny_recipe import TINY
from vlm.checkpoint import EXTRAS_FILE
from vlm.cli import UsageError
from vlm.demo.recipe import SessionMix, TeacherTrainConfig
from vlm.demo.scenes import Q_PRESENCE
from vlm.demo.sessions import vqa_session
from vlm.demo.teacher import build_demo_tokenizer, demo_vlm_config, train_teacher
from vlm.demo.train_teacher import accuracy_by_kind
from vlm.demo.train_teacher import main as train_teacher_main
from vlm.demo.training_state import STATE_FILE, RecipeMismatchError, TrainingState
from vlm.model import VisionLanguageModel
from vlm.tokenizer import special_token_ids


def _stop_on_call(monkeypatch, module, name: str, call: int) -> None:
    """Make ``module.name`` raise KeyboardInterrupt on its ``call``-th use, as a Ctrl-C there would."""
    original = getattr(module, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, _ = train_teacher(TINY, work_dir=tmp_path_factory.mktemp("straight"), checkpoint_every=1)
    return _weights(model)


@pytest.mark.parametrize(
    ("module", "name", "call"),
    [
        (vision_module, "_labelled_views", 3),  # during vision pre-training, after two steps
        (teacher_module, "vqa_session", 2 * 3 + 1),  # in the 4th VQA step, after the curriculum's two
    ],
    ids=["vision", "vqa"],
)
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path, monkeypatch, uninterrupted, module, name, call):
    with monkeypatch.context() as patch:
        _stop_on_call(patch, module, name, call)
        with pytest.raises(KeyboardInterrupt):
            train_teacher(TINY, work_dir=tmp_path, checkpoint_every=1)
    assert (tmp_path / STATE_FILE).is_file()
    model, _ = train_teacher(TINY, work_dir=tmp_path, checkpoint_every=1)
    resumed = _weights(model)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_a_saved_run_refuses_another_recipe(tmp_path):
    state = TrainingState(tmp_path, dataclasses.asdict(TINY))
    model = torch.nn.Linear(2, 2)
    state.finish("stage", model, 1.0, random.Random(0))
    with pytest.raises(RecipeMismatchError, match="--fresh"):
        TrainingState(tmp_path, dataclasses.asdict(dataclasses.replace(TINY, lr=1e-3)))
    again = TrainingState(tmp_path, dataclasses.asdict(TINY))
    assert again.is_done("stage") and again.result("stage") == 1.0


def test_the_kind_curriculum_asks_only_its_kinds():
    tokenizer = build_demo_tokenizer()
    cfg = demo_vlm_config(len(tokenizer))
    spec = VisionLanguageModel(cfg, special_token_ids(tokenizer, cfg)["image_token"]).image_spec
    mix = SessionMix(turns=4, caption_fraction=0.0, location_fraction=0.0, kinds=("presence",))
    rng = random.Random(0)
    for _ in range(3):
        text = tokenizer.decode(vqa_session(rng, tokenizer, cfg, spec, mix).input_ids)
        question = tokenizer.decode(tokenizer(Q_PRESENCE, add_special_tokens=False)["input_ids"])
        assert text.count(question) == text.count("assistant") == 4


def test_bad_curricula_are_refused():
    with pytest.raises(ValueError, match="unknown question kinds"):
        SessionMix(kinds=("colour",))
    with pytest.raises(ValueError, match="first_kinds exactly"):
        TeacherTrainConfig(first_kinds=(), first_steps=10)
    with pytest.raises(ValueError, match="first_steps must be"):
        TeacherTrainConfig(first_kinds=("presence",), first_steps=10_000)


def test_the_cli_refuses_a_missing_gpu_and_a_bad_curriculum_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert train_teacher_main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert train_teacher_main(["--vqa-steps", "100"]) == 2  # the default curriculum is 300 steps
    assert "--first-steps 0 for no curriculum" in capsys.readouterr().err
    assert train_teacher_main(["--location-fraction", "1.5"]) == 2
    assert "location_fraction must be in [0, 1]" in capsys.readouterr().err
    assert train_teacher_main(["--device", "tpu"]) == 2
    assert "not a device name" in capsys.readouterr().err
    with pytest.raises(UsageError, match="cpu or cuda"):
        from vlm.demo.train_teacher import _run, build_parser

        _run(build_parser().parse_args(["--device", "meta"]))


def test_the_vqa_curve_is_scored_every_n_steps_and_survives_a_resume(tmp_path, monkeypatch):
    calls = []

    def evaluate(model):
        assert not model.training  # scored in eval mode, trained again afterwards
        calls.append(1)
        return {"mcq": 0.25 * len(calls)}

    with monkeypatch.context() as patch:
        _stop_on_call(patch, teacher_module, "vqa_session", 2 * 3 + 1)  # in step 4, after step 2's point
        with pytest.raises(KeyboardInterrupt):
            train_teacher(TINY, work_dir=tmp_path, checkpoint_every=1, evaluate=evaluate, eval_every=2)
    train_teacher(
        TINY, tmp_path / "teacher", work_dir=tmp_path, checkpoint_every=1, evaluate=evaluate, eval_every=2
    )
    extras = json.loads((tmp_path / "teacher" / EXTRAS_FILE).read_text())
    assert [p["step"] for p in extras["vqa_curve"]] == [2, 4]  # step 2's point kept, not repeated
    assert extras["train_minutes"] > 0


def test_accuracy_by_kind_counts_each_kind_apart():
    from vlm.evaluate import MCQResult

    result = MCQResult(predictions={"a": 0, "b": 1, "c": 2})
    kinds = {"a": "size", "b": "size", "c": "count"}
    assert accuracy_by_kind(result, kinds, {"a": 0, "b": 0, "c": 2}) == {"count": 1.0, "size": 0.5}


def test_no_options_give_the_shipped_recipe_and_either_half_switches_the_curriculum_off():
    from vlm.demo.train_teacher import build_parser, config_from_args

    def config(*argv: str) -> TeacherTrainConfig:
        return config_from_args(build_parser().parse_args(list(argv)))

    assert config() == TeacherTrainConfig()
    for off in (["--first-steps", "0"], ["--first-kinds"]):
        assert (config(*off).first_kinds, config(*off).first_steps) == ((), 0)
    balanced = config("--balance-relations", "--location-fraction", "0")
    assert balanced.session.balance_relations and balanced.session.location_fraction == 0
    assert config("--vit-width", "96").vit_width == 96
