"""The CUDA path: training, evaluation and decoding on a GPU, in bf16 and with quantized trunks.

Marked ``gpu``: skipped with a reason where no CUDA GPU is visible (tests/conftest.py);
``benchmarks/gpu_check.sh`` runs them with a one-round federation of the default model.
"""

from __future__ import annotations

import pytest
import torch

from famflow.familial.evaluation import evaluate
from famflow.familial.hardware import resolve_device
from famflow.familial.inference import generate
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora
from famflow.familial.training import TrainConfig, train

pytestmark = pytest.mark.gpu


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (16, 32), generator=torch.Generator().manual_seed(5))


def test_auto_picks_the_gpu():
    assert resolve_device("auto") == "cuda"


@pytest.mark.parametrize(
    ("weights", "precision"),
    [("fp32", "fp32"), ("fp32", "bf16"), ("bf16", "fp32"), ("nf4", "bf16")],
)
def test_a_branch_trains_on_the_gpu(weights, precision):
    branch = load_branch("tiny", weights=weights, device="cuda")
    branch = attach_lora(branch, LoraSettings(rank=4)).to("cuda")
    config = TrainConfig(steps=10, batch_size=4, lr=1e-2, precision=precision)
    result = train(branch, _ids(), config)
    assert result.losses[-1] < result.losses[0]
    assert all(p.device.type == "cuda" for p in branch.parameters())


def test_evaluation_and_greedy_decoding_on_the_gpu_match_the_cpu():
    cpu = load_branch("tiny")
    gpu = load_branch("tiny").to("cuda")
    ids = _ids()
    on_cpu, on_gpu = evaluate(cpu, ids), evaluate(gpu, ids)
    for depth in cpu.held_exits:
        assert on_gpu[depth].loss == pytest.approx(on_cpu[depth].loss, rel=1e-3)
    prompt = ids[:1, :8]
    expected = generate(cpu, prompt, 4, max_new_tokens=12)
    assert torch.equal(generate(gpu, prompt.to("cuda"), 4, max_new_tokens=12).cpu(), expected)


def test_bf16_weights_evaluate_and_decode_on_the_gpu():
    branch = load_branch("tiny", weights="bf16").to("cuda")
    metrics = evaluate(branch, _ids())
    assert all(torch.isfinite(torch.tensor(m.loss)) for m in metrics.values())
    tokens = generate(branch, _ids()[:1, :8].to("cuda"), 4, max_new_tokens=8)
    assert tokens.shape == (1, 16)
