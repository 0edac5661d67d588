"""The exchange contract a node and the server share.

- Which keys a branch exchanges: its LoRA factors and exit adapters under canonical names
  (``trunk.7.self_attn.q_proj.A``); no A where the rule freezes it from the shared seed.
- The LoRA settings a node trains at a given rank.
- The codec reference: the exit adapters as a fresh branch builds them, which both sides
  subtract before encoding (``famflow.familial.codecs``).
- The names of the metrics a reply carries (defined beside the records the strategy reads,
  ``famflow.strategies.records``, and exported here).
"""

from __future__ import annotations

import numpy as np
import torch

from famflow.familial.lora import LoraSettings, attach_lora, load_trainable_state, trainable_state
from famflow.familial.model import FamilialLM
from famflow.federation.config import FederationConfig
from famflow.strategies.records import (
    ACCURACY_EXIT,
    CLIENT_SECONDS,
    DP_EPSILON,
    DP_NOISE,
    LOAD_SECONDS,
    LOCAL_STEPS,
    LOSS_EXIT,
    NUM_EXAMPLES,
    NUM_TOKENS,
    STARTUP_SECONDS,
    TOKENS,
    TRAIN_SECONDS,
    exit_metric,
)
from famflow.strategies.rules.base import is_lora_key

__all__ = [
    "ACCURACY_EXIT",
    "CLIENT_SECONDS",
    "DP_EPSILON",
    "DP_NOISE",
    "LOAD_SECONDS",
    "LOCAL_STEPS",
    "LOSS_EXIT",
    "NUM_EXAMPLES",
    "NUM_TOKENS",
    "STARTUP_SECONDS",
    "TOKENS",
    "TRAIN_SECONDS",
    "branch_keys",
    "codec_reference",
    "exchanged",
    "exit_metric",
    "load_exchanged",
    "lora_settings",
]


def lora_settings(config: FederationConfig, rank: int) -> LoraSettings:
    """A node's LoRA at ``rank``: one scale for every rank, A frozen where the rule says."""
    return LoraSettings(
        rank=rank,
        alpha=config.lora_alpha_ratio * rank,
        freeze_a=not config.aggregation.exchanges_a,
        seed=config.seed,
    )


def exchanged(config: FederationConfig, branch: FamilialLM) -> dict[str, torch.Tensor]:
    """The tensors this branch sends and receives."""
    return trainable_state(
        branch,
        exit_adapters=config.train_exit_adapters,
        lora_a=config.aggregation.exchanges_a,
    )


def load_exchanged(
    config: FederationConfig, branch: FamilialLM, state: dict[str, torch.Tensor]
) -> None:
    """Load exactly the exchanged keys into ``branch`` (missing or extra keys are refused)."""
    load_trainable_state(
        branch,
        state,
        exit_adapters=config.train_exit_adapters,
        lora_a=config.aggregation.exchanges_a,
    )


def branch_keys(config: FederationConfig, exit_depth: int, rank: int) -> tuple[str, ...]:
    """The keys a branch exchanges, read from its modules on the meta device (no weights)."""
    meta = config.meta_branch(exit_depth, exits=config.exits_of_branch(exit_depth))
    return tuple(sorted(exchanged(config, attach_lora(meta, lora_settings(config, rank)))))


def codec_reference(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense keys (exit adapters) of a fresh state: every node and the server build the same."""
    return {key: value.copy() for key, value in state.items() if not is_lora_key(key)}
