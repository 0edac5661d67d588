"""The multi-exit loss computed a few hundred positions at a time, for gradient checkpointing.

A head's logits are the largest activations of a small model's training step (positions x
vocabulary, with their softmax and gradient). Here each chunk of positions runs every exit's
head, its cross-entropy and its distillation term under ``torch.utils.checkpoint``: only the
heads' inputs are kept, and backward recomputes one chunk's logits at a time. The result
equals ``training.multi_exit_loss`` up to summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.checkpoint import checkpoint

from famflow.familial.model import FamilialLM

# logits elements per chunk: 2**22 fp32 values (16 MiB), e.g. 85 positions of a 49k vocabulary
CHUNK_ELEMENTS = 2**22
IGNORE = -100


def chunk_rows(vocab_size: int) -> int:
    """Positions per chunk for a vocabulary of ``vocab_size``."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def chunked_multi_exit_loss(
    model: FamilialLM,
    head_inputs: dict[int, torch.Tensor],
    input_ids: torch.Tensor,
    weights: dict[int, float],
    distill_weight: float = 0.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``multi_exit_loss`` from what each exit's head reads (``FamilialLM(...,
    output_logits=False).hidden_states``) instead of from its logits."""
    exits = sorted(head_inputs)
    teacher = exits[-1]
    students = [d for d in exits if d != teacher] if distill_weight > 0 else []
    weighted = sorted(weights)
    # predict token t+1 at position t; a block's last position has no target
    targets = torch.full_like(input_ids, IGNORE)
    targets[:, :-1] = input_ids[:, 1:]
    targets = targets.reshape(-1)
    flat = [head_inputs[d].reshape(-1, head_inputs[d].shape[-1]) for d in exits]

    def chunk_sums(chunk_targets: torch.Tensor, *chunk_inputs: torch.Tensor) -> torch.Tensor:
        logits = {
            d: model.exit_head(d).project(h, model.lm_head).float()
            for d, h in zip(exits, chunk_inputs, strict=True)
        }
        sums = [
            F.cross_entropy(logits[d], chunk_targets, ignore_index=IGNORE, reduction="sum")
            for d in weighted
        ]
        if students:
            log_teacher = F.log_softmax(logits[teacher].detach() / temperature, dim=-1)
            for d in students:
                log_student = F.log_softmax(logits[d] / temperature, dim=-1)
                kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="sum")
                sums.append(kl * temperature**2)
        return torch.stack(sums)

    rows = chunk_rows(model.config.vocab_size)
    total_sums = sum(
        checkpoint(
            chunk_sums,
            targets[start : start + rows],
            *(h[start : start + rows] for h in flat),
            use_reentrant=False,
        )
        for start in range(0, targets.numel(), rows)
    )
    assert isinstance(total_sums, torch.Tensor)
    predicted = input_ids.shape[0] * (input_ids.shape[1] - 1)
    per_exit = {d: total_sums[i] / predicted for i, d in enumerate(weighted)}
    loss = sum(weights[d] * per_exit[d] for d in weighted)
    if students:
        loss = loss + distill_weight * total_sums[len(weighted) :].sum() / targets.numel()
    return loss, per_exit  # type: ignore[return-value]
