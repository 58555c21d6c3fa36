"""Every artifact path resolves from one root: $VLMC_HOME, else the current directory.

Studies live in `<root>/studies`, reports in `<root>/out/reports` (never inside the `reports/` source
package when the root is the checkout), caches (demo dataset, teacher outputs,
vision features) in `<root>/.cache`.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    return Path(os.environ.get("VLMC_HOME", ".")).resolve()


def cache_dir() -> Path:
    return project_root() / ".cache"


def studies_dir() -> Path:
    return project_root() / "studies"


def reports_dir() -> Path:
    return project_root() / "out" / "reports"
