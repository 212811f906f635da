"""``vllm.v1.engine.core_client.EngineCoreOutputs`` (see ``patches/README.md``)."""

from __future__ import annotations

from vllm.v1.engine import core_client

from vllm_tova.metrics.stats import TovaEngineCoreOutputs
from vllm_tova.patches.wrap import replace_class

FIELDS = (
    "(engine_index=0, outputs=<factory>, scheduler_stats=None, timestamp=0.0, "
    "utility_output=None, finished_requests=None, wave_complete=None, start_wave=None)"
)


def apply() -> None:
    # MPClient.__init__ builds its decoder as MsgpackDecoder(EngineCoreOutputs), reading this
    # module global at call time; the subclass decodes the same bytes, TOVA stats included.
    replace_class(core_client, "EngineCoreOutputs", FIELDS, TovaEngineCoreOutputs)
