"""The ``w2s`` command: ``search | demo | setup | train | eval | serve | stream | align | data | lm-eval``.

One small module per command; every option comes from a config dataclass (:mod:`.flags`).  Nothing
outside this package imports it.
"""

from __future__ import annotations

import argparse
import sys

from . import evaluate, lm_eval, search, serve, setup, stream, train
from ..backends.base import RemoteError
from .common import FAILED, PHASES, command_name, mark, release_outputs

__all__ = ["build_parser", "main"]

EXIT_STATUS = (f"exit status: 0 done; {FAILED} some items failed (their lines in the output are error records, "
               "summarized on stderr); 2 a bad input or setting (a one-line error)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="w2s", description="Align a large LM at generation time with small ones.",
                                     epilog=EXIT_STATUS)
    sub = parser.add_subparsers(dest="command", required=True)
    search.add_parser(sub)
    setup.add_parsers(sub)
    train.add_parser(sub)
    stream.add_parsers(sub)
    evaluate.add_parser(sub)
    serve.add_parser(sub)
    lm_eval.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    PHASES.clear()
    mark("main")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, OSError) as err:  # OSError: a file or model that cannot be read or written
        message = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) and err.filename else err
        print(f"{command_name(args)}: error: {message}", file=sys.stderr)
        return 2
    except RemoteError as err:  # an engine that stayed down (a file of prompts gets error records instead)
        print(f"{command_name(args)}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, and how to go on
        how = ("the lines written are kept: run it again with --resume to go on" if hasattr(args, "resume") else
               "what was written is kept: run the same command again to go on" if hasattr(args, "out") else "")
        print(f"{command_name(args)}: interrupted{'; ' + how if how else ''}.", file=sys.stderr)
        return 130
    finally:
        release_outputs()
