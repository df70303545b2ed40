"""``w2s lm-eval``: lm-evaluation-harness's own command line, with w2s's model registered as ``w2s``.

lm-eval 0.4.13 finds no model of another package by itself, so this command registers
:class:`w2s.lm_eval.W2SLM` and hands every argument after ``lm-eval``, unchanged, to the harness's entry
point (``lm_eval.__main__.cli_evaluate``): ``w2s lm-eval run --model w2s --model_args strong=...,method=cbs
--tasks ...``, the legacy form without ``run``, ``ls tasks``, ``validate``; ``w2s lm-eval --help`` is the
harness's help.  Its one parameter, the arguments themselves, is a field of :class:`LMEvalCommand` (every
flag of every command comes from a config dataclass); the command's parser takes the strings as they come,
options included, instead of parsing them (:class:`PassThroughParser`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from .flags import add_config_flags


@dataclass
class LMEvalCommand:
    """What ``w2s lm-eval`` runs.

    Attributes:
        args: lm-evaluation-harness's own arguments, passed on unchanged: its subcommand (run, ls, validate;
            none is run) and options, e.g. --model w2s --model_args strong=PATH,tuned=PATH,untuned=PATH,method=cbs
            --tasks TASK (w2s.lm_eval lists the model_args).
    """

    args: tuple[str, ...] = field(default=(), metadata={"positional": True})


class PassThroughParser(argparse.ArgumentParser):
    """A command's parser that takes every string after the command, options included, as ``args`` (argparse's
    REMAINDER drops a first string that looks like an option, such as ``--model``)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, _ = super().parse_known_args([], namespace)  # the defaults (func, args=())
        namespace.args = tuple(sys.argv[1:] if args is None else args)
        return namespace, []


def add_parser(sub) -> None:
    p = sub.add_parser("lm-eval", add_help=False,
                       help="lm-evaluation-harness with the w2s model (w2s lm-eval --model w2s --model_args ...)",
                       description="Run lm-evaluation-harness's command line with the model 'w2s' registered; "
                                   "w2s lm-eval --help shows the harness's options.")
    p.__class__ = PassThroughParser  # (subparsers build their parsers themselves: its class is set after)
    add_config_flags(p, LMEvalCommand)
    p.set_defaults(func=run)


def run(args) -> int:
    """Register the model and run the harness's entry point on ``args.args`` (its own exit status on errors)."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise ValueError("w2s lm-eval runs lm-evaluation-harness, which is not installed: "
                         "pip install 'w2s-align[lm-eval]' (lm-eval==0.4.13).") from None

    from .. import lm_eval  # noqa: F401  (registers the model 'w2s')

    saved = sys.argv
    sys.argv = ["lm-eval", *args.args]  # the harness reads sys.argv (and inserts 'run' for the legacy form)
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
