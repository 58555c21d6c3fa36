"""The whole study at nanoVLM's real shapes: SigLIP2-base-512 and SmolLM2-360M widths, heads, patch 16, 512 px
views, pixel shuffle 4 (64 tokens per view) and the real 49,218-token vocabulary, but two blocks per tower.

One trial of every kind of config (the references: teacher, pooling, 3/4 view size, crops off, a resampler,
norm drop, score pruning; and `dryrun.run.knob_params`: every other view size, 1x1 pooling, dropped decoder
and encoder blocks, token merging; not its widest resampler and fewest tokens kept by score, kinds the
references run, each a warm-up of fresh weights) goes through the search, then
promotion, two distillation steps with a checkpoint, the evaluation and the report, by `dryrun.run.dry_run`:
a shape or dtype bug at real sizes fails here, not in a user's GPU hour. A 640x160 image keeps it fast: with
at most 2 crops per side it makes 2 crops of 512 px plus the global view (3 views of 1,024 patches each).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from dryrun.run import DryRunScale, dry_run, dryrun_tokenizer, knob_params
from ledger.config import load_study_config
from search.references import reference_params
from vlm.compression import compress
from vlm.config import BenchSettings, VLMConfig
from vlm.tokenizer import special_token_ids

AOKVQA = Path(__file__).parents[1] / "studies" / "aokvqa.toml"
TWO_BLOCKS = dataclasses.replace(VLMConfig(), vit_n_blocks=2, lm_n_blocks=2)
IMAGE = (640, 160)  # -> 1024x256 at 2 crops per side: 2 crops + the global view
SCALE = DryRunScale(
    questions=1,
    validation=1,
    test=1,
    train=2,
    calibration=1,
    warmup=1,
    warmup_steps=1,  # forward, backward and an optimizer step of the fresh weights
    distill_train=1,
    distill_steps=2,
    checkpoint_every=2,  # no checkpoint (the dry run of the real study writes one at 460M)
    sampled_trials=0,
)
# Knob trials of a kind a reference runs (the 50% resampler, score pruning of 50%): their warm-ups were a
# quarter of this test's time.
SKIPPED_KNOBS = ("widest resampler", "score prune, fewest kept")


def _study_toml(tmp_path):
    """studies/aokvqa.toml with the two-block teacher's config.json, at most 2 crops per side."""
    teacher = tmp_path / "teacher-config"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps(TWO_BLOCKS.to_dict()))
    real = load_study_config(str(AOKVQA))
    text = AOKVQA.read_text()
    text = text.replace('name = "aokvqa"', 'name = "realshapes"')
    text = text.replace('teacher = "lusxvr/nanoVLM"', f'teacher = "{teacher}"')
    text = text.replace("max_grid_side = [1, 4]", "max_grid_side = [1, 2]")
    path = tmp_path / "realshapes.toml"
    path.write_text(text)
    assert load_study_config(str(path)).space.view_sizes == real.space.view_sizes
    return path


def test_tokenizer_fits_the_real_vocabulary():
    tokenizer = dryrun_tokenizer(VLMConfig())
    assert len(tokenizer) == VLMConfig().lm_vocab_size == 49_218
    ids = special_token_ids(tokenizer, VLMConfig())
    assert ids["image_token"] == 49_152 and max(ids.values()) == 49_217  # nanoVLM's ids after SmolLM2's
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("realshapes")
    threads = torch.get_num_threads()
    untimed = BenchSettings(warmup=0, repeats=1, batch_size=0, new_tokens=0, components=False, memory=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLMC_HOME", str(tmp_path))
        # Both cores: the one-thread default of the suite doubled this test's minute.
        result = dry_run(str(_study_toml(tmp_path)), SCALE, 2, IMAGE, untimed, skip_knobs=SKIPPED_KNOBS)
    torch.set_num_threads(threads)
    result["root"] = tmp_path
    return result


def test_every_kind_of_config_runs_at_real_shapes(record):
    config = load_study_config(str(record["root"] / "realshapes.toml"))
    expected = {*reference_params(TWO_BLOCKS, config.space), *knob_params(TWO_BLOCKS, config.space)}
    expected -= set(SKIPPED_KNOBS)
    rows = {r["name"]: r for r in record["trials"]}
    assert set(rows) == expected
    assert {r["name"]: r["state"] for r in record["trials"] if r["state"] != "COMPLETE"} == {}
    assert record["search_exit_code"] == 0 and record["failed_trials"] == []
    # Real token counts: 3 views of 8x8 = 64 tokens; the global view alone is 1 view.
    assert rows["teacher"]["views"] == 3 and rows["teacher"]["image_tokens"] == 3 * 64
    assert rows["global view only"]["views"] == 1
    assert rows["view size 256"]["image_tokens"] == 3 * 4 * 4  # 256 px: 16x16 patches, shuffled to 4x4
    # The feature cache holds a question's ViT output: 3 views x 1,024 patches x 768 float32 at 512 px.
    assert record["feature_bytes_per_question"]["teacher"] == 3 * 1024 * 768 * 4
    # Every trial recorded its stages; fresh weights were warmed up.
    assert all("score" in r["stages"] for r in record["trials"])
    assert "warmup" in rows["50% resampler"]["stages"] and "warmup" in rows["score prune 50%"]["stages"]


def test_finalize_and_report_at_real_shapes(record):
    final = record["finalize"]
    assert final["trial_name"] == "global view only" and final["train"]["steps"] == 2
    assert math.isfinite(final["train"]["seconds_per_step"]) and math.isfinite(final["mcq_accuracy"])
    assert (record["root"] / "studies" / "realshapes-dryrun" / "finalize").is_dir()
    report = (record["root"] / "out" / "reports" / "realshapes-dryrun" / "index.html").read_text()
    assert "DRY RUN" in report
    assert record["estimate"]["flops"]["total"] > 0 and record["warning"].startswith("DRY RUN")


@pytest.fixture(scope="module")
def bf16_teacher():
    """The two-block teacher in bfloat16 (the GPU path's dtype) and the nanoVLM-sized tokenizer."""
    from vlm.model import VisionLanguageModel

    tokenizer = dryrun_tokenizer(TWO_BLOCKS)
    torch.manual_seed(0)
    teacher = VisionLanguageModel(TWO_BLOCKS, special_token_ids(tokenizer, TWO_BLOCKS)["image_token"])
    return teacher.to(torch.bfloat16).eval()


@pytest.mark.parametrize(
    "name",
    [
        "teacher",
        "pool 4x4",
        "50% resampler",
        "score prune 50%",
        "norm drop 50%",
        "token merging, most per block",
    ],
)
def test_bfloat16_forward_and_backward_at_real_shapes(bf16_teacher, name):
    """A bf16 teacher's students run forward, and their fresh weights backward (the study on a CPU runs
    float32: ledger.world.load_teacher), at one 512 px view: the dtype, not the view count, is under test."""
    from optuna.trial import FixedTrial

    from ledger.config import SpaceSettings
    from search.space import suggest_compression

    space = SpaceSettings(reducers=("none", "norm_drop", "score_prune", "merge"), merge_r=(8, 64))
    params = {**reference_params(TWO_BLOCKS, space), **knob_params(TWO_BLOCKS, space)}[name]
    compression = suggest_compression(FixedTrial(params), space, [0, 1], [0, 1])
    student = compress(bf16_teacher, compression)
    size = student.image_spec.view_size
    images = torch.rand(1, 3, size, size, dtype=torch.bfloat16)  # [views, 3, S, S]
    ids = torch.tensor([[1] + [student.image_token_id] * student.tokens_per_view + [5, 6]])  # [1, T]
    logits = student(ids, images, torch.ones_like(ids), logits_to_keep=1)  # [1, 1, V]
    assert logits.dtype == torch.bfloat16 and logits.shape == (1, 1, TWO_BLOCKS.lm_vocab_size)
    assert torch.isfinite(logits.float()).all()
    fresh = student.fresh_parameters()
    assert bool(fresh) == compression.has_fresh_weights
    if fresh:
        logits.float().logsumexp(-1).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad.float()).all() for p in fresh)
