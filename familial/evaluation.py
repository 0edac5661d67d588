"""Per-exit evaluation on held-out blocks: loss, perplexity, next-token accuracy, and how often
each exit's greedy token agrees with the deepest evaluated exit's (teacher-forced)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from famflow.familial.errors import FamflowError
from famflow.familial.model import FamilialLM


@dataclass
class ExitMetrics:
    exit: int
    loss: float
    perplexity: float
    accuracy: float
    tokens: int
    # Share of positions whose argmax equals the deepest evaluated exit's (1.0 for that exit).
    agreement: float = 1.0


@torch.no_grad()
def evaluate(
    model: FamilialLM, blocks: torch.Tensor, exits: list[int] | None = None, batch_size: int = 8
) -> dict[int, ExitMetrics]:
    """Token-weighted metrics of every exit (default: all the branch holds), one trunk pass each."""
    if blocks.ndim != 2 or len(blocks) == 0:
        raise FamflowError(
            "No validation blocks: the partition is too small; use fewer partitions, a larger "
            "validation fraction or a shorter sequence length."
        )
    exits = exits or model.held_exits
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sums = dict.fromkeys(exits, 0.0)
    correct = dict.fromkeys(exits, 0)
    agreeing = dict.fromkeys(exits, 0)
    tokens = 0
    for start in range(0, len(blocks), batch_size):
        input_ids = blocks[start : start + batch_size].to(device)
        targets = input_ids[:, 1:].reshape(-1)
        logits = model(input_ids, exits=exits).logits
        top = logits[max(exits)][:, :-1].argmax(dim=-1).reshape(-1)
        for depth in exits:
            flat = logits[depth][:, :-1].reshape(-1, logits[depth].shape[-1])
            picks = flat.argmax(dim=-1)
            loss_sums[depth] += float(F.cross_entropy(flat, targets, reduction="sum"))
            correct[depth] += int((picks == targets).sum())
            agreeing[depth] += int((picks == top).sum())
        tokens += targets.numel()
    model.train(was_training)
    metrics = {}
    for depth in exits:
        loss = loss_sums[depth] / tokens
        perplexity = math.exp(loss) if loss < 700 else math.inf
        metrics[depth] = ExitMetrics(
            depth, loss, perplexity, correct[depth] / tokens, tokens, agreeing[depth] / tokens
        )
    return metrics


@torch.no_grad()
def continuation_agreement(
    model: FamilialLM, texts: list[torch.Tensor], prompt_lengths: list[int]
) -> dict[int, float]:
    """Per exit below the deepest: the share of the deepest exit's tokens in its own greedy
    continuations (``texts``, each after a prompt of ``prompt_lengths[i]`` tokens) that the
    exit predicts too, teacher-forced: the acceptance of one-token drafts."""
    exits = model.held_exits
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    agreeing = dict.fromkeys(exits[:-1], 0)
    positions = 0
    for text, start in zip(texts, prompt_lengths, strict=True):
        logits = model(text.reshape(1, -1).to(device), exits=exits).logits
        scored = slice(start - 1, len(text) - 1)
        top = logits[exits[-1]][0, scored].argmax(dim=-1)
        for depth in exits[:-1]:
            agreeing[depth] += int((logits[depth][0, scored].argmax(dim=-1) == top).sum())
        positions += len(text) - start
    model.train(was_training)
    return {depth: count / positions for depth, count in agreeing.items()} if positions else {}
