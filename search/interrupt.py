"""Stopping a search worker without losing its trial: Ctrl-C (SIGINT) and SIGTERM end the worker in a few
lines, and the trial it was running is queued again, so the next `search.run` evaluates it before sampling
any new one.

optuna marks a trial interrupted by KeyboardInterrupt FAIL and never retries it (its heartbeat retry covers
only workers that vanish: SIGKILL, a lost machine). Here both signals raise `Interrupted` (a
KeyboardInterrupt) in the main thread; `InterruptGuard.stop` then makes sure the trial is FAIL and enqueues
one copy of it, with the same params and optuna's `failed_trial`/`retry_history` system attributes, as the
heartbeat retry does. A SIGKILL cannot be caught: that trial is retried by the next worker once its
heartbeat is older than the grace period (ledger.storage).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, as shells report them


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `args[0]` is the signal's name."""


class _DropInterruptTraceback:
    """A logging filter: optuna logs an interrupted trial as failed, with the KeyboardInterrupt's traceback
    (about 200 lines with the torch frames). The guard's one line says it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, KeyboardInterrupt) and "KeyboardInterrupt" not in str(record.msg)


class InterruptGuard:
    """Tracks the trial this worker runs, and on an interrupt re-queues it and says so in one line."""

    def __init__(self) -> None:
        self.study: optuna.Study | None = None
        self.trial_id: int | None = None
        self.trial_number: int | None = None
        self.received: str | None = None  # the signal, once one arrived
        self.stopping = False  # set once the interrupt reached `stop`

    def track(self, objective: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`objective`, remembering the trial it was called with."""

        def tracked(trial):
            self.trial_id, self.trial_number = trial._trial_id, trial.number
            return objective(trial)

        return tracked

    @contextlib.contextmanager
    def signals(self, verbose: bool = False) -> Iterator[None]:
        """SIGINT and SIGTERM raise `Interrupted` while inside (the previous handlers come back after)."""

        def handler(signum, _frame):
            if self.received is None:
                self.received = signal.Signals(signum).name
                threading.Thread(target=self._redeliver, args=(signum,), daemon=True).start()
            raise Interrupted(signal.Signals(signum).name)

        def unraisable(info) -> None:
            # Raised where Python cannot propagate it (a garbage-collector callback): it was dropped, and
            # `_redeliver` sends the signal again. Nothing to print.
            if not isinstance(info.exc_value, KeyboardInterrupt):
                previous_hook(info)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        previous_hook = sys.unraisablehook
        sys.unraisablehook = unraisable
        drop = _DropInterruptTraceback()
        optuna_handlers = _optuna_handlers()
        if not verbose:
            for h in optuna_handlers:
                h.addFilter(drop)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            sys.unraisablehook = previous_hook
            for h in optuna_handlers:
                h.removeFilter(drop)

    def _redeliver(self, signum: int, every: float = 1.0, tries: int = 30) -> None:
        """Send the signal again while it has not reached `stop`.

        A signal handler's exception surfaces wherever the main thread happens to be; inside a weakref or
        `__del__` callback (SQLAlchemy's, during garbage collection) Python drops it with "Exception ignored
        in ...", and the worker went on with the next trials as if nothing had happened.
        """
        for _ in range(tries):
            time.sleep(every)
            if self.stopping:
                return
            os.kill(os.getpid(), signum)

    def stop(self, err: KeyboardInterrupt) -> int:
        """After an interrupt: re-queue the trial it cut short (if any) and return the exit status."""
        self.stopping = True
        name = err.args[0] if isinstance(err, Interrupted) and err.args else "SIGINT"
        # A second Ctrl-C while re-queueing would leave the trial to the heartbeat: finish this first.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            requeued = self._requeue() if self.study is not None and self.trial_id is not None else None
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        if requeued is not None:
            logger.warning(
                "interrupted (%s): trial %d was stopped and queued again; run the same command to continue "
                "(the queued trial runs before any new one)",
                name,
                requeued,
            )
        else:
            logger.warning("interrupted (%s); no trial was cut short; run the same command to continue", name)
        return EXIT_CODES.get(name, 130)

    def _requeue(self) -> int | None:
        from optuna.exceptions import ExperimentalWarning
        from optuna.storages import RetryHeartbeatStaleTrialCallback
        from optuna.trial import TrialState

        study, storage = self.study, self.study._storage
        trial = storage.get_trial(self.trial_id)
        if trial.state == TrialState.RUNNING:  # interrupted before optuna recorded the failure
            storage.set_trial_state_values(self.trial_id, TrialState.FAIL)
            trial = storage.get_trial(self.trial_id)
        if trial.state != TrialState.FAIL:
            return None  # it finished (or was pruned) before the signal took effect: nothing lost
        already = any(
            t.system_attrs.get("retry_history", [None])[-1] == trial.number
            for t in study.get_trials(deepcopy=False)
        )
        if not already:
            # No retry limit: a user's Ctrl-C says nothing about the trial.
            with warnings.catch_warnings():  # "experimental" in optuna since v2.8
                warnings.simplefilter("ignore", ExperimentalWarning)
                RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)
        return trial.number


def _optuna_handlers() -> list[logging.Handler]:
    import optuna

    root = optuna.logging._get_library_root_logger()
    return list(root.handlers) + list(logging.getLogger().handlers)
