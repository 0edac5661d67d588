"""What a ClientApp does with familial/: its profile, its branch and data (cached per process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context

from famflow.familial import privacy
from famflow.familial.codecs import decode, encode
from famflow.familial.data.block_cache import block_cache_file, cached_splits
from famflow.familial.data.config import DataConfig
from famflow.familial.data.splits import TokenSplits
from famflow.familial.errors import FamflowError
from famflow.familial.hardware import (
    GIB,
    detected_memory_gb,
    get_tier,
    parse_weights,
    resolve_device,
)
from famflow.familial.lora import attach_lora
from famflow.familial.model import FamilialLM
from famflow.familial.presets import ModelSpec, resolve_model
from famflow.familial.sizing import largest_fitting_branch
from famflow.familial.tokenizer import load_tokenizer
from famflow.familial.training import TrainConfig, TrainResult, train
from famflow.federation.config import FederationConfig
from famflow.federation.contract import (
    DP_EPSILON,
    DP_NOISE,
    codec_reference,
    exchanged,
    load_exchanged,
    lora_settings,
)

# Each ClientApp process keeps its branch and data between messages (simulation reuses them).
_BRANCHES: dict[tuple[Any, ...], FamilialLM] = {}
_DATA: dict[tuple[Any, ...], TokenSplits] = {}
# The exit adapters of each cached branch as the checkpoint built them (the codec reference,
# the same as the server's; see familial.codecs).
_REFERENCES: dict[int, dict[str, np.ndarray]] = {}


def node_profile(config: FederationConfig, node_config: dict[str, Any]) -> dict[str, Any]:
    """Tier, memory, device, and the deepest branch and LoRA rank this node can train."""
    spec = config.model_spec()
    device = resolve_device(str(node_config.get("device", config.device)))
    if "tier" in node_config:
        tier = get_tier(str(node_config["tier"]), spec.hardware_tiers())
    elif "partition-id" in node_config and "memory-gb" not in node_config:
        name = config.tier_of_partition(int(node_config["partition-id"]))
        tier = get_tier(name, spec.hardware_tiers())
    else:
        tier = None
    memory_gb = float(node_config.get("memory-gb", tier.memory_gb if tier else 0))
    memory_gb = memory_gb or detected_memory_gb(device)
    rank = int(node_config.get("rank", tier.rank if tier else 8))
    weights = parse_weights(node_config.get("weights"))
    if tier is not None:
        weights = weights or config.weights_by_tier().get(tier.name, tier.weights)
    choice = largest_fitting_branch(
        spec,
        memory_gb * GIB,
        rank,
        config.batch_size,
        config.seq_len,
        weights,
        config.checkpointing_of(tier.name if tier else None),
    )
    if choice is None:
        raise FamflowError(
            f"No branch of {spec.name} trains in {memory_gb:.2f} GiB at batch "
            f"{config.batch_size} x {config.seq_len}: give the node more memory-gb or "
            "lower batch-size / seq-len, allow quantized weights (weights=int8,nf4), or set "
            "gradient-checkpointing = auto."
        )
    return {
        "tier": tier.name if tier else "custom",
        "memory-gb": memory_gb,
        "device": device,
        "exit": choice.exit,
        "rank": rank,
        "weights": choice.weights,
        "gradient-checkpointing": choice.gradient_checkpointing,
    }


def get_branch(
    config: FederationConfig, exit_depth: int, rank: int, device: str, weights: str | None = None
) -> FamilialLM:
    """The node's branch with LoRA, its frozen layers in ``weights`` (default the preset's)."""
    exits = config.exits_of_branch(exit_depth)
    key = (config.model, config.family_adapters, exit_depth, rank, config.rule, config.seed)
    key += (device, str(exits), weights)
    if key not in _BRANCHES:
        branch = config.load_branch(exit_depth, exits=exits, weights=weights, device=device)
        branch = attach_lora(branch, lora_settings(config, rank))
        _BRANCHES[key] = branch.to(device)
        _REFERENCES[id(_BRANCHES[key])] = codec_reference(_numpy(exchanged(config, branch)))
    return _BRANCHES[key]


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {key: value.detach().float().cpu().numpy().copy() for key, value in state.items()}


def get_data(
    config: FederationConfig,
    partition_id: int,
    dataset: str | None = None,
    num_partitions: int | None = None,
) -> TokenSplits:
    """Partition ``partition_id`` of ``dataset`` (default the run's) cut into
    ``num_partitions`` (default one per node of the tier mix)."""
    if num_partitions is None:
        num_partitions = max(1, config.node_count())
    data = DataConfig(
        name=dataset or config.dataset,
        seq_len=config.seq_len,
        partitioner=config.partitioner,
        num_partitions=num_partitions,
        partition_by=config.partition_by or None,
        seed=config.seed,
        max_examples=config.max_examples or None,
    )
    key = (config.model, *data.to_dict().values(), partition_id)
    if key not in _DATA:
        spec: ModelSpec = resolve_model(config.model)
        max_length = int(spec.base_config().max_position_embeddings)
        tokenizer_source = f"{spec.name}:{spec.source}:{spec.path}"
        path = block_cache_file(data, partition_id, max_length, tokenizer_source)

        def prepare() -> TokenSplits:
            from famflow.familial.data.prepare import (
                prepare_data,  # imports datasets, flwr-datasets
            )

            return prepare_data(data, load_tokenizer(spec), partition_id, max_length)

        _DATA[key] = cached_splits(path, prepare)
    return _DATA[key]


def receive(
    config: FederationConfig, branch: FamilialLM, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Apply the server's slice to the branch; returns it decoded (the reply's reference)."""
    decoded = decode(arrays, config.codec, _REFERENCES.get(id(branch)))
    state = {key: torch.from_numpy(value) for key, value in decoded.items()}
    load_exchanged(config, branch, state)
    return decoded


def reply_arrays(
    config: FederationConfig, branch: FamilialLM, received: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The trained tensors, encoded as their change from what the node ``received``."""
    return encode(_numpy(exchanged(config, branch)), config.codec, received)


DP_STATE = "dp-accountant"


def dp_config(config: FederationConfig) -> privacy.DPConfig:
    return privacy.DPConfig(
        noise_multiplier=config.dp_noise_multiplier,
        target_epsilon=config.dp_target_epsilon,
        max_grad_norm=config.dp_max_grad_norm,
        delta=config.dp_delta,
    )


def dp_history(context: Context) -> privacy.History:
    """This node's DP accountant history: from ``Context.state`` (kept across rounds), else
    from the JSON file its node config names as ``dp-accountant-file`` (deployment)."""
    if DP_STATE in context.state:
        return privacy.history_from_config(dict(context.state[DP_STATE]))  # type: ignore[arg-type]
    path = context.node_config.get("dp-accountant-file")
    return privacy.load_history(Path(str(path)).expanduser()) if path else []


def store_dp_history(context: Context, history: privacy.History) -> None:
    context.state[DP_STATE] = ConfigRecord(privacy.history_to_config(history))  # type: ignore[arg-type]
    path = context.node_config.get("dp-accountant-file")
    if path:
        privacy.save_history(Path(str(path)).expanduser(), history)


def train_round(
    config: FederationConfig,
    branch: FamilialLM,
    blocks: torch.Tensor,
    settings: TrainConfig,
    context: Context,
) -> tuple[TrainResult, dict[str, float]]:
    """One round of local training, DP-SGD when ``config.dp`` (its cumulative epsilon kept in
    ``context``); returns the result and the DP metrics. Raises PrivacyBudgetError."""
    if not config.dp:
        return train(branch, blocks, settings), {}
    private = privacy.train_private(
        branch,
        blocks,
        settings,
        dp_config(config),
        dp_history(context),
        total_steps=config.num_server_rounds * settings.steps,
    )
    store_dp_history(context, private.history)
    return private.result, {DP_EPSILON: private.epsilon, DP_NOISE: private.noise_multiplier}
