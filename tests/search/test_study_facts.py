"""Study-level facts (the teacher's X, the layer ranking) are measured once per study, even when several
workers start on a fresh study together: three real `python -m search.run` processes on one SQLite file."""

from __future__ import annotations

import threading

import optuna

from ledger.storage import open_storage
from search.claims import measure_once
from tests.search.conftest import STUDY, load, run_workers, sqlite_url


def test_three_workers_on_a_fresh_study_measure_x_and_the_ranking_once(world, tmp_path):
    toml = world.toml(tmp_path)
    url = sqlite_url(tmp_path / "tiny.db")
    logs = run_workers(toml, url, 7, tmp_path, 3)

    texts = [log.read_text() for log in logs]
    assert sum(t.count("measuring the teacher's accuracy X") for t in texts) == 1, texts
    assert sum(t.count("block influence:") for t in texts) == 1, texts
    # Every worker used the one stored X.
    x = load(url).user_attrs["baseline"]["accuracy"]
    assert all(f"teacher X = {x:.3f}" in t for t in texts)


def test_a_claim_whose_worker_died_is_taken_over(tmp_path):
    """A worker that claimed a fact and died (its beat stopped) does not block the others for good."""
    study = optuna.create_study(study_name=STUDY, storage=open_storage(sqlite_url(tmp_path / "c.db")))
    study.set_user_attr("fact:claim", {"token": "dead-worker", "beat": 0.0})  # beat long ago
    calls = []
    value = measure_once(
        study, "fact", lambda: calls.append(1) or 42, "a fact", grace_period=1.0, settle=0.05
    )
    assert value == 42 and calls == [1] and study.user_attrs["fact"] == 42


def test_threads_racing_for_one_fact_measure_it_once(tmp_path):
    url = sqlite_url(tmp_path / "race.db")
    optuna.create_study(study_name=STUDY, storage=open_storage(url))
    studies = [optuna.load_study(study_name=STUDY, storage=open_storage(url)) for _ in range(4)]
    barrier = threading.Barrier(len(studies))
    measured, results = [], []

    def worker(study):
        barrier.wait()
        results.append(
            measure_once(study, "fact", lambda: measured.append(1) or 7, "a fact", settle=0.2, poll=0.05)
        )

    threads = [threading.Thread(target=worker, args=(s,)) for s in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [7] * 4 and len(measured) == 1
