"""The `wastenet` entry point: one sub-command per mode, each in ``wastenet.commands``.

Every mode module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, and
imports heavy libraries (torch, timm, onnxruntime) inside ``run`` only, so that
``wastenet predict model.onnx`` works on an install without PyTorch.

Exit status: 0 success, 1 some inputs failed (others processed), 2 usage/config error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wastenet import __version__
from wastenet.errors import WastenetError

MODES = ("train", "eval", "predict", "explain", "export", "serve", "review", "bench", "adapt")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own contract)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wastenet", description="Waste photo classifier: train, evaluate, decide, explain, deploy.")
    parser.add_argument("--version", action="version", version=f"wastenet {__version__}")
    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE", parser_class=_Parser)
    for mode in MODES:
        try:
            module = importlib.import_module(f"wastenet.commands.{mode}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("wastenet.commands"):
                continue  # mode not built yet
            raise
        p = sub.add_parser(mode, help=module.HELP, description=module.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except WastenetError as exc:
        print(f"wastenet {args.mode}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"wastenet {args.mode}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
