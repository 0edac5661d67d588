"""Pure aggregation rules on named numpy arrays, one per file (no torch, no Flower)."""

from __future__ import annotations

from famflow.familial.errors import FamflowError
from famflow.strategies.rules.base import AggregationRule, ClientUpdate, weighted_mean_per_key
from famflow.strategies.rules.fedit import FedIT
from famflow.strategies.rules.ffa import FFA
from famflow.strategies.rules.flexlora import FlexLoRA, lora_products
from famflow.strategies.rules.hetlora import HetLoRA

RULES: dict[str, AggregationRule] = {
    rule.name: rule for rule in (FedIT(), FFA(), FlexLoRA(), HetLoRA())
}


def get_rule(name: str) -> AggregationRule:
    """The rule registered under ``name``."""
    try:
        return RULES[name]
    except KeyError:
        raise FamflowError(
            f"Unknown aggregation rule {name!r}: use one of {', '.join(RULES)}."
        ) from None


__all__ = [
    "FFA",
    "RULES",
    "AggregationRule",
    "ClientUpdate",
    "FedIT",
    "FlexLoRA",
    "HetLoRA",
    "get_rule",
    "lora_products",
    "weighted_mean_per_key",
]
