"""The record schema: every key a study and its trials hold, written and read here only.

Study user attributes
- `baseline` (`Baseline`): the teacher's accuracy X on the search subset with its interval, and its FLOPs.
- `study_config`: the settings the search ran with (`StudyConfig.to_dict()`), and `flop_convention`: how
  FLOPs are counted. Feasibility and promotion use the ratio recorded here, never today's TOML.
- `block_importance`: the layer ranking the search drops blocks by.
- `world`: digests of the teacher's weights and of the search subset's questions (`check_world`): a study
  describes one teacher on one set of questions, and refuses to go on with another.
- `promoted`: the promoted trials (`PromotedTrial` rows), written by `distill.promote` or `distill.finalize`.
- `finalized:<N>` (`FinalizedRecord`): trial N distilled and evaluated on the whole validation split.

Trial attributes
- params: the sampled knobs (`SEARCH_PARAMS` first); user attribute `config`: the `CompressionConfig` dict.
- `reference`: the hand-picked config's name for the enqueued reference trials (the teacher first).
- the scored result (`TrialRecord`), flat, so optuna-dashboard shows each field as a column.
- `invalid_reason` (PRUNED: the config cannot be built) or `fail_reason` (FAIL: the exception).
- the constraint `accuracy_floor` = ratio·X - accuracy (feasible when <= 0), in optuna's own
  `trial.constraints` (`record_constraint`); `ledger.rules.is_feasible` is the one rule that reads it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import optuna

from ledger.config import SearchSettings
from vlm.cli import UsageError

# ----- keys ---------------------------------------------------------------------------------------------------
BASELINE = "baseline"
STUDY_CONFIG = "study_config"
FLOP_CONVENTION = "flop_convention"
BLOCK_IMPORTANCE = "block_importance"
PROMOTED = "promoted"
FINALIZED_PREFIX = "finalized:"
WORLD = "world"
REFERENCE = "reference"
CONFIG = "config"
INVALID_REASON = "invalid_reason"
FAIL_REASON = "fail_reason"
CONSTRAINT_NAME = "accuracy_floor"

# The search's parameters, in the order reports show them (search.space samples them; the reducers' own
# parameters follow when a study's [space] lists reducers).
SEARCH_PARAMS = (
    "token_grid",
    "view_size",
    "max_grid_side",
    "n_drop_decoder",
    "n_drop_encoder",
    "resampler_width",
)

# The study's objectives: objective 0 is the cost (minimised), objective 1 the accuracy on the search subset.
OBJECTIVE_NAMES = ["gflops_per_question", "accuracy"]
# [search] cost = "latency": measured MCQ latency at batch 1 divided by the teacher's, timed in one process.
LATENCY_OBJECTIVE_NAMES = ["latency_vs_teacher", "accuracy"]


def objective_names(cost: str) -> list[str]:
    """The study's metric names for a `[search] cost` setting ("flops" or "latency")."""
    return LATENCY_OBJECTIVE_NAMES if cost == "latency" else OBJECTIVE_NAMES


def is_latency_study(study: optuna.Study) -> bool:
    return (study.metric_names or OBJECTIVE_NAMES)[0] == LATENCY_OBJECTIVE_NAMES[0]


# ----- study-level facts --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """The teacher on the search subset: X with its 95% Wilson interval, and its GFLOPs per question."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    gflops: float

    def to_attr(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_attr(cls, value: dict) -> Baseline:
        return cls(
            accuracy=float(value["accuracy"]),
            ci_low=float(value.get("ci_low", math.nan)),
            ci_high=float(value.get("ci_high", math.nan)),
            n=int(value.get("n", 0)),
            gflops=float(value["gflops"]),
        )


def read_baseline(study: optuna.Study) -> Baseline:
    value = study.user_attrs.get(BASELINE)
    if not value:
        raise UsageError(
            f"study {study.study_name!r} has no baseline yet: run `python -m search.run --study "
            f"{study.study_name}` first"
        )
    return Baseline.from_attr(value)


class WorldMismatchError(UsageError):
    """The study was searched with another teacher or on other questions than the ones configured now."""


WORLD_PARTS = {"teacher": "teacher (its weights)", "subset": "search subset (its questions)"}


def check_world(study: optuna.Study, world: dict[str, str], record: bool = True) -> None:
    """Refuse to go on with a study recorded with another teacher or subset (`world`: part -> digest, parts of
    `WORLD_PARTS`); a study with no record gets `world` when `record` (the search; finalize only checks).

    Its X, trials and promotions describe the world it was searched in: mixing two teachers' trials in one
    front, or distilling against a teacher the search never scored, would be silently wrong."""
    recorded = study.user_attrs.get(WORLD)
    if recorded is None:
        if record:
            study.set_user_attr(WORLD, dict(world))
        return
    changed = [part for part in world if part in recorded and recorded[part] != world[part]]
    if changed:
        what = " and ".join(WORLD_PARTS.get(part, part) for part in changed)
        digests = ", ".join(f"{part} {recorded[part]} -> {world[part]}" for part in changed)
        raise WorldMismatchError(
            f"study {study.study_name!r} was searched with another {what} ({digests}): its X, trials and "
            "promotions describe that one. Start a new study (another study name, or another --storage), or "
            "delete the study's database (studies/<name>.db for the default SQLite storage) and its folder "
            "studies/<name>/ to search again from scratch"
        )


def record_settings(study: optuna.Study, settings: dict, flop_convention: str) -> None:
    """The settings the search runs with (`StudyConfig.to_dict()`) and how its FLOPs are counted."""
    study.set_user_attr(FLOP_CONVENTION, flop_convention)
    study.set_user_attr(STUDY_CONFIG, settings)


def recorded_settings(study: optuna.Study) -> dict:
    return study.user_attrs.get(STUDY_CONFIG) or {}


def recorded_search_settings(study: optuna.Study) -> SearchSettings:
    """The [search] settings the study was searched with (defaults for keys an older study lacks)."""
    stored = recorded_settings(study).get("search", {})
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    return SearchSettings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in known}
    )


def recorded_ratio(study: optuna.Study) -> float:
    """The constraint ratio the study's trials were judged with (feasible: accuracy >= ratio·X)."""
    return recorded_search_settings(study).constraint_ratio


def flop_convention(study: optuna.Study) -> str:
    return study.user_attrs.get(FLOP_CONVENTION, "not recorded")


def check_same_ratio(study: optuna.Study, ratio: float, where: str) -> None:
    """A study keeps the ratio it was searched with: trials scored at two ratios would disagree on what is
    feasible. `where` names the config that asks for `ratio`."""
    if STUDY_CONFIG not in study.user_attrs:
        return
    searched = recorded_ratio(study)
    if abs(searched - ratio) > 1e-12:
        raise UsageError(
            f"study {study.study_name!r} was searched with constraint_ratio = {searched}, but {where} now says "
            f"{ratio}: use a new study name to search at {ratio}, or see this study at another ratio with "
            f"`python -m reports.build --study {study.study_name} --what-if-ratio {ratio}`"
        )


# ----- trials -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyRecord:
    """A latency study's measurement (`vlm.timing.relative_latency`): student vs teacher, timed together."""

    latency_ratio: float  # the student's MCQ latency / the teacher's (median over rounds)
    latency_ratio_spread: list[float]  # [min, max] over rounds
    latency_ratio_iqr: float
    latency_s: float
    teacher_latency_s: float
    speedup: float


@dataclass(frozen=True)
class TrialRecord:
    """A scored trial: what the student costs and how sure its accuracy (objective 1) is."""

    views: float  # image views per question, averaged over the subset
    image_tokens: float  # image tokens per question
    prompt_tokens: float
    tokens_per_view: int
    decoder_layers_kept: int
    encoder_layers_kept: int
    gflops: float  # per question (MCQ: one prefill)
    reduction_pct: float  # fewer FLOPs than the teacher, %
    samples_evaluated: int  # subset questions scored (fewer when stopped early)
    ci_low: float  # 95% Wilson interval of the accuracy
    ci_high: float
    stopped_early: bool  # the interval showed it cannot reach the promotion threshold
    seconds: float  # wall time of the trial
    latency: LatencyRecord | None = None

    def write(self, trial: optuna.Trial) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "latency"}
        if self.latency is not None:
            values.update(dataclasses.asdict(self.latency))
        for key, value in values.items():
            trial.set_user_attr(key, value)

    @classmethod
    def read(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord | None:
        """The record of a scored (COMPLETE) trial, None otherwise; a field an older study lacks is NaN
        (False for `stopped_early`)."""
        attrs = trial.user_attrs
        if trial.state != optuna.trial.TrialState.COMPLETE:
            return None
        fields = {f.name for f in dataclasses.fields(cls)} - {"latency", "stopped_early"}
        latency_fields = {f.name for f in dataclasses.fields(LatencyRecord)}
        latency = (
            LatencyRecord(**{k: attrs[k] for k in latency_fields}) if latency_fields <= set(attrs) else None
        )
        return cls(
            **{k: attrs.get(k, math.nan) for k in fields},
            stopped_early=bool(attrs.get("stopped_early", False)),
            latency=latency,
        )


def record_config(trial: optuna.Trial, compression: dict) -> None:
    trial.set_user_attr(CONFIG, compression)


def trial_config(trial: optuna.trial.FrozenTrial) -> dict | None:
    """The trial's `CompressionConfig` as a dict (None: the trial never got as far as sampling it)."""
    return trial.user_attrs.get(CONFIG)


def reference_name(trial: optuna.trial.FrozenTrial) -> str:
    """The hand-picked config's name ("teacher", "tokens_4x4", ...) or "" for a sampled trial."""
    return trial.user_attrs.get(REFERENCE, "")


def failure_reason(trial: optuna.trial.FrozenTrial) -> str:
    return trial.user_attrs.get(INVALID_REASON) or trial.user_attrs.get(FAIL_REASON) or ""


def record_constraint(trial: optuna.Trial, margin: float) -> None:
    """The accuracy floor, ratio·X - accuracy (feasible when <= 0), in optuna's own constraints: samplers,
    `study.best_trials`, optuna-dashboard, promotion and the report all read this one value."""
    trial.set_constraint(CONSTRAINT_NAME, margin)
    # optuna-dashboard (0.21) reads only optuna 4's list form of the constraints: without it, it finds none
    # and draws the unconstrained front. Optuna reads both forms; the values are the same.
    trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [margin])


# ----- promotion and finalize ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromotedTrial:
    trial: int
    why: str  # "pareto" (on the feasible front) or "near-threshold" (a big saving just under the line)
    gflops: float
    cost: float  # objective 0: GFLOPs, or latency relative to the teacher
    accuracy: float


def write_promoted(study: optuna.Study, rows: list[PromotedTrial]) -> None:
    study.set_user_attr(PROMOTED, [dataclasses.asdict(r) for r in rows])


def read_promoted(study: optuna.Study) -> list[PromotedTrial] | None:
    """The recorded promotion, None when `distill.promote` has not run."""
    rows = study.user_attrs.get(PROMOTED)
    if rows is None:
        return None
    return [
        PromotedTrial(r["trial"], r["why"], r["gflops"], r.get("cost", r["gflops"]), r["accuracy"])
        for r in rows
    ]


@dataclass(frozen=True)
class FinalizedRecord:
    """Trial N distilled from the teacher, then evaluated on the whole validation split."""

    trial: int
    config: dict
    model_dir: str
    predictions_test: str
    mcq_accuracy: float
    ci_low: float
    ci_high: float
    n: int
    da_accuracy: float | None
    posthoc_subset_accuracy: float  # the trial's accuracy in the search (search subset, no training)
    posthoc_full_accuracy: float | None  # the untrained student on the full split (None: fresh weights)
    gflops: float
    teacher_gflops: float | None  # the teacher on the same questions (older records: None)
    reduction_pct: float
    views: float
    image_tokens: float
    keeps_constraint: bool  # distilled accuracy >= the study's ratio·X
    speed: dict | None  # `vlm.timing.compare_speed` (older records: None)
    train: dict
    seconds: float

    def write(self, study: optuna.Study) -> None:
        study.set_user_attr(f"{FINALIZED_PREFIX}{self.trial}", dataclasses.asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_attr(cls, key: str, value: dict) -> FinalizedRecord:
        optional = {"da_accuracy", "posthoc_full_accuracy", "teacher_gflops", "speed"}
        values = {
            f.name: value.get(f.name, None if f.name in optional else math.nan)
            for f in dataclasses.fields(cls)
        }
        values["trial"] = int(value.get("trial", key.removeprefix(FINALIZED_PREFIX)))
        values["train"] = value.get("train") or {}
        return cls(**values)


def read_finalized(study: optuna.Study) -> dict[int, FinalizedRecord]:
    """Every finalized record, by trial number."""
    records = [
        FinalizedRecord.from_attr(key, value)
        for key, value in study.user_attrs.items()
        if key.startswith(FINALIZED_PREFIX)
    ]
    return {r.trial: r for r in sorted(records, key=lambda r: r.trial)}
