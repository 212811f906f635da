"""The ``--kv-*`` flags of ``vllm serve`` (see ``patches/README.md``)."""

from __future__ import annotations

import argparse

from vllm.engine.arg_utils import EngineArgs

from vllm_tova.cli import add_cli_args, merge_flags
from vllm_tova.patches.wrap import wrap


def apply() -> None:
    wrap(EngineArgs, "add_cli_args", "(parser)", _add_cli_args)  # a staticmethod
    wrap(EngineArgs, "from_cli_args", "(cls, args)", _from_cli_args)  # a classmethod


def _add_cli_args(original, parser):
    parser = original(parser)
    add_cli_args(parser)
    return parser


def _from_cli_args(original, cls, args: argparse.Namespace):
    engine_args = original(cls, args)
    engine_args.additional_config = merge_flags(args, engine_args.additional_config)
    return engine_args
