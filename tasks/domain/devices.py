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


def choose_precision(device: Device, requested: str, *, bf16_supported: bool) -> Precision:
    """mps -> fp16, cuda -> bf16 where supported (else fp16), cpu -> fp32. CPU never gets half
    precision: TRL's bf16 default fails there ("doesn't support bf16/gpu").

    >>> choose_precision("cuda", "auto", bf16_supported=False)
    'fp16'
    """
    if requested == "auto":
        if device == "mps":
            return "fp16"
        if device == "cuda":
            return "bf16" if bf16_supported else "fp16"
        return "fp32"
    if device == "cpu" and requested != "fp32":
        raise ValueError(f"precision {requested!r} is not supported on cpu; use fp32")
    if requested == "bf16" and not bf16_supported:
        raise ValueError("bf16 was requested but this device does not support it")
    return requested  # type: ignore[return-value]
