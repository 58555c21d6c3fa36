"""The compression knobs: token counts, weight transfer, a teacher left untouched, early validation."""

from __future__ import annotations

import json

import pytest
import torch

from vlm.compression import CompressionError, _interpolate_positions, compress, plan_student
from vlm.config import CompressionConfig
from vlm.geometry import num_views
from vlm.model import PerceiverResampler, PixelShuffleProjector, VisionLanguageModel
from vlm.processing import encode_example, mcq_user_text

# (config, tokens per view, views of a 64x32 image): tiny teacher = 32 px views, 4x4 tokens, 2 crops max.
KNOBS = {
    "teacher": (CompressionConfig(), 16, 3),
    "token_grid_2": (CompressionConfig(token_grid=2), 4, 3),
    "token_grid_1": (CompressionConfig(token_grid=1), 1, 3),
    "view_16": (CompressionConfig(view_size=16), 4, 3),  # 4x4 patches -> 2x2 after shuffle
    "view_48": (CompressionConfig(view_size=48), 36, 3),  # 12x12 patches -> 6x6: more than the teacher
    "global_only": (CompressionConfig(max_grid_side=1), 16, 1),
    "grid_3": (CompressionConfig(max_grid_side=3), 16, 7),  # 96x64 -> 2x3 crops + global
    "resampler": (CompressionConfig(token_grid=3, resampler_width=16, resampler_heads=2), 9, 3),
    "resampler_view_20": (CompressionConfig(view_size=20, resampler_width=8, resampler_heads=2), 16, 3),
    "drop_layers": (CompressionConfig(drop_decoder_layers=(0,), drop_encoder_layers=(1,)), 16, 3),
}


def _teacher_state(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _layer(model: VisionLanguageModel, tower: str, index: int) -> dict[str, torch.Tensor]:
    """The tensors of one block, keyed by their name inside the block."""
    prefix = ".encoder.layers." if tower == "encoder" else "decoder.model.layers."
    out = {}
    for key, value in model.state_dict().items():
        if prefix in key:
            rest = key.split(prefix, 1)[1]
            number, name = rest.split(".", 1)
            if int(number) == index:
                out[name] = value
    assert out, f"no {tower} layer {index}"
    return out


@pytest.mark.parametrize("name", list(KNOBS))
def test_token_counts_follow_the_formula(tiny_model, tiny_tokenizer, tiny_examples, name):
    compression, tokens_per_view, views_64x32 = KNOBS[name]
    plan = plan_student(tiny_model.cfg, compression)
    student = compress(tiny_model, compression)
    spec = student.image_spec
    assert plan.tokens_per_view == student.tokens_per_view == tokens_per_view == plan.token_grid**2
    assert spec.view_size == (compression.view_size or 32)
    assert spec.max_grid_side == (compression.max_grid_side or 2)
    assert num_views(64, 32, spec) == views_64x32
    for example in tiny_examples[:2]:
        text = mcq_user_text(example.question, example.choices)
        enc = encode_example(tiny_tokenizer, student.cfg, spec, example.image, text)
        n_views = num_views(*example.image.size, spec)
        assert enc.images.shape == (n_views, 3, spec.view_size, spec.view_size)
        assert int((enc.input_ids == student.image_token_id).sum()) == n_views * tokens_per_view
        with torch.no_grad():
            logits = student(enc.input_ids[None], enc.images, logits_to_keep=1)
        assert logits.shape == (1, 1, student.cfg.lm_vocab_size)


@pytest.mark.parametrize("name", list(KNOBS))
def test_teacher_is_unchanged(tiny_model, name):
    before = _teacher_state(tiny_model)
    cfg_before = tiny_model.cfg
    student = compress(tiny_model, KNOBS[name][0])
    with torch.no_grad():  # the student must own its tensors: writing to it leaves the teacher alone
        for p in student.parameters():
            p.add_(1.0)
    after = tiny_model.state_dict()
    assert sorted(after) == sorted(before)
    for key, tensor in before.items():
        assert torch.equal(after[key], tensor), key
    assert tiny_model.cfg == cfg_before


def test_dropped_layers_keep_the_others_in_order(tiny_model):
    student = compress(tiny_model, CompressionConfig(drop_decoder_layers=(0,), drop_encoder_layers=(1,)))
    assert student.cfg.lm_n_blocks == 1 and student.cfg.vit_n_blocks == 1
    for tower, student_index, teacher_index in (("decoder", 0, 1), ("encoder", 0, 0)):
        ours, theirs = _layer(student, tower, student_index), _layer(tiny_model, tower, teacher_index)
        assert sorted(ours) == sorted(theirs)
        for name, tensor in theirs.items():
            assert torch.equal(ours[name], tensor), (tower, name)
    # Everything outside the blocks is copied too.
    for key in ("decoder.model.embed_tokens.weight", "decoder.model.norm.weight", "connector.proj.weight"):
        assert torch.equal(student.state_dict()[key], tiny_model.state_dict()[key]), key


def _position_table(model: VisionLanguageModel) -> torch.Tensor:
    return next(v for k, v in model.state_dict().items() if k.endswith("position_embedding.weight"))


@pytest.mark.parametrize(("view", "patches"), [(16, 16), (48, 144), (32, 64)])
def test_position_embeddings_follow_the_view_size(tiny_model, view, patches):
    student = compress(tiny_model, CompressionConfig(view_size=view))
    table = _position_table(student)
    assert table.shape == (patches, tiny_model.cfg.vit_hidden_dim)
    if view == 32:
        assert torch.equal(table, _position_table(tiny_model))


def test_position_interpolation_keeps_rows_and_columns():
    # Channel 0 depends on the row only, channel 1 on the column only: a transposed or scrambled resize
    # would mix them.
    side, new_side = 4, 7
    rows = torch.arange(side).repeat_interleave(side).float()
    cols = torch.arange(side).repeat(side).float()
    table = torch.stack([rows, cols], dim=1)  # [16, 2]
    grid = _interpolate_positions(table, new_side).reshape(new_side, new_side, 2)
    torch.testing.assert_close(grid[..., 0], grid[:, :1, 0].expand(-1, new_side))  # constant along a row
    torch.testing.assert_close(grid[..., 1], grid[:1, :, 1].expand(new_side, -1))  # constant down a column
    assert (grid[1:, 0, 0] > grid[:-1, 0, 0]).all() and (grid[0, 1:, 1] > grid[0, :-1, 1]).all()
    assert _interpolate_positions(table, side) is table


def test_resampler_is_fresh_and_shaped(tiny_model):
    torch.manual_seed(0)
    student = compress(tiny_model, CompressionConfig(token_grid=3, resampler_width=16, resampler_heads=2))
    assert isinstance(student.connector, PerceiverResampler)
    assert isinstance(tiny_model.connector, PixelShuffleProjector)
    assert not any("proj.weight" == k.removeprefix("connector.") for k in student.state_dict())
    assert student.cfg.mp_pixel_shuffle_factor == 1  # the resampler reads raw patches
    views = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        features = student.encode_vision(views)
        out = student.project(features)
        torch.testing.assert_close(features, tiny_model.encode_vision(views))  # same ViT
    assert features.shape == (3, 64, 32)
    assert out.shape == (3, 9, tiny_model.cfg.lm_hidden_dim)
    torch.manual_seed(1)
    other = compress(tiny_model, CompressionConfig(token_grid=3, resampler_width=16, resampler_heads=2))
    assert not torch.equal(other.connector.queries, student.connector.queries)  # initialised, not copied


BAD = {
    "token_grid_above_native": (CompressionConfig(token_grid=5), "exceeds"),
    "token_grid_above_smaller_view": (CompressionConfig(view_size=16, token_grid=3), "exceeds"),
    "resampler_grid_above_native": (CompressionConfig(token_grid=5, resampler_width=8), "exceeds"),
    "view_not_multiple_of_patch": (CompressionConfig(view_size=18), "multiple of the patch size"),
    "view_not_divisible_for_shuffle": (CompressionConfig(view_size=20), "pixel-shuffle factor"),
    "drop_all_decoder_layers": (CompressionConfig(drop_decoder_layers=(0, 1)), "keep at least one"),
    "drop_all_encoder_layers": (CompressionConfig(drop_encoder_layers=(1, 0)), "keep at least one"),
    "layer_out_of_range": (CompressionConfig(drop_encoder_layers=(2,)), r"layers \[2\]"),
    "grid_above_8": (CompressionConfig(max_grid_side=9), "no crop tags"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_invalid_configs_fail_before_building(tiny_model, monkeypatch, name):
    compression, message = BAD[name]

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built for an invalid config")

    monkeypatch.setattr(VisionLanguageModel, "__init__", no_build)
    with pytest.raises(CompressionError, match=message):
        plan_student(tiny_model.cfg, compression)
    with pytest.raises(CompressionError, match=message):
        compress(tiny_model, compression)


def test_compress_needs_an_uncompressed_teacher(tiny_model):
    student = compress(tiny_model, CompressionConfig(token_grid=2))
    with pytest.raises(CompressionError, match="uncompressed teacher"):
        compress(student, CompressionConfig())


def test_plan_describes_the_student(tiny_cfg):
    plan = plan_student(tiny_cfg, CompressionConfig(view_size=16, max_grid_side=3, drop_decoder_layers=(1,)))
    assert plan.cfg.vit_img_size == 16 and plan.cfg.max_img_size == 48 and plan.cfg.max_grid_side == 3
    assert plan.cfg.mp_image_token_length == 4 and plan.connector.token_grid is None
    assert plan.kept_decoder_layers == (0,) and plan.kept_encoder_layers == (0, 1)
    assert plan.cfg.lm_n_blocks == 1


def test_compression_config_json_round_trip(tmp_path):
    config = CompressionConfig(
        token_grid=2, view_size=16, max_grid_side=1, drop_decoder_layers=[3, 1, 3], resampler_width=8
    )
    assert config.drop_decoder_layers == (1, 3)  # sorted, deduplicated, a tuple
    text = json.dumps(config.to_dict())
    assert CompressionConfig.from_json(text) == config
    path = tmp_path / "c.json"
    path.write_text(text)
    assert CompressionConfig.from_json(path) == config
    assert hash(CompressionConfig.from_json(text)) == hash(config)
    assert CompressionConfig().is_identity and not config.is_identity


def test_compression_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown CompressionConfig fields \['tokens'\]"):
        CompressionConfig.from_dict({"tokens": 2})
    with pytest.raises(ValueError, match="token_grid"):
        CompressionConfig(token_grid=0)
    with pytest.raises(ValueError, match="max_grid_side"):
        CompressionConfig(max_grid_side=0)
    with pytest.raises(ValueError, match="divisible by resampler_heads"):
        CompressionConfig(resampler_width=10, resampler_heads=4)
