"""Distilling a compressed student from the full teacher, through `accelerate` (CPU, one GPU, or
`accelerate launch` for several).

Order as in torchtune's recipes: setup, train (checkpointing every `checkpoint_every` steps), save, clean up.
Teacher outputs on the training questions (answer-letter logits of MCQ prompts) are computed once and cached
on disk, keyed by teacher, data and size, so every finalized trial reuses them.
Loss: `DistillationLoss` on the MCQ answer letter (KL to the teacher + CE on the gold letter), plus CE on the
gold direct answer for a share of the steps so the student keeps answering in words.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from distill.losses import DistillationLoss
from search.study_config import DistillSettings
from vlm.checkpoint import disk_full_as_error, require_free_space
from vlm.compression import compress
from vlm.config import CompressionConfig
from vlm.data import VQAExample
from vlm.evaluate import all_letter_logits, encode_mcq, letter_token_ids, mcq_letter_logits
from vlm.model import VisionLanguageModel
from vlm.processing import collate, da_user_text, encode_example
from vlm.supervised import TrainingSequence, collate_sequences, sequence_loss
from vlm.tokenizer import IM_END

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


class DistillationDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    resumed_from: int


def teacher_cache_path(cache_dir: Path, teacher_id: str, examples: list[VQAExample]) -> Path:
    digest = hashlib.sha1(
        (teacher_id + "|" + ",".join(e.question_id for e in examples)).encode()
    ).hexdigest()[:16]
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
    logits = all_letter_logits(teacher, tokenizer, examples, batch_size)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    torch.save(logits, tmp)
    tmp.replace(cache_file)
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


def _da_loss(student: VisionLanguageModel, items, pad_id: int, device) -> torch.Tensor:
    """CE on the gold direct answer, teacher-forced after its prompt."""
    sequences = [
        TrainingSequence(da.input_ids.tolist() + answer, [-100] * len(da.input_ids) + answer, da.images)
        for _, da, answer in items
    ]
    return sequence_loss(student, collate_sequences(sequences, pad_id), device)


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
    """Checkpoint atomically: write to a temp folder, then swap it in.

    At every moment `checkpoint/` or `checkpoint.old/` is complete (`_latest_checkpoint` reads them in that
    order): `checkpoint.old/` is only deleted while `checkpoint/` exists.
    """
    tmp = run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # A full disk would otherwise surface as torch's "unexpected pos N vs M", naming nothing.
    require_free_space(run_dir, state_bytes, "a distillation checkpoint")
    with disk_full_as_error(run_dir, "a distillation checkpoint"):
        accelerator.save_state(str(tmp))
        (tmp / STATE_FILE).write_text(
            json.dumps({"step": step, "rng": rng_state, "fingerprint": fingerprint})
        )
    final = run_dir / "checkpoint"
    old = run_dir / "checkpoint.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)  # a kill just before this leaves only checkpoint.old/: still a complete checkpoint
    shutil.rmtree(old, ignore_errors=True)


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
    da_fraction: float = 0.25,
) -> TrainResult:
    """Distill `student` in place; resumes from `run_dir/checkpoint` if a killed run left one."""
    # ----- setup ---------------------------------------------------------------------------------------------
    mixed = settings.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
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
    warmup = max(1, settings.steps // 20)

    def lr_scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_scale)
    fingerprint = run_fingerprint(student, settings, teacher_logits, examples, seed, da_fraction)
    # What a checkpoint holds: the weights and AdamW's two moments of each trained one.
    state_bytes = sum(
        p.numel() * p.element_size() * (3 if p.requires_grad else 1) for p in student.parameters()
    )
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    loss_fn = DistillationLoss(settings.kd_weight, settings.temperature)
    run_dir.mkdir(parents=True, exist_ok=True)
    start_step, rng = 0, random.Random(seed)
    checkpoint = _latest_checkpoint(run_dir)
    if checkpoint is not None:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        changed = _differences(state.get("fingerprint"), fingerprint)
        if changed:
            logger.warning(
                "not resuming from %s (step %d): it was written for other settings (%s differ); starting over",
                checkpoint,
                state["step"],
                ", ".join(changed[:6]),
            )
            remove_checkpoints(run_dir)
            checkpoint = None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start_step = state["step"]
        rng.setstate((state["rng"][0], tuple(state["rng"][1]), state["rng"][2]))
        logger.info("resuming distillation from step %d (%s)", start_step, checkpoint)

    # ----- train ---------------------------------------------------------------------------------------------
    device = accelerator.device
    model = accelerator.unwrap_model(student)
    model.train()
    loss_value = float("nan")
    progress = tqdm(
        range(start_step, settings.steps), desc="distill", initial=start_step, total=settings.steps
    )
    for step in progress:
        idx = rng.sample(range(len(items)), min(settings.batch_size, len(items)))
        use_da = rng.random() < da_fraction
        with accelerator.autocast():
            if use_da:
                loss = _da_loss(model, [items[i] for i in idx], pad_id, device)
            else:
                batch = collate([items[i][0] for i in idx], pad_id)
                logits = mcq_letter_logits(model, batch, letters)
                loss = loss_fn(logits, teacher_logits[idx].to(device), labels[idx].to(device))
        if not torch.isfinite(loss):
            raise DistillationDiverged(
                f"distillation loss became {loss.item()} at step {step}; lower the learning rate "
                f"(lr={settings.lr}) or use mixed_precision='no'. The study is unchanged."
            )
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        progress.set_postfix(loss=f"{loss_value:.3f}")
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
    return TrainResult(steps=settings.steps, final_loss=loss_value, resumed_from=start_step)
