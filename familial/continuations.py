"""An exit's own greedy continuations of many prompts, decoded in left-padded batches.

Self-distillation and the drafts' acceptance are measured on what the top exit itself
generates, so these continuations are made once, batched, and cached on disk
(``continuation_cache``). Batching pads prompts on the left: a row's positions count only its
own tokens and its padding is masked, so each row decodes as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache

from famflow.familial.errors import FamflowError
from famflow.familial.model import FamilialLM


def left_padded(prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[rows, longest]`` (padding 0 on the left) and the attention mask."""
    longest = max(len(prompt) for prompt in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, longest - len(prompt) :] = torch.as_tensor(list(prompt))
            mask[row, longest - len(prompt) :] = 1
    return ids, mask


def padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Each row's positions counting only its own tokens (padding sits at 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def _decode_batch(
    model: FamilialLM,
    prompts: Sequence[Sequence[int]],
    exit_depth: int,
    max_new_tokens: int,
    eos_token_id: int | None,
) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    ids, mask = left_padded(prompts)
    ids, mask = ids.to(device), mask.to(device)
    positions = padded_positions(mask)
    cache = DynamicCache()
    step = ids
    new: list[torch.Tensor] = []
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        output = model(
            step,
            exits=[exit_depth],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        token = output.logits[exit_depth][:, -1].argmax(dim=-1)
        new.append(token)
        if eos_token_id is not None:
            done |= token == eos_token_id
            if bool(done.all()):
                break
        step = token.unsqueeze(-1)
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(step)], dim=-1)
    generated = torch.stack(new, dim=-1).cpu()
    rows = []
    for prompt, tokens in zip(prompts, generated, strict=True):
        if eos_token_id is not None and bool((tokens == eos_token_id).any()):
            tokens = tokens[: int((tokens == eos_token_id).nonzero()[0]) + 1]
        rows.append(torch.cat([torch.as_tensor(list(prompt), dtype=torch.long), tokens]))
    return rows


def greedy_continuations(
    model: FamilialLM,
    prompts: Sequence[Sequence[int]],
    exit_depth: int,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """Each prompt followed by exit ``exit_depth``'s greedy continuation, in the prompts' order.

    A continuation stops after ``eos_token_id`` (kept) or ``max_new_tokens``. Prompts of
    similar length share a batch, so little is padded.
    """
    if any(len(prompt) == 0 for prompt in prompts):
        raise FamflowError("A prompt is empty: give every prompt at least one token.")
    if max_new_tokens < 1 or batch_size < 1:
        raise FamflowError("max_new_tokens and batch_size must be at least 1.")
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows: list[torch.Tensor | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        decoded = _decode_batch(
            model, [prompts[i] for i in chosen], exit_depth, max_new_tokens, eos_token_id
        )
        for index, row in zip(chosen, decoded, strict=True):
            rows[index] = row
    return [row for row in rows if row is not None]
