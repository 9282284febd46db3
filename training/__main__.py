"""``python -m training COMMAND``: the training subcommands without an installed entry point.

The same modules are (or are to be) registered as ``cxr-msn pretrain``, ``build-manifest``,
``linear-eval``, ``finetune``, ``evaluate``, ``compare``, ``report`` and ``experiment``; this
entry also suits ``torchrun ... -m training pretrain ...``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "pretrain": "training.pretrain_command",
    "build-manifest": "training.manifest_command",
    "linear-eval": "training.linear_eval_command",
    "finetune": "training.finetune_command",
    "evaluate": "training.evaluate_command",
    "compare": "training.compare_command",
    "report": "training.report_command",
    "experiment": "training.experiment_command",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    for name, path in COMMANDS.items():
        module = importlib.import_module(path)
        sub = subparsers.add_parser(
            name,
            help=module.HELP.replace("%", "%%"),  # argparse %-formats help strings
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        modules[name] = module
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
