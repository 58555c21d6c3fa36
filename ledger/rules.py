"""How a study's trials are judged: the one feasibility rule, the feasible front, promotion and the counts.

Feasible means COMPLETE with every constraint <= 0 in optuna's own `trial.constraints` (`ledger.records.
record_constraint` writes the accuracy floor, ratio·X - accuracy, when the trial is scored). Reading that one
value, `study.best_trials`, optuna-dashboard, `distill.promote`, `distill.finalize` and the report agree, also
after the study's TOML is edited: the ratio a study was searched with is recorded, and a report at another
ratio is an explicit, labelled what-if (`reports.build --what-if-ratio`).
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from ledger.records import (
    PromotedTrial,
    read_baseline,
    recorded_search_settings,
    reference_name,
    write_promoted,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Optuna's own rule on the trial's constraints: COMPLETE and every value <= 0."""
    constraints = trial.constraints  # {name: value} in optuna 5
    values = list(constraints.values() if isinstance(constraints, dict) else constraints or ())
    return trial.state == TrialState.COMPLETE and bool(values) and all(v <= 0 for v in values)


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]


def feasible_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in complete_trials(study) if is_feasible(t)]


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """Lowest cost among feasible trials (ties: higher accuracy)."""
    trials = feasible_trials(study)
    return min(trials, key=lambda t: (t.values[0], -t.values[1])) if trials else None


def pareto_front(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials not dominated in (min cost, max accuracy), sorted by cost."""
    front = []
    for t in trials:
        dominated = any(
            o.values[0] <= t.values[0]
            and o.values[1] >= t.values[1]
            and (o.values[0] < t.values[0] or o.values[1] > t.values[1])
            for o in trials
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (t.values[0], -t.values[1]))


def first_of_each_config(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The earliest trial of every distinct config: TPE re-samples configs in a small discrete space, and a
    re-sampled config scores the same (listing it twice on the front, or distilling it twice, adds nothing)."""
    seen: dict[tuple, optuna.trial.FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        seen.setdefault(tuple(sorted(t.params.items())), t)
    return list(seen.values())


def feasible_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The constrained Pareto set, one trial per distinct config, cheapest first."""
    return pareto_front(first_of_each_config(feasible_trials(study)))


def promoted_trials(study: optuna.Study, margin: float | None = None) -> list[PromotedTrial]:
    """The trials worth distilling, cheapest first, one per distinct config: the feasible front, plus
    infeasible trials within `margin` (accuracy) below the line that cost less than every feasible trial
    (distillation usually wins back a few points, and those are the big savings). The line is the study's
    recorded ratio·X; `margin` defaults to the recorded `promotion_margin`."""
    settings = recorded_search_settings(study)
    margin = settings.promotion_margin if margin is None else margin
    threshold = settings.constraint_ratio * read_baseline(study).accuracy
    complete = first_of_each_config(complete_trials(study))
    feasible = [t for t in complete if is_feasible(t)]
    cheapest_feasible = min((t.values[0] for t in feasible), default=math.inf)
    chosen = {t.number: "pareto" for t in pareto_front(feasible)}
    for t in complete:
        if t.number in chosen or is_feasible(t) or t.user_attrs.get("stopped_early"):
            continue
        if t.values[1] >= threshold - margin and t.values[0] < cheapest_feasible:
            chosen[t.number] = "near-threshold"
    by_number = {t.number: t for t in complete}
    rows = [
        PromotedTrial(
            trial=n,
            why=why,
            gflops=by_number[n].user_attrs.get("gflops", by_number[n].values[0]),
            cost=by_number[n].values[0],
            accuracy=by_number[n].values[1],
        )
        for n, why in chosen.items()
    ]
    return sorted(rows, key=lambda r: (r.cost, -r.accuracy))


def record_promotion(study: optuna.Study, margin: float | None = None) -> list[PromotedTrial]:
    rows = promoted_trials(study, margin)
    write_promoted(study, rows)
    return rows


def reference_trials(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """The first COMPLETE trial of each hand-picked reference config, by name."""
    out = {}
    for trial in complete_trials(study):
        name = reference_name(trial)
        if name and name not in out:
            out[name] = trial
    return out


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def count_running(study: optuna.Study) -> int:
    """Trials some worker (this one or another) is running now."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
