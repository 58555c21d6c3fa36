"""Token merging (ToMe) inside the vision encoder: r = 0 is the teacher, the merged forward is SigLIP's,
merging keeps the token counts the schedule says, proportional attention is exact for duplicate tokens,
FLOPs by hand and by fvcore, and a merging student's checkpoint.

Tiny config (tests/conftest.py): ViT d=32, 2 heads (head 16), inter 64, 2 blocks, 32 px views of 8x8 = 64
patches, pixel shuffle 2 -> 16 tokens per view.
"""

from __future__ import annotations

import pytest
import torch

from vlm.compression import CompressionError, compress, plan_student
from vlm.config import CompressionConfig, VLMConfig
from vlm.flops import count_question, vision_flops_per_view
from vlm.plan import effective_merge_schedule, merged_token_counts
from vlm.reducers import _attention, bipartite_merge, merged_vision_forward

IMAGE = (64, 32)


def _inputs(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = model.tokens_per_view
    text = torch.randint(70, model.cfg.lm_vocab_size, (7,), generator=gen)
    image = torch.full((n,), model.image_token_id)
    ids = torch.cat([text[:3], image, text[3:5], image, text[5:]]).unsqueeze(0)
    size = model.cfg.vit_img_size
    return ids, torch.rand(2, 3, size, size, generator=gen)


@pytest.mark.parametrize("merge", [0, (0, 0)])
def test_r_zero_is_the_teacher_exactly(tiny_model, merge):
    student = compress(tiny_model, CompressionConfig(merge_per_block=merge))
    assert student.connector_config.merge_schedule == ()  # the ordinary encoder path
    ids, images = _inputs(tiny_model)
    with torch.no_grad():
        assert torch.equal(student(ids, images), tiny_model(ids, images))


def test_merging_forward_without_merges_is_siglip(tiny_model):
    """The hand-written attention (for log-size bias and keys) computes what transformers' SigLIP does."""
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        reference = tiny_model.vision_encoder(pixel_values=images).last_hidden_state
        ours = merged_vision_forward(tiny_model.vision_encoder, images, (0, 0))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_schedule_is_clamped_to_half_the_tokens():
    assert effective_merge_schedule(64, (8, 8)) == (8, 8)
    assert effective_merge_schedule(64, (40, 40)) == (32, 16)  # floor(64/2), then floor(32/2)
    assert effective_merge_schedule(9, (4, 4, 4, 4)) == (4, 2, 1, 1)
    assert merged_token_counts(64, (40, 40)) == [64, 32, 16]
    assert merged_token_counts(1024, (16,) * 12) == [1024 - 16 * i for i in range(13)]


@pytest.mark.parametrize("merge, final", [((8, 8), 48), ((20, 5), 39), ((40, 40), 16), (3, 58)])
def test_merging_keeps_the_counts_the_schedule_says(tiny_model, merge, final):
    """After un-merging, each view holds exactly `final` distinct token vectors, spread over 64 patches."""
    student = compress(tiny_model, CompressionConfig(merge_per_block=merge))
    plan = plan_student(tiny_model.cfg, CompressionConfig(merge_per_block=merge))
    assert merged_token_counts(64, plan.connector.merge_schedule)[-1] == final
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = student.encode_vision(images)
        embeds = student.project(features)
    assert features.shape == (2, 64, 32)  # the full patch grid again, for pixel shuffle
    assert embeds.shape == (2, 16, 48) and student.tokens_per_view == 16
    for view in features:
        assert torch.unique(view, dim=0).shape[0] == final


def test_proportional_attention_makes_merging_duplicates_exact():
    """Merging two identical tokens into one of size 2 and adding log(2) to its logits changes nothing:
    attention over the merged set equals attention over the duplicates (ToMe's proportional attention)."""
    torch.manual_seed(0)
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipAttention

    attn = SiglipAttention(SiglipVisionConfig(hidden_size=16, num_attention_heads=2)).eval()
    base = torch.randn(1, 6, 16)
    x = base.repeat_interleave(2, dim=1)  # tokens 2j and 2j+1 are identical: each A token's twin is in B
    size = torch.ones(1, 12, 1)
    origin = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        full, metric = _attention(attn, x, None)
        merged_x, merged_size, origin = bipartite_merge(x, size, origin, metric, 4)
        assert merged_x.shape == (1, 8, 16) and merged_size.sum() == 12
        merged_out, _ = _attention(attn, merged_x, merged_size.log().squeeze(-1))
        unmerged = merged_out.gather(1, origin.unsqueeze(-1).expand(1, 12, 16))
    torch.testing.assert_close(unmerged, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged_x.gather(1, origin.unsqueeze(-1).expand(1, 12, 16)), x)


def test_size_weighted_average():
    """Three tokens merged into one have the mean of all three; sizes add up."""
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [1.0, 0.05], [0.0, 1.0]]])  # A = {0, 2}, B = {1, 3}
    metric = x.clone()
    merged, size, origin = bipartite_merge(x, torch.ones(1, 4, 1), torch.arange(4).unsqueeze(0), metric, 2)
    assert size.squeeze().tolist() == [3.0, 1.0]  # both A tokens went to B's token 1
    torch.testing.assert_close(merged[0, 0], x[0, :3].mean(0))
    assert origin.tolist() == [[0, 0, 0, 1]]


def test_bad_schedules_fail_before_building(tiny_model):
    with pytest.raises(ValueError, match="merge_per_block must be >= 0"):
        CompressionConfig(merge_per_block=-1)
    with pytest.raises(CompressionError, match="merge_per_block has 3 entries but the student keeps 2"):
        plan_student(tiny_model.cfg, CompressionConfig(merge_per_block=(1, 2, 3)))
    with pytest.raises(CompressionError, match="keeps 1 encoder blocks"):
        compress(tiny_model, CompressionConfig(merge_per_block=(1, 2), drop_encoder_layers=(0,)))


def test_vision_flops_by_hand(tiny_cfg):
    plan = plan_student(tiny_cfg, CompressionConfig(merge_per_block=(20, 5)))
    d, inter, head = 32, 64, 16
    conv = 64 * 3 * 4 * 4 * d

    def block(n: int, r: int) -> int:
        matching = ((n + 1) // 2) * (n // 2) * head if r else 0
        return 4 * n * d * d + 2 * n * n * d + matching + 2 * (n - r) * d * inter

    assert vision_flops_per_view(plan.cfg, plan.connector) == 2 * (conv + block(64, 20) + block(44, 5))
    assert vision_flops_per_view(plan.cfg, plan.connector) < vision_flops_per_view(tiny_cfg)


@pytest.mark.parametrize(
    "compression",
    [
        CompressionConfig(merge_per_block=8),
        CompressionConfig(merge_per_block=(30, 3)),
        CompressionConfig(merge_per_block=6, token_grid=2, max_grid_side=1),
        CompressionConfig(merge_per_block=2, view_size=16, keep_tokens_by_norm=3),
        CompressionConfig(merge_per_block=4, token_grid=3, resampler_width=16, resampler_heads=2),
    ],
    ids=["r8", "schedule", "pool+global-only", "half-view+norm", "resampler"],
)
def test_analytic_matches_fvcore_through_the_real_merging_forward(tiny_cfg, compression):
    result = count_question(tiny_cfg, compression, IMAGE, 20, answer_tokens=2)
    for stage in ("vision_per_view", "connector_per_view", "prefill", "decode", "total"):
        assert result["fvcore"][stage] == pytest.approx(result["analytic"][stage], rel=0.01), stage
    teacher = count_question(tiny_cfg, CompressionConfig(), IMAGE, 20, with_fvcore=False)
    assert (
        result["fvcore"]["vision_per_view"]
        < teacher["analytic"]["vision_per_view"] * ((compression.view_size or 32) / 32) ** 2
    )


def test_merging_on_full_nanovlm_analytic_and_fvcore():
    """nanoVLM's 460M config on the meta device: r = 16 per block, 1024 -> 832 tokens over 12 blocks."""
    result = count_question(VLMConfig(), CompressionConfig(merge_per_block=16), (640, 480), text_tokens=68)
    assert result["image_tokens"] == 832  # merging happens inside the encoder: the prompt is unchanged
    vision = result["analytic"]["vision_per_view"]
    assert result["fvcore"]["vision_per_view"] == pytest.approx(vision, rel=0.01)
    teacher = count_question(VLMConfig(), CompressionConfig(), (640, 480), 68, with_fvcore=False)
    assert 0.85 < vision / teacher["analytic"]["vision_per_view"] < 0.95
