"""Collaborative decoding on tiny families of both exit styles: exactness, rollback, early exit.

Exactness is tested on the lossless fp32 path: fp16/int8 change the hidden states the upper
tiers see, so only fp32 can promise the full model's greedy output token for token.
"""

import pytest
import torch

from famflow.collab import (
    RouteModels,
    TierNode,
    build_nodes,
    early_exit_generate,
    local_chain,
    speculative_generate,
)
from famflow.collab.agreement import agreement_flags, speculative_acceptance
from famflow.collab.protocol import HiddenRequest, TierReply
from famflow.familial import ExitAdapterConfig
from famflow.familial.inference import generate
from famflow.familial.loading import from_dense_state_dict
from tests.conftest import spec_for, tiny_config, tiny_hf_model

EXITS = [2, 4, 6]
STYLES = ["shared-head", "ruyi"]


def agreeable_family(style: str, seed: int = 0):
    """A 6-layer Qwen2 family whose shallow exits often, not always, agree with the deepest.

    Layers after the first and every exit layer are damped (small residual updates), Ruyi's
    exits share the deepest exit's norm and head, and the heads are sharpened so that exit
    confidences spread over (0, 1): drafts get accepted and rejected, early exits happen.
    """
    hf = tiny_hf_model(tiny_config("qwen2", num_hidden_layers=6), seed=seed)
    extra = {"shared_heads": False} if style == "ruyi" else {}
    family = from_dense_state_dict(
        spec_for(hf.config, EXITS, exit_style=style, **extra), hf.state_dict()
    )
    generator = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for name, param in family.named_parameters():
            if name.startswith("exits."):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
            late = name.startswith("exits.") or not name.startswith(
                ("model.layers.0.", "model.embed")
            )
            if late and name.endswith(("o_proj.weight", "down_proj.weight")):
                param.mul_(0.1 if style == "ruyi" else 0.3)
        if style == "ruyi":
            top = family.exit_head(EXITS[-1])
            for depth in EXITS[:-1]:
                family.exit_head(depth).lm_head.weight.copy_(top.lm_head.weight)
                family.exit_head(depth).norm.weight.copy_(top.norm.weight)
            heads = [family.exit_head(depth).lm_head for depth in EXITS]
        else:
            heads = [family.lm_head]
        for head in heads:
            head.weight.mul_(8.0 if style == "ruyi" else 40.0)
    return family.eval()


def prompts(count: int = 6, length: int = 5, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (1, length + i % 3), generator=generator) for i in range(count)]


@pytest.fixture(scope="module", params=STYLES)
def family(request):
    return agreeable_family(request.param)


class CheckingTransport:
    """Sits between the device and the first upper tier and checks every round.

    Before the exchange: the device's drafts equal its own exit's greedy continuation of the
    accepted tokens (so its cache, exit layer included, was rolled back right). After: every
    upper node, and every cache layer it holds, is at the accepted length.
    """

    def __init__(self, upstream, family, nodes, prompt):
        self.upstream, self.family, self.nodes = upstream, family, nodes
        self.tokens = prompt[0].tolist()
        self.rounds: list[tuple[int, int]] = []

    def exchange(self, payload: bytes) -> bytes:
        request = HiddenRequest.decode(payload)
        rows, k = request.hidden.shape[0], len(request.drafts)
        assert request.start + rows - k == len(self.tokens)
        device = self.nodes[0]
        assert device.length == request.start + rows
        if k:
            context = torch.tensor([self.tokens])
            expected = generate(self.family, context, device.exit_depth, max_new_tokens=k)
            assert request.drafts == expected[0, len(self.tokens) :].tolist()[:k]
        answer = self.upstream.exchange(payload)
        reply = TierReply.decode(answer)
        kept = len(self.tokens) + reply.accepted
        for node in self.nodes[1:]:
            assert node.length == kept
            for layer, _ in node._layers():
                assert node.cache.layers[layer.self_attn.layer_idx].get_seq_length() == kept
        self.tokens += reply.tokens
        self.rounds.append((k, reply.accepted))
        return answer


@pytest.mark.parametrize("draft_tokens", [0, 1, 3, 6])
def test_speculative_output_equals_full_greedy(family, draft_tokens):
    nodes = build_nodes(RouteModels(family), EXITS)
    for prompt in prompts():
        expected = generate(family, prompt, EXITS[-1], max_new_tokens=14)
        result = speculative_generate(nodes[0], local_chain(nodes), prompt, 14, draft_tokens)
        assert torch.equal(result.tokens, expected)
        assert result.new_tokens == 14
        assert result.rounds[0].drafted == min(draft_tokens, 13)


@pytest.mark.parametrize("draft_tokens", [0, 2, 4])
def test_predrafting_keeps_the_output_and_reuses_rounds_it_guessed(family, draft_tokens):
    nodes = build_nodes(RouteModels(family), EXITS)
    reused = discarded = 0
    for prompt in prompts(count=6, seed=6):
        expected = generate(family, prompt, EXITS[-1], max_new_tokens=14)
        result = speculative_generate(
            nodes[0], local_chain(nodes), prompt, 14, draft_tokens, predraft=True
        )
        assert torch.equal(result.tokens, expected)
        for before, after in zip(result.rounds, result.rounds[1:], strict=False):
            # A round drafted during the previous flight costs the device nothing more.
            assert (after.trace[0].compute_s == 0) == before.reused
        reused += sum(r.reused for r in result.rounds)
        discarded += sum(r.overlapped_s > 0 and not r.reused for r in result.rounds)
    assert reused and discarded


def test_rollback_keeps_every_cache_at_the_accepted_length(family):
    nodes = build_nodes(RouteModels(family), EXITS)
    outcomes = []
    for prompt in prompts(count=8, seed=1):
        checker = CheckingTransport(local_chain(nodes), family, nodes, prompt)
        result = speculative_generate(nodes[0], checker, prompt, 16, draft_tokens=3)
        assert torch.equal(result.tokens, generate(family, prompt, EXITS[-1], 16))
        assert checker.tokens[: result.tokens.shape[1]] == result.tokens[0].tolist()
        outcomes += checker.rounds
    # Both a full acceptance and a rejection after an accepted prefix (a real rollback).
    assert any(k and accepted == k for k, accepted in outcomes)
    assert any(0 < accepted < k for k, accepted in outcomes)


def test_two_tier_route_and_end_of_text(family):
    nodes = build_nodes(RouteModels(family), [EXITS[0], EXITS[-1]])
    prompt = prompts(count=1, seed=2)[0]
    full = generate(family, prompt, EXITS[-1], max_new_tokens=12)
    eos = int(full[0, prompt.shape[1] + 5])  # the 6th new token ends the text
    expected = generate(family, prompt, EXITS[-1], max_new_tokens=12, eos_token_id=eos)
    result = speculative_generate(nodes[0], local_chain(nodes), prompt, 12, 4, eos_token_id=eos)
    assert torch.equal(result.tokens, expected)
    assert result.tokens[0, -1] == eos


def test_node_rollback_then_other_tokens_equals_a_fresh_node(family):
    """Crop after running 9 positions, continue with different tokens: same as never run."""
    device = build_nodes(RouteModels(family), EXITS)[0]
    assert family.family.exit_style == "shared-head" or device.head.layer is not None
    ids = torch.arange(12).unsqueeze(0) % 128
    device.run(ids[:, :9], 0)
    device.rollback(5)
    assert device.length == 5
    other = (ids[:, 5:9] + 50) % 128
    resumed = device.run(other, 5, logits_from=0)
    fresh = TierNode(family, 0, device.stop, device.exit_depth)
    expected = fresh.run(torch.cat([ids[:, :5], other], dim=1), 0, logits_from=5)
    torch.testing.assert_close(resumed.hidden, expected.hidden[:, 5:])
    torch.testing.assert_close(resumed.logits, expected.logits)


def test_early_exit_above_one_equals_full_greedy(family):
    nodes = build_nodes(RouteModels(family), EXITS)
    for prompt in prompts(count=4):
        expected = generate(family, prompt, EXITS[-1], max_new_tokens=12)
        result = early_exit_generate(nodes[0], local_chain(nodes), prompt, 12, threshold=1.01)
        assert torch.equal(result.tokens, expected)
        assert result.resolved_counts(3) == [0, 0, 12]


def early_exit_reference(
    family, prompt, steps: int, threshold: float
) -> tuple[list[int], list[int]]:
    """Per step, one uncached pass of the whole sequence through every exit; first confident."""
    tokens, tiers = prompt[0].tolist(), []
    for _ in range(steps):
        logits = family(torch.tensor([tokens]), exits=EXITS).logits
        for tier, depth in enumerate(EXITS):
            top, token = logits[depth][0, -1].softmax(-1).max(-1)
            if top >= threshold or depth == EXITS[-1]:
                tokens.append(int(token))
                tiers.append(tier)
                break
    return tokens, tiers


def test_early_exit_hands_up_skipped_positions_lazily(family):
    """Tiers resolve different tokens; the upper caches still see every position."""
    threshold = 0.3 if family.family.exit_style == "ruyi" else 0.6
    nodes = build_nodes(RouteModels(family), EXITS)
    used = [0, 0, 0]
    for prompt in prompts(count=5, seed=3):
        expected, tiers = early_exit_reference(family, prompt, 12, threshold)
        result = early_exit_generate(nodes[0], local_chain(nodes), prompt, 12, threshold)
        assert result.tokens[0].tolist() == expected
        assert [r.resolved_by for r in result.rounds] == tiers
        counts = result.resolved_counts(3)
        used = [u + c for u, c in zip(used, counts, strict=True)]
        # Only hand-ups travel: one request per token not resolved on the device.
        assert result.round_trips == 12 - counts[0]
    assert all(used), used


@pytest.mark.parametrize(
    ("model_type", "adapters"),
    [
        ("llama", None),
        ("qwen3", None),
        ("llama", ExitAdapterConfig(translator="low-rank", translator_rank=4, extra_layer=True)),
    ],
)
def test_speculative_on_other_architectures_and_exit_layers(model_type, adapters):
    hf = tiny_hf_model(tiny_config(model_type))
    family = from_dense_state_dict(spec_for(hf.config, [1, 2, 4], adapters), hf.state_dict())
    family.eval()
    nodes = build_nodes(RouteModels(family), [1, 2, 4])
    assert (nodes[0].head.layer is not None) == (adapters is not None)
    for prompt in prompts(count=3, seed=5):
        expected = generate(family, prompt, 4, max_new_tokens=8)
        result = speculative_generate(nodes[0], local_chain(nodes), prompt, 8, draft_tokens=2)
        assert torch.equal(result.tokens, expected)


@pytest.mark.parametrize("draft_tokens", [1, 3])
def test_acceptance_replayed_on_agreement_flags_equals_speculative_decoding(family, draft_tokens):
    exits = [EXITS[0], EXITS[-1]]
    models = RouteModels(family)
    nodes = build_nodes(models, exits)
    for prompt in prompts(3):
        result = speculative_generate(nodes[0], local_chain(nodes), prompt, 12, draft_tokens)
        text = result.tokens[0]
        flags = agreement_flags(models, exits, text)[exits[0]][prompt.shape[1] - 1 : -1]
        accepted, drafted, rounds = speculative_acceptance(flags, draft_tokens)
        assert accepted == sum(r.accepted for r in result.rounds)
        assert drafted == sum(r.drafted for r in result.rounds)
        assert rounds == len(result.rounds)
