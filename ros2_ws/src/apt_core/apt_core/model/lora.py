"""Minimal LoRA for nn.Linear (no peft dependency): y = W x + b + (alpha / r) * B A x, B zero-init.

The wrapped layer keeps the base `weight`/`bias` parameter names, so state dicts of a plain and a
LoRA-wrapped backbone share keys (stage 1 -> stage 2 expansion copies them directly); only the
`lora_A`/`lora_B` keys are added.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.Parameter(
            torch.empty(rank, base.in_features, dtype=base.weight.dtype, device=base.weight.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        # zero B: the wrapped layer starts exactly equal to the base layer
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=base.weight.dtype, device=base.weight.device)
        )
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            F.linear(x, self.weight, self.bias)
            + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        )


def inject_lora(root: nn.Module, targets: tuple[str, ...], rank: int, alpha: float, scope: str = "") -> int:
    """Wrap every nn.Linear whose last name part is in `targets` (and full name contains `scope`)."""
    todo = [
        (name, mod)
        for name, mod in root.named_modules()
        if isinstance(mod, nn.Linear)
        and not isinstance(mod, LoRALinear)
        and name.rsplit(".", 1)[-1] in targets
        and scope in name
    ]
    for name, mod in todo:
        parent = root.get_submodule(name.rsplit(".", 1)[0]) if "." in name else root
        setattr(parent, name.rsplit(".", 1)[-1], LoRALinear(mod, rank, alpha))
    if not todo:
        raise ValueError(f"LoRA found no nn.Linear named {targets} (scope {scope!r}) to wrap")
    return len(todo)
