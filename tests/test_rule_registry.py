"""Adding a rule is one file under strategies/rules/ plus its entry in the registry: the run
config, the node plans, the exchange contract, the strategy and the comm table then ask the
rule what it needs (here a toy rule registered at test time)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from famflow.familial.codecs import decode, encode
from famflow.familial.errors import FamflowError
from famflow.familial.presets import resolve_model
from famflow.federation.config import FederationConfig
from famflow.federation.contract import branch_keys
from famflow.strategies.familial_strategy import FamilialStrategy, NodePlan
from famflow.strategies.records import from_record, to_record
from famflow.strategies.rules import RULES
from famflow.strategies.rules.base import ClientUpdate, State, check_update
from famflow.strategies.rules.fedit import FedIT


@dataclass(frozen=True)
class FrozenAMean(FedIT):
    """A toy rule: A frozen from the shared seed and never sent, B averaged, one rank."""

    name: str = "toy-frozen-a"
    exchanges_a: bool = False

    def validate(self, global_arrays: State, update: ClientUpdate) -> None:
        check_update(global_arrays, update, self.name, same_rank=True, pairs=False)


@pytest.fixture
def toy_rule(monkeypatch):
    rule = FrozenAMean()
    monkeypatch.setitem(RULES, rule.name, rule)
    return rule


def test_an_unregistered_rule_is_refused_with_the_registered_names():
    with pytest.raises(FamflowError, match="Unknown rule 'toy-frozen-a': use one of fedit"):
        FederationConfig(rule="toy-frozen-a")


def test_a_registered_rule_is_asked_what_it_exchanges_and_which_ranks_it_allows(toy_rule, root):
    from famflow.server.plans import node_plans

    config = FederationConfig(model="tiny3", rule=toy_rule.name)
    assert config.aggregation is toy_rule
    keys = branch_keys(config, 2, 4)
    assert keys and not any(key.endswith(".A") for key in keys)
    assert any(key.endswith(".B") for key in keys)
    profiles = {
        1: {"tier": "device", "exit": 1, "rank": 2, "device": "cpu"},
        2: {"tier": "cloud", "exit": 4, "rank": 8, "device": "cpu"},
    }
    plans = node_plans(config, profiles)
    assert {plan.rank for plan in plans.values()} == {8}  # mixed_ranks is False


def test_the_comm_table_has_rows_for_a_registered_rule(toy_rule, root):
    from famflow.simulations.comm_schemes import analytic_rows, tier_nodes

    spec = resolve_model("tiny3")
    nodes = tier_nodes(spec, "device:1,cloud:1", batch_size=4, seq_len=16)
    rows = analytic_rows(spec, nodes, [toy_rule.name, "fedit"], ["fp32"])
    toy = [row for row in rows if row.rule == toy_rule.name]
    fedit = [row for row in rows if row.rule == "fedit" and row.scheme == "famflow"]
    assert len(toy) == len(fedit) == 3  # device, cloud, round total
    # One rank like fedit, but no A is sent.
    assert all(t.rank == f.rank for t, f in zip(toy, fedit, strict=True))
    assert all(t.up_per_round < f.up_per_round for t, f in zip(toy, fedit, strict=True))


@pytest.mark.usefixtures("server_identity")
def test_the_strategy_aggregates_a_round_with_a_registered_rule(toy_rule):
    keys = ("trunk.0.mlp.up_proj.B",)
    plans = {node: NodePlan(node, "edge", 1, 4, 2.0, "cpu", keys) for node in (11, 12)}
    strategy = FamilialStrategy(toy_rule, plans)
    start = {keys[0]: np.ones((8, 4), dtype=np.float32)}
    sent = list(strategy.configure_train(1, to_record(start), ConfigRecord(), None))
    replies = []
    for message, (change, examples) in zip(sent, ((1.0, 1), (3.0, 3)), strict=True):
        received = decode(from_record(message.content["arrays"]), "fp32")
        trained = {key: value + change for key, value in received.items()}
        content = RecordDict(
            {
                "arrays": to_record(encode(trained, "fp32", received)),
                "metrics": MetricRecord({"num-examples": examples}),
            }
        )
        replies.append(Message(content, reply_to=message))
    aggregated, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(from_record(aggregated)[keys[0]], 1.0 + (1 * 1 + 3 * 3) / 4)
