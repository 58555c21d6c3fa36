"""Study-level facts (the teacher's X, the layer ranking) measured by one worker, however many start at once.

Optuna's storage has no atomic "insert if absent" for study attributes, so a worker claims a fact by writing
a claim (`<key>:claim` = {token, beat}), waits `settle` seconds, and measures only if its claim is still the
one stored: of several workers that found no claim at the same moment, the last writer wins and the others
see its token. The winner refreshes `beat` from a thread while it measures; the others wait for the fact and
take over if the beat stops for `grace_period` seconds (the claimer died).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import optuna

logger = logging.getLogger(__name__)


def measure_once(
    study: optuna.Study,
    key: str,
    measure: Callable[[], Any],
    what: str,
    valid: Callable[[Any], bool] = lambda value: True,
    heartbeat_interval: float = 10.0,
    grace_period: float = 30.0,
    settle: float = 0.5,
    poll: float = 0.5,
) -> Any:
    """The study's user attribute `key`; measured (by `measure()`) and stored by one worker only.

    `valid(value)` says whether a stored value still fits this run (e.g. the same subset size); an invalid
    one is measured again.
    """
    claim_key = f"{key}:claim"
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    waiting_logged = False
    while True:
        attrs = study.user_attrs
        value = attrs.get(key)
        if value is not None and valid(value):
            return value
        claim = attrs.get(claim_key)
        if claim and claim.get("token") != token and time.time() - claim.get("beat", 0) < grace_period:
            if not waiting_logged:
                logger.info("waiting for another worker (%s) to measure %s", claim["token"], what)
                waiting_logged = True
            time.sleep(poll)
            continue
        study.set_user_attr(claim_key, {"token": token, "beat": time.time()})
        time.sleep(settle)  # let every worker that found no claim write its own; the last one wins
        if (study.user_attrs.get(claim_key) or {}).get("token") != token:
            continue
        with _beating(study, claim_key, token, heartbeat_interval):
            value = measure()
        study.set_user_attr(key, value)
        return value


@contextlib.contextmanager
def _beating(study: optuna.Study, claim_key: str, token: str, interval: float) -> Iterator[None]:
    """Refresh the claim's `beat` every `interval` seconds while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                study.set_user_attr(claim_key, {"token": token, "beat": time.time()})
            except Exception as err:  # a lost beat only lets another worker take over; never fatal here
                logger.debug("claim heartbeat failed: %s", err)

    thread = threading.Thread(target=beat, daemon=True, name=f"claim-{claim_key}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
