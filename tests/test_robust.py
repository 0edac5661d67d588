import numpy as np
import pytest
from numpy.testing import assert_allclose

from famflow.familial.errors import FamflowError
from famflow.federation.config import ROBUST
from famflow.strategies.robust import (
    ROBUST_METHODS,
    RobustSettings,
    change_rms,
    changes,
    coordinate_center,
    robust_updates,
)
from famflow.strategies.rules import FFA, ClientUpdate, FedIT, FlexLoRA, HetLoRA

IN, OUT, HIDDEN, GLOBAL_RANK = 7, 5, 3, 4


def test_trimmed_mean_and_median_are_per_coordinate_over_the_holders():
    values = list(np.random.default_rng(0).standard_normal((5, 3, 4)))
    ordered = np.sort(np.stack(values), axis=0)
    assert_allclose(coordinate_center(values, "trimmed-mean", 0.2), ordered[1:4].mean(axis=0))
    assert_allclose(coordinate_center(values, "trimmed-mean", 0.0), ordered.mean(axis=0))
    assert_allclose(coordinate_center(values, "median", 0.2), ordered[2])


def test_a_coordinate_is_combined_over_the_holders_whose_rank_reaches_it():
    rng = np.random.default_rng(1)
    # LoRA B factors (out x r) at ranks 2, 4, 4, 4: columns 2 and 3 are held by three nodes.
    b = [rng.standard_normal((OUT, rank)) for rank in (2, 4, 4, 4)]
    center = coordinate_center(b, "median", 0.2)
    assert center.shape == (OUT, 4)
    assert_allclose(center[:, :2], np.median(np.stack([x[:, :2] for x in b]), axis=0))
    assert_allclose(center[:, 2:], np.median(np.stack([x[:, 2:] for x in b[1:]]), axis=0))
    trimmed = coordinate_center(b, "trimmed-mean", 0.34)  # one trimmed at each end of 3 or 4
    ordered = np.sort(np.stack([x[:, 2:] for x in b[1:]]), axis=0)
    assert_allclose(trimmed[:, 2:], ordered[1])
    ordered = np.sort(np.stack([x[:, :2] for x in b]), axis=0)
    assert_allclose(trimmed[:, :2], ordered[1:3].mean(axis=0))


def one_key_updates(values, examples=None):
    examples = examples or [1] * len(values)
    zero = np.zeros_like(values[0], dtype=np.float32)
    updates = [
        ClientUpdate({"exit.1.norm.weight": value.astype(np.float32)}, count, 1, 1.0)
        for value, count in zip(values, examples, strict=True)
    ]
    return updates, [{"exit.1.norm.weight": zero}] * len(values)


def test_clipping_bounds_each_change_and_keeps_its_direction():
    values = [np.array([3.0, 4.0]), np.array([0.3, 0.4]), np.array([-30.0, 40.0])]
    updates, sent = one_key_updates(values)
    clipped = robust_updates(updates, sent, RobustSettings("clip", clip_norm=1.0))
    result = [u.arrays["exit.1.norm.weight"] for u in clipped]
    assert_allclose(result, [[0.6, 0.8], [0.3, 0.4], [-0.6, 0.8]], rtol=1e-6)
    # clip-norm 0: the median of the holders (norm 5 here) bounds every change.
    adaptive = robust_updates(updates, sent, RobustSettings("clip"))
    result = [u.arrays["exit.1.norm.weight"] for u in adaptive]
    assert_allclose(result, [[3.0, 4.0], [0.3, 0.4], [-3.0, 4.0]], rtol=1e-6)


def test_trimmed_mean_and_median_count_each_holder_once_whatever_its_examples():
    values = [np.array([1.0]), np.array([2.0]), np.array([100.0])]
    for examples in ([1, 1, 1], [1, 1, 1000]):
        updates, sent = one_key_updates(values, examples)
        result = robust_updates(updates, sent, RobustSettings("median"))
        assert [u.arrays["exit.1.norm.weight"][0] for u in result] == [2.0, 2.0, 2.0]
        assert [u.num_examples for u in result] == examples


def test_none_leaves_the_updates_as_they_are():
    updates, sent = one_key_updates([np.array([1.0]), np.array([5.0])])
    assert robust_updates(updates, sent, RobustSettings()) is updates


# ---- with every rule: one attacker among five, honest nodes all making the same change ----

# Clients 0..4 at ranks 4, 4, 4, 2, 2; clients 2..4 also hold layer 1 and exit 2. The attacker
# (4) has rank 2, so each of its coordinates has at least three holders.
RANKS = (4, 4, 4, 2, 2)
ATTACKER = 4


def keys_of(client, lora_a=True):
    layers = (0, 1) if client >= 2 else (0,)
    factors = ("A", "B") if lora_a else ("B",)
    keys = [f"trunk.{layer}.self_attn.q_proj.{f}" for layer in layers for f in factors]
    return keys + [f"exit.{depth}.norm.weight" for depth in (1, 2)[: len(layers)]]


def global_state():
    rng = np.random.default_rng(2)
    state = {}
    for key in keys_of(2):
        shape = (GLOBAL_RANK, IN) if key.endswith("A") else (OUT, GLOBAL_RANK)
        state[key] = rng.standard_normal(shape if "q_proj" in key else (HIDDEN,))
    return {key: value.astype(np.float32) for key, value in state.items()}


def federation(rule, attack, one_rank=False):
    """``(global, honest updates, attacked updates, slices sent)``: every node changes its
    slice by the same global change; the attacker sends ``attack`` times its change."""
    state = global_state()
    rng = np.random.default_rng(3)
    change = {key: 0.1 * rng.standard_normal(value.shape) for key, value in state.items()}
    one_rank = one_rank or isinstance(rule, FedIT)
    honest, attacked, sent = [], [], []
    for client, rank in enumerate(RANKS):
        rank = GLOBAL_RANK if one_rank else rank
        keys = keys_of(client, lora_a=not isinstance(rule, FFA))
        base = rule.slice_for(state, keys, rank, 2.0)
        delta = {key: change[key][tuple(slice(0, n) for n in base[key].shape)] for key in keys}
        factor = attack if client == ATTACKER else 1.0
        honest.append(ClientUpdate({k: base[k] + delta[k] for k in keys}, 10, rank, 2.0))
        attacked.append(ClientUpdate({k: base[k] + factor * delta[k] for k in keys}, 10, rank, 2.0))
        sent.append(base)
    return state, honest, attacked, sent


RULES = [FedIT(), FFA(), FlexLoRA(), HetLoRA()]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
@pytest.mark.parametrize(
    ("method", "attack"),
    [("median", 50.0), ("median", -1.0), ("trimmed-mean", 50.0), ("trimmed-mean", -1.0)],
)
def test_trimmed_mean_and_median_give_every_rule_the_honest_aggregate(rule, method, attack):
    state, honest, attacked, sent = federation(rule, attack)
    settings = RobustSettings(method, trim_ratio=0.34)
    expected = rule.aggregate(state, honest)
    result = rule.aggregate(state, robust_updates(attacked, sent, settings))
    naive = rule.aggregate(state, attacked)
    for key in state:
        assert_allclose(result[key], expected[key], atol=1e-5, err_msg=key)
    assert any(np.abs(naive[key] - expected[key]).max() > 1e-2 for key in state)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_clipping_to_the_median_gives_every_rule_the_honest_aggregate_of_a_scaled_attack(rule):
    state, honest, attacked, sent = federation(rule, 50.0, one_rank=True)
    clipped = robust_updates(attacked, sent, RobustSettings("clip"))
    # The attacker's change is clipped to the holders' median per value: its own change.
    for key, change in changes(clipped[ATTACKER], sent[ATTACKER]).items():
        assert_allclose(change, changes(honest[ATTACKER], sent[ATTACKER])[key], atol=1e-6)
    expected = rule.aggregate(state, honest)
    result = rule.aggregate(state, clipped)
    for key in state:
        assert_allclose(result[key], expected[key], atol=1e-5, err_msg=key)


def test_clipping_across_ranks_bounds_each_change_per_value_by_the_holders_median():
    _, _, attacked, sent = federation(HetLoRA(), 50.0)
    clipped = robust_updates(attacked, sent, RobustSettings("clip"))
    for key in keys_of(ATTACKER):
        holders = [i for i, update in enumerate(attacked) if key in update.arrays]
        rms = {i: change_rms(attacked[i], sent[i])[key] for i in holders}
        median = np.median(list(rms.values()))
        assert change_rms(clipped[ATTACKER], sent[ATTACKER])[key] == pytest.approx(median)
        for i in holders:
            if rms[i] <= median:  # within the bound: untouched
                assert_allclose(clipped[i].arrays[key], attacked[i].arrays[key])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "krum"}, "Unknown robust aggregation 'krum'"),
        ({"method": "clip", "clip_norm": -1.0}, "clip-norm must be 0"),
        ({"method": "trimmed-mean", "trim_ratio": 0.5}, r"trim-ratio must be in \[0, 0.5\)"),
    ],
)
def test_bad_robust_settings_are_one_sentence(settings, message):
    with pytest.raises(FamflowError, match=message):
        RobustSettings(**settings)


def test_the_run_config_knows_every_robust_method():
    assert ROBUST == ROBUST_METHODS
