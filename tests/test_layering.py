"""Packages import downwards only: vlm <- ledger <- {search, distill, reports} <- dryrun.

`search`, `distill` and `reports` never import each other (what they share is `ledger`'s or `vlm`'s), and no
import, however deep inside a function, runs from a lower package to a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEVEL = {"vlm": 0, "ledger": 1, "search": 2, "distill": 2, "reports": 2, "dryrun": 3}


def _imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(LEVEL)


@pytest.mark.parametrize("package", sorted(LEVEL))
def test_a_package_imports_only_packages_below_it(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for other in _imported_packages(path) - {package}:
            if LEVEL[other] >= LEVEL[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not wrong, wrong
