"""`python -m reports.build --study NAME [--storage URL] [--out DIR] [--png [PATH]] [--what-if-ratio R]`

Writes the report of a study (`reports.page` does the work): `<out>/index.html`, self-contained and
offline, opening with the cheapest config that keeps ratio·X; every table beside it as CSV and Markdown.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vlm.cli import UsageError, add_study_options, make_parser, run

logger = logging.getLogger("reports.build")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "reports.build",
        "Build the report of a study: one self-contained HTML page (plotly, offline) with the Pareto front "
        "under the ratio·X line,\nand every table as CSV and Markdown.",
    )
    add_study_options(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: out/reports/<name> under $VLMC_HOME or .)",
    )
    parser.add_argument(
        "--png",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also render the Pareto plot to PNG (default path: <out>/pareto.png) with headless Chromium",
    )
    parser.add_argument(
        "--what-if-ratio",
        type=float,
        default=None,
        metavar="R",
        help="re-draw feasibility at R·X instead of the ratio the search ran with (labelled as a what-if)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from ledger.config import load_study_config
    from reports.page import build_report, load_report_data, render_pareto_png
    from vlm.paths import reports_dir

    if args.what_if_ratio is not None and not 0 < args.what_if_ratio <= 1:
        raise UsageError(f"--what-if-ratio must be in (0, 1], got {args.what_if_ratio}")
    config = load_study_config(args.study)
    out_dir = args.out or reports_dir() / config.name
    try:
        data = load_report_data(config, args.storage, args.what_if_ratio)
    except ValueError as err:  # no baseline yet: the search has not started
        raise UsageError(str(err)) from err
    build_report(data, out_dir)
    logger.info("report: %s", (out_dir / "index.html").resolve())
    if args.png is not None:
        png = render_pareto_png(data, Path(args.png) if args.png else out_dir / "pareto.png")
        logger.info("Pareto plot: %s", png)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
