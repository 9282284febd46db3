"""Run one subcommand module (HELP, add_arguments, run) as its own program."""

from __future__ import annotations

import argparse
import logging
from types import ModuleType


def main(module: ModuleType, prog: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``module``'s arguments and run it (as ``cxr-msn`` would)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=module.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(module.run(args) or 0)
