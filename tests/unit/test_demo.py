"""The demo's machine reading: bf16 only where the CPU computes it natively (no engine)."""

from __future__ import annotations

from pathlib import Path

from vllm_tova.dev.demo import cpu_info, native_dtype

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"
XEON = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_dtype_follows_the_cpu_flags(tmp_path: Path) -> None:
    (tmp_path / "epyc").write_text(EPYC)
    (tmp_path / "xeon").write_text(XEON)
    model, flags = cpu_info(str(tmp_path / "epyc"))
    assert (model, native_dtype(flags)) == ("AMD EPYC", "float32")
    model, flags = cpu_info(str(tmp_path / "xeon"))
    assert (model, native_dtype(flags)) == ("Intel Xeon", "bfloat16")
    assert native_dtype({"avx512f", "avx2"}) == "float32"  # AVX-512 without BF16: emulated
    assert cpu_info(str(tmp_path / "absent"))[1] == set()


def test_importing_the_demo_leaves_vllm_logging_alone() -> None:
    """The demo quiets vLLM when it runs; an import must not quiet the servers that later
    tests start in the same session, whose start-up log they read."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    probe = "import os, vllm_tova.dev.demo; print(os.environ.get('VLLM_LOGGING_LEVEL'))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
