"""vlm.inspection and the vlm.inspect CLI: one head's full attention matrix, checked against softmax(QKᵀ/√d + causal mask) computed by
hand from the same hidden states; the logit lens against the model's own output; the CLI on the demo teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from vlm.compression import compress
from vlm.config import CompressionConfig
from vlm.inspect import main
from vlm.inspection import attention_map, load_image, logit_lens, prepare_prompt

QUESTION = "what colour is the ball ?"


@pytest.fixture
def prompt(tiny_model, tiny_tokenizer, tiny_examples):
    # 64x32 image: 1x2 crops + the global view = 3 views of 4x4 tokens.
    return prepare_prompt(tiny_model, tiny_tokenizer, tiny_examples[0].image, QUESTION)


def test_prompt_parts(prompt, tiny_model):
    assert prompt.image_positions.shape == (3, 16)
    assert bool((prompt.input_ids[prompt.image_positions] == tiny_model.image_token_id).all())
    assert [prompt.labels[i] for i in prompt.question_positions] == QUESTION.split()
    # The question follows the last image token.
    assert prompt.question_positions[0] == int(prompt.image_positions.max()) + 1
    assert prompt.view_names() == ["global", "crop 1,1", "crop 1,2"]


def test_attention_rows_sum_to_one_and_restore_sdpa(tiny_model, prompt):
    amap = attention_map(tiny_model, prompt, layer=1, head=3)
    length = prompt.input_ids.shape[0]
    assert amap.weights.shape == (length, length)
    assert (amap.weights.sum(-1) - 1).abs().max() < 1e-5
    assert float(amap.weights.triu(1).abs().max()) == 0.0  # causal: nothing attends to later tokens
    assert tiny_model.decoder.config._attn_implementation == "sdpa"
    to_global = amap.question_to_view(prompt, 0)
    assert to_global.shape == (len(QUESTION.split()), 16)
    assert float(to_global.sum(-1).max()) < 1.0  # part of each row goes to text and the other views
    assert amap.on_grid(to_global, 0).shape == (6, 4, 4)


@pytest.mark.parametrize(("layer", "head"), [(0, 0), (1, 3)])
def test_head_matches_softmax_of_qk_by_hand(tiny_model, prompt, layer, head):
    decoder = tiny_model.decoder.model
    block = decoder.layers[layer]
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        amap = attention_map(tiny_model, prompt, layer, head)
    finally:
        handle.remove()

    cfg = tiny_model.cfg
    head_dim = cfg.lm_hidden_dim // cfg.lm_n_heads
    kv_head = head // (cfg.lm_n_heads // cfg.lm_n_kv_heads)  # grouped-query attention: heads share K
    with torch.no_grad():
        x = block.input_layernorm(captured["hidden"])  # [1, T, D]
        length = x.shape[1]
        q = block.self_attn.q_proj(x).view(1, length, cfg.lm_n_heads, head_dim).transpose(1, 2)
        k = block.self_attn.k_proj(x).view(1, length, cfg.lm_n_kv_heads, head_dim).transpose(1, 2)
        cos, sin = decoder.rotary_emb(x, torch.arange(length).unsqueeze(0))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores = q[0, head] @ k[0, kv_head].T / math.sqrt(head_dim)  # [T, T]
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        expected = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
    torch.testing.assert_close(amap.weights, expected, atol=1e-5, rtol=1e-4)


def test_logit_lens_last_layer_is_the_models_own_prediction(tiny_model, prompt):
    n_blocks = tiny_model.cfg.lm_n_blocks
    lens = logit_lens(tiny_model, prompt, [0, n_blocks], top_k=3)  # every position
    with torch.no_grad():
        logits = tiny_model(prompt.input_ids.unsqueeze(0), prompt.images)[0]  # [T, V]
    assert torch.equal(lens.ids[n_blocks][:, 0], logits.argmax(-1))
    torch.testing.assert_close(lens.probs[n_blocks][:, 0], logits.softmax(-1).max(-1).values)
    # Layer 0 reads the embeddings (image tokens: the projected image features) through the same head.
    assert not torch.equal(lens.ids[0][:, 0], lens.ids[n_blocks][:, 0])
    assert lens.ids[0].shape == (prompt.input_ids.shape[0], 3)
    assert bool((lens.probs[n_blocks][:, :-1] >= lens.probs[n_blocks][:, 1:]).all())  # sorted


def test_bad_layer_or_head_is_named(tiny_model, prompt):
    with pytest.raises(ValueError, match="blocks 0..1"):
        attention_map(tiny_model, prompt, layer=2, head=0)
    with pytest.raises(ValueError, match="heads 0..3"):
        attention_map(tiny_model, prompt, layer=0, head=4)
    with pytest.raises(ValueError, match="out of range"):
        logit_lens(tiny_model, prompt, [3])


def test_pooled_student_with_a_dropped_block(tiny_model, tiny_tokenizer, tiny_examples):
    student = compress(tiny_model, CompressionConfig(token_grid=2, drop_decoder_layers=(0,))).eval()
    prompt = prepare_prompt(student, tiny_tokenizer, tiny_examples[0].image, QUESTION)
    assert prompt.image_positions.shape == (3, 4)
    amap = attention_map(student, prompt, layer=0, head=1)
    assert (amap.weights.sum(-1) - 1).abs().max() < 1e-5
    assert amap.on_grid(amap.question_to_view(prompt, 0), 0).shape == (6, 2, 2)
    lens = logit_lens(student, prompt, [1], positions=prompt.image_positions[0])
    assert lens.ids[1].shape == (4, 5) and lens.grid_side == 2
    with pytest.raises(ValueError, match="blocks 0..0"):
        attention_map(student, prompt, layer=1, head=0)


def test_token_selecting_student_maps_kept_tokens_to_their_cells(tiny_model, tiny_tokenizer, tiny_examples):
    student = compress(tiny_model, CompressionConfig(keep_tokens_by_norm=6)).eval()
    prompt = prepare_prompt(student, tiny_tokenizer, tiny_examples[0].image, QUESTION)
    amap = attention_map(student, prompt, layer=1, head=0)
    assert amap.cells.shape == (3, 6)
    with torch.no_grad():
        full = student.connector(student.encode_vision(prompt.images))  # [3, 16, D]
    norms = full.norm(dim=-1)
    expected = norms.topk(6, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(amap.cells, expected)
    grid = amap.on_grid(amap.question_to_view(prompt, 0), 0)  # [Q, 4, 4] with 10 empty cells
    assert int(grid[0].isnan().sum()) == 10


def _summary(out: str) -> dict:
    """The JSON summary the CLI prints last."""
    return json.loads(out[out.index("{\n") :])


def test_cli_on_the_demo_teacher(tmp_path, capsys):
    image = tmp_path / "scene.png"
    load_image("demo", seed=3).save(image)
    question = "How many purple objects are there?"
    common = ["--model", "demo", "--image", str(image), "--question", question, "--out", str(tmp_path)]
    assert main(["attention", *common, "--layer", "3", "--head", "1", "--all-views"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["question_tokens"] == ["How", "many", "purple", "objects", "are", "there", "?"]
    assert summary["max_row_sum_error"] < 1e-5 and summary["views"] == 3
    assert main(["logit-lens", *common, "--layers", "2", "4", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    lens = _summary(out)
    assert "layer 4 of 4: top-3 tokens" in out and out.count("(7,7)") == 2  # an 8x8 grid per layer
    for key in ("png", "html"):
        for result in (summary, lens):
            assert Path(result[key]).parent == tmp_path and Path(result[key]).is_file()
    with Image.open(summary["png"]) as png:
        assert png.width > 500 and png.height > 500
    html = (tmp_path / "logit_lens_layers2-4.html").read_text()
    assert "plotly" in html and "after 4 of 4 decoder blocks" in html
    page = (tmp_path / "attention_layer3_head1_all_views.html").read_text()
    assert "mean over question tokens" in page and "199: purple" in page  # the token picker


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["attention", "--image", "demo", "--layer", "9", "--head", "0"], "blocks 0..3"),
        (["attention", "--image", "missing.png", "--layer", "0", "--head", "0"], "not found"),
        (
            ["logit-lens", "--image", "demo", "--layers", "4", "--compression", '{"grid": 2}'],
            "unknown CompressionConfig fields",
        ),
    ],
)
def test_cli_names_bad_input(tmp_path, capsys, args, message):
    common = ["--model", "demo", "--question", "What is it?", "--out", str(tmp_path)]
    assert main([*args, *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlm.inspect: error:") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_merging_student_keeps_the_full_grid(tiny_model, tiny_tokenizer, tiny_examples):
    # ToMe merges inside the ViT and un-merges before the projector: the same 4x4 tokens per view.
    student = compress(tiny_model, CompressionConfig(merge_per_block=4)).eval()
    prompt = prepare_prompt(student, tiny_tokenizer, tiny_examples[0].image, QUESTION)
    amap = attention_map(student, prompt, layer=1, head=2)
    assert (amap.weights.sum(-1) - 1).abs().max() < 1e-5
    assert not amap.on_grid(amap.question_to_view(prompt, 0), 0).isnan().any()
