"""Training precision, by Lightning's names: what the weights are stored in, what the
forward computes in, and whether gradients need a scaler. Pure torch, no Ray; torch is
imported when used, so that the config (which takes the names) stays light for the CLI."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TRUE_32, BF16_MIXED, BF16_TRUE, FP16_MIXED = "32-true", "bf16-mixed", "bf16-true", "16-mixed"
PRECISIONS = (TRUE_32, BF16_MIXED, BF16_TRUE, FP16_MIXED)

_AUTOCAST = {BF16_MIXED: "bfloat16", FP16_MIXED: "float16"}


def weights_dtype(precision: str) -> "torch.dtype":
    """Mixed precision keeps float32 master weights (and so float32 optimizer state);
    bf16-true stores the weights themselves in bfloat16."""
    import torch

    return torch.bfloat16 if precision == BF16_TRUE else torch.float32


def autocast(precision: str, device: "torch.device") -> contextlib.AbstractContextManager:
    """The forward's compute dtype: matmuls in half precision under the mixed precisions."""
    import torch

    if precision in _AUTOCAST:
        return torch.autocast(device.type, dtype=getattr(torch, _AUTOCAST[precision]))
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: "torch.device") -> "torch.amp.GradScaler":
    """float16's narrow exponent underflows small gradients: 16-mixed scales the loss up
    and the gradients back down; every other precision gets a disabled (no-op) scaler."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=precision == FP16_MIXED)


def kernels(device: "torch.device | str") -> str:
    """Which of torch's kernel sets computes on ``device``: the instruction set torch picked
    on a CPU (``AVX2``, ``AVX512``, …), the model of a GPU. The same code and seed give other
    float sums on another one: the embedded base built with torch's AVX2 kernels and with
    its default ones are different weights."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return torch.backends.cpu.get_cpu_capability()
