"""Patches 2 and 3: the ``--kv-*`` flags of ``vllm serve`` (see the index in ``__init__``)."""

from __future__ import annotations

import argparse
import functools

from vllm.engine.arg_utils import EngineArgs

from vllm_tova.cli import add_cli_args, merge_flags

_ORIGINAL_ADD = EngineArgs.add_cli_args  # staticmethod: a plain function on the class
_ORIGINAL_FROM = EngineArgs.from_cli_args.__func__  # classmethod underneath


def apply() -> None:
    if not getattr(EngineArgs.add_cli_args, "_vllm_tova", False):
        EngineArgs.add_cli_args = staticmethod(_add_cli_args)
    if not getattr(EngineArgs.from_cli_args, "_vllm_tova", False):
        EngineArgs.from_cli_args = classmethod(_from_cli_args)


@functools.wraps(_ORIGINAL_ADD)
def _add_cli_args(parser):
    parser = _ORIGINAL_ADD(parser)
    add_cli_args(parser)
    return parser


@functools.wraps(_ORIGINAL_FROM)
def _from_cli_args(cls, args: argparse.Namespace):
    engine_args = _ORIGINAL_FROM(cls, args)
    engine_args.additional_config = merge_flags(args, engine_args.additional_config)
    return engine_args


_add_cli_args._vllm_tova = True  # type: ignore[attr-defined]
_from_cli_args._vllm_tova = True  # type: ignore[attr-defined]
