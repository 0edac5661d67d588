import math
from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from famflow.familial import ExitAdapterConfig, FamflowError
from famflow.familial.evaluation import evaluate
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora, lora_state, trainable_state
from famflow.familial.tokenizer import byte_tokenizer
from famflow.familial.training import (
    TrainConfig,
    cosine_schedule,
    distillation_loss,
    next_token_loss,
    train,
)
from tests.conftest import random_spec

TEXT = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    "rough winds do shake the darling buds of May, and summer's lease hath all too short "
    "a date. "
)
ADAPTERS = ExitAdapterConfig(norm=True, translator="low-rank", translator_rank=8)


@pytest.fixture(scope="module")
def blocks() -> torch.Tensor:
    ids = torch.tensor(byte_tokenizer()(TEXT * 8)["input_ids"])
    n = len(ids) // 32
    return ids[: n * 32].view(n, 32)


def family(adapters: ExitAdapterConfig | None = ADAPTERS, branch: int = 4, **lora: object):
    # A wide initialisation: with transformers' 0.02 the tied head's logits are too flat for
    # 30 steps of LoRA to show learning.
    spec = random_spec([2, 4], adapters, vocab_size=256, initializer_range=0.2)
    return attach_lora(load_branch(spec, branch), LoraSettings(rank=4, **lora))


FAST = TrainConfig(steps=30, batch_size=8, lr=1e-2, min_lr_ratio=0.1, seed=0)


def test_training_lowers_the_loss_of_every_exit(blocks):
    model = family()
    before = evaluate(model, blocks)
    result = train(model, blocks, FAST)
    after = evaluate(model, blocks)
    assert result.tokens == 30 * 8 * 32 and result.tokens_per_second > 0
    for depth in (2, 4):
        assert after[depth].loss < before[depth].loss - 0.5, (depth, before, after)
        assert after[depth].accuracy > before[depth].accuracy
    assert result.losses[-1] < result.losses[0]


def test_multi_exit_loss_helps_the_shallow_exit_more_than_last_exit_training(blocks):
    multi, last_only = family(), family()
    train(multi, blocks, FAST)
    train(last_only, blocks, replace(FAST, exit_weights={4: 1.0}))
    shallow_multi = evaluate(multi, blocks)[2].loss
    shallow_last = evaluate(last_only, blocks)[2].loss
    assert shallow_multi < shallow_last - 0.5, (shallow_multi, shallow_last)


def test_freeze_a_leaves_every_a_bit_identical(blocks):
    model = family(freeze_a=True)
    before = {k: v.detach().clone() for k, v in lora_state(model).items()}
    train(model, blocks, replace(FAST, steps=5))
    after = lora_state(model)
    for key, tensor in before.items():
        if key.endswith(".A"):
            assert torch.equal(after[key], tensor), key
    assert not torch.equal(
        after["trunk.0.self_attn.q_proj.B"], before["trunk.0.self_attn.q_proj.B"]
    )


def test_switched_off_parts_do_not_change(blocks):
    model = family()
    exit_before = {k: v.detach().clone() for k, v in trainable_state(model, lora=False).items()}
    train(model, blocks, replace(FAST, steps=3, train_exit_adapters=False))
    exit_after = trainable_state(model, lora=False)
    assert all(torch.equal(exit_after[k], v) for k, v in exit_before.items())
    lora_before = {k: v.detach().clone() for k, v in lora_state(model).items()}
    train(model, blocks, replace(FAST, steps=3, train_lora=False))
    lora_after = lora_state(model)
    assert all(torch.equal(lora_after[k], v) for k, v in lora_before.items())
    norm = "exit.2.norm.weight"
    assert not torch.equal(trainable_state(model, lora=False)[norm], exit_before[norm])


def test_gradient_accumulation_matches_one_large_batch(blocks):
    one_batch, accumulated = family(adapters=None), family(adapters=None)
    config = TrainConfig(steps=1, batch_size=8, lr=1e-2, max_grad_norm=None)
    train(one_batch, blocks, config)
    train(accumulated, blocks, replace(config, batch_size=4, grad_accum=2))
    big, small = lora_state(one_batch), lora_state(accumulated)
    for key in big:
        assert_close(small[key], big[key], rtol=1e-4, atol=1e-6)


def test_distillation_pulls_shallow_exits_towards_the_deepest(blocks):
    logits = torch.randn(2, 5, 11)
    assert float(distillation_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(torch.randn(2, 5, 11), logits, 2.0)) > 0.01

    distilled, plain = family(adapters=None), family(adapters=None)
    config = replace(FAST, steps=10, exit_weights={4: 1.0})
    train(distilled, blocks, replace(config, distill_weight=1.0))
    train(plain, blocks, config)

    @torch.no_grad()
    def gap(model) -> float:
        logits = model.eval()(blocks[:4], exits=[2, 4]).logits
        return float(distillation_loss(logits[2], logits[4], 1.0))

    assert gap(distilled) < gap(plain)


def test_cosine_schedule_warms_up_and_decays_to_the_floor():
    factor = cosine_schedule(TrainConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1))
    assert factor(0) == pytest.approx(1 / 3)
    assert factor(2) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(0.1)
    assert factor(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_evaluation_is_the_token_weighted_next_token_loss(blocks):
    model = family()
    metrics = evaluate(model, blocks[:6], batch_size=4)
    logits = model(blocks[:6], exits=[2]).logits[2].detach()
    assert metrics[2].loss == pytest.approx(float(next_token_loss(logits, blocks[:6])), rel=1e-5)
    assert metrics[2].perplexity == pytest.approx(math.exp(metrics[2].loss))
    assert metrics[2].tokens == 6 * 31


def test_bad_training_input_is_one_sentence(blocks):
    model = family()
    with pytest.raises(FamflowError, match="fewer tokens than one sequence"):
        train(model, blocks[:0], FAST)
    with pytest.raises(FamflowError, match=r"does not hold: use exits from \[2\]"):
        train(family(branch=2), blocks, replace(FAST, exit_weights={4: 1.0}))
    with pytest.raises(FamflowError, match="Nothing to train"):
        TrainConfig(train_lora=False, train_exit_adapters=False)
    with pytest.raises(FamflowError, match="No validation blocks"):
        evaluate(model, blocks[:0])
