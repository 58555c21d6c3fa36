"""Optuna storage with heartbeats, so a worker killed mid-trial leaves no trial RUNNING forever.

A trial whose worker has not beaten for `grace_period` seconds is marked FAILED by the next worker to start
a trial, and `RetryHeartbeatStaleTrialCallback` enqueues a copy of it, so the config is evaluated after all.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.exc import IntegrityError, OperationalError


def open_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2, attempts: int = 5
):
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            # Heartbeats are "experimental" in optuna, and have been since v2.8.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                )
        except (IntegrityError, OperationalError):
            # Workers started together on a fresh database race to create its schema: optuna stamps the
            # alembic version row outside any lock, and the loser fails with "UNIQUE constraint failed:
            # alembic_version.version_num". Once the winner has committed, opening again just works.
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def load_existing_study(name: str, storage_url: str) -> optuna.Study:
    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        raise SystemExit(
            f"no study {name!r} in {storage_url}; run `python -m search.run --study {name}` first"
        ) from exc
