"""`python -m search.run [--study NAME] [--trials N] [--storage URL] [--timeout S]`

Creates or resumes the study and runs trials until it holds N finished trials. Several workers may run
against one storage: a worker starts no trial once finished plus running trials reach N, so the study ends
at N, not one over. The dashboard: `optuna-dashboard <storage URL>`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from typing import TYPE_CHECKING

from vlm.cli import UsageError, make_parser, run

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger("search.run")

# While other workers' trials are enough to reach the target, check this often whether one of them died
# (its trial is then failed and re-queued, and this worker runs the retry).
WAIT_POLL_SECONDS = 2.0


def _describe(trial: optuna.trial.FrozenTrial | None) -> str:
    if trial is None:
        return "none yet"
    from ledger.records import TrialRecord

    record = TrialRecord.read(trial)
    # In a latency study (objective 0 = latency relative to the teacher) the GFLOPs are the record's.
    latency = f", latency {record.latency.latency_ratio:.3g}x the teacher's" if record.latency else ""
    return (
        f"#{trial.number} {record.gflops:.4g} GFLOPs ({record.reduction_pct:.1f}% fewer){latency}, "
        f"acc {trial.values[1]:.3f}"
    )


def _fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, via the storage's callback, re-queue) trials whose worker stopped sending heartbeats."""
    import optuna

    with warnings.catch_warnings():  # "experimental" in optuna since v2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "search.run",
        "Search for the cheapest compression of the study's teacher that keeps accuracy >= ratio·X.\n"
        "Resumable: run it again to continue. Several workers may share one --storage.",
    )
    parser.add_argument(
        "--study",
        default="aokvqa",
        help="study name (studies/<name>.toml) or a .toml path; 'aokvqa' needs the hub, 'demo' runs offline",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="finished trials the study should hold (default: the study's)",
    )
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite:///studies/<name>.db)"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop starting new trials after this many seconds"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(_run_guarded, build_parser(), argv, log_format="%(asctime)s %(name)s %(message)s")


def _run_guarded(args: argparse.Namespace) -> int:
    """`_run`, where Ctrl-C or SIGTERM re-queues the trial it cuts short and ends in one line (exit 130/143)."""
    from search.interrupt import InterruptGuard

    guard = InterruptGuard()
    with guard.signals(verbose=args.verbose):
        try:
            return _run(args, guard)
        except KeyboardInterrupt as err:
            return guard.stop(err)


def _run(args: argparse.Namespace, guard=None) -> int:
    import optuna
    from tqdm.auto import tqdm

    from ledger.config import load_study_config
    from ledger.records import FAIL_REASON, INVALID_REASON, trial_config
    from ledger.rules import best_feasible, count_finished, count_running, reference_trials
    from ledger.world import WorldUnavailable
    from search.objective import Objective, SearchContext
    from search.study import StopAtTarget, enqueue_references, open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    config = load_study_config(args.study)
    target = args.trials if args.trials is not None else config.search.trials
    study = open_study(config, args.storage)
    if guard is not None:
        guard.study = study
    try:
        context = SearchContext(config, study)
    except WorldUnavailable as err:
        raise UsageError(str(err)) from err
    base = context.baseline
    logger.info(
        "teacher X = %.3f [%.3f, %.3f] on %d questions, %.4g GFLOPs/question; feasible means accuracy >= %.3f",
        base.accuracy,
        base.ci_low,
        base.ci_high,
        base.n,
        base.gflops,
        context.threshold,
    )
    enqueue_references(study, context.teacher.cfg, config)

    done = count_finished(study)
    progress = tqdm(total=target, initial=min(done, target), desc=f"study {config.name}", unit="trial")
    progress.set_postfix_str(f"best feasible: {_describe(best_feasible(study))}")

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        progress.n = min(count_finished(study), target)
        progress.set_postfix_str(f"best feasible: {_describe(best_feasible(study))}")
        if trial.state == optuna.trial.TrialState.PRUNED and INVALID_REASON in trial.user_attrs:
            logger.debug("trial %d pruned: %s", trial.number, trial.user_attrs[INVALID_REASON])
        if trial.state == optuna.trial.TrialState.FAIL:
            logger.warning("trial %d failed: %s", trial.number, trial.user_attrs.get(FAIL_REASON, "see log"))

    # Stale trials of a killed worker are failed (and retried) now, even if no new trial needs to start.
    _fail_stale_trials(study)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    failed_before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
    waiting_logged = False
    # Failed trials do not count towards N: keep going until N have finished, unless failures pile up.
    while (done := count_finished(study)) < target:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        running = count_running(study)
        if done + running >= target:
            # Other workers' trials will reach N: starting one more would overshoot it. Keep watching, in
            # case one of them dies and its trial comes back as a retry.
            if not waiting_logged:
                logger.info(
                    "%d finished, %d running elsewhere: waiting for them to reach %d", done, running, target
                )
                waiting_logged = True
            time.sleep(WAIT_POLL_SECONDS)
            _fail_stale_trials(study)
            continue
        study.optimize(
            guard.track(Objective(context)) if guard is not None else Objective(context),
            n_trials=target - done - running,
            timeout=remaining,
            # The target check last: the shorter the gap between counting and the next trial's start, the
            # rarer two workers both start one when the study is one trial short.
            callbacks=[on_trial, StopAtTarget(target)],
            catch=(Exception,),
            gc_after_trial=False,
        )
        failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
        if count_finished(study) == done and failed > failed_before + target:
            logger.error("more trials failed than the %d asked for; stopping: see the failures above", target)
            break
    progress.close()

    new_failures = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))[failed_before:]
    if count_finished(study) == 0 and new_failures:
        first = new_failures[0]
        logger.error(
            "no trial finished: the %d trial(s) run failed, the first (#%d) with %s; fix that and run again",
            len(new_failures),
            first.number,
            first.user_attrs.get(FAIL_REASON, "an error (see --verbose)"),
        )
        return 1

    best = best_feasible(study)
    logger.info("study %s: %d finished trials", config.name, count_finished(study))
    logger.info("best feasible: %s config %s", _describe(best), trial_config(best) if best else None)
    for name, trial in reference_trials(study).items():
        logger.info("reference %-18s %s", name, _describe(trial))
    stats = context.subset.features.stats
    if stats.hits + stats.misses == 0:
        return 0  # nothing ran (the study was already complete): keep the counters of the run that did
    logger.info("feature cache hit rate %.1f%% (%d hits)", 100 * stats.hit_rate, stats.hits)
    # This process's cache counters, for benchmarks/search_throughput.py (the last worker to finish wins).
    study.set_user_attr(
        "cache_stats",
        {
            "feature_hits": stats.hits,
            "feature_misses": stats.misses,
            "feature_hit_rate": stats.hit_rate,
            "encoding_hit_rate": context.subset.encoding_stats.hit_rate,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
