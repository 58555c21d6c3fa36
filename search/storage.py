"""Optuna storage with heartbeats, so a worker killed mid-trial leaves no trial RUNNING forever.

A trial whose worker has not beaten for `grace_period` seconds is marked FAILED by the next worker to start
a trial, and `RetryHeartbeatStaleTrialCallback` enqueues a copy of it, so the config is evaluated after all.

SQLite needs help to be shared by several worker processes: it ignores the `SELECT ... FOR UPDATE` with which
optuna claims an enqueued trial, so two workers could both move the same WAITING trial to RUNNING, both run
it, and the second to finish crashed on "Cannot tell a COMPLETE trial". Every transaction therefore starts
with `BEGIN IMMEDIATE` (SQLAlchemy's recipe for SQLite transactions,
https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl),
which takes the write lock before the read, so claiming a trial is atomic.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError


def open_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2, attempts: int = 6
):
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    sqlite = url.startswith("sqlite")
    # isolation_level None: the sqlite3 driver issues no BEGIN of its own, so ours below is the only one.
    engine_kwargs = (
        {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    )
    for attempt in range(attempts):
        try:
            # Heartbeats are "experimental" in optuna, and have been since v2.8.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                )
            if sqlite:
                event.listen(storage.engine, "begin", _begin_immediate)
                event.listen(storage.engine, "connect", _sqlite_pragmas)
            return storage
        except (IntegrityError, OperationalError):
            # Workers started together on a fresh database race to create its schema: optuna stamps the
            # alembic version row outside any lock, and the loser fails with "UNIQUE constraint failed:
            # alembic_version.version_num". Once the winner has committed, opening again just works.
            if attempt == attempts - 1:
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # synchronous=NORMAL: fewer fsyncs per user-attribute commit (a killed worker loses nothing; only an OS
    # crash could). Not WAL: its recent commits live in a side file, so copying `<study>.db` alone, as users
    # do to move a study, would lose them.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def load_existing_study(name: str, storage_url: str) -> optuna.Study:
    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        raise SystemExit(
            f"no study {name!r} in {storage_url}; run `python -m search.run --study {name}` first"
        ) from exc
