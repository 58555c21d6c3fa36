"""Optuna storage with heartbeats, so a worker killed mid-trial leaves no trial RUNNING forever.

A trial whose worker has not beaten for `grace_period` seconds is marked FAILED by the next worker to start
a trial, and `RetryHeartbeatStaleTrialCallback` enqueues a copy of it, so the config is evaluated after all.

SQLite needs help to be shared by several worker processes: it ignores the `SELECT ... FOR UPDATE` with which
optuna claims an enqueued trial, so two workers could both move the same WAITING trial to RUNNING, both run
it, and the second to finish crashed on "Cannot tell a COMPLETE trial". Every transaction therefore starts
with `BEGIN IMMEDIATE` (SQLAlchemy's recipe for SQLite transactions,
https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl),
which takes the write lock before the read, so claiming a trial is atomic.

Read-only commands (`reports.build`, `distill.promote`) open the storage with `read_only=True`: plain
(deferred) transactions, so they read while workers hold the write lock, and a log line says what they wait
for when the database stays locked.

A bad URL, an unwritable SQLite folder, a missing driver or an unreachable server fails at once with a
`StorageError` naming the URL with its password masked.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError

from vlm.cli import UsageError

logger = logging.getLogger(__name__)

URL_EXAMPLES = "e.g. sqlite:///studies/demo.db or postgresql://user:password@host:5432/dbname"
SQLITE_BUSY_TIMEOUT = 60  # seconds SQLite waits for another process's lock before giving up
BUSY_NOTICE_AFTER = 2.0  # seconds a read-only command waits silently before saying what it waits for


class StorageError(UsageError):
    """The study storage cannot be used: bad URL, unwritable folder, missing driver, unreachable server."""


def mask_password(url: str) -> str:
    """`url` with its password replaced by ***, also when the URL does not parse."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def parse_storage_url(url: str) -> URL:
    """The parsed URL, or a `StorageError` saying what is wrong with it (password masked)."""
    shown = mask_password(url)
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise StorageError(f"--storage {shown!r} is not a database URL ({URL_EXAMPLES})") from err
    except ValueError as err:  # a non-numeric port: int() fails inside make_url
        raise StorageError(f"--storage {shown!r}: the port must be a number ({err}); {URL_EXAMPLES}") from err
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError as err:
        raise StorageError(
            f"--storage {shown!r}: unknown database kind {parsed.drivername!r} ({URL_EXAMPLES})"
        ) from err
    except ImportError as err:
        raise StorageError(
            f"--storage {shown!r}: the Python driver for {parsed.get_backend_name()} is not installed ({err}); "
            f"install it (pip install {err.name or 'the driver'}{'[binary]' if err.name == 'psycopg' else ''})"
        ) from err
    return parsed


def _check_sqlite_folder(parsed: URL, shown: str) -> None:
    database = parsed.database
    if not database or database == ":memory:":
        return
    folder = Path(database).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(
            f"cannot create the folder {folder} for the study database {shown!r}: {err.strerror}; "
            "pass --storage sqlite:///PATH with a writable PATH"
        ) from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"the folder {folder} of the study database {shown!r} is not writable (SQLite writes its journal "
            "beside the database); pass --storage sqlite:///PATH with a writable PATH"
        )
    if Path(database).exists() and not os.access(database, os.R_OK | os.W_OK):
        raise StorageError(f"the study database {database} is not readable and writable by this account")


def open_storage(
    url: str,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
    max_retry: int = 2,
    attempts: int = 6,
    read_only: bool = False,
):
    """An optuna RDBStorage for `url` (see the module docstring); `read_only` for commands that only read."""
    parsed = parse_storage_url(url)
    shown = mask_password(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        _check_sqlite_folder(parsed, shown)
    # isolation_level None: the sqlite3 driver issues no BEGIN of its own, so ours below is the only one.
    engine_kwargs = (
        {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT, "isolation_level": None}}
        if sqlite
        else {"pool_pre_ping": True}
    )
    notice = _BusyNotice(shown) if sqlite and read_only else None
    for attempt in range(attempts):
        try:
            # Heartbeats are "experimental" in optuna, and have been since v2.8.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if notice is not None:
                    notice.begin()  # opening reads the schema: it waits for a lock like any read
                try:
                    storage = RDBStorage(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                    )
                finally:
                    if notice is not None:
                        notice.end()
            if sqlite:
                event.listen(storage.engine, "begin", _begin_deferred if read_only else _begin_immediate)
                event.listen(storage.engine, "connect", _sqlite_pragmas)
                if notice is not None:
                    notice.attach(storage.engine)
            return storage
        except (IntegrityError, OperationalError) as err:
            # Workers started together on a fresh database race to create its schema: optuna stamps the
            # alembic version row outside any lock, and the loser fails with "UNIQUE constraint failed:
            # alembic_version.version_num". Once the winner has committed, opening again just works.
            # A server that refuses the connection or the password is not a race: say so at once.
            if not sqlite and not isinstance(err, IntegrityError):
                reason = str(getattr(err, "orig", err)).strip().splitlines()[0]
                raise StorageError(
                    f"cannot open the study database {shown!r}: {reason}; check the host, port, user and "
                    "password, and that the server is running"
                ) from err
            if attempt == attempts - 1:
                raise StorageError(
                    f"cannot open the study database {shown!r} after {attempts} tries: {err.orig}"
                ) from err
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


class _BusyNotice:
    """Logs once per wait when a read-only command has waited `BUSY_NOTICE_AFTER` s inside one transaction:
    SQLite's busy wait is silent, and a reader of a study that several workers write to once sat silent for
    minutes."""

    def __init__(self, shown: str):
        self.shown = shown
        self.started: float | None = None
        self.lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True, name="sqlite-busy-notice").start()

    def attach(self, engine) -> None:
        event.listen(engine, "begin", self.begin)
        event.listen(engine, "commit", self.end)
        event.listen(engine, "rollback", self.end)

    def begin(self, _connection=None) -> None:
        with self.lock:
            self.started = time.monotonic()

    def end(self, _connection=None) -> None:
        with self.lock:
            self.started = None

    def _watch(self) -> None:
        noticed: float | None = None
        while True:
            time.sleep(0.25)
            with self.lock:
                started = self.started
            if started is not None and started != noticed and time.monotonic() - started > BUSY_NOTICE_AFTER:
                noticed = started
                logger.warning(
                    "waiting for the study database %s: another process (a search worker?) holds its lock; "
                    "SQLite waits up to %d s",
                    self.shown,
                    SQLITE_BUSY_TIMEOUT,
                )


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # synchronous=NORMAL: fewer fsyncs per user-attribute commit (a killed worker loses nothing; only an OS
    # crash could). Not WAL: its recent commits live in a side file, so copying `<study>.db` alone, as users
    # do to move a study, would lose them.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _begin_deferred(connection) -> None:
    # Takes no lock until the first read (shared) or write (reserved): readers go on while a worker holds
    # the write lock, and wait only while one commits.
    connection.exec_driver_sql("BEGIN")


def load_existing_study(name: str, storage_url: str, read_only: bool = False) -> optuna.Study:
    """An existing study, for commands that read it (and at most record a result): fails naming the study.

    A SQLite file that does not exist is not created (opening it would leave an empty database behind).
    """
    parsed = parse_storage_url(storage_url)
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(parsed.database).is_file()
    ):
        raise StorageError(
            f"no study database at {parsed.database} (study {name!r}): run `python -m search.run --study {name}` "
            "first, or pass the --storage URL the search used"
        )
    storage = open_storage(storage_url, read_only=read_only)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        raise StorageError(
            f"no study {name!r} in {mask_password(storage_url)}; run `python -m search.run --study {name}` first"
        ) from exc
