"""The modules that turn a trunk hidden state into an exit's logits."""

from __future__ import annotations

import torch
from torch import nn

from famflow.familial.config import ExitAdapterConfig


class FullTranslator(nn.Module):
    """An affine map h -> W h + b, identity-initialised (a tuned lens)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)
        self.reset_identity()

    def reset_identity(self) -> None:
        with torch.no_grad():
            nn.init.eye_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


class LowRankTranslator(nn.Module):
    """h -> h + up(down(h)): identity at initialisation because ``up`` starts at zero."""

    def __init__(self, hidden_size: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=True)
        self.reset_identity()

    def reset_identity(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.down.weight, std=self.down.in_features**-0.5)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.down(hidden))


def make_translator(adapters: ExitAdapterConfig, hidden_size: int) -> nn.Module | None:
    if adapters.translator == "full":
        return FullTranslator(hidden_size)
    if adapters.translator == "low-rank":
        return LowRankTranslator(hidden_size, adapters.translator_rank)
    return None


class ExitHead(nn.Module):
    """What runs after the trunk for one exit: [own layer] -> [translator] -> norm -> head.

    Parts left as ``None`` are taken from the trunk (the shared final norm and lm_head).
    """

    def __init__(
        self,
        layer: nn.Module | None,
        translator: nn.Module | None,
        norm: nn.Module | None,
        lm_head: nn.Linear | None,
        layer_type: str = "full_attention",
    ) -> None:
        super().__init__()
        self.layer = layer
        self.layer_type = layer_type
        self.translator = translator
        self.norm = norm
        self.lm_head = lm_head
