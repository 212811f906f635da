"""Patch 5: ``vllm.v1.engine.core_client.EngineCoreOutputs`` (see the index in ``__init__``)."""

from __future__ import annotations

from vllm.v1.engine import core_client

from vllm_tova.metrics import TovaEngineCoreOutputs


def apply() -> None:
    # MPClient.__init__ builds its decoder as MsgpackDecoder(EngineCoreOutputs), reading this
    # module global at call time; the subclass decodes the same bytes, TOVA stats included.
    core_client.EngineCoreOutputs = TovaEngineCoreOutputs
