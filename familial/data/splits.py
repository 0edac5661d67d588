"""One client's token blocks (no heavy imports: a cached partition loads without `datasets`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenSplits:
    """Token blocks, ``LongTensor [n, seq_len]``; a block is one next-token-prediction row."""

    train: torch.Tensor
    validation: torch.Tensor
