"""The demo teacher: nanoVLM's architecture scaled down, trained from scratch on the synthetic VQA.

Same structure as nanoVLM (pre-LN SigLIP-style ViT, a pixel-shuffle projector to 8x8 = 64 tokens per view, a
global view plus crops, a Llama-style decoder with GQA) but a few layers per tower and tiny widths, so it
trains on a 2-core CPU in under 20 minutes and ships in the repo (3.8 MB, float16) in nanoVLM's checkpoint
format.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vlm.checkpoint import save_pretrained
from vlm.config import VLMConfig
from vlm.demo.recipe import VIT_HEADS, TeacherTrainConfig
from vlm.demo.scenes import demo_vocabulary
from vlm.demo.sessions import letter_mapping_prompt, vqa_session
from vlm.demo.step_batches import StepBatches, iterate
from vlm.demo.training_state import TrainingState
from vlm.demo.vision_pretrain import VISION_STAGE, pretrain_vision
from vlm.model import VisionLanguageModel
from vlm.supervised import collate_sequences, sequence_loss
from vlm.tokenizer import build_word_tokenizer, special_token_ids

logger = logging.getLogger(__name__)

# Where the trained teacher ships inside the package (nanoVLM layout + tokenizer/).
SHIPPED_TEACHER = Path(__file__).parent / "assets" / "teacher"


def demo_vlm_config(vocab_size: int, vit_width: int = TeacherTrainConfig.vit_width) -> VLMConfig:
    """nanoVLM's shape at toy scale: 64 px views, patch 8 -> 8x8 patches -> 8x8 = 64 tokens per view.

    The pixel-shuffle factor is 1 (nanoVLM's is 4) because a 16x16 patch grid per view made training
    ~3x slower on 2 CPU cores; the projector and token count per view (64) are nanoVLM's. The decoder is
    192 wide: at 96 it never learned to answer with the letter of the matching choice
    (benchmarks/letter_mapping_probe.py). `vit_width` is `TeacherTrainConfig.vit_width`.
    """
    return VLMConfig(
        vit_hidden_dim=vit_width,
        vit_inter_dim=4 * vit_width,
        vit_patch_size=8,
        vit_img_size=64,
        vit_n_heads=VIT_HEADS,
        vit_n_blocks=4,
        vit_model_type="demo-vit",
        lm_hidden_dim=192,
        lm_inter_dim=512,
        lm_n_heads=4,
        lm_n_kv_heads=2,
        lm_n_blocks=4,
        lm_re_base=10000,
        lm_max_position_embeddings=1024,
        lm_base_vocab_size=vocab_size - 66,
        extra_token_amount=66,
        lm_vocab_size=vocab_size,
        lm_model_type="demo-lm",
        lm_tokenizer="tokenizer",
        mp_pixel_shuffle_factor=1,
        mp_image_token_length=64,
        max_img_size=128,  # 2 crops along the long side of the 128x64 scenes, plus the global view
    )


def build_demo_tokenizer(out_dir: Path | None = None):
    return build_word_tokenizer(demo_vocabulary(), demo_vlm_config(1000), out_dir)


def init_for_scratch_training(model: VisionLanguageModel) -> None:
    """Shrink the ViT's position embeddings before training from scratch.

    SigLIP's default init (std 1/sqrt(width)) makes positions dominate the encoder's output: at init the
    features of two different scenes differed by ~7% of their scale, and the model stayed at chance for
    800+ steps. With std 0.02 image content dominates and the teacher learns quickly.
    """
    with torch.no_grad():
        model.vision_encoder.embeddings.position_embedding.weight.normal_(0.0, 0.02)


def train_decoder_stage(
    model: VisionLanguageModel,
    name: str,
    steps: int,
    batches: StepBatches,
    config: TeacherTrainConfig,
    state: TrainingState,
    workers: int = 0,
    after_step=None,
) -> float:
    """Train the whole model for `steps` on `batches` (drawn by `workers` processes when they have per-step
    seeds); `state` saves every few steps and resumes a stopped stage; `after_step(steps_done)` runs after
    each step, before it is saved. Returns the running loss."""
    device = next(model.parameters()).device
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    # Linear warm-up from 0, then cosine decay to min_lr_ratio * lr.
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, config.warmup_steps, steps, min_lr_rate=config.min_lr_ratio
    )
    resumable = {"optimizer": optimizer, "scheduler": scheduler}
    first = state.start(name, resumable, batches.rng)
    model.train()
    running = float("nan")
    start = time.time()
    progress = tqdm(range(first, steps), desc=name, initial=first, total=steps)
    for step, batch in zip(progress, iterate(batches, first, steps, workers)):
        loss = sequence_loss(model, batch, device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: loss became {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        running = loss.item() if step == first else 0.95 * running + 0.05 * loss.item()
        progress.set_postfix(loss=f"{running:.3f}")
        if (step + 1) % config.log_every == 0:
            logger.info(
                "%s step %d/%d loss %.4f (%.0fs)", name, step + 1, steps, running, time.time() - start
            )
        if after_step is not None:
            after_step(step + 1)
        state.step_done(name, step + 1, model, resumable, batches.rng)
    model.eval()
    state.finish(name, model, running, batches.rng)
    return running


def _letter_batch(rng: random.Random, step: int, *, tokenizer, size: int) -> dict:
    prompts = [letter_mapping_prompt(rng, tokenizer) for _ in range(size)]
    return collate_sequences(prompts, tokenizer.pad_token_id)


def vqa_batch(rng: random.Random, step: int, *, tokenizer, cfg, spec, config: TeacherTrainConfig) -> dict:
    """VQA-stage batch `step`: `config.batch_size` sessions (`vqa_session`) of `config.session`'s mix."""
    # The kind curriculum: the first `first_steps` steps ask only `first_kinds`.
    kinds = config.first_kinds if step < config.first_steps else config.session.kinds
    mix = dataclasses.replace(config.session, kinds=kinds)
    sessions = [vqa_session(rng, tokenizer, cfg, spec, mix) for _ in range(config.batch_size)]
    return collate_sequences(sessions, tokenizer.pad_token_id)


def _stream_prefix(config: TeacherTrainConfig, stage: str) -> str | None:
    """Per-step seeds' prefix for `stage` when the recipe asks for them, else None (the shared stream)."""
    return f"teacher/{config.seed}/{stage}" if config.step_seeds else None


LETTER_STAGE = "letter mapping"
VQA_STAGE = "vqa sessions"
VQA_CURVE = "vqa_curve"


def train_teacher(
    config: TeacherTrainConfig,
    out_dir: Path | None = None,
    *,
    device: str = "cpu",
    work_dir: Path | None = None,
    checkpoint_every: int = 100,
    evaluate=None,
    eval_every: int = 0,
    data_workers: int = 0,
) -> tuple[VisionLanguageModel, object]:
    """Train the demo teacher from scratch on `device`; save it (nanoVLM layout + tokenizer) if `out_dir`.

    End-to-end VQA training from scratch sat at chance for thousands of steps, so the skills are taught in
    the order a pre-trained VLM gets them: the ViT learns what is where (stage 1), the decoder learns the
    multiple-choice answer format on text (stage 2), then both learn VQA together (stage 3), optionally
    on a few question kinds first (`first_kinds`). Every stage draws fresh scenes from the generator with
    its own seed stream, never the dataset's splits.

    With `work_dir`, the run is saved there every `checkpoint_every` steps and at each stage's end, and a
    run started again with the same recipe continues where the last one stopped (`TrainingState`). With
    `evaluate(model) -> dict` and `eval_every`, the VQA stage is scored every `eval_every` steps and at its
    end; the curve is saved with the checkpoint (`vqa_curve` in its extras). With `config.step_seeds`,
    `data_workers` processes draw the batches (`vlm.demo.step_batches`); the weights do not depend on
    their number. The returned model is on the CPU.
    """
    torch.manual_seed(config.seed)
    tokenizer = build_demo_tokenizer()
    cfg = demo_vlm_config(len(tokenizer), config.vit_width)
    model = VisionLanguageModel(cfg, special_token_ids(tokenizer, cfg)["image_token"])
    init_for_scratch_training(model)
    logger.info("demo teacher: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    state = TrainingState(work_dir, dataclasses.asdict(config), checkpoint_every, device)
    state.restore_model(model)
    model.to(device)
    vision = {}
    if config.vision_steps:
        if state.is_done(VISION_STAGE):
            vision = state.skip(VISION_STAGE)
        else:
            vision = pretrain_vision(
                model,
                config.vision_steps,
                lr=config.vision_lr,
                seed=config.seed,
                state=state,
                step_seeds=config.step_seeds,
                workers=data_workers,
            )
    rng = random.Random(f"teacher/{config.seed}")
    if config.letter_steps:
        if state.is_done(LETTER_STAGE):
            state.skip(LETTER_STAGE, rng)
        else:
            make = partial(_letter_batch, tokenizer=tokenizer, size=config.letter_batch_size)
            batches = StepBatches(make, rng, _stream_prefix(config, LETTER_STAGE))
            train_decoder_stage(
                model, LETTER_STAGE, config.letter_steps, batches, config, state, data_workers
            )

    def score(done: int) -> None:
        if evaluate is None or not eval_every or (done % eval_every and done != config.vqa_steps):
            return
        model.eval()
        point = {"step": done, **evaluate(model)}
        model.train()
        state.record(VQA_CURVE, point)
        logger.info("%s step %d: %s", VQA_STAGE, done, point)

    if not state.is_done(VQA_STAGE):
        make = partial(vqa_batch, tokenizer=tokenizer, cfg=cfg, spec=model.image_spec, config=config)
        batches = StepBatches(make, rng, _stream_prefix(config, VQA_STAGE))
        train_decoder_stage(model, VQA_STAGE, config.vqa_steps, batches, config, state, data_workers, score)
    model.to("cpu")
    logger.info("demo teacher trained in %.1f min in all (saved runs included)", state.seconds / 60)
    if out_dir is not None:
        # float16 halves the shipped file (~4 MB instead of ~8); callers should evaluate the reloaded copy.
        save_pretrained(
            model,
            out_dir,
            tokenizer=tokenizer,
            extras={
                "demo_teacher_training": dataclasses.asdict(config),
                "vision_pretraining": vision,
                "train_minutes": round(state.seconds / 60, 2),
                VQA_CURVE: state.records(VQA_CURVE),
                "device": device,
            },
            weights_dtype=torch.float16,
        )
    return model, tokenizer


__all__ = [
    "SHIPPED_TEACHER",
    "TeacherTrainConfig",
    "build_demo_tokenizer",
    "demo_vlm_config",
    "train_decoder_stage",
    "train_teacher",
]
