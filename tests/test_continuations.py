"""Batched, left-padded greedy continuations equal one-prompt-at-a-time decoding; the cache."""

import pytest
import torch

from famflow.familial.continuation_cache import cached_continuations, continuation_cache_file
from famflow.familial.continuations import greedy_continuations
from famflow.familial.errors import FamflowError
from famflow.familial.inference import generate
from famflow.familial.loading import from_dense_state_dict
from tests.conftest import spec_for, tiny_config, tiny_hf_model

PROMPTS = [[5, 9, 13], [7], [1, 2, 3, 4, 5, 6, 7], [40, 41], [3, 3, 3, 3]]


@pytest.mark.parametrize("style", ["shared-head", "ruyi"])
def test_batched_continuations_equal_single_prompt_decoding(style):
    hf = tiny_hf_model(tiny_config("qwen2", num_hidden_layers=4))
    extra = {"shared_heads": False} if style == "ruyi" else {}
    family = from_dense_state_dict(
        spec_for(hf.config, [2, 4], exit_style=style, **extra), hf.state_dict()
    ).eval()
    for depth in (2, 4):
        rows = greedy_continuations(family, PROMPTS, depth, max_new_tokens=6, batch_size=3)
        for prompt, row in zip(PROMPTS, rows, strict=True):
            alone = generate(family, torch.tensor([prompt]), depth, max_new_tokens=6)[0]
            assert torch.equal(row, alone)


def test_a_continuation_stops_after_eos():
    hf = tiny_hf_model(tiny_config("llama", num_hidden_layers=2))
    family = from_dense_state_dict(spec_for(hf.config, [2]), hf.state_dict()).eval()
    free = greedy_continuations(family, PROMPTS[:1], 2, max_new_tokens=5)[0]
    eos = int(free[len(PROMPTS[0]) + 1])  # the second generated token
    stopped = greedy_continuations(family, PROMPTS[:1], 2, max_new_tokens=5, eos_token_id=eos)[0]
    assert stopped.tolist() == free[: len(PROMPTS[0]) + 2].tolist()
    with pytest.raises(FamflowError, match="empty"):
        greedy_continuations(family, [[]], 2, max_new_tokens=5)


def test_continuations_are_made_once_and_a_corrupt_cache_is_remade(tmp_path, monkeypatch):
    monkeypatch.setenv("FAMFLOW_CACHE", str(tmp_path))
    file = continuation_cache_file({"model": "m", "exit": 4}, PROMPTS)
    assert file != continuation_cache_file({"model": "m", "exit": 2}, PROMPTS)
    rows = [torch.tensor([*p, 1]) for p in PROMPTS]
    _, cached = cached_continuations(file, lambda: rows)
    assert not cached
    again, cached = cached_continuations(file, lambda: pytest.fail("made twice"))
    assert cached and [r.tolist() for r in again] == [r.tolist() for r in rows]
    file.write_bytes(b"not safetensors")
    remade, cached = cached_continuations(file, lambda: rows)
    assert not cached and len(remade) == len(rows)
