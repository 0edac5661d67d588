"""From node profiles to node plans, and the global adapters a federation starts from."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from famflow.familial.lora import attach_lora, trainable_state
from famflow.federation.config import FederationConfig
from famflow.federation.contract import branch_keys, lora_settings
from famflow.strategies.familial_strategy import NodePlan

logger = logging.getLogger("famflow.server")


def node_plans(
    config: FederationConfig, profiles: dict[int, dict[str, Any]], global_rank: int | None = None
) -> dict[int, NodePlan]:
    """One plan per profiled node; fedit puts every node at the largest rank. Nodes joining a
    running federation get ``global_rank``, the rank of its adapters, as their largest."""
    ranks = {int(p["rank"]) for p in profiles.values()}
    if global_rank is not None:
        ranks = {min(rank, global_rank) for rank in ranks} | {global_rank}
    mixed_ranks = config.aggregation.mixed_ranks
    if not mixed_ranks and len(ranks) > 1:
        logger.info("%s needs one LoRA rank: every node trains rank %d", config.rule, max(ranks))
        ranks = {max(ranks)}
    plans = {}
    for node, profile in profiles.items():
        rank = int(profile["rank"]) if mixed_ranks else max(ranks)
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
            weights=str(profile.get("weights", "")),
            gradient_checkpointing=profile.get("gradient-checkpointing") is True,
        )
    return plans


def initial_global_state(config: FederationConfig, rank: int) -> dict[str, np.ndarray]:
    """Every exchanged key of the whole family at ``rank``, as a fresh branch starts it."""
    family = attach_lora(config.load_branch(), lora_settings(config, rank))
    state = trainable_state(family, exit_adapters=config.train_exit_adapters)
    with torch.no_grad():
        return {key: tensor.detach().float().numpy().copy() for key, tensor in state.items()}
