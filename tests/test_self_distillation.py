"""Self-distilled exits: a lower exit learns the top's greedy tokens; nothing else moves."""

import pytest
import torch

from famflow.familial import ExitAdapterConfig
from famflow.familial.continuations import greedy_continuations
from famflow.familial.errors import FamflowError
from famflow.familial.evaluation import continuation_agreement
from famflow.familial.familialize import FamilializeConfig
from famflow.familial.loading import from_dense_state_dict
from famflow.familial.self_distillation import (
    DistillConfig,
    distill_exits,
    draft_vocabulary,
    start_exit_layers_from_last,
)
from tests.conftest import spec_for, tiny_config, tiny_hf_model


def family(style: str):
    hf = tiny_hf_model(tiny_config("qwen2", num_hidden_layers=4, vocab_size=96), seed=1)
    if style == "ruyi":
        spec = spec_for(hf.config, [2, 4], exit_style="ruyi", shared_heads=False)
    else:
        spec = spec_for(hf.config, [2, 4], adapters=ExitAdapterConfig(extra_layer=True))
    model = from_dense_state_dict(spec, hf.state_dict()).eval()
    with torch.no_grad():  # a sharp top exit, so its greedy tokens vary with the context
        for head in {id(h): h for h in (model.lm_head, model.exit_head(4).lm_head) if h}.values():
            head.weight.mul_(20.0)
    return model


@pytest.mark.parametrize("style", ["shared-head", "ruyi"])
def test_distillation_raises_agreement_and_moves_only_the_lower_exits(style):
    model = family(style)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 96, (4,), generator=generator).tolist() for _ in range(24)]
    texts = greedy_continuations(model, prompts, 4, max_new_tokens=10)
    lengths = [len(p) for p in prompts]
    before = continuation_agreement(model, texts, lengths)[2]
    frozen = {n: p.clone() for n, p in model.named_parameters() if not n.startswith("exits.2.")}
    config = DistillConfig(steps=60, batch_size=8, lr=3e-3, draft_vocab=0)
    result = distill_exits(model, texts, config)
    after = continuation_agreement(model, texts, lengths)[2]
    assert after > before + 0.2, (before, after)
    assert result.losses[-1] < result.losses[0]
    for name, param in model.named_parameters():
        if name in frozen:
            assert param.equal(frozen[name]), name
    assert not any(p.requires_grad for p in model.parameters())


def test_exit_layers_can_start_from_the_last_decoder_layer():
    model = family("shared-head")
    assert start_exit_layers_from_last(model) == [2]
    last = model.model.layers[-1].state_dict()
    for name, tensor in model.exit_head(2).layer.state_dict().items():
        assert tensor.equal(last[name]), name
    assert (
        model.exit_head(2).layer.self_attn.layer_idx != model.model.layers[-1].self_attn.layer_idx
    )


def test_draft_vocabulary_keeps_the_most_frequent_tokens():
    sequences = [torch.tensor([3, 3, 3, 7, 7, 1]), torch.tensor([7, 5])]
    assert draft_vocabulary(sequences, 10, 2).tolist() == [3, 7]
    assert draft_vocabulary(sequences, 10, 0).tolist() == list(range(10))


def test_distillation_refuses_bad_input():
    hf = tiny_hf_model(tiny_config("qwen2", num_hidden_layers=4, vocab_size=96))
    spec = spec_for(hf.config, [2, 4], adapters=ExitAdapterConfig(extra_layer=True))
    top_only = from_dense_state_dict(spec, hf.state_dict(), exits=[4])
    with pytest.raises(FamflowError, match="holds only exit 4: distill a branch"):
        distill_exits(top_only, [torch.tensor([1, 2, 3])], DistillConfig())
    with pytest.raises(FamflowError, match="No sequences to distill on"):
        distill_exits(family("shared-head"), [], DistillConfig())
    with pytest.raises(FamflowError, match="draft_vocab must be 0"):
        DistillConfig(draft_vocab=-1)
    with pytest.raises(FamflowError, match="Unknown precision 'fp8': use one of bf16, fp32"):
        DistillConfig(precision="fp8")
    with pytest.raises(FamflowError, match="Unknown --layer-init 'first'"):
        FamilializeConfig(layer_init="first")
