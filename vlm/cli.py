"""What every command-line entry point shares, so all of them look and fail the same way.

- `make_parser`: usage reads `python -m MODULE`, help shows each option's default, `--verbose` everywhere.
- `run`: parses, sets up logging once, calls the command, and turns bad input (`UsageError`, or any of
  the `USER_ERRORS` a library raises for input it rejects) into one line on stderr and exit status 2; the
  full traceback only with `--verbose`.

This module imports nothing heavy (no torch, transformers or optuna), so `--help` answers at once: entry
points import their library modules inside the function that does the work, after parsing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(name)s %(message)s"


class UsageError(Exception):
    """Bad input the user can fix. The message says what is wrong, where, and what to do."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends each option's default (when it has a real one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def make_parser(module: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser whose usage reads `python -m MODULE`, with `--verbose` already added."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=description, epilog=epilog, formatter_class=_HelpFormatter
    )
    parser.add_argument(
        "--verbose", action="store_true", help="debug logging, and the full traceback of any error"
    )
    return parser


def add_study_options(parser: argparse.ArgumentParser) -> None:
    """`--study` (required) and `--storage`: how every command that reads a study finds it."""
    parser.add_argument(
        "--study", required=True, help="study name (studies/<name>.toml) or a .toml path, e.g. demo"
    )
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite:///studies/<name>.db)"
    )


def setup_logging(verbose: bool, fmt: str = LOG_FORMAT) -> None:
    """Configure the root logger (a no-op when it already has a handler, so no line is printed twice and a
    caller's own logging, pytest's included, is kept) and silence warnings a user cannot act on."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)
    if not verbose:
        # Deprecation notices from torch/transformers internals (e.g. "`torch.utils.checkpoint` ...") are
        # for library authors; --verbose shows them.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for noisy in ("transformers", "datasets", "httpx", "huggingface_hub", "urllib3", "fvcore"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def run(
    main: Callable[[argparse.Namespace], int | None],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    user_errors: tuple[type[BaseException], ...] = (),
    log_format: str = LOG_FORMAT,
) -> int:
    """Parse `argv`, set up logging and run `main(args)`; bad input becomes one line and exit status 2.

    `user_errors`: exception types (besides `UsageError`) that mean bad input rather than a bug.
    """
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    setup_logging(verbose, log_format)
    try:
        return int(main(args) or 0)
    except (UsageError, *user_errors) as err:
        if verbose:
            logger.exception("%s failed", parser.prog)
        print(f"{parser.prog.removeprefix('python -m ')}: error: {err}", file=sys.stderr)
        return 2


def parse_device(name: str):
    """The torch.device a ``--device`` value names, refused (UsageError) when it is not a device name or
    names a GPU this machine lacks, before any minutes of work are spent on the way to it."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no CUDA GPU here; use --device cpu")
    return device
