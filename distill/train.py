"""Distilling a compressed student from the full teacher, through `accelerate` (CPU, one GPU, or
`accelerate launch` for several).

Order as in torchtune's recipes: setup, train (checkpointing every `checkpoint_every` steps), save, clean up.
Teacher outputs on the training questions (answer-letter logits of MCQ prompts) are computed once and cached
on disk, keyed by teacher, data and size, so every finalized trial reuses them.
Loss: `DistillationLoss` on the MCQ answer letter (KL to the teacher + CE on the gold letter), plus CE on the
gold direct answer for a share of the steps so the student keeps answering in words.

Several processes (`accelerate launch --num_processes N`): `[distill] batch_size` is the GLOBAL batch. Every
process draws the same global batch (one seeded sampler), trains on its own shard of it (every N-th question,
from its rank on) through the DDP-wrapped student, and DDP averages the gradients; each shard's loss is scaled
by its share of the batch (questions for the letter loss, answer tokens for the direct-answer loss), so a step
on N processes is the step one process would take on the whole global batch (up to float rounding). Only the
main process writes checkpoints (every process writes its RNG state into them), all resume from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ledger.config import DistillSettings
from ledger.world import questions_digest
from vlm.atomic import atomic_file, replace_dir
from vlm.checkpoint import disk_full_as_error, require_free_space
from vlm.compression import compress
from vlm.config import CompressionConfig
from vlm.connector_match import match_resampler
from vlm.data import VQAExample
from vlm.distillation import DistillationLoss
from vlm.evaluate import all_letter_logits, encode_mcq, letter_token_ids
from vlm.model import PerceiverResampler, VisionLanguageModel
from vlm.processing import collate, da_user_text, encode_example
from vlm.supervised import TrainingSequence, collate_sequences, sequence_loss
from vlm.token_saliency import every_token_spec, fit_scorer_to_saliency
from vlm.tokenizer import IM_END

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
# Under `accelerate launch`, finalize's main process evaluates the student on whole splits while the others
# wait at a barrier: on the real model that outlasts torch's default process-group timeout (10 min on NCCL).
PROCESS_GROUP_TIMEOUT = timedelta(hours=12)


def distributed_state() -> PartialState:
    """The process layout (`accelerate launch` or a single process), set up once per process with finalize's
    device choice and a process-group timeout long enough for the main process's evaluation."""
    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)


class DistillationDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class DistillSettingsError(ValueError):
    """Distillation settings that cannot run as launched (e.g. fewer questions per batch than processes)."""


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    resumed_from: int
    seconds_per_step: float = float("nan")  # mean over the steps run here, checkpoint writes excluded


def teacher_cache_path(cache_dir: Path, teacher_id: str, examples: list[VQAExample]) -> Path:
    """Where the teacher's letter logits on `examples` are cached. `teacher_id` names the weights (a digest,
    `ledger.world.teacher_digest`); the questions count by content, not by id (`questions_digest`)."""
    digest = hashlib.sha1(f"{teacher_id}|{questions_digest(examples)}".encode()).hexdigest()[:16]
    return cache_dir / f"teacher-letter-logits-{digest}.pt"


@torch.no_grad()
def teacher_letter_logits_cached(
    teacher: VisionLanguageModel,
    tokenizer,
    examples: list[VQAExample],
    cache_file: Path,
    batch_size: int = 32,
) -> torch.Tensor:
    """[N, 4] teacher logits for the MCQ letters of `examples`, computed once and kept in `cache_file`."""
    if cache_file.is_file():
        # weights_only: a cache file is data, never code (torch < 2.6 unpickled anything by default).
        logits = torch.load(cache_file, weights_only=True)
        if logits.shape[0] == len(examples):
            return logits
    logger.info(
        "caching the teacher's answers to %d training questions (once per teacher and split) in %s",
        len(examples),
        cache_file,
    )
    logits = all_letter_logits(teacher, tokenizer, examples, batch_size, progress="teacher outputs")
    with atomic_file(cache_file) as tmp:
        torch.save(logits, tmp)
    return logits


def build_student(teacher: VisionLanguageModel, compression: CompressionConfig, settings: DistillSettings):
    """The trial's student with teacher weights (a resampler starts fresh), optionally with LoRA on the decoder."""
    student = compress(teacher, compression)
    if settings.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=2 * settings.lora_rank,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            lora_dropout=0.0,
        )
        student.decoder = get_peft_model(student.decoder, lora)
    return student


def merge_lora(student: VisionLanguageModel) -> VisionLanguageModel:
    """Fold LoRA adapters into the decoder weights so the saved model is a plain nanoVLM-layout student."""
    if hasattr(student.decoder, "merge_and_unload"):
        student.decoder = student.decoder.merge_and_unload()
    return student


def _pairs(tokenizer, student: VisionLanguageModel, examples: list[VQAExample]):
    """Per example: (MCQ encoding, DA encoding, DA answer ids)."""
    spec = student.image_spec
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    out = []
    for e in examples:
        mcq = encode_mcq(tokenizer, student, spec, e)
        da = encode_example(tokenizer, student.cfg, spec, e.image, da_user_text(e.question))
        answer = tokenizer(e.choices[e.correct_choice_idx], add_special_tokens=False)["input_ids"] + [im_end]
        out.append((mcq, da, answer))
    return out


def _da_loss(student, items, pad_id: int, device) -> torch.Tensor:
    """CE on the gold direct answer, teacher-forced after its prompt (mean over the answer tokens).
    `student` may be the DDP-wrapped model: only its forward is called."""
    sequences = [
        TrainingSequence(da.input_ids.tolist() + answer, [-100] * len(da.input_ids) + answer, da.images)
        for _, da, answer in items
    ]
    return sequence_loss(student, collate_sequences(sequences, pad_id), device)


def _letter_logits(student, batch: dict, letters: list[int], device) -> torch.Tensor:
    """[B, n_choices] answer-letter logits at the last prompt position, through the model's forward (so a
    DDP-wrapped student all-reduces its gradients); the same numbers as `vlm.evaluate.mcq_letter_logits`."""
    logits = student(
        batch["input_ids"].to(device), batch["images"], batch["attention_mask"].to(device), logits_to_keep=1
    )  # [B, 1, V]
    return logits[:, -1, list(letters)].float()


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch: every `world`-th index from `rank` on."""
    return indices[rank::world]


def match_fresh_resampler(
    student: VisionLanguageModel,
    teacher: VisionLanguageModel,
    tokenizer,
    examples: list[VQAExample],
    settings: DistillSettings,
    seed: int = 0,
) -> float | None:
    """Before distillation, a fresh resampler learns the teacher's projector tokens pooled to its grid on the
    training images (`vlm.connector_match`); returns the last matching loss, None when there is nothing to
    match (no resampler, or `resampler_match_steps` = 0). Deterministic given `seed`, so every process of a
    multi-process run starts from the same weights."""
    if settings.resampler_match_steps == 0 or not isinstance(student.connector, PerceiverResampler):
        return None
    if not examples:
        return None  # train_student says what is wrong
    spec = student.image_spec
    batch_size = min(settings.batch_size, len(examples))
    rng = random.Random(seed + 1)

    def features():
        while True:
            chosen = rng.sample(examples, batch_size)
            images = torch.cat([encode_mcq(tokenizer, student, spec, e).images for e in chosen])
            with torch.no_grad():  # (not around the yield: the caller would run without gradients)
                batch = student.encode_vision(images)
            yield batch

    loss = match_resampler(
        student.connector,
        teacher.connector,
        features(),
        settings.resampler_match_steps,
        settings.resampler_match_lr,
    )
    logger.info("resampler matched to the teacher's pooled tokens: relative error %.4f", loss)
    return loss


SALIENCY_QUESTIONS = 512  # training questions whose saliency a fresh scorer learns from (one pass)


def rank_fresh_scorer(
    student: VisionLanguageModel,
    tokenizer,
    examples: list[VQAExample],
    settings: DistillSettings,
    seed: int = 0,
) -> float | None:
    """Before distillation, a fresh token scorer learns to rank tokens as the student's saliency with every
    token in the prompt does (`vlm.token_saliency`), on up to `SALIENCY_QUESTIONS` training questions; returns
    the last ranking loss, None when there is nothing to train (no scorer, or `scorer_saliency_steps` = 0).
    Deterministic given `seed`."""
    selector = student.token_selector
    if settings.scorer_saliency_steps == 0 or selector is None or selector.scorer is None or not examples:
        return None  # (no questions: train_student says so)
    chosen = random.Random(seed + 2).sample(examples, min(SALIENCY_QUESTIONS, len(examples)))
    spec = every_token_spec(student)
    batch_size = min(settings.batch_size, len(chosen))

    def batches():
        for start in range(0, len(chosen), batch_size):
            part = chosen[start : start + batch_size]
            batch = collate([encode_mcq(tokenizer, student, spec, e) for e in part], tokenizer.pad_token_id)
            with torch.no_grad():  # (not around the yield: the caller needs gradients)
                features = student.encode_vision(batch["images"])
            yield batch, features, torch.tensor([e.correct_choice_idx for e in part])

    loss = fit_scorer_to_saliency(
        student,
        batches(),
        letter_token_ids(tokenizer),
        settings.scorer_saliency_steps,
        settings.scorer_saliency_lr,
        4 * batch_size,
        seed,
    )
    logger.info("token scorer fitted to the student's saliency: ranking loss %.4f", loss)
    return loss


def run_fingerprint(
    student: VisionLanguageModel,
    settings: DistillSettings,
    teacher_logits: torch.Tensor,
    examples: list[VQAExample],
    seed: int,
    da_fraction: float,
) -> dict:
    """What a checkpoint must match to be resumed: the distillation settings, the student's architecture,
    the training questions, the teacher (through its logits on them) and the seeds."""
    distill = dataclasses.asdict(settings)
    distill.pop("checkpoint_every")  # how often to save does not change what is trained
    logits = teacher_logits.detach().cpu().float().contiguous().numpy().tobytes()
    compression = getattr(student, "compression", None)
    fingerprint = {
        "distill": distill,
        "student_config": student.cfg.to_dict(),
        "connector": dataclasses.asdict(student.connector_config),
        "compression": compression.to_dict() if compression is not None else None,
        "questions": hashlib.sha1(",".join(e.question_id for e in examples).encode()).hexdigest()[:16],
        "teacher_logits": hashlib.sha1(logits).hexdigest()[:16],
        "seed": seed,
        "da_fraction": da_fraction,
    }
    return json.loads(json.dumps(fingerprint))  # as the checkpoint will hold it (tuples become lists)


def _differences(old: dict | None, new: dict) -> list[str]:
    if old is None:
        return ["none recorded (written by an older version)"]
    out = []
    for key in new:
        if isinstance(new[key], dict) and isinstance(old.get(key), dict):
            out += [
                f"{key}.{k}"
                for k in sorted(set(new[key]) | set(old[key]))
                if new[key].get(k) != old[key].get(k)
            ]
        elif new[key] != old.get(key):
            out.append(key)
    return out


def remove_checkpoints(run_dir: Path) -> None:
    """Delete a run's training checkpoints (after its model is saved: they can be gigabytes)."""
    for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _save_state(
    accelerator: Accelerator, run_dir: Path, step: int, rng_state, fingerprint: dict, state_bytes: int
) -> None:
    """Checkpoint atomically: write to a temp folder, then swap it in. Called by every process: the main one
    writes the weights, the optimizer and the trainer state and swaps the folders, each one its RNG state.

    At every moment `checkpoint/` or `checkpoint.old/` is complete (`_latest_checkpoint` reads them in that
    order): `checkpoint.old/` is only deleted while `checkpoint/` exists.
    """
    tmp = run_dir / "checkpoint.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        # A full disk would otherwise surface as torch's "unexpected pos N vs M", naming nothing.
        require_free_space(run_dir, state_bytes, "a distillation checkpoint")
    accelerator.wait_for_everyone()
    with disk_full_as_error(run_dir, "a distillation checkpoint"):
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every RNG file is in tmp/ before the trainer state marks it complete
        if main:
            (tmp / STATE_FILE).write_text(
                json.dumps({"step": step, "rng": rng_state, "fingerprint": fingerprint})
            )
    if main:
        # A kill in the middle of the swap leaves only checkpoint.old/: still a complete checkpoint.
        replace_dir(tmp, run_dir / "checkpoint", old=run_dir / "checkpoint.old")
    accelerator.wait_for_everyone()


def _latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a killed run, if any."""
    for name in ("checkpoint", "checkpoint.old"):
        if (run_dir / name / STATE_FILE).is_file():
            return run_dir / name
    return None


def train_student(
    student: VisionLanguageModel,
    tokenizer,
    examples: list[VQAExample],
    teacher_logits: torch.Tensor,
    settings: DistillSettings,
    run_dir: Path,
    seed: int = 0,
    da_fraction: float | None = None,
    before_training: Callable[[], object] | None = None,
) -> TrainResult:
    """Distill `student` in place; resumes from `run_dir/checkpoint` if a killed run left one.

    ``before_training`` (the first phase of fresh weights: `match_fresh_resampler`, `rank_fresh_scorer`) runs
    only when the run starts from step 0: a resumed run's checkpoint holds the weights it would train.

    Under `accelerate launch` every process calls this with the same arguments (`run_dir` on a file system
    they all see); `settings.batch_size` is the global batch, split across the processes."""
    # ----- setup ---------------------------------------------------------------------------------------------
    mixed = settings.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        mixed_precision=mixed,
        cpu=not torch.cuda.is_available(),
        # The global batch is split across processes: one scheduler step per optimizer step (without this,
        # accelerate steps the schedule once per process, as if each process had drawn a whole batch).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    global_batch = min(settings.batch_size, len(examples))
    if global_batch < world:
        raise DistillSettingsError(
            f"[distill] batch_size {settings.batch_size} (the global batch, over {len(examples)} training "
            f"questions) is smaller than the {world} processes: give every process at least one question"
        )
    torch.manual_seed(seed)
    letters = letter_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id
    items = _pairs(tokenizer, student, examples)
    labels = torch.tensor([e.correct_choice_idx for e in examples])

    # Weights that start from scratch (a resampler, a token scorer) train at `resampler_lr`, the rest at `lr`.
    fresh_ids = {id(p) for p in student.fresh_parameters()}
    fresh = [p for p in student.parameters() if id(p) in fresh_ids and p.requires_grad]
    others = [p for p in student.parameters() if id(p) not in fresh_ids and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": fresh, "lr": settings.resampler_lr}, {"params": others, "lr": settings.lr}],
        weight_decay=0.0,
    )
    # Linear warm-up over the first 5% of the steps (from 0: under 20 steps there is none), then cosine
    # decay to 0; a LambdaLR, so accelerate checkpoints and restores its step with the optimizer.
    scheduler = get_cosine_schedule_with_warmup(optimizer, settings.steps // 20, settings.steps)
    da_fraction = settings.da_fraction if da_fraction is None else da_fraction
    fingerprint = run_fingerprint(student, settings, teacher_logits, examples, seed, da_fraction)
    # What a checkpoint holds: the weights and AdamW's two moments of each trained one.
    state_bytes = sum(
        p.numel() * p.element_size() * (3 if p.requires_grad else 1) for p in student.parameters()
    )
    loss_fn = DistillationLoss(settings.kd_weight, settings.temperature)
    run_dir.mkdir(parents=True, exist_ok=True)
    # One sampler, seeded alike on every process: all draw the same global batches, each trains on its shard.
    start_step, rng = 0, random.Random(seed)
    checkpoint = _latest_checkpoint(run_dir)
    if checkpoint is not None:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        changed = _differences(state.get("fingerprint"), fingerprint)
        if changed:
            if accelerator.is_main_process:
                logger.warning(
                    "not resuming from %s (step %d): it was written for other settings (%s differ); "
                    "starting over",
                    checkpoint,
                    state["step"],
                    ", ".join(changed[:6]),
                )
            accelerator.wait_for_everyone()  # every process has read the checkpoint before it goes
            if accelerator.is_main_process:
                remove_checkpoints(run_dir)
            checkpoint = None
    if checkpoint is None and before_training is not None:
        before_training()  # in place, on the weights the optimizer holds (deterministic on every process)
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start_step = state["step"]
        rng.setstate((state["rng"][0], tuple(state["rng"][1]), state["rng"][2]))
        if accelerator.is_main_process:
            logger.info("resuming distillation from step %d (%s)", start_step, checkpoint)

    # ----- train ---------------------------------------------------------------------------------------------
    device = accelerator.device
    model = accelerator.unwrap_model(student)
    # Forward and backward go through `student` (DDP-wrapped on several processes: gradients all-reduced).
    student.train()
    loss_value = float("nan")
    progress = tqdm(
        range(start_step, settings.steps),
        desc="distill",
        initial=start_step,
        total=settings.steps,
        disable=not accelerator.is_local_main_process,
    )
    step_seconds: list[float] = []
    for step in progress:
        step_start = time.perf_counter()
        idx = rng.sample(range(len(items)), global_batch)
        use_da = rng.random() < da_fraction
        mine = shard(idx, rank, world)
        with accelerator.autocast():
            if use_da:
                # Mean over this shard's answer tokens, scaled so DDP's average over processes is the mean
                # over all the global batch's answer tokens.
                tokens = sum(len(items[i][2]) for i in mine), sum(len(items[i][2]) for i in idx)
                loss = _da_loss(student, [items[i] for i in mine], pad_id, device)
                loss = loss * (tokens[0] * world / tokens[1])
            else:
                batch = collate([items[i][0] for i in mine], pad_id)
                logits = _letter_logits(student, batch, letters, device)
                loss = loss_fn(logits, teacher_logits[mine].to(device), labels[mine].to(device))
                loss = loss * (len(mine) * world / len(idx))  # the same weighting, per question
        # The whole global batch's loss, the same on every process.
        global_loss = accelerator.reduce(loss.detach(), "mean")
        if not torch.isfinite(global_loss):  # every process decides alike, so none waits on the others
            raise DistillationDiverged(
                f"distillation loss became {global_loss.item()} at step {step}; lower the learning rate "
                f"(lr={settings.lr}) or use mixed_precision='no'. The study is unchanged."
            )
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(student.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(global_loss)
        progress.set_postfix(loss=f"{loss_value:.3f}")
        step_seconds.append(time.perf_counter() - step_start)
        done = step + 1
        if done % settings.checkpoint_every == 0 and done < settings.steps:
            state = rng.getstate()
            _save_state(
                accelerator, run_dir, done, [state[0], list(state[1]), state[2]], fingerprint, state_bytes
            )
    progress.close()

    # ----- clean up --------------------------------------------------------------------------------------------
    model.eval()
    accelerator.wait_for_everyone()
    per_step = sum(step_seconds) / len(step_seconds) if step_seconds else float("nan")
    return TrainResult(settings.steps, loss_value, start_step, per_step)
