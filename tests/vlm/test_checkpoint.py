"""Saving and loading in nanoVLM's layout: round trips for teacher and students, atomic writes, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vlm.checkpoint
from tests.nanovlm_reference import tiny_nanovlm_config, write_nanovlm_checkpoint
from vlm.checkpoint import load_pretrained, save_pretrained
from vlm.compression import compress
from vlm.config import CompressionConfig, VLMConfig
from vlm.tokenizer import special_token_ids

STUDENTS = {
    "teacher": CompressionConfig(),
    "token_grid": CompressionConfig(token_grid=2),
    "resampler": CompressionConfig(token_grid=3, resampler_width=16, resampler_heads=2),
    "dropped_layers": CompressionConfig(drop_decoder_layers=(0,), drop_encoder_layers=(1,)),
    "view_size": CompressionConfig(view_size=16, max_grid_side=3),
}


def _inputs(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt with two views for `model`'s view size and tokens per view."""
    gen = torch.Generator().manual_seed(seed)
    n = model.tokens_per_view
    text = torch.randint(70, model.cfg.lm_vocab_size, (7,), generator=gen)
    image = torch.full((n,), model.image_token_id)
    ids = torch.cat([text[:3], image, text[3:5], image, text[5:]]).unsqueeze(0)  # [1, T]
    size = model.cfg.vit_img_size
    return ids, torch.rand(2, 3, size, size, generator=gen)


def _logits(model, ids, images):
    with torch.no_grad():
        return model(ids, images)


@pytest.mark.parametrize("name", list(STUDENTS))
def test_round_trip_gives_identical_logits(tiny_model, tmp_path, name):
    torch.manual_seed(1)  # a resampler's fresh weights
    model = tiny_model if name == "teacher" else compress(tiny_model, STUDENTS[name])
    save_pretrained(model, tmp_path / name)
    loaded = load_pretrained(tmp_path / name)
    assert loaded.cfg == model.cfg
    assert loaded.connector_config == model.connector_config
    assert loaded.image_token_id == model.image_token_id
    ids, images = _inputs(model)
    assert torch.equal(_logits(loaded, ids, images), _logits(model, ids, images))


def test_saved_folder_uses_nanovlm_names(tiny_model, tmp_path):
    out = save_pretrained(tiny_model, tmp_path / "ckpt")
    # vlm_compress.json only because the word tokenizer's image token is not nanoVLM's id (base vocab + 0).
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "vlm_compress.json"]
    assert json.loads((out / "vlm_compress.json").read_text())["image_token_id"] == tiny_model.image_token_id
    assert VLMConfig.from_json(out / "config.json") == tiny_model.cfg
    state = load_file(str(out / "model.safetensors"))
    cfg = tiny_model.cfg
    assert state["MP.proj.weight"].shape == (cfg.lm_hidden_dim, cfg.vit_hidden_dim * 4)
    assert state["decoder.head.weight"].shape == (cfg.lm_vocab_size, cfg.lm_hidden_dim)
    assert "decoder.token_embedding.weight" not in state  # tied: stored once, as nanoVLM's file does
    assert state["vision_encoder.blocks.0.attn.qkv_proj.weight"].shape == (3 * 32, 32)
    assert state["vision_encoder.patch_embedding.position_embedding"].shape == (1, 64, 32)
    assert "decoder.blocks.1.mlp.gate_proj.weight" in state
    # q, k, v are fused in that order on the output dimension.
    ours = tiny_model.state_dict()
    q = next(v for k, v in ours.items() if k.endswith("encoder.layers.0.self_attn.q_proj.weight"))
    torch.testing.assert_close(state["vision_encoder.blocks.0.attn.qkv_proj.weight"][:32], q)
    assert not any(k.startswith(("connector.", "decoder.model.")) for k in state)


def test_student_folder_records_connector_and_compression(tiny_model, tmp_path):
    compression = CompressionConfig(token_grid=3, resampler_width=16, resampler_heads=2)
    student = compress(tiny_model, compression)
    out = save_pretrained(student, tmp_path / "s", extras={"compression": compression.to_dict()})
    extras = json.loads((out / "vlm_compress.json").read_text())
    assert extras["connector"] == {"token_grid": 3, "resampler_width": 16, "resampler_heads": 2}
    assert extras["image_token_id"] == tiny_model.image_token_id
    assert CompressionConfig.from_dict(extras["compression"]) == compression
    state = load_file(str(out / "model.safetensors"))
    assert "MP.proj.weight" not in state
    assert "resampler.queries" in state and state["resampler.queries"].shape == (9, 16)


def test_nanovlm_checkpoint_round_trips_without_extras(tmp_path, tiny_cfg):
    write_nanovlm_checkpoint(tmp_path / "nano", tiny_nanovlm_config(), seed=3)
    model = load_pretrained(tmp_path / "nano")
    assert model.cfg == tiny_cfg
    assert model.image_token_id == 100  # nanoVLM's: base vocabulary + 0
    out = save_pretrained(model, tmp_path / "again")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    before, after = (
        load_file(str(tmp_path / "nano" / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert sorted(before) == sorted(after)
    for key, tensor in before.items():
        assert torch.equal(after[key], tensor), key


def test_compress_records_its_config(tiny_model, tmp_path):
    compression = CompressionConfig(drop_decoder_layers=(1,))
    out = save_pretrained(compress(tiny_model, compression), tmp_path / "s")
    extras = json.loads((out / "vlm_compress.json").read_text())
    assert CompressionConfig.from_dict(extras["compression"]) == compression
    # Loading restores the record, so a loaded student saved again still says what it was compressed from.
    loaded = load_pretrained(out)
    assert loaded.compression == compression
    again = json.loads((save_pretrained(loaded, tmp_path / "again") / "vlm_compress.json").read_text())
    assert CompressionConfig.from_dict(again["compression"]) == compression
    assert not hasattr(load_pretrained(save_pretrained(tiny_model, tmp_path / "t")), "compression")


def test_atomic_save_keeps_old_folder_on_failure(tiny_model, tmp_path, monkeypatch):
    out = save_pretrained(tiny_model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(vlm.checkpoint, "save_file", broken_save_file)
    student = compress(tiny_model, CompressionConfig(token_grid=2))
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(student, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary or backup folders left


def test_save_replaces_existing_folder(tiny_model, tmp_path):
    out = save_pretrained(tiny_model, tmp_path / "ckpt")
    (out / "stale.txt").write_text("from an older save")
    save_pretrained(compress(tiny_model, CompressionConfig(token_grid=2)), out)
    assert not (out / "stale.txt").exists()
    assert load_pretrained(out).tokens_per_view == 4
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_missing_folder_or_file_names_it(tiny_model, tmp_path):
    out = save_pretrained(tiny_model, tmp_path / "ckpt")
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_pretrained(out)
    (out / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(out)
    (out / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_pretrained(out / "file.txt")


def test_missing_local_path_gives_file_not_found(tmp_path, monkeypatch):
    # A path that does not exist falls through to the hub; make that fail offline and fast.
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        load_pretrained(tmp_path / "nowhere")


def test_image_token_id_from_tokenizer_folder(tiny_model, tiny_tokenizer, tmp_path):
    # A nanoVLM-style folder with its tokenizer but no vlm_compress.json: the id comes from tokenizer/.
    out = save_pretrained(tiny_model, tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    assert (out / "tokenizer").is_dir()
    (out / "vlm_compress.json").unlink()
    expected = special_token_ids(tiny_tokenizer, tiny_model.cfg)["image_token"]
    assert expected != vlm.checkpoint.default_image_token_id(tiny_model.cfg)  # the test would be moot
    assert load_pretrained(out).image_token_id == expected
    # An explicit id wins.
    assert load_pretrained(out, image_token_id=5).image_token_id == 5
