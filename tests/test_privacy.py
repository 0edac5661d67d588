import pytest
import torch
from flwr.app import Context, RecordDict
from opacus.accountants import RDPAccountant

from famflow.clients.task import DP_STATE, dp_history, store_dp_history
from famflow.familial import ExitAdapterConfig, FamflowError
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora, trainable_state
from famflow.familial.privacy import (
    DPConfig,
    check_budget,
    epsilon,
    extended,
    history_from_config,
    history_to_config,
    train_private,
)
from famflow.familial.tokenizer import byte_tokenizer
from famflow.familial.training import TrainConfig, train
from famflow.strategies.central_dp import central_epsilon
from tests.conftest import random_spec

TEXT = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. " * 8
SETTINGS = TrainConfig(steps=3, batch_size=4, lr=1e-2, seed=0)
NOISE = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0)


@pytest.fixture(scope="module")
def blocks() -> torch.Tensor:
    ids = torch.tensor(byte_tokenizer()(TEXT)["input_ids"])
    n = len(ids) // 32
    return ids[: n * 32].view(n, 32)


def family(**lora: object):
    adapters = ExitAdapterConfig(norm=True, translator="low-rank", translator_rank=8)
    spec = random_spec([2, 4], adapters, vocab_size=256, initializer_range=0.2)
    return attach_lora(load_branch(spec, 4), LoraSettings(rank=4, **lora))


def context(node_config: dict | None = None) -> Context:
    return Context(
        run_id=1, node_id=7, node_config=node_config or {}, state=RecordDict(), run_config={}
    )


def test_epsilon_equals_opacus_accountant_and_a_golden_value():
    reference = RDPAccountant()
    for _ in range(300):
        reference.step(noise_multiplier=1.1, sample_rate=0.01)
    history = extended([], 1.1, 0.01, 300)
    assert history == [(1.1, 0.01, 300)] == reference.history
    assert epsilon(history, 1e-5) == reference.get_epsilon(1e-5)
    assert epsilon(history, 1e-5) == pytest.approx(1.1497243515764826, rel=1e-9)
    assert epsilon([], 1e-5) == 0.0


def test_noise_derived_from_the_target_reaches_it_over_the_whole_run():
    dp = DPConfig(target_epsilon=8.0)
    noise = dp.noise_for(sample_rate=0.25, total_steps=30)
    assert noise == pytest.approx(1.20849609375)
    reached = epsilon([(noise, 0.25, 30)], dp.delta)
    assert 7.9 < reached <= 8.0
    assert DPConfig(target_epsilon=3.0).noise_for(0.25, 30) > noise


def test_dp_adapters_are_finite_and_differ_from_non_dp(blocks):
    plain, private = family(), family()
    train(plain, blocks, SETTINGS)
    outcome = train_private(private, blocks, SETTINGS, NOISE)
    plain_state, private_state = trainable_state(plain), trainable_state(private)
    assert all(torch.isfinite(value).all() for value in private_state.values())
    assert any(not torch.equal(plain_state[k], private_state[k]) for k in plain_state)
    rate = 4 / len(blocks)
    assert outcome.history == [(1.0, rate, 3)] and outcome.sample_rate == rate
    assert outcome.epsilon == epsilon([(1.0, rate, 3)], NOISE.delta) > 0
    # Opacus' hooks are gone: the cached branch trains and evaluates as before.
    assert not any(hasattr(p, "grad_sample") for p in private.parameters())
    train(private, blocks, SETTINGS)


def test_epsilon_is_cumulative_across_rounds_through_context_state(blocks, tmp_path):
    node = context({"dp-accountant-file": str(tmp_path / "dp.json")})
    model = family(freeze_a=True)
    epsilons = []
    for server_round in (1, 2, 3):
        history = dp_history(node)
        settings = TrainConfig(steps=2, batch_size=4, lr=1e-2, seed=server_round)
        outcome = train_private(model, blocks, settings, NOISE, history)
        store_dp_history(node, outcome.history)
        epsilons.append(outcome.epsilon)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert dict(node.state[DP_STATE])["steps"] == [6]
    # A restarted node (fresh Context.state) reads its history back from disk.
    restarted = context({"dp-accountant-file": str(tmp_path / "dp.json")})
    assert epsilon(dp_history(restarted), NOISE.delta) == pytest.approx(epsilons[2])
    assert history_from_config(history_to_config(dp_history(node))) == dp_history(node)


def test_a_client_refuses_to_train_past_its_budget(blocks):
    dp = DPConfig(noise_multiplier=1.0, target_epsilon=1.0)
    spent = [(1.0, 0.5, 20)]
    with pytest.raises(FamflowError, match=r"privacy budget is spent") as error:
        train_private(family(), blocks, SETTINGS, dp, spent)
    message = str(error.value)
    assert message.count(". ") == 0 and message.endswith(".")
    assert "dp-target-epsilon 1" in message
    check_budget(dp, [], 1.0, 0.01, 1)  # a small round within the budget passes


def test_empty_poisson_batches_still_take_a_step(blocks):
    # At a sample rate of 1/n most batches hold one block or none.
    settings = TrainConfig(steps=12, batch_size=1, lr=1e-2, seed=0)
    outcome = train_private(family(), blocks, settings, NOISE)
    assert outcome.history == [(1.0, 1 / len(blocks), 12)]
    assert len(outcome.result.losses) <= 12


def test_functorch_mode_trains_too(blocks):
    dp = DPConfig(noise_multiplier=1.0, grad_sample_mode="functorch")
    outcome = train_private(family(), blocks, SETTINGS, dp)
    assert outcome.epsilon > 0 and len(outcome.result.losses) <= 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "DP needs a noise"),
        ({"noise_multiplier": 1.0, "delta": 0.0}, r"dp-delta must be in \(0, 1\)"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 0.0}, "dp-max-grad-norm must be positive"),
        ({"noise_multiplier": 1.0, "grad_sample_mode": "ew"}, "Unknown grad-sample mode"),
    ],
)
def test_bad_dp_config_is_one_sentence(settings, message):
    with pytest.raises(FamflowError, match=message):
        DPConfig(**settings)


def spend_node_0(message, context, call_next):
    """A Mod: node 0 arrives having spent far more than its budget in earlier runs."""
    if message.metadata.message_type == "train" and context.node_config["partition-id"] == 0:
        store_dp_history(context, [(1.0, 0.5, 10_000)])
    return call_next(message, context)


@pytest.mark.slow
def test_a_federation_with_dp_completes_and_a_spent_client_is_dropped(root):
    from famflow.server.records import read_rows
    from tests.federation_setup import run_config, simulate

    config = run_config(
        root,
        rule="ffa",
        **{
            "num-server-rounds": 1,
            "local-steps": 1,
            "dp": True,
            "dp-target-epsilon": 8.0,
            "central-dp-noise": 0.5,
            "central-dp-clip": 1.0,
        },
    )
    simulate(config, mods=[spend_node_0])
    rows = read_rows(root / "run")
    assert [row["round"] for row in rows] == [0, 1]
    assert rows[1]["dropped_reasons"] == {"client-error": 1}
    (sentence,) = rows[1]["dropped"].values()
    assert "privacy budget is spent" in sentence and "dp-target-epsilon 8" in sentence
    epsilons = [n["dp_epsilon"] for n in rows[1]["nodes"].values() if "dp_epsilon" in n]
    assert len(epsilons) == 2 and all(0 < value <= 8.0 for value in epsilons)
    assert rows[1]["dp_epsilon_max"] == max(epsilons)
    assert rows[1]["central_dp_epsilon"] == pytest.approx(central_epsilon(0.5, 1, 1e-5))


def test_the_planned_rate_is_the_one_opacus_records_so_the_whole_run_fits_the_budget(blocks):
    # 466 blocks in batches of 4: Opacus' Poisson loader has 116 batches (not 116.5 or 117),
    # and its accountant records 1/116; planning with 4/466 let a client overspend.
    many = blocks.repeat(466 // len(blocks) + 1, 1)[:466]
    dp = DPConfig(target_epsilon=3.0, max_grad_norm=1.0)
    model, history = family(), []
    for server_round in (1, 2, 3):
        settings = TrainConfig(steps=2, batch_size=4, lr=1e-2, seed=server_round)
        outcome = train_private(model, many, settings, dp, history, total_steps=6)
        history = outcome.history
        assert history[-1][1] == outcome.sample_rate == 1 / 116
    assert 2.9 < outcome.epsilon <= 3.0
