"""The modules that turn a trunk hidden state into an exit's logits.

An exit runs ``[own layer] -> norm -> [translator] -> head``. The translator is linear and sits
after the norm, so it folds into the head (``W @ T``) and the exit is a standard decoder: its own
layer is the last decoder layer, its norm the final norm (``familial.standalone``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from famflow.familial.config import ExitAdapterConfig
from famflow.familial.errors import FamflowError


class FullTranslator(nn.Module):
    """A linear map h -> T h, identity-initialised (a tuned lens on the normed hidden state)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.reset_identity()

    def reset_identity(self) -> None:
        with torch.no_grad():
            nn.init.eye_(self.proj.weight)

    def matrix(self) -> torch.Tensor:
        """``T``, so that ``forward(h) == h @ T.T``."""
        return self.proj.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


class LowRankTranslator(nn.Module):
    """h -> h + up(down(h)): identity at initialisation because ``up`` starts at zero."""

    def __init__(self, hidden_size: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)
        self.reset_identity()

    def reset_identity(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.down.weight, std=self.down.in_features**-0.5)
            nn.init.zeros_(self.up.weight)

    def matrix(self) -> torch.Tensor:
        """``T = I + U V``, so that ``forward(h) == h @ T.T``."""
        eye = torch.eye(self.up.out_features, dtype=self.up.weight.dtype)
        return eye.to(self.up.weight.device) + self.up.weight @ self.down.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.down(hidden))


Translator = FullTranslator | LowRankTranslator
# Translators with a bias ran before the norm (famflow before standalone exports): their
# tensors mean a different model, so they are refused rather than loaded without the bias.
PRE_NORM_TRANSLATOR_SUFFIXES = ("translator.proj.bias", "translator.up.bias")


def refuse_pre_norm_translators(names: Iterable[str], where: object) -> None:
    if any(name.endswith(PRE_NORM_TRANSLATOR_SUFFIXES) for name in names):
        raise FamflowError(
            f"{where} holds exit translators of an earlier famflow, which ran them before the "
            "norm: train or federate again with this version."
        )


def make_translator(adapters: ExitAdapterConfig, hidden_size: int) -> Translator | None:
    if adapters.translator == "full":
        return FullTranslator(hidden_size)
    if adapters.translator == "low-rank":
        return LowRankTranslator(hidden_size, adapters.translator_rank)
    return None


class ExitHead(nn.Module):
    """What runs after the trunk for one exit: [own layer] -> norm -> [translator] -> head.

    Parts left as ``None`` are taken from the trunk (the shared final norm and lm_head).
    """

    def __init__(
        self,
        layer: nn.Module | None,
        translator: Translator | None,
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

    def head_input(self, hidden: torch.Tensor, shared_norm: nn.Module | None) -> torch.Tensor:
        """What the head reads: the exit's (own layer's) output, normed and translated."""
        norm = self.norm if self.norm is not None else shared_norm
        assert norm is not None, "an exit without its own norm needs the shared final norm"
        hidden = norm(hidden)
        return self.translator(hidden) if self.translator is not None else hidden

    def project(self, head_input: torch.Tensor, shared_head: nn.Module | None) -> torch.Tensor:
        """Logits from what the head reads (``head_input``)."""
        lm_head = self.lm_head if self.lm_head is not None else shared_head
        assert lm_head is not None, "an exit without its own head needs the shared lm_head"
        return lm_head(head_input)

    def logits(
        self, hidden: torch.Tensor, shared_norm: nn.Module | None, shared_head: nn.Module | None
    ) -> torch.Tensor:
        return self.project(self.head_input(hidden, shared_norm), shared_head)
