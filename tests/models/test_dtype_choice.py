"""The CPU dtype is chosen by measuring bf16 against fp32 matmuls, not by the name of an instruction set."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from services.models import loading


def test_pick_dtype_follows_the_measurement(monkeypatch):
    for speedup, expected in ((3.0, torch.bfloat16), (1.25, torch.bfloat16), (1.1, torch.float32),
                              (0.05, torch.float32)):
        loading.cpu_prefers_bf16.cache_clear()
        monkeypatch.setattr(loading, "measure_cpu_bf16_speedup", lambda s=speedup: s)
        assert loading.pick_dtype("cpu") == expected, speedup
    loading.cpu_prefers_bf16.cache_clear()
    # An explicit dtype is taken as given, whatever the measurement says.
    assert loading.pick_dtype("cpu", "fp32") == torch.float32
    assert loading.pick_dtype("cpu", "bf16") == torch.bfloat16


def test_the_measurement_runs_once_per_process(monkeypatch):
    calls = []
    loading.cpu_prefers_bf16.cache_clear()
    monkeypatch.setattr(loading, "measure_cpu_bf16_speedup", lambda: calls.append(1) or 2.0)
    for _ in range(5):
        loading.pick_dtype("cpu")
    assert calls == [1]
    loading.cpu_prefers_bf16.cache_clear()


def test_the_real_measurement_is_a_positive_ratio():
    speedup = loading.measure_cpu_bf16_speedup(reps=2)
    assert 0.001 < speedup < 1000


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="ONEDNN_MAX_CPU_ISA caps x86 ISAs")
def test_with_onednn_capped_at_avx2_bf16_is_emulated_and_fp32_is_chosen():
    """ONEDNN_MAX_CPU_ISA=AVX2 turns off AMX and AVX-512 BF16: bf16 matmuls are emulated, much slower."""
    code = ("from services.models import loading; import torch; "
            "print(loading.pick_dtype('cpu') == torch.float32, loading.measure_cpu_bf16_speedup())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    chose_fp32, speedup = proc.stdout.split()
    assert chose_fp32 == "True" and float(speedup) < loading.BF16_MIN_SPEEDUP, proc.stdout
