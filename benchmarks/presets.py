"""Model presets for benchmarks: Llama-3-8B's and LLaMA-2-7B's shapes with dummy weights, and a
tiny twin for CI.

Throughput depends on the architecture, not on the weights, so a preset is a config.json
written to a cache folder and loaded with ``load_format="dummy"``: no download, no
tokenizer (prompts are token ids). Anything else passed as ``--model`` is used as a path.

vLLM's own ``vllm bench`` tools make text prompts, so they need a tokenizer:
``python -m benchmarks.presets llama3-8b --tokenizer`` copies the project's SmolLM2 tokenizer
(49,152 tokens) into the preset's folder and prints the folder, ready for
``vllm bench throughput --model FOLDER --load-format dummy ...``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from vllm_tova.dev.assets import cache_dir

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
    # Llama-3-8B says 8192; the long-prompt workload (8,192 + 512) needs more rotary positions
    # (Llama-3.1-8B, the same architecture, has 131,072).
    "max_position_embeddings": 16384,
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
    # The paper's model shape: LLaMA-2-7B, multi-head attention (32 KV heads, not 8), so each
    # token's K/V is 4x Llama-3-8B's and stock vLLM fits 4x fewer sequences in the same pool:
    # where the paper's 4.8x came from. Rotary positions to 16,384 for the long-prompt workload.
    "llama2-7b": {
        "intermediate_size": 11008,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    # Llama-3-8B's layers (heads, widths) but 8 of them and a 32k vocabulary: small enough to
    # write as a float32 checkpoint (8 GB) for the tensor-parallel agreement check.
    "llama3-8b-8layers": {"num_hidden_layers": 8, "vocab_size": 32768, "bos_token_id": 1, "eos_token_id": 2},
}

# tiny-llama with SmolLM2's vocabulary, so SmolLM2's tokenizer fits it (vllm bench on CPU).
PRESETS["tiny-llama-smol"] = {**PRESETS["tiny-llama"], "vocab_size": 49152}


@dataclass(frozen=True)
class ModelChoice:
    """What the engine loads: a path, whether its weights are dummies, the vocab for prompts."""

    path: str
    dummy: bool
    vocab_size: int
    name: str

    def load_kwargs(self) -> dict:
        """LLM(...) arguments to load it: dummy weights and no tokenizer for a preset."""
        return dict(load_format="dummy", skip_tokenizer_init=True) if self.dummy else {}


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


#: Tokenizer files copied from the SmolLM2 checkpoint by ``with_tokenizer``.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def with_tokenizer(name: str) -> Path:
    """The preset's folder with SmolLM2's tokenizer beside its config, for tools that
    tokenize text. Refused where the preset's vocabulary is smaller than the tokenizer's
    (token ids past the embedding table would crash the engine)."""
    import shutil

    from vllm_tova.dev.assets import smollm2_path

    choice = resolve_model(name)
    source = smollm2_path()
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    if choice.vocab_size < vocab:
        fits = ", ".join(n for n in PRESETS if {**_LLAMA3_8B, **PRESETS[n]}["vocab_size"] >= vocab)
        raise SystemExit(
            f"preset {name!r} has a {choice.vocab_size:,}-token vocabulary, smaller than the SmolLM2 "
            f"tokenizer's {vocab:,}; presets that fit it: {fits} (or pass vLLM a tokenizer of your own)"
        )
    folder = Path(choice.path)
    for file in TOKENIZER_FILES:
        if (source / file).exists():
            shutil.copyfile(source / file, folder / file)
    return folder


def random_checkpoint(name: str, dtype: str = "float32", seed: int = 0) -> ModelChoice:
    """A preset written as a real checkpoint with seeded random weights (normal, std 0.02;
    norms 1, as Llama is initialised), cached.

    vLLM's dummy weights cannot compare tensor-parallel runs: each rank draws its shard from
    the same per-parameter seed, so a TP=2 model is not the TP=1 model split in two. A
    checkpoint is the same model whatever the sharding.
    """
    import torch
    from safetensors.torch import save_file

    choice = resolve_model(name)
    folder = cache_dir() / "checkpoints" / f"{name}-{dtype}-seed{seed}"
    if (folder / "model.safetensors").exists():
        return replace(choice, path=str(folder), dummy=False)
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(choice.path) / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head, heads, kv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden), "model.norm.weight": (hidden,)}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes.update({
            f"{layer}.self_attn.q_proj.weight": (heads * head, hidden),
            f"{layer}.self_attn.k_proj.weight": (kv * head, hidden),
            f"{layer}.self_attn.v_proj.weight": (kv * head, hidden),
            f"{layer}.self_attn.o_proj.weight": (hidden, heads * head),
            f"{layer}.mlp.gate_proj.weight": (inter, hidden),
            f"{layer}.mlp.up_proj.weight": (inter, hidden),
            f"{layer}.mlp.down_proj.weight": (hidden, inter),
            f"{layer}.input_layernorm.weight": (hidden,),
            f"{layer}.post_attention_layernorm.weight": (hidden,),
        })  # fmt: skip
    shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        if len(shape) == 1:
            tensors[key] = torch.ones(shape, dtype=getattr(torch, dtype))
        else:
            weight = torch.randn(shape, generator=generator, device=device) * 0.02
            tensors[key] = weight.to(getattr(torch, dtype)).cpu()
    save_file(tensors, str(folder / "model.safetensors"))
    config["torch_dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return replace(choice, path=str(folder), dummy=False)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Print a preset's folder (written on first use).")
    parser.add_argument("name", choices=list(PRESETS))
    parser.add_argument("--tokenizer", action="store_true", help="also copy SmolLM2's tokenizer into it")
    args = parser.parse_args()
    print(with_tokenizer(args.name) if args.tokenizer else resolve_model(args.name).path)
