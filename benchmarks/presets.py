"""Model presets for benchmarks: Llama-3-8B's shape with dummy weights, and a tiny twin for CI.

Throughput depends on the architecture, not on the weights, so a preset is a config.json
written to a cache folder and loaded with ``load_format="dummy"``: no download, no
tokenizer (prompts are token ids). Anything else passed as ``--model`` is used as a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vllm_tova.assets import cache_dir

_LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}

#: name -> config.json overrides on top of Llama-3-8B's.
PRESETS: dict[str, dict] = {
    "llama3-8b": {},
    # Same architecture, small enough for a 2-core CPU: 2 layers, 4 heads of 64, GQA 2.
    "tiny-llama": {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 4096,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}


@dataclass(frozen=True)
class ModelChoice:
    """What the engine loads: a path, whether its weights are dummies, the vocab for prompts."""

    path: str
    dummy: bool
    vocab_size: int
    name: str


def resolve_model(name_or_path: str) -> ModelChoice:
    """A preset name becomes a cached config folder; anything else is a checkpoint path."""
    if name_or_path in PRESETS:
        config = {**_LLAMA3_8B, **PRESETS[name_or_path]}
        folder = cache_dir() / "presets" / name_or_path
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "config.json"
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return ModelChoice(str(folder), True, config["vocab_size"], name_or_path)
    config = json.loads((Path(name_or_path) / "config.json").read_text())
    return ModelChoice(name_or_path, False, config["vocab_size"], Path(name_or_path).name)
