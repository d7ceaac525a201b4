"""dtype="auto": bf16 only where it is fast (a GPU, or a CPU with native bf16 units), float32 elsewhere."""

from __future__ import annotations

import pytest

import index.cpu
from curate.signals.lm import resolve_dtype as lm_dtype
from index.embed import resolve_dtype as embed_dtype


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_follows_the_cpu_and_explicit_dtypes_pass_through(native, monkeypatch):
    monkeypatch.setattr(index.cpu, "native_bf16", lambda: native)
    want = "bfloat16" if native else "float32"
    assert index.cpu.auto_dtype("cpu") == want
    assert index.cpu.auto_dtype("cuda:0") == "bfloat16"
    assert lm_dtype("auto", "cpu") == lm_dtype(None, "cpu") == want
    assert embed_dtype("auto", "cpu") == want
    assert embed_dtype("float32", "cpu") == "float32" and lm_dtype("bf16", "cpu") == "bfloat16"


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    monkeypatch.setattr(index.cpu, "Path", lambda _: fake)
    for flags, want in [("fpu avx2 avx512f", False), ("fpu avx512_bf16 avx512f", True), ("x amx_bf16 y", True)]:
        fake.write_text(f"flags\t\t: {flags}\n")
        index.cpu.native_bf16.cache_clear()
        assert index.cpu.native_bf16() is want
    fake.unlink()
    index.cpu.native_bf16.cache_clear()
    assert index.cpu.native_bf16() is False  # unreadable: no claim of bf16 units
    monkeypatch.undo()
    index.cpu.native_bf16.cache_clear()
