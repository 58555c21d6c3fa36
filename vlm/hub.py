"""Is the Hugging Face hub reachable from here? Asked before anything tries to download, so an offline
machine fails in a second with a clear message instead of after a minute of retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_reachable(timeout: float = 3.0) -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE as a boolean: 1/true/yes/on, any case. Checked here at call time
    # (not via huggingface_hub.constants, which is frozen when that module is first imported).
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "TRUE", "YES", "ON"}:
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
