"""Device and precision choice, as pure functions of what the machine offers."""
from __future__ import annotations

from typing import Literal

Device = Literal["cpu", "cuda", "mps"]
Precision = Literal["fp32", "fp16", "bf16"]


def choose_device(requested: str, *, cuda: bool, mps: bool) -> Device:
    """`auto` prefers MPS (the Mac agent), then CUDA, then CPU. An explicit request that the
    machine cannot honour is an error, not a silent fallback.

    >>> choose_device("auto", cuda=False, mps=True)
    'mps'
    """
    if requested == "auto":
        return "mps" if mps else "cuda" if cuda else "cpu"
    if requested == "cuda" and not cuda or requested == "mps" and not mps:
        raise ValueError(f"device {requested!r} was requested but is not available on this machine")
    return requested  # type: ignore[return-value]


def choose_precision(device: Device, requested: str, *, bf16_supported: bool, cpu_bf16_autocast: bool = False) -> Precision:
    """mps -> fp16, cuda -> bf16 where supported (else fp16), cpu -> fp32, or bf16 autocast when the
    profile asks for it (`cpu_bf16_autocast`) and the CPU has bf16 instructions. CPU never gets fp16,
    and bf16 there is autocast over fp32 weights (`weights_precision`), never bf16 weights.

    >>> choose_precision("cuda", "auto", bf16_supported=False)
    'fp16'
    >>> choose_precision("cpu", "auto", bf16_supported=True, cpu_bf16_autocast=True)
    'bf16'
    >>> choose_precision("cpu", "auto", bf16_supported=True)
    'fp32'
    """
    if requested == "auto":
        if device == "mps":
            return "fp16"
        if device == "cuda":
            return "bf16" if bf16_supported else "fp16"
        return "bf16" if cpu_bf16_autocast and bf16_supported else "fp32"
    if device == "cpu" and requested == "fp16":
        raise ValueError("precision 'fp16' is not supported on cpu; use fp32 (or bf16 on a CPU with bf16 instructions)")
    if requested == "bf16" and not bf16_supported:
        raise ValueError(f"bf16 was requested but this {device} does not support it")
    return requested  # type: ignore[return-value]


def weights_precision(device: Device, precision: Precision) -> Precision:
    """The dtype weights are loaded in: on CPU always fp32 (bf16 there is autocast only; bf16
    weights lose LoRA's small updates and once garbled greedy generation).

    >>> weights_precision("cpu", "bf16"), weights_precision("cuda", "bf16")
    ('fp32', 'bf16')
    """
    return "fp32" if device == "cpu" else precision
