import pytest
import torch
from torch.testing import assert_close

from famflow.familial import ExitAdapterConfig, FamflowError
from famflow.familial.inference import generate
from famflow.familial.loading import from_dense_state_dict
from tests.conftest import spec_for, tiny_config, tiny_hf_model, truncated

EXITS = [1, 2, 4]


def test_shared_head_exits_equal_truncated_hf_model(model_type, tokens):
    hf = tiny_hf_model(tiny_config(model_type))
    family = from_dense_state_dict(spec_for(hf.config, EXITS), hf.state_dict()).eval()
    output = family(tokens, exits=EXITS)
    for depth in EXITS[:-1]:
        assert_close(output.logits[depth], truncated(hf, depth)(tokens).logits)


def test_deepest_exit_equals_untouched_hf_model(model_type, tokens):
    hf = tiny_hf_model(tiny_config(model_type))
    family = from_dense_state_dict(spec_for(hf.config, EXITS), hf.state_dict()).eval()
    assert_close(family(tokens, exits=[4]).logits[4], hf(tokens).logits)


def test_one_trunk_pass_equals_separate_passes(tokens):
    hf = tiny_hf_model(tiny_config("qwen2"))
    adapters = ExitAdapterConfig(translator="low-rank", translator_rank=4, extra_layer=True)
    family = from_dense_state_dict(spec_for(hf.config, EXITS, adapters), hf.state_dict()).eval()
    _perturb(family)
    together = family(tokens, exits=EXITS, output_hidden_states=True)
    for depth in EXITS:
        alone = family(tokens, exits=[depth], output_hidden_states=True)
        assert_close(together.logits[depth], alone.logits[depth])
        assert_close(together.hidden_states[depth], alone.hidden_states[depth])


def test_branch_holds_only_its_modules():
    hf = tiny_hf_model(tiny_config())
    branch = from_dense_state_dict(spec_for(hf.config, EXITS), hf.state_dict(), exit_depth=2)
    assert len(branch.model.layers) == 2
    assert branch.held_exits == [1, 2]
    own_path = from_dense_state_dict(spec_for(hf.config, EXITS), hf.state_dict(), 2, exits=[2])
    assert list(own_path.exits) == ["2"]
    with pytest.raises(FamflowError, match="not held by this branch"):
        branch(torch.zeros(1, 3, dtype=torch.long), exits=[4])


@pytest.mark.parametrize("translator", ["full", "low-rank"])
def test_identity_exit_adapters_equal_plain_shared_head_exit(translator, tokens):
    hf = tiny_hf_model(tiny_config())
    plain = from_dense_state_dict(spec_for(hf.config, EXITS), hf.state_dict()).eval()
    adapters = ExitAdapterConfig(norm=True, translator=translator, translator_rank=4)
    adapted = from_dense_state_dict(spec_for(hf.config, EXITS, adapters), hf.state_dict()).eval()
    assert adapted.exit_head(1).translator is not None and adapted.exit_head(1).norm is not None
    expected, actual = plain(tokens, exits=EXITS), adapted(tokens, exits=EXITS)
    for depth in EXITS:
        assert_close(actual.logits[depth], expected.logits[depth])


def test_extra_exit_layer_starts_as_a_copy_of_the_next_trunk_layer(tokens):
    hf = tiny_hf_model(tiny_config())
    adapters = ExitAdapterConfig(norm=True, translator="none", extra_layer=True)
    family = from_dense_state_dict(spec_for(hf.config, [2, 4], adapters), hf.state_dict()).eval()
    assert family.exit_head(4).layer is None
    # Exit 2 with a copy of layer 2 runs what the dense model runs in its first 3 layers.
    assert_close(family(tokens, exits=[2]).logits[2], truncated(hf, 3)(tokens).logits)


@pytest.mark.parametrize("style", ["shared-head", "ruyi"])
def test_cached_generation_matches_recomputation(style, tokens):
    hf = tiny_hf_model(tiny_config("qwen2"))
    extra = {"shared_heads": False} if style == "ruyi" else {}
    spec = spec_for(hf.config, [2, 4], exit_style=style, **extra)
    family = from_dense_state_dict(spec, hf.state_dict())
    _perturb(family)
    family.eval()
    prompt = tokens[:1, :4]
    for depth in [2, 4]:
        generated = generate(family, prompt, depth, max_new_tokens=5)
        full = family(generated, exits=[depth]).logits[depth]
        assert torch.equal(
            full[:, prompt.shape[1] - 1 : -1].argmax(-1), generated[:, prompt.shape[1] :]
        )


def test_exit_beyond_layer_count_is_one_clear_sentence():
    with pytest.raises(
        FamflowError, match=r"beyond the model's 4 layers: choose exits between 1 and 4\."
    ):
        spec_for(tiny_config(), [2, 6])


def _perturb(model: torch.nn.Module) -> None:
    """Move exit parameters off their identity start so that every part shows in the logits."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("exits."):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
