"""The ``w2s`` command: ``search | demo | setup | train | eval | serve | stream | align | data``.

One small module per command; every option comes from a config dataclass (:mod:`.flags`).  Nothing
outside this package imports it.
"""

from __future__ import annotations

import argparse
import sys

from . import evaluate, search, serve, setup, stream, train
from .common import PHASES, mark

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="w2s", description="Align a large LM at generation time with small ones.")
    sub = parser.add_subparsers(dest="command", required=True)
    search.add_parser(sub)
    setup.add_parsers(sub)
    train.add_parser(sub)
    stream.add_parsers(sub)
    evaluate.add_parser(sub)
    serve.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    PHASES.clear()
    mark("main")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:
        print(f"w2s {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
