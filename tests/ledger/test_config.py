"""Study configs: every checked-in one loads, typos fail loudly, and the references fit the space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from ledger.config import (
    SearchSettings,
    SpaceSettings,
    StudyConfig,
    load_study_config,
    study_config_from_dict,
)
from search.references import reference_params
from search.space import PARAMS, REDUCER_PARAMS, suggest_compression
from vlm.compression import plan_student
from vlm.config import VLMConfig

REPO = Path(__file__).resolve().parents[2]
CHECKED_IN = sorted((REPO / "studies").glob("*.toml"))


def test_the_real_and_demo_studies_are_checked_in():
    assert {p.stem for p in CHECKED_IN} >= {"aokvqa", "demo"}


@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: p.stem)
def test_every_checked_in_study_loads(path):
    config = load_study_config(str(path))
    assert isinstance(config, StudyConfig)
    assert config.name == path.stem  # the file name is the study name: `--study NAME` finds it


def test_unknown_section_is_named():
    with pytest.raises(ValueError, match="unknown section.*'serach'"):
        study_config_from_dict({"name": "x", "serach": {}})


def test_unknown_key_is_named_with_its_section():
    with pytest.raises(ValueError, match=r"\[search\].*'trails'"):
        study_config_from_dict({"name": "x", "search": {"trails": 3}})


def test_missing_name():
    with pytest.raises(ValueError, match="missing 'name'"):
        study_config_from_dict({"search": {}})


def test_lists_become_tuples_so_configs_stay_hashable():
    config = study_config_from_dict({"name": "x", "space": {"view_sizes": [32, 64], "token_grid": [2, 4]}})
    assert config.space.view_sizes == (32, 64)
    assert config.space.token_grid == (2, 4)
    hash(config.space)


def test_missing_study_lists_the_available_ones(monkeypatch):
    monkeypatch.setenv("VLMC_HOME", str(REPO))
    with pytest.raises(FileNotFoundError) as info:
        load_study_config("no-such-study")
    message = str(info.value)
    assert "no-such-study" in message
    assert "'aokvqa'" in message and "'demo'" in message


def test_a_study_name_resolves_under_the_root(monkeypatch):
    monkeypatch.setenv("VLMC_HOME", str(REPO))
    assert load_study_config("demo") == load_study_config(str(REPO / "studies" / "demo.toml"))


def test_a_missing_toml_path_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_study_config(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"token_grid": (0, 8)}, "token_grid"),
        ({"token_grid": (6, 4)}, "token_grid"),
        ({"max_grid_side": (0, 2)}, "max_grid_side"),
        ({"max_grid_side": (3, 2)}, "max_grid_side"),
        ({"view_sizes": ()}, "view_sizes"),
        ({"resampler_widths": ()}, "resampler_widths"),
        ({"max_drop_decoder": -1}, "max_drop"),
        ({"max_drop_encoder": -1}, "max_drop"),
    ],
)
def test_space_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpaceSettings(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"constraint_ratio": 0.0}, "constraint_ratio"), ({"constraint_ratio": 1.5}, "constraint_ratio")]
    + [({"sampler": "cmaes"}, "sampler")],
)
def test_search_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSettings(**kwargs)


@pytest.mark.parametrize("section", ["search", "distill"])
@pytest.mark.parametrize(
    "key, value",
    [("resampler_match_steps", -1), ("scorer_saliency_steps", -5), ("resampler_match_lr", 0.0)]
    + [("scorer_saliency_lr", -1e-3)],
)
def test_both_sections_check_the_fresh_weights_first_phases(section, key, value):
    with pytest.raises(ValueError, match=key):
        study_config_from_dict({"name": "x", section: {key: value}})


def test_validation_errors_surface_through_the_loader():
    with pytest.raises(ValueError, match="token_grid"):
        study_config_from_dict({"name": "x", "space": {"token_grid": [5, 2]}})


def _within(space: SpaceSettings, params: dict) -> bool:
    return (
        space.token_grid[0] <= params["token_grid"] <= space.token_grid[1]
        and params["view_size"] in space.view_sizes
        and space.max_grid_side[0] <= params["max_grid_side"] <= space.max_grid_side[1]
        and 0 <= params["n_drop_decoder"] <= space.max_drop_decoder
        and 0 <= params["n_drop_encoder"] <= space.max_drop_encoder
        and params["resampler_width"] in space.resampler_widths
    )


def test_references_for_nanovlm_on_the_aokvqa_space():
    cfg = VLMConfig()  # the real nanoVLM: 512 px views, patch 16, pixel shuffle 4 -> 8x8 tokens, 4 crops
    space = load_study_config(str(REPO / "studies" / "aokvqa.toml")).space
    refs = reference_params(cfg, space)
    assert list(refs)[0] == "teacher"
    teacher = refs["teacher"]
    assert teacher == {
        "token_grid": 8,
        "view_size": 512,
        "max_grid_side": 4,
        "n_drop_decoder": 0,
        "n_drop_encoder": 0,
        "resampler_width": 0,
        "token_reducer": "none",  # aokvqa.toml lists token reducers
    }
    assert refs["3/4 view size"] == {**teacher, "view_size": 384, "token_grid": 6}
    assert refs["pool 6x6"] == {**teacher, "token_grid": 6}
    assert refs["pool 4x4"] == {**teacher, "token_grid": 4}
    assert refs["global view only"] == {**teacher, "max_grid_side": 1}
    assert refs["50% resampler"] == {**teacher, "token_grid": 6, "resampler_width": 512}
    assert refs["norm drop 50%"] == {**teacher, "token_reducer": "norm_drop", "keep_fraction": 0.5}
    assert refs["score prune 50%"] == {**teacher, "token_reducer": "score_prune", "keep_fraction": 0.5}
    for name, params in refs.items():
        assert set(PARAMS) <= set(params) <= set(PARAMS) | set(REDUCER_PARAMS), name
        assert _within(space, params), name  # so study.enqueue_trial(params) is valid


@pytest.mark.parametrize("study", ["aokvqa", "demo", "demo-reducers", "demo-latency"])
def test_every_reference_is_a_valid_student(study):
    """Each reference plans without CompressionError (none would be pruned as invalid)."""
    from vlm.demo.teacher import demo_vlm_config

    cfg = VLMConfig() if study == "aokvqa" else demo_vlm_config(vocab_size=200)
    space = load_study_config(str(REPO / "studies" / f"{study}.toml")).space
    for name, params in reference_params(cfg, space).items():
        assert _within(space, params), name
        compression = suggest_compression(
            optuna.trial.FixedTrial(params), space, range(cfg.lm_n_blocks), range(cfg.vit_n_blocks)
        )
        plan = plan_student(cfg, compression)
        tokens = params["token_grid"] ** 2
        if "keep_fraction" in params:  # the 50% norm-drop and score-prune references
            tokens = round(params["keep_fraction"] * tokens)
        assert plan.tokens_per_view == tokens, name


def test_shipped_studies_are_found_from_any_folder(tmp_path, monkeypatch):
    """`--study demo` works with $VLMC_HOME and the current folder elsewhere; artifacts still go there."""
    monkeypatch.setenv("VLMC_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = load_study_config("demo")
    assert config.name == "demo" and config.artifacts_dir == tmp_path / "studies" / "demo"
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "demo.toml").write_text(
        (REPO / "studies" / "demo.toml").read_text().replace('name = "demo"', 'name = "demo"\n# local copy')
    )
    assert load_study_config("demo") == config  # a local studies/demo.toml takes precedence (same content)
