"""A correct float32 -> float8e4nv conversion for Triton's interpreter, so FP8 kernels can be
tested on a CPU.

Triton 3.6's interpreter converts float32 to e4m3 with its own bit arithmetic, which drops
the carry when rounding overflows the mantissa (124.7 becomes 64, not 128), flushes
e4m3's subnormals to zero and does not saturate (1,000 becomes 256). A GPU converts with
one instruction (``cvt.rn.satfinite.e4m3x2.f32``: round to nearest even, saturating). This
replaces only that conversion in the interpreter, by torch's (also round to nearest even;
saturated first as the GPU does), so the kernels' own code runs unchanged. Conversions
from e4m3 (exact there, apart from NaN codes the kernels never store) and every other type
keep the interpreter's.
"""

from __future__ import annotations

import numpy as np
import torch


def correct_fp8_conversion() -> None:
    """Install the conversion (idempotent); a no-op unless Triton runs interpreted."""
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._convert_float
    if getattr(original, "fp8_corrected", False):
        return
    e4m3_max = float(torch.finfo(torch.float8_e4m3fn).max)

    def convert(input, input_dtype, output_dtype, rounding_mode):
        if output_dtype == tl.float8e4nv and input_dtype == tl.float32 and rounding_mode in (
            None,
            interpreter._ir.ROUNDING_MODE.RTNE,
        ):
            values = torch.from_numpy(np.ascontiguousarray(input).view(np.float32).copy())
            stored = values.clamp(-e4m3_max, e4m3_max).to(torch.float8_e4m3fn)
            return stored.view(torch.uint8).numpy().reshape(input.shape)
        return original(input, input_dtype, output_dtype, rounding_mode)

    convert.fp8_corrected = True
    interpreter._convert_float = convert
