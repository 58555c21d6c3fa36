"""The dry run's derived study: same shapes and space as the real study, smaller budgets, a TOML that reads
back equal, and one valid trial per knob (the run itself: tests/test_real_shapes.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from optuna.trial import FixedTrial

from dryrun.run import DryRunScale, dryrun_study_config, knob_params, teacher_config, write_study_toml
from ledger.config import DRY_RUN_SUFFIX, load_study_config
from search.space import suggest_compression
from vlm.compression import plan_student
from vlm.config import VLMConfig

AOKVQA = Path(__file__).parents[2] / "studies" / "aokvqa.toml"


def test_the_derived_study_keeps_every_shape_and_scales_only_budgets(tmp_path):
    real = load_study_config(str(AOKVQA))
    scale = DryRunScale()
    dry = dryrun_study_config(real, tmp_path / "teacher", tmp_path / "data", scale)
    assert dry.name == "aokvqa" + DRY_RUN_SUFFIX
    assert dry.space == real.space
    assert (dry.model.device, dry.model.dtype) == (real.model.device, real.model.dtype)
    same = ("batch_size", "feature_cache_mb", "constraint_ratio", "sampler", "promotion_margin", "early_stop")
    assert all(getattr(dry.search, k) == getattr(real.search, k) for k in same)
    assert (dry.data.subset_size, dry.distill.steps) == (scale.questions, scale.distill_steps)
    assert dry.distill.batch_size == real.distill.batch_size and dry.distill.lr == real.distill.lr
    again = load_study_config(str(write_study_toml(dry, tmp_path / "study.toml")))
    assert again == dry


def test_a_hub_teacher_stands_for_nanovlms_config_and_a_folder_gives_its_own(tmp_path):
    assert teacher_config("lusxvr/nanoVLM") == VLMConfig()
    small = dataclasses.replace(VLMConfig(), lm_n_blocks=2)
    (tmp_path / "config.json").write_text(__import__("json").dumps(small.to_dict()))
    assert teacher_config(str(tmp_path)) == small


def test_every_knob_trial_is_a_valid_student_of_the_real_teacher():
    real = load_study_config(str(AOKVQA))
    cfg = VLMConfig()
    knobs = knob_params(cfg, real.space)
    assert {"widest resampler", "drop the most decoder blocks", "token merging, most per block"} <= set(knobs)
    assert {f"view size {v}" for v in (256, 320, 448)} <= set(knobs)  # 384: the 3/4 view size reference
    orders = list(range(cfg.lm_n_blocks)), list(range(cfg.vit_n_blocks))
    for params in knobs.values():
        compression = suggest_compression(FixedTrial(params), real.space, *orders)
        plan_student(cfg, compression)  # raises CompressionError for an invalid one
    assert knobs["drop the most decoder blocks"]["n_drop_decoder"] == 16


def test_scale_rejects_more_scored_questions_than_the_split_holds():
    with pytest.raises(ValueError, match="questions"):
        DryRunScale(questions=5, validation=3)
