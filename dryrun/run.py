"""`python -m dryrun.run --study aokvqa`: the whole study (search, promote, finalize, report) at the
teacher's real shapes, offline, with budgets scaled down, then what the real study would cost on a GPU.

Every accuracy a dry run prints is MEANINGLESS: the teacher has seeded random weights and the questions are
generated. What it tests is everything else: the search space at the real widths and view sizes, the
references, the feature cache, early stopping, the warm-up of fresh weights, promotion, finalize (training,
checkpoint, saving, evaluation, speed check) and the report; and what it measures is seconds and peak memory
by stage (`search.stages`), feature-cache bytes per question and per vision setting, and finalize's seconds
per step.

The offline world (built once, kept under `.cache/dryrun/`):
- the teacher: the study teacher's architecture with seeded random weights, saved as a nanoVLM checkpoint.
  A hub id (e.g. `lusxvr/nanoVLM`) cannot be read offline, so it stands for nanoVLM's config, which is
  `vlm.config.VLMConfig()` (the ~460M SigLIP2-base-512 + SmolLM2-360M fields of its `config.json`); a local
  checkpoint folder gives its own `config.json`, `demo` the demo config.
- the tokenizer: SmolLM2's 49,152-token BPE is on the hub only. A word-level stand-in keeps its layout:
  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` at ids 0-2, the questions' words, filler entries up to id
  49,151, and nanoVLM's 66 image tokens added after them (ids 49,152-49,217) by the same
  `vlm.tokenizer.load_tokenizer` path as SmolLM2. So every id fits the real embedding, the image tokens have
  their real ids, and prompts are as long as in words (SmolLM2's BPE gives a few more tokens per question;
  the ~900 image-token positions of a 13-view prompt are exact).
- the data: questions of the demo generator in A-OKVQA's schema, their scenes drawn at COCO's usual
  640x480, which nanoVLM's processor cuts into 4x3 crops of 512 px plus the global view: 13 views.

The derived study (`<name>-dryrun`, its TOML at `studies/<name>-dryrun/study.toml`, so each stage can be re-run
by hand with `--study` that path) keeps the study's [space], [model] device/dtype and every setting that
shapes a tensor (view sizes, crop grids, widths, eval batch size, feature-cache budget); it scales only how
many questions, trials and steps run (`DryRunScale`). Besides the references, one trial per search knob is
enqueued (`knob_params`), so every kind of config runs at least once.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.atomic import write_text
from vlm.cli import make_parser, run

logger = logging.getLogger("dryrun.run")

COCO_SIZE = (640, 480)  # width, height: most COCO (and so A-OKVQA) images
LOUD = "DRY RUN: random teacher weights and generated questions; every accuracy below is MEANINGLESS"
# The real study's budget the estimate is for: `studies/aokvqa.toml` and A-OKVQA's split sizes.
A_OKVQA_TRAIN, A_OKVQA_VAL, A_OKVQA_TEST = 17_056, 1_145, 6_702
# GPU classes for the estimate: dense bf16 tensor-core peak (FLOP/s) from the vendors' data sheets.
GPU_PEAK = {"H100 SXM (80 GB)": 989e12, "A100 (80 GB)": 312e12}
ACHIEVED_FRACTION = 0.3  # assumed share of the peak a PyTorch eager forward/backward of this model reaches


@dataclass(frozen=True)
class DryRunScale:
    """How much of the study runs: questions, trials and steps. Nothing here changes a tensor's shape
    except the batches, which cannot hold more distinct questions than the split has."""

    questions: int = 2  # the validation subset every trial is scored on
    validation: int = 3  # the whole validation split (finalize evaluates all of it)
    test: int = 1
    train: int = 4
    calibration: int = 1
    warmup: int = 2  # warm-up questions of fresh weights
    warmup_steps: int = 2
    distill_train: int = 2  # finalize's training questions (its batch: min(batch_size, this))
    distill_steps: int = 3
    checkpoint_every: int = 2  # one checkpoint written and removed, as in a real run
    sampled_trials: int = 1  # trials the sampler picks after the references and knob trials
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "seed" and getattr(self, f.name) < (0 if f.name == "sampled_trials" else 1):
                raise ValueError(f"{f.name} must be >= 1, got {getattr(self, f.name)}")
        if self.questions > self.validation:
            raise ValueError(f"questions ({self.questions}) must be <= validation ({self.validation})")
        if max(self.calibration, self.warmup, self.distill_train) > self.train:
            raise ValueError("calibration, warmup and distill_train must each be <= train")


# ----- the offline world --------------------------------------------------------------------------------------
def teacher_config(teacher: str):
    """The teacher's architecture without its weights: see the module docstring."""
    from ledger.config import DEMO
    from vlm.config import VLMConfig

    if teacher == DEMO:
        from vlm.demo.teacher import build_demo_tokenizer, demo_vlm_config

        return demo_vlm_config(len(build_demo_tokenizer()))
    config_json = Path(teacher) / "config.json"
    if config_json.is_file():
        return VLMConfig.from_json(config_json)
    return VLMConfig()  # a hub id: nanoVLM's config (lusxvr/nanoVLM's config.json holds these fields)


def dryrun_tokenizer(cfg, out_dir: Path | None = None):
    """A word tokenizer laid out like nanoVLM's (module docstring): base vocabulary of exactly
    `cfg.lm_base_vocab_size` ids, the image tokens after it."""
    from vlm.demo.scenes import demo_vocabulary, split_words
    from vlm.processing import CHOICE_LETTERS, DA_INSTRUCTION, MCQ_INSTRUCTION
    from vlm.tokenizer import BASE_SPECIAL_TOKENS, build_word_tokenizer, load_tokenizer

    words = list(dict.fromkeys(["user", "assistant", *CHOICE_LETTERS, *demo_vocabulary()]))
    words += [w for text in (MCQ_INSTRUCTION, DA_INSTRUCTION) for w in split_words(text) if w not in words]
    words = list(dict.fromkeys(words))
    room = cfg.lm_base_vocab_size - len(BASE_SPECIAL_TOKENS) - len(words)
    if room < 0:
        raise ValueError(
            f"the teacher's base vocabulary ({cfg.lm_base_vocab_size}) is smaller than the words"
        )
    fillers = [
        f"<|filler_{i}|>" for i in range(room)
    ]  # never produced: they only hold ids, as unused BPE merges
    base = build_word_tokenizer(words + fillers, dataclasses.replace(cfg, vlm_extra_tokens={}))
    if out_dir is None:
        import tempfile

        out_dir = Path(tempfile.mkdtemp(prefix="dryrun-tokenizer-"))
    base.save_pretrained(str(out_dir))
    return load_tokenizer(str(out_dir), cfg)  # adds the 66 image tokens after the base vocabulary


def generate_dataset(out_dir: Path, sizes: dict[str, int], seed: int, image_size=COCO_SIZE) -> Path:
    """A-OKVQA-schema splits of demo questions whose scenes are drawn at `image_size`."""
    import datasets
    from PIL import Image

    from vlm.atomic import atomic_dir
    from vlm.demo.dataset import FEATURES, SPLITS, add_row, iter_examples
    from vlm.demo.scenes import render_scene

    splits = {}
    for split, size in sizes.items():
        rows: dict[str, list] = {name: [] for name in FEATURES}
        for index, (scene, question) in enumerate(iter_examples(seed, split, size)):
            image = render_scene(scene).resize(image_size, Image.BICUBIC)
            add_row(rows, f"dryrun_{SPLITS[split]}_{index:06d}", image, question)
        splits[split] = datasets.Dataset.from_dict(rows, features=FEATURES, split=split)
    with atomic_dir(out_dir) as tmp:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
    return out_dir


def build_world(
    teacher: str, root: Path, scale: DryRunScale, image_size: tuple[int, int] = COCO_SIZE
) -> tuple[Path, Path]:
    """(teacher checkpoint, dataset folder) under `root`, built once per teacher config, scale and seed."""
    import torch

    from vlm.checkpoint import save_pretrained
    from vlm.model import VisionLanguageModel
    from vlm.tokenizer import special_token_ids

    cfg = teacher_config(teacher)
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    teacher_dir = root / f"teacher-{digest}-seed{scale.seed}"  # one per architecture and seed
    if not (teacher_dir / "model.safetensors").is_file():
        logger.info(
            "building the dry-run teacher: %s with random weights (seed %d)", cfg.lm_model_type, scale.seed
        )
        tokenizer = dryrun_tokenizer(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(scale.seed)
            model = VisionLanguageModel(cfg, special_token_ids(tokenizer, cfg)["image_token"]).eval()
        save_pretrained(model, teacher_dir, tokenizer=tokenizer)
        del model
    sizes = {"train": scale.train, "validation": scale.validation, "test": scale.test}
    data_dir = (
        root
        / f"data-{image_size[0]}x{image_size[1]}-{scale.train}-{scale.validation}-{scale.test}-seed{scale.seed}"
    )
    if not data_dir.is_dir():
        generate_dataset(data_dir, sizes, scale.seed, image_size)
    return teacher_dir, data_dir


# ----- the derived study ---------------------------------------------------------------------------------------
def dryrun_study_config(config, teacher_dir: Path, data_dir: Path, scale: DryRunScale):
    """`config` pointed at the offline world, with questions, trials and steps scaled down."""
    from ledger.config import DRY_RUN_SUFFIX

    replace = dataclasses.replace
    return replace(
        config,
        name=config.name + DRY_RUN_SUFFIX,
        model=replace(config.model, teacher=str(teacher_dir), tokenizer=None),
        data=replace(
            config.data,
            source=str(data_dir),
            subset_size=scale.questions,
            calibration_size=scale.calibration,
            warmup_size=scale.warmup,
        ),
        search=replace(
            config.search,
            early_stop_min_samples=min(config.search.early_stop_min_samples, scale.questions),
            resampler_warmup_steps=scale.warmup_steps,
            resampler_match_steps=min(config.search.resampler_match_steps, scale.warmup_steps),
            scorer_saliency_steps=min(config.search.scorer_saliency_steps, scale.warmup_steps),
            # A batch repeats questions once it exceeds the warm-up set: 16 copies of 2 questions would only
            # multiply the time (the measured memory per question is scaled up in the estimate instead).
            resampler_warmup_batch_size=min(config.search.resampler_warmup_batch_size, scale.warmup),
            latency_questions=min(config.search.latency_questions, scale.questions),
            exact_stage_memory=True,  # each stage's own peak (search.stages), whatever it costs
        ),
        distill=replace(
            config.distill,
            steps=scale.distill_steps,
            resampler_match_steps=min(config.distill.resampler_match_steps, scale.distill_steps),
            scorer_saliency_steps=min(config.distill.scorer_saliency_steps, scale.distill_steps),
            checkpoint_every=scale.checkpoint_every,
            train_size=scale.distill_train,
        ),
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def write_study_toml(config, path: Path) -> Path:
    """The study config as a TOML file `load_study_config` reads back equal (None values are left out)."""
    lines = [f"# written by python -m dryrun.run: {LOUD}", f"name = {_toml_value(config.name)}"]
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return write_text(path, "\n".join(lines) + "\n")


def knob_params(teacher_cfg, space) -> dict[str, dict]:
    """One trial per search knob at its extreme, in the space's parameters (the references cover pooling to
    6x6 and 4x4, 3/4 view size, global view only, a 50% resampler and 50% norm drop / score pruning)."""
    from search.references import reference_params

    references = reference_params(teacher_cfg, space)
    base = references["teacher"]
    patch_grid = teacher_cfg.vit_patch_size * teacher_cfg.mp_pixel_shuffle_factor
    knobs = {
        "pool to the smallest grid": {**base, "token_grid": space.token_grid[0]},
        "drop the most decoder blocks": {
            **base,
            "n_drop_decoder": min(space.max_drop_decoder, teacher_cfg.lm_n_blocks - 1),
        },
        "drop the most encoder blocks": {
            **base,
            "n_drop_encoder": min(space.max_drop_encoder, teacher_cfg.vit_n_blocks - 1),
        },
        "widest resampler": {**base, "resampler_width": max(space.resampler_widths)},
    }
    if space.max_grid_side[0] < base["max_grid_side"] - 1:
        knobs["2 crops per side"] = {**base, "max_grid_side": 2}
    for size in space.view_sizes:
        if size != base["view_size"]:
            knobs[f"view size {size}"] = {**base, "view_size": size, "token_grid": max(1, size // patch_grid)}
    if "merge" in space.reducers:
        knobs["token merging, most per block"] = {
            **base,
            "token_reducer": "merge",
            "merge_r": space.merge_r[1],
        }
    if "score_prune" in space.reducers:
        knobs["score prune, fewest kept"] = {
            **base,
            "token_reducer": "score_prune",
            "keep_fraction": min(space.keep_fractions),
        }
    return {
        name: p for name, p in knobs.items() if p not in references.values()
    }  # no duplicate of a reference


# ----- measuring -------------------------------------------------------------------------------------------------
def timed(name: str, record: dict, fn, *args, **kwargs):
    """Run one pipeline stage, recording its seconds and the largest resident set (and CUDA allocation)
    polled during it (`search.stages.MemoryPoller`: the stages themselves reset the kernel's peak)."""
    import torch

    from search.stages import MemoryPoller

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    logger.info("%s -- stage %s", LOUD, name)
    with MemoryPoller(device) as poller:
        result = fn(*args, **kwargs)
    record[name] = {"seconds": time.perf_counter() - start, "peak_rss_bytes": poller.peak_rss}
    if poller.peak_cuda is not None:
        record[name]["cuda_peak_bytes"] = poller.peak_cuda
    return result


def trial_rows(study) -> list[dict]:
    """Per trial: what it was, whether it finished, and its stage seconds and peak memory."""
    from ledger.records import reference_name

    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "name": reference_name(t) or attrs.get("dryrun_knob") or "sampled",
                "params": t.params,
                "gflops": attrs.get("gflops"),
                "views": attrs.get("views"),
                "prompt_tokens": attrs.get("prompt_tokens"),
                "image_tokens": attrs.get("image_tokens"),
                "questions": attrs.get("samples_evaluated"),
                "seconds": attrs.get("seconds"),
                "stages": attrs.get("stages"),
                "fail_reason": attrs.get("fail_reason"),
                "invalid_reason": attrs.get("invalid_reason"),
            }
        )
    return rows


# ----- the estimate ----------------------------------------------------------------------------------------------
def sampled_configs(config, teacher_cfg, n: int, seed: int = 0) -> list:
    """`n` configs drawn from the study's space the way its random start-up trials draw them (the first 20
    of a TPE study; a fair picture of which knobs a long study visits); invalid ones (pruned at no cost)
    are None."""
    import optuna

    from search.space import suggest_compression
    from vlm.compression import CompressionError, plan_student

    orders = list(range(teacher_cfg.lm_n_blocks)), list(range(teacher_cfg.vit_n_blocks))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        compression = suggest_compression(trial, config.space, *orders)
        try:
            plan_student(teacher_cfg, compression)
            out.append(compression)
        except CompressionError:
            out.append(None)
        study.tell(trial, 0.0)
    return out


def _image_spec(teacher_cfg, compression):
    from vlm.compression import plan_student
    from vlm.flops import plan_image_spec

    return plan_image_spec(plan_student(teacher_cfg, compression))


def prompt_seconds_per_question(config, teacher_cfg, rows: list[dict]) -> float | None:
    """Measured CPU seconds to cut one question's image into views and tokenize its prompt, from the trials
    that met a new image spec first (their `prompts` stage did the work; later ones hit the cache)."""
    from optuna.trial import FixedTrial

    from search.space import suggest_compression
    from vlm.config import CompressionConfig

    orders = list(range(teacher_cfg.lm_n_blocks)), list(range(teacher_cfg.vit_n_blocks))
    seen = {_image_spec(teacher_cfg, CompressionConfig())}  # the baseline built the teacher's
    samples = []
    for r in sorted(rows, key=lambda r: r["trial"]):
        if r["state"] != "COMPLETE" or not r["stages"]:
            continue
        spec = _image_spec(teacher_cfg, suggest_compression(FixedTrial(r["params"]), config.space, *orders))
        if spec not in seen:
            seen.add(spec)
            samples.append(r["stages"]["prompts"]["seconds"] / (r["questions"] or 1))
    return statistics.median(samples) if samples else None


def estimate_real_study(config, teacher_cfg, rows: list[dict]) -> dict:
    """What the real study (its TOML's trials, subset, warm-up and distillation budgets on A-OKVQA) costs in
    analytic FLOPs, and so in GPU hours at `ACHIEVED_FRACTION` of each GPU class's bf16 peak. Its trials are
    `sampled_configs` of the study's space; see `assumptions`."""
    from vlm.config import CompressionConfig
    from vlm.flops import count_question

    search, data, distill = config.search, config.data, config.distill
    with_prompt = [r for r in rows if r["prompt_tokens"] and r["image_tokens"] is not None]
    text_tokens = round(statistics.median(r["prompt_tokens"] - r["image_tokens"] for r in with_prompt))

    def flops(compression: CompressionConfig) -> dict:
        return count_question(teacher_cfg, compression, COCO_SIZE, text_tokens, 1, False)["analytic"]

    teacher = flops(CompressionConfig())
    configs = sampled_configs(config, teacher_cfg, search.trials, search.seed)
    valid = [c for c in configs if c is not None]
    counted = [(flops(c), c.has_fresh_weights) for c in valid]
    vision = sum(f["vision"] for f, _ in counted)
    rest = sum(f["total"] - f["vision"] for f, _ in counted)
    fresh = [f for f, is_fresh in counted if is_fresh]
    n = data.subset_size
    warmup_questions = search.resampler_warmup_steps * search.resampler_warmup_batch_size
    parts = {
        "baseline (teacher on the subset)": n * teacher["total"],
        "block importance (calibration)": data.calibration_size * teacher["total"],
        # Every trial encodes its views again: the cache holds one vision setting of the subset at most
        # (see feature_cache in the memory estimate) and random trials rarely share one with the previous.
        "trials: vision (every trial a cache miss)": n * vision,
        "trials: connector + prefill": n * rest,
        "warm-up: teacher outputs on the warm-up set (once)": data.warmup_size * teacher["total"],
        # Forward and backward through connector and decoder (frozen weights: no weight gradients, so about
        # 2x the forward), plus the warm-up questions' vision once per trial (its own cache, half the budget).
        "warm-up: steps (fresh-weight trials)": sum(
            warmup_questions * 3 * (f["connector"] + f["prefill"]) + data.warmup_size * f["vision"]
            for f in fresh
        ),
    }
    if search.scorer_saliency_steps:
        # A scorer's saliency: one forward and backward over the warm-up set with every token in the prompt
        # (views from the warm-up's feature cache; connector and decoder bounded by the teacher's; the scorer's
        # own steps are negligible).
        scorers = sum(1 for c in valid if c.keep_tokens_by_score is not None)
        parts["warm-up: scorer saliency (score-pruning trials)"] = (
            scorers * data.warmup_size * 3 * (teacher["total"] - teacher["vision"])
        )
    train_questions = distill.train_size or A_OKVQA_TRAIN
    parts["finalize: teacher outputs on the train split"] = train_questions * teacher["total"]
    # Full fine-tuning of a teacher-sized student (an upper bound for a compressed one): forward + backward.
    parts["finalize: distillation steps (teacher-sized student)"] = (
        distill.steps * distill.batch_size * 3 * teacher["total"]
    )
    # MCQ and direct answer (a prefill each; the few decode steps are negligible) on validation and test.
    parts["finalize: evaluation (validation + test)"] = 2 * (A_OKVQA_VAL + A_OKVQA_TEST) * teacher["total"]
    total = sum(parts.values())
    # Image processing runs on the host's CPU once per image spec (view size, crop grid, tokens per view) for
    # the subset, and again for the warm-up set when a fresh-weight trial meets the spec.
    per_question = prompt_seconds_per_question(config, teacher_cfg, rows)
    specs = {_image_spec(teacher_cfg, c) for c in valid}
    fresh_specs = {_image_spec(teacher_cfg, c) for c in valid if c.has_fresh_weights}
    host_seconds = (
        None
        if per_question is None
        else per_question * (n * len(specs) + data.warmup_size * len(fresh_specs))
    )
    gpu_hours = {
        gpu: {k: v / (peak * ACHIEVED_FRACTION) / 3600 for k, v in {**parts, "total": total}.items()}
        for gpu, peak in GPU_PEAK.items()
    }
    return {
        "flops": {**parts, "total": total},
        "gpu_hours": gpu_hours,
        "teacher_flops_per_question": teacher,
        "inputs": {
            "trials": search.trials,
            "trials_pruned_invalid": len(configs) - len(valid),
            "trials_with_fresh_weights": len(fresh),
            "subset_questions": n,
            "warmup_questions_per_fresh_trial": warmup_questions,
            "mean_vision_gflops_per_question": vision / max(1, len(valid)) / 1e9,
            "mean_connector_prefill_gflops_per_question": rest / max(1, len(valid)) / 1e9,
            "finalize_steps": distill.steps,
            "finalize_batch": distill.batch_size,
            "finalize_train_questions": train_questions,
            "text_tokens_per_prompt": text_tokens,
            "distinct_image_specs": len(specs),
            "measured_prompt_seconds_per_question": per_question,
        },
        "host_cpu_hours_image_processing": None if host_seconds is None else host_seconds / 3600,
        "assumptions": [
            f"every image {COCO_SIZE[0]}x{COCO_SIZE[1]} (13 views at 512 px); prompts of the dry run's text length",
            f"the {search.trials} trials drawn at random from the space (TPE's start-up; later trials concentrate)",
            "every trial re-encodes its views and scores all subset questions (no early stop: an upper bound)",
            f"{ACHIEVED_FRACTION:.0%} of the GPU's dense bf16 peak achieved",
            "backward = 2x forward; finalize trains a teacher-sized student (an upper bound)",
            "finalize evaluates the whole validation and test splits, MCQ and direct answer (one prefill each)",
            "image processing (host CPU, one core, as measured here) once per image spec and question",
        ],
    }


def training_activation_bytes(cfg, views: int, prompt_tokens: int, bytes_per_value: int = 2) -> float:
    """Activations one question keeps for the backward pass of a full fine-tune, per Korthikanti et al. 2022
    (https://arxiv.org/abs/2205.05198, Table 2) with fused attention (no s^2 term): 34 * tokens * width bytes
    per block in 16-bit, times `bytes_per_value / 2`, for the ViT (1,024 patches per 512 px view) and the
    decoder (the prompt)."""
    patches = (cfg.vit_img_size // cfg.vit_patch_size) ** 2
    vit = 34 * views * patches * cfg.vit_hidden_dim * cfg.vit_n_blocks
    lm = 34 * prompt_tokens * cfg.lm_hidden_dim * cfg.lm_n_blocks
    return (vit + lm) * bytes_per_value / 2


def memory_estimate(config, teacher_cfg, record: dict) -> dict:
    """Bytes on one GPU for the real study's heaviest steps (see the README's assumptions): weights and
    optimizer state from the parameter count, training activations from `training_activation_bytes`, which
    is checked against the dry run's measured finalize peak (float32, its own views and batch)."""
    params = record["teacher_parameters"]
    teacher_row = next((r for r in record["trials"] if r["name"] == "teacher"), None)
    views = teacher_row["views"] if teacher_row and teacher_row["views"] else 13
    prompt = teacher_row["prompt_tokens"] if teacher_row and teacher_row["prompt_tokens"] else 900
    batch = config.distill.batch_size
    states = 16 * params  # fp32 weights, fp32 gradients, AdamW's two fp32 moments (bf16 autocast keeps fp32)
    finalize = states + 2 * params + batch * training_activation_bytes(teacher_cfg, views, prompt)
    out = {
        "teacher_weights_bf16_bytes": 2 * params,
        "finalize_states_bytes": states,
        "finalize_activations_per_question_bf16_bytes": training_activation_bytes(teacher_cfg, views, prompt),
        "finalize_total_bytes (states + bf16 teacher + batch activations)": finalize,
        "feature_cache_bytes_per_question_teacher_bf16": (
            record.get("teacher_feature_bytes_per_question") or 0
        )
        / 2,
        "feature_cache_bytes_subset_teacher_bf16": config.data.subset_size
        * (record.get("teacher_feature_bytes_per_question") or 0)
        / 2,
        "feature_cache_budget_bytes": config.search.feature_cache_mb << 20,
    }
    # Warm-up of fresh weights: backward through the decoder at the warm-up batch. Its measured rise over the
    # memory in use before, per question, in bf16 (half of float32), times the real batch.
    rises = [
        (r["stages"]["warmup"]["peak_bytes"] - r["stages"]["warmup"]["before_bytes"])
        / record["scale"]["warmup"]
        for r in record["trials"]
        if r["stages"]
        and "warmup" in r["stages"]
        and r["stages"]["warmup"].get("before_bytes")
        and r["stages"]["warmup"].get("peak_bytes")
    ]
    if rises:
        per_question = max(rises) / 2
        out["warmup_activations_per_question_bf16_bytes (measured fp32 rise / 2)"] = per_question
        out["warmup_total_bytes (teacher + student bf16 + batch activations)"] = (
            4 * params + config.search.resampler_warmup_batch_size * per_question
        )
    final = record.get("finalize")
    measured = record.get("stages", {}).get("finalize", {}).get("peak_rss_bytes")
    if final and measured:
        # The same model for the dry run's finalize: fp32 teacher + fp32 student states + its activations.
        dry_batch = min(record["scale"]["distill_train"], config.distill.batch_size)
        row = next((r for r in record["trials"] if r["name"] == final.get("trial_name")), None)
        tokens = row["prompt_tokens"] if row and row["prompt_tokens"] else prompt
        activations = training_activation_bytes(teacher_cfg, round(final["views"]), round(tokens), 4)
        predicted = 4 * params + states + dry_batch * activations
        out["check: dry-run finalize predicted vs measured peak RSS bytes"] = [predicted, measured]
    return out


# ----- the run ------------------------------------------------------------------------------------------------------
def dry_run(
    study_name: str,
    scale: DryRunScale,
    threads: int | None = None,
    image_size: tuple[int, int] = COCO_SIZE,
    speed_settings=None,
    from_finalize: bool = False,
    skip_knobs: tuple[str, ...] = (),
) -> dict:
    """Build the world, run every stage of the study, measure them, and return (and write) the record.
    `from_finalize`: keep the previous dry run's search (its study and record) and run finalize and the report
    again. `skip_knobs`: names of `knob_params` trials not to run (a test leaves out kinds a reference runs)."""
    import optuna
    import torch

    import distill.promote
    import reports.build
    import search.run
    from distill.finalizer import finalize, resolve_trial
    from ledger.config import load_study_config
    from ledger.records import BASELINE, reference_name
    from ledger.rules import reference_trials
    from ledger.world import resolve_device
    from search.study import open_study
    from vlm.config import BenchSettings
    from vlm.paths import cache_dir, project_root
    from vlm.timing import environment

    if threads:
        torch.set_num_threads(threads)
    original = load_study_config(study_name)
    record: dict[str, Any] = {"warning": LOUD, "study": original.name, "scale": dataclasses.asdict(scale)}
    stages: dict[str, Any] = {}
    teacher_dir, data_dir = timed(
        "world", stages, build_world, original.model.teacher, cache_dir() / "dryrun", scale, image_size
    )
    config = dryrun_study_config(original, teacher_dir, data_dir, scale)
    toml = write_study_toml(config, config.artifacts_dir / "study.toml")
    storage = Path(config.default_storage.removeprefix("sqlite:///"))
    previous = config.artifacts_dir / "dryrun.json"
    if from_finalize and not (storage.is_file() and previous.is_file()):
        raise FileNotFoundError(
            f"no previous dry run of {original.name!r} to continue: run it without --from-finalize"
        )
    stale_paths = [config.artifacts_dir / "finalize"]
    if not from_finalize:
        stale_paths += [storage, config.artifacts_dir / "cache"]
    for stale in stale_paths:
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    device = resolve_device(config.model.device)
    record["environment"] = environment(device, torch.float32 if device.type == "cpu" else torch.bfloat16)
    record["dtype"] = (
        f"study dtype {config.model.dtype}; on the CPU ledger.world.load_teacher runs float32"
        if device.type == "cpu"
        else config.model.dtype
    )
    teacher_cfg = teacher_config(original.model.teacher)
    args = ["--study", str(toml)]
    if from_finalize:
        before = json.loads(previous.read_text())
        stages.update({k: before["stages"][k] for k in ("search", "promote")})
        rc = before["search_exit_code"]
    else:
        study = open_study(config)
        knobs = {k: v for k, v in knob_params(teacher_cfg, config.space).items() if k not in skip_knobs}
        for name, params in knobs.items():
            study.enqueue_trial(params, user_attrs={"dryrun_knob": name}, skip_if_exists=True)
        from search.references import reference_params

        target = len(reference_params(teacher_cfg, config.space)) + len(knobs) + scale.sampled_trials
        rc = timed("search", stages, search.run.main, [*args, "--trials", str(target)])
    study = optuna.load_study(study_name=config.name, storage=config.default_storage)
    rows = trial_rows(study)
    record["search_exit_code"] = rc
    record["trials"] = rows
    record["baseline"] = study.user_attrs.get(BASELINE)
    if not from_finalize:
        timed("promote", stages, distill.promote.main, args)
    # Finalize the 'global view only' reference: all of the teacher's parameters (finalize at 460M), trained
    # on one view per question so the training step fits this machine's memory; allowed unpromoted (random
    # weights make promotion arbitrary).
    refs = reference_trials(study)
    chosen = refs.get("global view only") or next(iter(refs.values()), None)
    finalize_record = None
    if chosen is not None:
        trial = resolve_trial(study, config, str(chosen.number), allow_unpromoted=True)
        # finalize's teacher-vs-student timing, once on one question (its default is minutes of the teacher)
        quick = speed_settings or BenchSettings(
            0, 1, batch_size=0, new_tokens=2, components=False, memory=True
        )
        finalized = timed("finalize", stages, finalize, config, study, trial, quick, 1)
        finalize_record = {**finalized.to_dict(), "trial_name": reference_name(chosen)}
    record["finalize"] = finalize_record
    timed("report", stages, reports.build.main, args)
    record["stages"] = stages

    teacher_row = next((r for r in rows if r["name"] == "teacher" and r["stages"]), None)
    from vlm.model import VisionLanguageModel

    with torch.device("meta"):  # counted without allocating
        record["teacher_parameters"] = sum(
            p.numel() for p in VisionLanguageModel(teacher_cfg, 0).parameters()
        )
    record["feature_bytes_per_question"] = {
        r["name"]: r["stages"]["score"]["feature_bytes_per_question"] for r in rows if r["stages"]
    }
    record["teacher_feature_bytes_per_question"] = (
        teacher_row["stages"]["score"]["feature_bytes_per_question"] if teacher_row else None
    ) or max((v or 0) for v in record["feature_bytes_per_question"].values())
    record["estimate"] = estimate_real_study(original, teacher_cfg, rows)
    record["memory_estimate"] = memory_estimate(original, teacher_cfg, record)
    failed = [r for r in rows if r["state"] == "FAIL"]
    record["failed_trials"] = [(r["trial"], r["name"], r["fail_reason"]) for r in failed]
    out = config.artifacts_dir / "dryrun.json"
    write_text(out, json.dumps(record, indent=1, default=str))
    copy = project_root() / "benchmarks" / "results" / f"dryrun-{original.name}.json"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, copy)
    table = out.with_suffix(".md")
    write_text(table, summary_markdown(record))
    record["written"] = [str(out), str(copy), str(table)]
    return record


def _gib(value) -> str:
    return "" if value is None else f"{value / 2**30:.2f}"


def summary_markdown(record: dict) -> str:
    """The record as Markdown tables: pipeline stages, trials by stage, finalize, and the estimate."""
    warm_steps = record["scale"]["warmup_steps"]
    lines = [f"**{LOUD}.**", "", "| stage | seconds | peak RSS GiB |", "|---|---:|---:|"]
    lines += [
        f"| {n} | {v['seconds']:.1f} | {_gib(v['peak_rss_bytes'])} |" for n, v in record["stages"].items()
    ]
    lines += [
        "",
        "| trial | config | state | views | image tokens | GFLOPs/q | ViT s/view | cache fill s | "
        "connector+prefill s/q | warm-up s/step | peak GiB | cache MB/q | trial s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["trials"]:
        st = r["stages"] or {}
        score = st.get("score", {})
        views, fill = score.get("vision_fill_views") or 0, score.get("vision_fill_seconds") or 0.0
        questions = r["questions"] or 1
        rest = (score.get("seconds", 0.0) - fill) / questions
        warm = st.get("warmup", {}).get("seconds")
        peak = max((v.get("peak_bytes") or 0) for v in st.values()) if st else None
        cache = score.get("feature_bytes_per_question")
        lines.append(
            f"| {r['trial']} | {r['name']} | {r['state']} | {r['views'] or 0:.0f} | {r['image_tokens'] or 0:.0f} | "
            f"{r['gflops'] or 0:.0f} | {f'{fill / views:.2f}' if views else 'cached'} | {fill:.1f} | {rest:.1f} | "
            f"{f'{warm / warm_steps:.1f}' if warm else ''} | {_gib(peak)} | "
            f"{f'{cache / 1e6:.1f}' if cache else ''} | {r['seconds'] or 0:.1f} |"
        )
    final = record.get("finalize")
    if final:
        lines += [
            "",
            f"finalize ({final['trial_name']}, {final['views']:.0f} view(s)): {final['train']['steps']} steps, "
            f"{final['train']['seconds_per_step']:.1f} s per step, peak RSS "
            f"{_gib(record['stages']['finalize']['peak_rss_bytes'])} GiB, {record['teacher_parameters'] / 1e6:.0f}M "
            "teacher parameters",
        ]
    est = record["estimate"]
    gpus = list(est["gpu_hours"])
    lines += ["", "| real study part | PFLOPs | " + " | ".join(f"{g} h" for g in gpus) + " |"]
    lines.append("|---|---:|" + "---:|" * len(gpus))
    for part, flops in est["flops"].items():
        hours = " | ".join(f"{est['gpu_hours'][g][part]:.2f}" for g in gpus)
        lines.append(f"| {part} | {flops / 1e15:.0f} | {hours} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "dryrun.run",
        "Run the whole study (search, promote, finalize, report) offline at the teacher's real shapes with a "
        "random-weight teacher and generated COCO-sized questions, a few questions/trials/steps only; measure "
        "seconds and memory by stage and estimate the real study's GPU cost. Accuracies are meaningless.",
    )
    parser.add_argument("--study", default="aokvqa", help="study name (studies/<name>.toml) or a .toml path")
    defaults = DryRunScale()
    for f in dataclasses.fields(DryRunScale):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=int,
            default=getattr(defaults, f.name),
            help=f"scale: {f.name}",
        )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--from-finalize",
        action="store_true",
        help="keep the previous dry run's search; run finalize and the report again",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from vlm.cli import UsageError

    try:
        scale = DryRunScale(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DryRunScale)})
    except ValueError as err:
        raise UsageError(str(err)) from err
    record = dry_run(args.study, scale, args.threads, from_finalize=args.from_finalize)
    logger.info("\n%s", summary_markdown(record))
    logger.info("wrote %s", ", ".join(record["written"]))
    return 1 if record["failed_trials"] or record["search_exit_code"] else 0


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv, log_format="%(asctime)s %(name)s %(message)s")


if __name__ == "__main__":
    sys.exit(main())
