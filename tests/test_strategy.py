import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from famflow.familial.codecs import decode, encode
from famflow.strategies.familial_strategy import FamilialStrategy, NodePlan
from famflow.strategies.records import from_record, to_record
from famflow.strategies.rules import FedIT, FlexLoRA
from famflow.strategies.rules.base import ClientUpdate

RANK, IN, OUT = 4, 48, 40
KEYS = ("trunk.0.mlp.up_proj.A", "trunk.0.mlp.up_proj.B")


pytestmark = pytest.mark.usefixtures("server_identity")


def strategy(codec):
    plans = {node: NodePlan(node, "edge", 1, RANK, 2.0, "cpu", KEYS) for node in (11, 12)}
    return FamilialStrategy(FedIT(), plans, codec=codec)


def global_arrays():
    rng = np.random.default_rng(0)
    return {KEYS[0]: rng.standard_normal((RANK, IN)), KEYS[1]: rng.standard_normal((OUT, RANK))}


def node_reply(sent, change, codec, examples):
    """A node trains ``change`` into the slice it decoded and sends the change from that slice."""
    received = decode(from_record(sent.content["arrays"]), codec)
    trained = {key: received[key] + change[key] for key in received}
    content = RecordDict(
        {
            "arrays": to_record(encode(trained, codec, received)),
            "metrics": MetricRecord({"num-examples": examples}),
        }
    )
    return Message(content, reply_to=sent)


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_replies_carry_the_change_from_the_slice_sent_and_aggregate_onto_the_exact_global(codec):
    start = {k: v.astype(np.float32) for k, v in global_arrays().items()}
    wanted = strategy(codec)
    sent = list(wanted.configure_train(1, to_record(start), ConfigRecord(), None))
    rng = np.random.default_rng(1)
    changes = [{k: 1e-3 * rng.standard_normal(v.shape) for k, v in start.items()} for _ in sent]
    replies = [
        node_reply(message, change, codec, examples)
        for message, change, examples in zip(sent, changes, (1, 3), strict=True)
    ]
    aggregated, _ = wanted.aggregate_train(1, replies)
    result = from_record(aggregated)
    for key in KEYS:
        expected = start[key] + (changes[0][key] + 3 * changes[1][key]) / 4
        # The global stays exact: int8 rounds each change at 1/254 of its own range, and the
        # downlink's rounding of the slice does not enter it.
        tolerance = 1e-6 if codec == "fp32" else 2e-5
        np.testing.assert_allclose(result[key], expected, atol=tolerance)
        if codec == "int8":
            whole = decode(encode({key: start[key] + changes[0][key]}, codec), codec)[key]
            assert np.abs(whole - start[key] - changes[0][key]).max() > 10 * tolerance


def test_flexlora_rounds_without_change_keep_the_global_product_at_every_rank():
    plans = {
        11: NodePlan(11, "device", 1, 2, 2.0, "cpu", KEYS),
        12: NodePlan(12, "cloud", 1, RANK, 2.0, "cpu", KEYS),
    }
    wanted = FamilialStrategy(FlexLoRA(), plans)
    start = FlexLoRA().aggregate(  # a global in FlexLoRA's SVD form, of full rank
        {k: v.astype(np.float32) for k, v in global_arrays().items()},
        [ClientUpdate({k: v.astype(np.float32) for k, v in global_arrays().items()}, 1, RANK, 1.0)],
    )
    sent = list(wanted.configure_train(1, to_record(start), ConfigRecord(), None))
    no_change = {key: np.zeros_like(value) for key, value in start.items()}
    replies = []
    for message in sent:
        rank = plans[message.metadata.dst_node_id].rank
        zero = {k: v[:rank] if k.endswith(".A") else v[:, :rank] for k, v in no_change.items()}
        replies.append(node_reply(message, zero, "fp32", 1))
    aggregated, _ = wanted.aggregate_train(1, replies)
    result = from_record(aggregated)
    # The rank-2 node could not carry the global's other directions; they stay all the same.
    np.testing.assert_allclose(
        result[KEYS[1]] @ result[KEYS[0]], start[KEYS[1]] @ start[KEYS[0]], atol=1e-5
    )


def test_a_reply_from_a_node_sent_nothing_this_round_is_dropped():
    start = {k: v.astype(np.float32) for k, v in global_arrays().items()}
    wanted = strategy("fp32")
    plans = dict(wanted.plans)
    wanted.plans = {11: plans[11]}
    sent = list(wanted.configure_train(1, to_record(start), ConfigRecord(), None))
    wanted.plans = plans
    stray = Message(sent[0].content, dst_node_id=12, message_type=sent[0].metadata.message_type)
    no_change = {key: np.zeros_like(value) for key, value in start.items()}
    replies = [node_reply(sent[0], no_change, "fp32", 1), node_reply(stray, no_change, "fp32", 1)]
    wanted.aggregate_train(1, replies)
    assert "not sent anything" in wanted.traffic[(1, "train")].dropped[12]


def test_sampling_takes_each_tiers_share_every_round_and_its_nodes_take_turns():
    tiers = {1: "device", 2: "device", 3: "edge", 4: "edge", 5: "cloud", 6: "cloud"}
    plans = {n: NodePlan(n, tier, 1, RANK, 2.0, "cpu", KEYS) for n, tier in tiers.items()}
    sampler = FamilialStrategy(FedIT(), plans, fraction_train=0.5, min_nodes=2)

    rounds = [sampler.sample(server_round) for server_round in (1, 2, 3)]

    for chosen in rounds:
        assert sorted(tiers[n] for n in chosen) == ["cloud", "device", "edge"]
    assert sorted(rounds[0] + rounds[1]) == [1, 2, 3, 4, 5, 6]
    assert rounds[2] == rounds[0]


def test_each_node_is_told_its_own_local_steps_and_learning_rate():
    plans = {
        11: NodePlan(11, "device", 1, RANK, 2.0, "cpu", KEYS, local_steps=5),
        12: NodePlan(12, "cloud", 1, RANK, 2.0, "cpu", KEYS, local_steps=20),
    }
    wanted = FamilialStrategy(FedIT(), plans, lr_for_round=lambda r: 1e-3 / r)
    start = {k: v.astype(np.float32) for k, v in global_arrays().items()}
    sent = wanted.configure_train(2, to_record(start), ConfigRecord(), None)
    setups = {m.metadata.dst_node_id: m.content["config"] for m in sent}
    assert {node: setup["local-steps"] for node, setup in setups.items()} == {11: 5, 12: 20}
    assert all(setup["lr"] == pytest.approx(5e-4) for setup in setups.values())


class CountingRule:
    """A rule that counts the slices it is asked for."""

    def __init__(self, rule) -> None:
        self.rule, self.calls = rule, []

    def __getattr__(self, name):
        return getattr(self.rule, name)

    def slice_for(self, global_arrays, keys, rank, scale):
        self.calls.append(rank)
        return self.rule.slice_for(global_arrays, keys, rank, scale)


def test_nodes_of_one_tier_share_one_slice_and_every_node_gets_its_own_message():
    ranks = {1: 2, 2: 2, 3: 2, 4: RANK}
    plans = {n: NodePlan(n, "edge", 1, rank, 2.0, "cpu", KEYS) for n, rank in ranks.items()}
    rule = CountingRule(FlexLoRA())
    wanted = FamilialStrategy(rule, plans)
    start = {k: v.astype(np.float32) for k, v in global_arrays().items()}
    sent = list(wanted.configure_train(1, to_record(start), ConfigRecord(), None))
    assert sorted(rule.calls) == [2, RANK]
    assert [m.metadata.dst_node_id for m in sent] == [1, 2, 3, 4]
    received = {m.metadata.dst_node_id: from_record(m.content["arrays"]) for m in sent}
    for node in (2, 3):
        for key in KEYS:
            np.testing.assert_array_equal(received[node][key], received[1][key])
    assert received[4][KEYS[0]].shape == (RANK, IN) and received[1][KEYS[0]].shape == (2, IN)
    assert sent[0].content["arrays"] is not sent[1].content["arrays"]


def test_min_nodes_tops_up_a_sample_smaller_than_it():
    plans = {n: NodePlan(n, "edge", 1, RANK, 2.0, "cpu", KEYS) for n in range(1, 7)}
    sampler = FamilialStrategy(FedIT(), plans, fraction_train=0.1, min_nodes=3)

    assert len(sampler.sample(1)) == 3
    assert len(set(sampler.sample(1))) == 3
