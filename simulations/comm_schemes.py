"""Per-round bytes of famflow and its baselines, per tier and in total, for a preset and tier mix.

Schemes (per client and round, the same bytes go down and come back up):

- ``fedavg-gradient``: every client holds the dense model and sends its fp32 gradient;
- ``fedavg-weights``: every client sends its branch's weights at the model dtype;
- ``lora-dense``: homogeneous LoRA (A and B) on the dense model at the mix's largest rank,
  FlowerTune / OpenFedLLM style, under each codec;
- ``famflow``: each client's branch-only LoRA (plus exit adapters when trained; with
  ``own_exit``, only its own exit's path, ``branch-exits = own``) under each rule and codec;
  fedit and ffa put every node at the largest rank, flexlora and hetlora keep each tier's
  rank (``server.plans.node_plans``); ffa sends no A.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from famflow.familial.errors import FamflowError
from famflow.familial.hardware import GIB, Tier, load_tiers, tiers_file
from famflow.familial.presets import ModelSpec
from famflow.familial.sizing import branch_size, largest_fitting_branch
from famflow.federation.config import FederationConfig
from famflow.simulations.comm_wire import FamilyShapes, Wire, message_bytes
from famflow.strategies.rules import RULES

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
TOTAL = "total"


@dataclass(frozen=True)
class TierNodes:
    """The clients of one tier in the mix: the branch they hold and their tier's LoRA rank."""

    tier: str
    exit: int
    label: str
    rank: int
    clients: int
    weights: str = "fp32"  # the precision of the frozen layers (familial.weights)


@dataclass
class CommRow:
    """Bytes of one scheme for one tier (or the ``total`` of the mix) in one round."""

    scheme: str
    rule: str
    codec: str
    tier: str
    exit: int | None
    rank: int | None
    clients: int
    up_per_client: int | None
    down_per_client: int | None
    framing_per_client: int | None
    up_per_round: int
    down_per_round: int
    full_gradient_ratio: float  # fedavg-gradient uplink / this uplink (per client; total: round)


def default_tier_mix(tiers: dict[str, Tier]) -> str:
    """Two nodes of every tier in the tiers file (the demo's device:2,edge:2,cloud:2)."""
    return ",".join(f"{name}:2" for name in tiers)


def tier_nodes(
    spec: ModelSpec,
    tier_mix: str | None = None,
    tiers_path: Path | None = None,
    batch_size: int = 4,
    seq_len: int = 64,
) -> list[TierNodes]:
    """Each tier of the mix with the deepest branch its memory trains (as a node profiles)."""
    tiers_path = tiers_path or tiers_file(spec.tiers)
    tiers = load_tiers(tiers_path)
    tier_mix = tier_mix or default_tier_mix(tiers)
    counts = FederationConfig(tier_mix=tier_mix).tier_counts()
    unknown = [name for name, _ in counts if name not in tiers]
    if unknown:
        raise FamflowError(
            f"tier-mix {tier_mix!r} names unknown tier(s) {unknown}: use {', '.join(tiers)} "
            "or pass --tiers FILE."
        )
    merged: dict[str, int] = {}
    for name, clients in counts:
        merged[name] = merged.get(name, 0) + clients
    nodes = []
    for name, clients in merged.items():
        if clients == 0:
            continue
        tier = tiers[name]
        choice = largest_fitting_branch(
            spec, tier.memory_gb * GIB, tier.rank, batch_size, seq_len, tier.weights
        )
        if choice is None:
            raise FamflowError(
                f"No branch of {spec.name} trains in tier {name}'s {tier.memory_gb} GiB at batch "
                f"{batch_size} x {seq_len} ({tiers_path}): give the tier more memory-gb, or "
                "pass --tiers FILE with tiers sized for this model."
            )
        label = spec.exit_label(choice.exit)
        nodes.append(TierNodes(name, choice.exit, label, tier.rank, clients, choice.weights))
    if not nodes:
        raise FamflowError(f"tier-mix {tier_mix!r} has no nodes: give a tier a count above 0.")
    return nodes


def dense_parameters(spec: ModelSpec) -> int:
    """Parameters of the dense model: the deepest exit's own path."""
    return branch_size(spec, spec.family.exits[-1], rank=1).parameters


def famflow_rank(rule: str, node: TierNodes, nodes: list[TierNodes]) -> int:
    """A node's LoRA rank under ``rule``: its tier's, or the mix's largest for fedit and ffa."""
    return node.rank if RULES[rule].mixed_ranks else max(n.rank for n in nodes)


def _rows(
    scheme: str,
    rule: str,
    codec: str,
    nodes: list[TierNodes],
    per_client: dict[str, tuple[Wire, int | None]],
    full_gradient: int,
) -> list[CommRow]:
    """One row per tier (bytes per client are the same both ways) and the mix's total."""
    rows = []
    for node in nodes:
        wire, rank = per_client[node.tier]
        rows.append(
            CommRow(
                scheme=scheme,
                rule=rule,
                codec=codec,
                tier=node.tier,
                exit=node.exit,
                rank=rank,
                clients=node.clients,
                up_per_client=wire.payload,
                down_per_client=wire.payload,
                framing_per_client=wire.framing if wire.framing else None,
                up_per_round=wire.payload * node.clients,
                down_per_round=wire.payload * node.clients,
                full_gradient_ratio=full_gradient / wire.payload,
            )
        )
    up = sum(row.up_per_round for row in rows)
    clients = sum(node.clients for node in nodes)
    ratio = full_gradient * clients / up
    total = CommRow(
        scheme, rule, codec, TOTAL, None, None, clients, None, None, None, up, up, ratio
    )
    return [*rows, total]


def analytic_rows(
    spec: ModelSpec,
    nodes: list[TierNodes],
    rules: list[str],
    codecs: list[str],
    exit_adapters: bool = True,
    own_exit: bool = False,
) -> list[CommRow]:
    """Every scheme's rows: the two FedAvg baselines, dense LoRA per codec, famflow per rule
    and codec."""
    shapes = FamilyShapes(spec)
    gradient = dense_parameters(spec) * 4
    dtype = DTYPE_NAMES.get(spec.torch_dtype, str(spec.torch_dtype))
    largest = max(node.rank for node in nodes)
    weights = {n.tier: (Wire(branch_size(spec, n.exit, 1).weight_bytes, 0), None) for n in nodes}
    rows = _rows("fedavg-gradient", "-", "fp32", nodes, _same(nodes, Wire(gradient, 0)), gradient)
    rows += _rows("fedavg-weights", "-", dtype, nodes, weights, gradient)
    for codec in codecs:
        wire = message_bytes(shapes.dense_model_lora(largest), codec)
        rows += _rows("lora-dense", "fedit", codec, nodes, _same(nodes, wire, largest), gradient)
    for rule in rules:
        for codec in codecs:
            per_client: dict[str, tuple[Wire, int | None]] = {}
            for node in nodes:
                rank = famflow_rank(rule, node, nodes)
                exchanged = shapes.exchanged(
                    node.exit, rank, RULES[rule].exchanges_a, exit_adapters, own_exit
                )
                per_client[node.tier] = (message_bytes(exchanged, codec), rank)
            rows += _rows("famflow", rule, codec, nodes, per_client, gradient)
    return rows


def _same(
    nodes: list[TierNodes], wire: Wire, rank: int | None = None
) -> dict[str, tuple[Wire, int | None]]:
    return {node.tier: (wire, rank) for node in nodes}
