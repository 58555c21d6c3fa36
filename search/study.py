"""Creating/resuming a study for the search, seeding it with the reference configs, and stopping at a target.

What the study holds, and how its trials are judged, is `ledger`'s (`ledger.records`, `ledger.rules`).
"""

from __future__ import annotations

import logging
import time
import warnings

import optuna
from optuna.trial import TrialState

from ledger.config import SearchSettings, StudyConfig
from ledger.records import REFERENCE, check_same_ratio, objective_names
from ledger.rules import FINISHED
from ledger.storage import open_storage
from search.references import reference_params
from vlm.cli import UsageError
from vlm.config import VLMConfig

logger = logging.getLogger(__name__)


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=settings.seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    # Multi-objective TPE; a few random start-up trials after the references. The accuracy floor reaches
    # every sampler through `trial.set_constraint` (the objective sets it).
    return optuna.samplers.TPESampler(
        seed=settings.seed, n_startup_trials=settings.tpe_startup_trials, multivariate=True
    )


def open_study(config: StudyConfig, storage_url: str | None = None) -> optuna.Study:
    url = storage_url or config.default_storage
    storage = open_storage(url, config.search.heartbeat_interval, config.search.grace_period)
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        directions=["minimize", "maximize"],
        sampler=make_sampler(config.search),
        load_if_exists=True,
    )
    names = objective_names(config.search.cost)
    if study.metric_names != names:
        if study.metric_names and study.get_trials(deepcopy=False, states=FINISHED):
            raise UsageError(
                f"study {config.name!r} was searched with objectives {study.metric_names}, but [search] cost = "
                f"{config.search.cost!r} means {names}: use a new study name for the other cost"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    # Trials judged at two ratios would disagree on what is feasible: a study keeps the one it started with.
    check_same_ratio(study, config.search.constraint_ratio, f"the study config of {config.name!r}")
    return study


def enqueue_references(
    study: optuna.Study, teacher_cfg: VLMConfig, config: StudyConfig, claim_timeout: float = 60.0
) -> int:
    """Enqueue the teacher and the hand-picked configs once per study (the first worker does it).

    A worker first claims the job (a timestamp in the study), enqueues, then marks it done. Workers started
    meanwhile leave it to the claimer; a claim older than `claim_timeout` seconds without the done mark is
    a worker killed half-way, and the next worker completes the set (`skip_if_exists` keeps the references
    already queued or run from being queued twice). Enqueueing takes milliseconds.
    """
    if not config.search.references or study.user_attrs.get("references_enqueued"):
        return 0
    claimed_at = study.user_attrs.get("references_claimed_at")
    if claimed_at is not None and time.time() - claimed_at < claim_timeout:
        return 0
    study.set_user_attr("references_claimed_at", time.time())
    refs = reference_params(teacher_cfg, config.space)
    for name, params in refs.items():
        study.enqueue_trial(params, user_attrs={REFERENCE: name}, skip_if_exists=True)
    study.set_user_attr("references_enqueued", True)
    return len(refs)


class StopAtTarget:
    """Optuna callback: stop this worker once finished trials plus those running elsewhere reach `target`.

    optuna's MaxTrialsCallback counts finished trials only, so with two workers the other one was nearly
    always mid-trial when the target was reached, and the study ended one trial over it.
    """

    def __init__(self, target: int):
        self.target = target

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # One read of the trials, not two: this runs after every trial, between counting and the next start.
        if len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))) >= self.target:
            study.stop()
