"""What this CPU multiplies fast. bf16 matrix products pay off only with native bf16 units (AMX or AVX512-BF16):
on an AVX2-only CPU torch runs them several times slower than float32 (13 against 60 GFLOP/s measured on a
2-core AMD EPYC), so fast paths that would use bf16 fall back to float32 there.

Large float32 products (exact search, distances to a subset, the kNN cells) go through numpy's BLAS (OpenBLAS):
on that AMD CPU it ran 130-138 GFLOP/s against 80-91 for torch's MKL on the same blocks, and on the earlier
Intel CPU with AMX both ran 170-210; torch keeps the top-k and maxima (multi-threaded)."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16), from /proc/cpuinfo (False elsewhere)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def auto_dtype(device: str) -> str:
    """What dtype="auto" means for model passes: bfloat16 on a GPU or on a CPU with native bf16, float32 elsewhere
    (on an AVX2-only CPU MiniLM in bf16 embedded 6 rows/s against 36 in float32)."""
    return "bfloat16" if device.startswith("cuda") or native_bf16() else "float32"
