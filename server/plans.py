"""From node profiles to node plans, and the global adapters a federation starts from."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from clients.task import lora_settings
from familial.federation_config import FederationConfig
from familial.loading import build_meta_branch, load_branch
from familial.lora import attach_lora, trainable_state
from strategies.familial_strategy import NodePlan
from strategies.rules.base import is_lora_key

logger = logging.getLogger("famflow.server")
HETEROGENEOUS_RULES = ("ffa", "flexlora", "hetlora")


def branch_keys(config: FederationConfig, exit_depth: int, rank: int) -> tuple[str, ...]:
    """The keys a branch exchanges, read from its modules on the meta device (no weights)."""
    meta = build_meta_branch(config.model, exit_depth, exits=config.exits_of_branch(exit_depth))
    branch = attach_lora(meta, lora_settings(config, rank))
    state = trainable_state(
        branch, exit_adapters=config.train_exit_adapters, lora_a=config.rule != "ffa"
    )
    return tuple(sorted(state))


def node_plans(
    config: FederationConfig, profiles: dict[int, dict[str, Any]], global_rank: int | None = None
) -> dict[int, NodePlan]:
    """One plan per profiled node; fedit puts every node at the largest rank. Nodes joining a
    running federation get ``global_rank``, the rank of its adapters, as their largest."""
    ranks = {int(p["rank"]) for p in profiles.values()}
    if global_rank is not None:
        ranks = {min(rank, global_rank) for rank in ranks} | {global_rank}
    if config.rule not in HETEROGENEOUS_RULES and len(ranks) > 1:
        logger.info("%s needs one LoRA rank: every node trains rank %d", config.rule, max(ranks))
        ranks = {max(ranks)}
    plans = {}
    for node, profile in profiles.items():
        rank = int(profile["rank"]) if config.rule in HETEROGENEOUS_RULES else max(ranks)
        rank = min(rank, max(ranks))
        exit_depth, tier = int(profile["exit"]), str(profile["tier"])
        plans[node] = NodePlan(
            node_id=node,
            tier=tier,
            exit=exit_depth,
            rank=rank,
            scale=config.lora_alpha_ratio,
            device=str(profile["device"]),
            keys=branch_keys(config, exit_depth, rank),
            local_steps=config.local_steps_of(tier),
        )
    return plans


def initial_global_state(config: FederationConfig, rank: int) -> dict[str, np.ndarray]:
    """Every exchanged key of the whole family at ``rank``, as a fresh branch starts it."""
    family = attach_lora(load_branch(config.model), lora_settings(config, rank))
    state = trainable_state(family, exit_adapters=config.train_exit_adapters)
    with torch.no_grad():
        return {key: tensor.detach().float().numpy().copy() for key, tensor in state.items()}


def codec_reference(fresh_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense keys (exit adapters) of a fresh family's state: every node builds the same."""
    return {key: value.copy() for key, value in fresh_state.items() if not is_lora_key(key)}
