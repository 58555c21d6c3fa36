"""Everything a study's report shows, computed as DataFrames and small NamedTuples; no plotting here.

Objective 0 is GFLOPs per question (minimised), objective 1 the proxy accuracy on the search subset
(maximised). A trial is *feasible* when it is COMPLETE and `ratio * X - accuracy <= 0`, X being the teacher's
accuracy on the same subset (study user attribute "baseline"): the constraint the objective stores, and the
horizontal line the Pareto plot draws. Finalized trials are the study user attributes "finalized:<N>"
written by `distill.finalize`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import optuna
import pandas as pd
from optuna.trial import TrialState

from ledger.records import (
    BLOCK_IMPORTANCE,
    LATENCY_OBJECTIVE_NAMES,
    OBJECTIVE_NAMES,
    SEARCH_PARAMS,
    TrialRecord,
    failure_reason,
    flop_convention,
    is_latency_study,
    read_baseline,
    read_finalized,
    recorded_ratio,
    recorded_settings,
    reference_name,
)
from ledger.rules import first_of_each_config, is_feasible, pareto_front

logger = logging.getLogger(__name__)

OBJECTIVES = tuple(OBJECTIVE_NAMES)
LATENCY_OBJECTIVE = LATENCY_OBJECTIVE_NAMES[0]  # objective 0 of a `[search] cost = "latency"` study
# Hypervolume reference point: 1.1 x the teacher's FLOPs (so a front holding only the teacher still has
# area) and accuracy 0.
HYPERVOLUME_FLOPS_MARGIN = 1.1
# PED-ANOVA wants >= 5 trials in its top quantile; below this many COMPLETE trials importances are noise.
MIN_IMPORTANCE_TRIALS = 10


class StudyFacts(NamedTuple):
    """Study-level numbers the report states: the teacher's subset accuracy X and FLOPs, the constraint."""

    name: str
    ratio: float  # feasible means accuracy >= ratio * X (the search's own ratio unless a what-if is asked)
    accuracy: float  # X, the teacher's accuracy on the search subset
    ci_low: float
    ci_high: float
    n: int  # questions X was measured on
    gflops: float  # the teacher's GFLOPs per question
    convention: str  # how FLOPs are counted (study user attribute "flop_convention")
    settings: dict  # the study config the search ran with (study user attribute "study_config")
    objective: str = OBJECTIVES[0]  # the study's first metric: "gflops_per_question" or "latency_vs_teacher"
    search_ratio: float | None = None  # the ratio the search ran with (None: same as `ratio`)

    @property
    def what_if(self) -> bool:
        """The report re-draws feasibility at another ratio than the search used (labelled as such)."""
        return self.search_ratio is not None and abs(self.ratio - self.search_ratio) > 1e-12

    @property
    def threshold(self) -> float:
        return self.ratio * self.accuracy

    @property
    def latency_cost(self) -> bool:
        """The study minimised measured latency relative to the teacher (`[search] cost = "latency"`)."""
        return self.objective == LATENCY_OBJECTIVE

    @property
    def teacher_cost(self) -> float:
        """The teacher's value of objective 0: its GFLOPs, or 1 (its latency relative to itself)."""
        return 1.0 if self.latency_cost else self.gflops

    @property
    def cost_label(self) -> str:
        if self.latency_cost:
            return "latency relative to the teacher (measured on the search machine, MCQ at batch 1)"
        return "GFLOPs per question"


class Arrow(NamedTuple):
    """A finalized trial: from its post-hoc point (search) to its distilled point (full validation)."""

    trial: int
    gflops_from: float
    accuracy_from: float
    gflops_to: float
    accuracy_to: float


class RankCorrelation(NamedTuple):
    """Spearman's rho between post-hoc and distilled accuracy over the finalized trials, with a 95% interval."""

    rho: float | None  # None when it cannot be computed or is not shown (see note)
    n: int
    note: str
    ci_low: float | None = None
    ci_high: float | None = None


class Importances(NamedTuple):
    """Parameter importances per objective: long table (objective, param, importance), notes per objective."""

    frame: pd.DataFrame
    method: str
    notes: dict[str, str]


class ReportData(NamedTuple):
    facts: StudyFacts
    trials: pd.DataFrame  # one row per trial, every state
    front: pd.DataFrame  # the constrained Pareto set, fewest FLOPs first
    finalized: pd.DataFrame  # one row per finalized trial
    summary: pd.DataFrame  # front and finalized trials together: the report's main table
    hypervolume: pd.DataFrame
    correlation: RankCorrelation
    importances: Importances
    params: list[str]  # the searched parameters, in search-space order
    speed: pd.DataFrame | None = None  # measured speed-up beside FLOP reduction (`speed_frame`)


# ----- the study ---------------------------------------------------------------------------------------------
def study_facts(study: optuna.Study, ratio: float | None = None) -> StudyFacts:
    """Read the cached baseline and settings; `ratio` defaults to the one the study was run with."""
    baseline = read_baseline(study)
    search_ratio = recorded_ratio(study)
    if ratio is None:
        ratio = search_ratio
    return StudyFacts(
        name=study.study_name,
        ratio=float(ratio),
        accuracy=baseline.accuracy,
        ci_low=baseline.ci_low,
        ci_high=baseline.ci_high,
        n=baseline.n,
        gflops=baseline.gflops,
        convention=flop_convention(study),
        settings=recorded_settings(study),
        objective=(study.metric_names or OBJECTIVES)[0],
        search_ratio=search_ratio,
    )


def config_label(params: Mapping[str, Any]) -> str:
    """Compact description of a trial's parameters, e.g. '6x6 tok, 384px, grid<=2, -2 dec, resampler 256'."""
    parts = []
    if "token_grid" in params:
        k = params["token_grid"]
        parts.append(f"{k}x{k} tok")
    if "view_size" in params:
        parts.append(f"{params['view_size']}px")
    if "max_grid_side" in params:
        side = params["max_grid_side"]
        parts.append("global only" if side == 1 else f"grid<={side}")
    for key, tower in (("n_drop_decoder", "dec"), ("n_drop_encoder", "enc")):
        if params.get(key):
            parts.append(f"-{params[key]} {tower}")
    if params.get("resampler_width"):
        parts.append(f"resampler {params['resampler_width']}")
    parts += [f"{k}={v}" for k, v in params.items() if k not in SEARCH_PARAMS]
    return ", ".join(parts)


def searched_params(study: optuna.Study) -> list[str]:
    """Parameter names the trials hold: the search space's order first, then any others sorted."""
    names = {name for t in study.get_trials(deepcopy=False) for name in t.params}
    return [p for p in SEARCH_PARAMS if p in names] + sorted(names - set(SEARCH_PARAMS))


def trials_frame(study: optuna.Study, facts: StudyFacts) -> pd.DataFrame:
    """One row per trial (every state): objectives, feasibility, the per-trial user attributes, params."""
    depths = study.user_attrs.get(BLOCK_IMPORTANCE) or {}
    params = searched_params(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.read(t)
        done = record is not None and t.values is not None
        cost, accuracy = (float(t.values[0]), float(t.values[1])) if done else (math.nan, math.nan)
        # Objective 0 is the cost; in a latency study the GFLOPs are the trial record's.
        gflops = float(record.gflops) if facts.latency_cost and done else cost
        latency = record.latency if done else None
        row = {
            "number": t.number,
            "state": t.state.name,
            "gflops": gflops,
            "accuracy": accuracy,
            "cost": cost,
            "latency_ratio": latency.latency_ratio if latency else math.nan,
            # The search's own verdict (optuna's trial.constraints, as promote and study.best_trials read
            # it), unless the report was asked for a what-if at another ratio.
            "feasible": (done and facts.threshold - accuracy <= 0) if facts.what_if else is_feasible(t),
            "reference": reference_name(t),
            "config": config_label(t.params),
            "reduction_pct": 100 * (1 - gflops / facts.gflops) if done else math.nan,
            "ci_low": record.ci_low if done else math.nan,
            "ci_high": record.ci_high if done else math.nan,
            "samples_evaluated": record.samples_evaluated if done else math.nan,
            "stopped_early": record.stopped_early if done else False,
            "views": record.views if done else math.nan,
            "image_tokens": record.image_tokens if done else math.nan,
            "decoder_layers_kept": _layers_kept(record, t.params, depths, "decoder"),
            "encoder_layers_kept": _layers_kept(record, t.params, depths, "encoder"),
            "reason": failure_reason(t),
        }
        row.update({p: t.params.get(p, math.nan) for p in params})
        rows.append(row)
    columns = [*_TRIAL_COLUMNS, *params]
    return pd.DataFrame(rows, columns=columns).sort_values("number", ignore_index=True)


_TRIAL_COLUMNS = [
    "number",
    "state",
    "gflops",
    "accuracy",
    "cost",  # objective 0: GFLOPs, or latency relative to the teacher
    "latency_ratio",  # measured latency / the teacher's (latency studies)
    "feasible",
    "reference",
    "config",
    "reduction_pct",
    "ci_low",
    "ci_high",
    "samples_evaluated",
    "stopped_early",
    "views",
    "image_tokens",
    "decoder_layers_kept",
    "encoder_layers_kept",
    "reason",
]


def _layers_kept(record: TrialRecord | None, params: Mapping, depths: Mapping, tower: str) -> float:
    """The objective's count, else the tower's depth (from the block-importance ranking) minus the drops."""
    kept = getattr(record, f"{tower}_layers_kept", math.nan)
    if not math.isnan(kept):
        return kept
    dropped = params.get(f"n_drop_{tower}")
    if tower in depths and dropped is not None:
        return len(depths[tower]) - dropped
    return math.nan


def state_counts(trials: pd.DataFrame) -> dict[str, int]:
    """{state name: trials}, e.g. {'COMPLETE': 180, 'PRUNED': 15, 'FAIL': 5}."""
    return {str(k): int(v) for k, v in trials["state"].value_counts().sort_index().items()}


def pareto_frame(study: optuna.Study, trials: pd.DataFrame) -> pd.DataFrame:
    """The constrained Pareto set (`ledger.rules.pareto_front` over feasible trials), fewest FLOPs first.

    One row per distinct config, as promotion does: TPE re-samples configs, and a re-sampled one
    scores the same, so it would be listed again as a tie on the front.
    """
    feasible = set(trials.loc[trials["feasible"], "number"])
    frozen = first_of_each_config(
        [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number in feasible]
    )
    numbers = [t.number for t in pareto_front(frozen)]
    return trials.set_index("number").loc[numbers].reset_index()


# ----- finalized trials ----------------------------------------------------------------------------------------
_FINALIZED_COLUMNS = [
    "trial",
    "config",
    "posthoc_gflops",
    "posthoc_cost",
    "posthoc_accuracy",
    "posthoc_full_accuracy",
    "distilled_gflops",
    "distilled_cost",
    "distilled_accuracy",
    "distilled_ci_low",
    "distilled_ci_high",
    "distilled_n",
    "da_accuracy",
    "distilled_reduction_pct",
    "keeps_constraint",
    # Measured by `distill.finalize` (vlm.timing.compare_speed): teacher and student on one device, one run.
    "flop_reduction_x",
    "speedup_x",
    "latency_ms",
    "teacher_latency_ms",
    "throughput_qps",
    "memory_mb",
    "teacher_memory_mb",
    "speed_device",
]


def finalized_frame(study: optuna.Study, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per finalized record: the trial's post-hoc numbers beside its distilled ones."""
    by_number = trials.set_index("number")
    teacher_gflops = read_baseline(study).gflops
    latency = is_latency_study(study)
    rows = []
    for number, record in read_finalized(study).items():
        if number not in by_number.index or by_number.at[number, "state"] != TrialState.COMPLETE.name:
            logger.warning(
                "the finalized record of trial %d names no complete trial of the study; left out", number
            )
            continue
        trial = by_number.loc[number]
        speed = _speed_columns(record.speed or {})
        rows.append(
            {
                "trial": number,
                "config": trial["config"],
                "posthoc_gflops": trial["gflops"],
                "posthoc_cost": trial["cost"],
                "posthoc_accuracy": trial["accuracy"],
                "posthoc_full_accuracy": _number(record.posthoc_full_accuracy),
                "distilled_gflops": record.gflops,
                # A latency study's distilled point: the latency ratio finalize measured (1 / speed-up).
                "distilled_cost": 1 / speed["speedup_x"] if latency else record.gflops,
                "distilled_accuracy": record.mcq_accuracy,
                "distilled_ci_low": _number(record.ci_low),
                "distilled_ci_high": _number(record.ci_high),
                "distilled_n": record.n,
                "da_accuracy": _number(record.da_accuracy),
                # finalize compares with the teacher on the same (full validation) questions; records
                # written before it stored `teacher_gflops` fall back to the search subset's baseline.
                "distilled_reduction_pct": 100
                * (1 - record.gflops / (record.teacher_gflops or teacher_gflops)),
                "keeps_constraint": record.keeps_constraint,
                **speed,
            }
        )
    frame = pd.DataFrame(rows, columns=_FINALIZED_COLUMNS)
    return frame.sort_values(["distilled_gflops", "trial"], ignore_index=True)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _speed_columns(speed: Mapping[str, Any]) -> dict[str, Any]:
    """The finalized record's measured speed (absent in records written before finalize measured it)."""

    def scaled(key: str, factor: float) -> float:
        return _number(speed.get(key)) * factor

    return {
        "flop_reduction_x": _number(speed.get("flop_reduction")),
        "speedup_x": _number(speed.get("speedup")),
        "latency_ms": scaled("latency_s", 1e3),
        "teacher_latency_ms": scaled("teacher_latency_s", 1e3),
        "throughput_qps": _number(speed.get("throughput_qps")),
        "memory_mb": scaled("memory_bytes", 2**-20),
        "teacher_memory_mb": scaled("teacher_memory_bytes", 2**-20),
        "speed_device": (
            f"{speed['device_name']} ({speed['device']}, {speed['threads']} threads, {speed['dtype']})"
            if speed
            else ""
        ),
    }


def speed_frame(finalized: pd.DataFrame) -> pd.DataFrame:
    """Finalized trials with a measured speed: FLOP reduction (teacher FLOPs / student FLOPs on the timed
    questions) against measured speed-up (teacher MCQ latency / student MCQ latency), and their ratio
    (1 = the speed-up the FLOPs promise; below 1 = the saved FLOPs were not all turned into time)."""
    columns = [
        "trial",
        "config",
        "flop_reduction_x",
        "speedup_x",
        "speedup_per_flop_reduction",
        "speed_device",
    ]
    timed = finalized[finalized["speedup_x"].notna()] if len(finalized) else finalized
    frame = pd.DataFrame(
        {
            "trial": timed["trial"],
            "config": timed["config"],
            "flop_reduction_x": timed["flop_reduction_x"],
            "speedup_x": timed["speedup_x"],
            "speedup_per_flop_reduction": timed["speedup_x"] / timed["flop_reduction_x"],
            "speed_device": timed["speed_device"],
        },
        columns=columns,
    )
    return frame.sort_values(["flop_reduction_x", "trial"], ignore_index=True)


def arrows(finalized: pd.DataFrame) -> list[Arrow]:
    """Post-hoc point (the trial's cost and subset accuracy) -> distilled point (full-validation MCQ).

    The cost is objective 0: GFLOPs, or in a latency study the latency ratio (a finalized trial without a
    measured speed has no distilled point on that axis, hence no arrow)."""
    return [
        Arrow(
            int(r.trial),
            float(r.posthoc_cost),
            float(r.posthoc_accuracy),
            float(r.distilled_cost),
            float(r.distilled_accuracy),
        )
        for r in finalized.itertuples()
        if not math.isnan(float(r.distilled_cost))
    ]


def summary_table(trials: pd.DataFrame, front: pd.DataFrame, finalized: pd.DataFrame) -> pd.DataFrame:
    """The constrained Pareto set and the finalized trials in one table, fewest (post-hoc) FLOPs first."""
    on_front, done = set(front["number"]), set(finalized["trial"])
    numbers = sorted(on_front | done)
    columns = [
        "number",
        "reference",
        "config",
        "gflops",
        "reduction_pct",
        "latency_ratio",
        "accuracy",
        "ci_low",
        "ci_high",
        "feasible",
        "views",
        "image_tokens",
        "decoder_layers_kept",
        "encoder_layers_kept",
    ]
    table = trials.set_index("number").loc[numbers].reset_index()[columns]
    table.insert(1, "role", [_role(n in on_front, n in done) for n in table["number"]])
    distilled = finalized.set_index("trial")[
        [
            "distilled_gflops",
            "distilled_accuracy",
            "distilled_ci_low",
            "distilled_ci_high",
            "da_accuracy",
            "speedup_x",
        ]
    ]
    table = table.join(distilled, on="number")
    return table.sort_values(["gflops", "number"], ignore_index=True)


def _role(on_front: bool, finalized: bool) -> str:
    return ", ".join(name for name, yes in (("pareto", on_front), ("finalized", finalized)) if yes)


# ----- search progress ----------------------------------------------------------------------------------------
def hypervolume_reference(facts: StudyFacts) -> tuple[float, float]:
    """(cost, accuracy) the hypervolume is measured from: cost = GFLOPs, or latency relative to the teacher."""
    return facts.teacher_cost * HYPERVOLUME_FLOPS_MARGIN, 0.0


def hypervolume_2d(points: Iterable[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by `points` in (min GFLOPs, max accuracy), bounded by `reference` = (GFLOPs, accuracy).

    Each point dominates the box [gflops, ref_gflops] x [ref_accuracy, accuracy]; the union's area is
    swept in order of increasing FLOPs, each point adding the strip above the best accuracy seen so far.
    """
    ref_flops, ref_acc = reference
    inside = sorted((f, a) for f, a in points if f < ref_flops and a > ref_acc)
    area, best = 0.0, ref_acc
    for flops, accuracy in inside:
        if accuracy > best:
            area += (ref_flops - flops) * (accuracy - best)
            best = accuracy
    return area


def hypervolume_curve(trials: pd.DataFrame, reference: tuple[float, float]) -> pd.DataFrame:
    """Hypervolume of the feasible trials numbered <= n, for every trial number n."""
    feasible = trials[trials["feasible"]]
    ref_area = reference[0] * (1 - reference[1])  # the whole box up to accuracy 1
    rows = []
    for number in sorted(trials["number"]):
        upto = feasible[feasible["number"] <= number]
        volume = hypervolume_2d(zip(upto["cost"], upto["accuracy"]), reference)
        rows.append(
            {
                "number": number,
                "hypervolume": volume,
                "fraction_of_box": volume / ref_area,
                "feasible_so_far": len(upto),
            }
        )
    return pd.DataFrame(rows, columns=["number", "hypervolume", "fraction_of_box", "feasible_so_far"])


# ----- what the search tells us ------------------------------------------------------------------------------
def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties get their average rank). NaN if undefined.

    pandas' own `corr(method="spearman")` needs scipy, which the project does not depend on.
    """
    frame = pd.DataFrame({"x": list(x), "y": list(y)}).dropna()
    ranks = frame.rank()
    return float(ranks["x"].corr(ranks["y"]))


# Below this many finalized trials a rank correlation is noise (with 3 points, rho = 1 has chance 1/6).
MIN_CORRELATION_TRIALS = 5


def spearman_interval(rho: float, n: int, z_crit: float = 1.959964) -> tuple[float, float]:
    """95% interval of Spearman's rho by Fisher's z with Bonett & Wright's standard error
    sqrt(1 + rho^2 / 2) / sqrt(n - 3) (Psychometrika 65, 2000); needs n > 3."""
    if n <= 3:
        return -1.0, 1.0
    z = math.atanh(max(min(rho, 1 - 1e-12), -1 + 1e-12))
    half = z_crit * math.sqrt(1 + rho * rho / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def rank_correlation(finalized: pd.DataFrame, min_n: int = MIN_CORRELATION_TRIALS) -> RankCorrelation:
    """How well the search's post-hoc accuracy ranked the trials as distillation did (shown from `min_n`)."""
    n = len(finalized)
    if n < min_n:
        return RankCorrelation(
            None, n, f"not shown: {n} finalized trials, a rank correlation needs at least {min_n}"
        )
    rho = spearman(finalized["posthoc_accuracy"], finalized["distilled_accuracy"])
    if math.isnan(rho):
        return RankCorrelation(None, n, f"undefined: all post-hoc or all distilled accuracies tie (n = {n})")
    low, high = spearman_interval(rho, n)
    return RankCorrelation(
        rho,
        n,
        f"Spearman rho = {rho:.2f} [95% CI {low:.2f}, {high:.2f}] over n = {n} finalized trials",
        low,
        high,
    )


def importances(study: optuna.Study, min_trials: int = MIN_IMPORTANCE_TRIALS) -> Importances:
    """Importance of each parameter for each objective, by optuna's PED-ANOVA on COMPLETE trials.

    PED-ANOVA rather than optuna's default fANOVA: fANOVA needs scikit-learn, which the project does not
    depend on. It scores how much each parameter matters for reaching the best `target_quantile` of trials;
    the quantile grows on small studies so that quantile still holds >= 5 trials.
    """
    names = list(study.metric_names or OBJECTIVES)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    method = "PED-ANOVA (optuna), importance of reaching the best trials of each objective"
    frame = pd.DataFrame(columns=["objective", "param", "importance"])
    if len(complete) < min_trials:
        note = f"skipped: {len(complete)} complete trials, need at least {min_trials}"
        return Importances(frame, method, dict.fromkeys(names, note))
    quantile = min(0.5, max(0.1, 5 / len(complete)))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
    # PED-ANOVA assumes smaller is better: accuracy, maximised, is negated.
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    rows, notes = [], {}
    for i, name in enumerate(names):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # It warns that it ranks low `target` values first: accuracy is negated for that.
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                scores = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, target=lambda t, i=i: signs[i] * t.values[i]
                )
        except Exception as err:  # a report should survive a degenerate study (one value per param, ...)
            logger.warning("importances for %s failed: %s", name, err)
            notes[name] = f"skipped: {type(err).__name__}: {err}"
            continue
        if not scores:
            notes[name] = "skipped: no parameter varies across the complete trials"
        rows += [{"objective": name, "param": p, "importance": v} for p, v in scores.items()]
    if rows:
        frame = pd.DataFrame(rows, columns=frame.columns)
    return Importances(frame, f"{method} (top {quantile:.0%})", notes)


# ----- the answer ------------------------------------------------------------------------------------------
class Answer(NamedTuple):
    """The cheapest config that keeps ratio·X, as one row of numbers (post hoc or after distillation)."""

    trial: int
    config: str
    cost: float  # objective 0: GFLOPs per question, or latency relative to the teacher
    reduction_pct: float  # fewer FLOPs than the teacher, %
    accuracy: float
    ci_low: float
    ci_high: float
    n: int  # questions the accuracy was measured on


class Headline(NamedTuple):
    posthoc: Answer | None  # the cheapest feasible trial of the search (search subset)
    distilled: Answer | None  # the cheapest finalized trial that keeps ratio·X (full validation)
    text: str  # the one-line answer the report opens with


def headline(data: ReportData) -> Headline:
    """The report's one-line answer: the cheapest config keeping ratio·X, post hoc and after distillation."""
    facts = data.facts
    posthoc = None
    if len(data.front):
        row = data.front.sort_values(["cost", "number"]).iloc[0]
        posthoc = Answer(
            int(row["number"]),
            str(row["config"]),
            float(row["cost"]),
            float(row["reduction_pct"]),
            float(row["accuracy"]),
            float(row["ci_low"]),
            float(row["ci_high"]),
            int(_number(row["samples_evaluated"]))
            if not math.isnan(_number(row["samples_evaluated"]))
            else facts.n,
        )
    distilled = None
    # The same line as the plot's: distilled accuracy (full validation) against ratio·X.
    finalized = data.finalized
    keeping = finalized[
        (finalized["distilled_accuracy"] >= facts.threshold) & finalized["distilled_cost"].notna()
    ]
    if len(keeping):
        row = keeping.sort_values(["distilled_cost", "trial"]).iloc[0]
        distilled = Answer(
            int(row["trial"]),
            str(row["config"]),
            float(row["distilled_cost"]),
            float(row["distilled_reduction_pct"]),
            float(row["distilled_accuracy"]),
            float(row["distilled_ci_low"]),
            float(row["distilled_ci_high"]),
            int(row["distilled_n"]) if row["distilled_n"] is not None else 0,
        )
    line = f"{facts.ratio:.2f}·X = {facts.threshold:.3f} (X = {facts.accuracy:.3f})"
    what_if = f" [what-if: the search ran with {facts.search_ratio:.2f}·X]" if facts.what_if else ""

    def cost(answer: Answer) -> str:
        if facts.latency_cost:
            return f"{answer.cost:.2f}x the teacher's latency, {answer.reduction_pct:.1f}% fewer FLOPs"
        return f"{answer.cost:.4g} GFLOPs per question, {answer.reduction_pct:.1f}% fewer than the teacher"

    parts = []
    if posthoc:
        parts.append(
            f"post hoc, trial #{posthoc.trial} ({posthoc.config}): {cost(posthoc)}, accuracy {posthoc.accuracy:.3f} "
            f"[{posthoc.ci_low:.3f}, {posthoc.ci_high:.3f}] on {posthoc.n} search-subset questions"
        )
    else:
        parts.append("post hoc: no trial keeps it yet")
    if distilled:
        parts.append(
            f"after distillation, trial #{distilled.trial} ({distilled.config}): {cost(distilled)}, accuracy "
            f"{distilled.accuracy:.3f} [{distilled.ci_low:.3f}, {distilled.ci_high:.3f}] on {distilled.n} "
            "validation questions"
        )
    elif len(data.finalized):
        parts.append("after distillation: no finalized trial keeps it")
    else:
        parts.append("after distillation: nothing finalized yet (python -m distill.finalize)")
    text = f"Cheapest config keeping {line}{what_if}: " + "; ".join(parts) + "."
    return Headline(posthoc, distilled, text)


# ----- everything -----------------------------------------------------------------------------------------------
def report_data(study: optuna.Study, ratio: float | None = None) -> ReportData:
    """All the report's data for one study."""
    facts = study_facts(study, ratio)
    trials = trials_frame(study, facts)
    front = pareto_frame(study, trials)
    finalized = finalized_frame(study, trials)
    if len(finalized):  # judged against the same line the plot draws (and the what-if ratio, if asked)
        finalized["keeps_constraint"] = finalized["distilled_accuracy"] >= facts.threshold
    return ReportData(
        facts=facts,
        trials=trials,
        front=front,
        finalized=finalized,
        summary=summary_table(trials, front, finalized),
        hypervolume=hypervolume_curve(trials, hypervolume_reference(facts)),
        correlation=rank_correlation(finalized),
        importances=importances(study),
        params=searched_params(study),
        speed=speed_frame(finalized),
    )
