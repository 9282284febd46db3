"""``cxr-msn``: one console script; each subtree registers its subcommands.

A subcommand is a module with ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``, listed under the ``cxr_msn.commands`` entry-point group in
pyproject.toml. Modules keep heavy imports inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import entry_points
from types import ModuleType

ENTRY_POINT_GROUP = "cxr_msn.commands"
#: The pyproject extra each subtree's commands need, named when its import fails.
EXTRA_BY_PACKAGE = {"serving": "serve", "export": "export", "training": "train", "cxrmsn": "train"}


def install_hint(module_path: str) -> str:
    extra = EXTRA_BY_PACKAGE.get(module_path.split(".")[0], "train")
    return f"pip install 'cxr-msn[{extra}]'"


def missing_extra_help(module_path: str, error: ImportError) -> str:
    missing = error.name or str(error)
    return f"(unavailable: {missing} is not installed; {install_hint(module_path)})"


def _commands() -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if not found:  # running from a source tree that was never installed
        found = {"info": "cxrmsn.commands.info", "init-checkpoint": "cxrmsn.commands.init_checkpoint"}
    return dict(sorted(found.items()))


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(
        prog="cxr-msn",
        description="Multimodal MSN chest X-ray models: train, export and serve. "
        "Not for clinical use unless validated.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules: dict[str, ModuleType] = {}
    for name, module_path in _commands().items():
        try:
            module = importlib.import_module(module_path)
        except ImportError as exc:
            subparsers.add_parser(name, help=missing_extra_help(module_path, exc))
            continue
        sub = subparsers.add_parser(
            name,
            help=module.HELP.replace("%", "%%"),  # argparse %-formats help strings
            description=module.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(sub)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command not in modules:
        hint = install_hint(_commands()[args.command])
        parser.error(f"'{args.command}' needs an extra that is not installed: {hint}")
    try:
        return int(modules[args.command].run(args) or 0)
    except ImportError as exc:  # a heavy import inside run(): name the extra, not a traceback
        missing = (exc.name or "").split(".")[0]
        if not missing or missing in EXTRA_BY_PACKAGE:
            raise
        hint = install_hint(_commands()[args.command])
        parser.exit(2, f"cxr-msn {args.command}: {missing} is not installed; {hint}\n")


if __name__ == "__main__":
    sys.exit(main())
