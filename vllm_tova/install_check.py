"""Fail early when vLLM would not load this plugin.

vLLM loads plugins only through the ``vllm.general_plugins`` entry point, in every process it
starts. A checkout that is importable (from the working directory or ``PYTHONPATH``) but not
pip-installed has no entry point: vLLM then never calls ``register``, ignores the ``kv_*``
entries of ``additional_config`` and serves stock attention with a full KV cache, with no
error. That happened to a benchmark run on a GPU host (2026-12-01: "TOVA" rows with
FlashAttention and 1,024 KV slots per sequence at K=512).
"""

from __future__ import annotations

from importlib.metadata import entry_points

PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "tova"
PLUGIN_TARGET = "vllm_tova:register"


def require_plugin_installed() -> None:
    """Raise unless vLLM will load ``vllm_tova:register`` in the processes it starts."""
    installed = [ep for ep in entry_points(group=PLUGIN_GROUP) if ep.value == PLUGIN_TARGET]
    if not installed:
        raise RuntimeError(
            "vllm-tova is importable but not installed as a vLLM plugin (no "
            f"'{PLUGIN_GROUP}' entry point '{PLUGIN_NAME} = {PLUGIN_TARGET}'), so vLLM would "
            "ignore kv_policy and run stock attention. Install it: pip install -e <checkout> "
            "(make venv does), or pip install vllm-tova; where pip cannot reach a package "
            "index, python -m benchmarks.host_install <a directory on PYTHONPATH>."
        )
    import vllm.envs

    allowed = vllm.envs.VLLM_PLUGINS  # parsed as vLLM's plugin loader parses it
    if allowed is not None and not {ep.name for ep in installed} & set(allowed):
        raise RuntimeError(
            f"VLLM_PLUGINS={','.join(allowed)!r} leaves out the '{PLUGIN_NAME}' plugin, so vLLM "
            f"would ignore kv_policy and run stock attention; add '{PLUGIN_NAME}' to VLLM_PLUGINS "
            "or unset it."
        )
