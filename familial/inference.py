"""Generation from one exit of a family, with a KV cache of that exit's own layers."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from famflow.familial.model import FamilialLM


@torch.no_grad()
def generate(
    model: FamilialLM,
    input_ids: torch.Tensor,
    exit_depth: int,
    max_new_tokens: int = 32,
    eos_token_id: int | None = None,
) -> torch.Tensor:
    """Greedy decoding through ``exit_depth``; one cache per call, never shared between exits."""
    cache = DynamicCache()
    tokens = input_ids
    step_input = input_ids
    for _ in range(max_new_tokens):
        output = model(step_input, exits=[exit_depth], past_key_values=cache, use_cache=True)
        next_token = output.logits[exit_depth][:, -1].argmax(dim=-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=-1)
        if eos_token_id is not None and bool((next_token == eos_token_id).all()):
            break
        step_input = next_token
    return tokens
