import numpy as np
import pytest
import torch

from famflow.familial import ExitAdapterConfig, FamflowError
from famflow.familial.calibration import (
    LensStatistics,
    calibratable_exits,
    calibrate,
    lens_statistics,
    solve_translator,
)
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora
from tests.conftest import random_spec

FULL = ExitAdapterConfig(norm=True, translator="full")


def family(adapters: ExitAdapterConfig = FULL, branch: int = 4):
    spec = random_spec([1, 2, 4], adapters, vocab_size=256, initializer_range=0.2)
    return load_branch(spec, branch)


@pytest.fixture(scope="module")
def blocks() -> torch.Tensor:
    return torch.randint(0, 256, (12, 16), generator=torch.Generator().manual_seed(0))


def hidden_pairs(model, blocks: torch.Tensor, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(the exit's normed hidden state, the deepest exit's head input) for every token."""
    model.exit_head(depth).translator.reset_identity()
    with torch.no_grad():
        out = model(blocks, exits=[depth, 4], output_hidden_states=True)
    x = out.hidden_states[depth].reshape(-1, 32).double().numpy()
    y = out.hidden_states[4].reshape(-1, 32).double().numpy()
    return x, y


def test_statistics_of_two_halves_add_up_to_the_whole(blocks):
    model = family()
    whole = lens_statistics(model, blocks)
    first, second = lens_statistics(model, blocks[:5]), lens_statistics(model, blocks[5:])
    assert sorted(whole) == [1, 2]
    for depth in whole:
        summed = first[depth] + second[depth]
        assert summed.tokens == whole[depth].tokens == 12 * 16
        np.testing.assert_allclose(summed.gram, whole[depth].gram, rtol=1e-10)
        np.testing.assert_allclose(summed.cross, whole[depth].cross, rtol=1e-10)


def test_solution_is_the_least_squares_fit_to_the_deepest_exit(blocks):
    model = family()
    stats = lens_statistics(model, blocks)[1]
    weight = solve_translator(stats, ridge=0.0)
    x, y = hidden_pairs(model, blocks, 1)
    expected, *_ = np.linalg.lstsq(x, y, rcond=None)
    np.testing.assert_allclose(weight, expected.T, atol=1e-4)


def test_calibrated_exits_are_closer_to_the_deepest_than_identity(blocks):
    model = attach_lora(family(), LoraSettings(rank=2))
    errors = {}
    for label in ("identity", "calibrated"):
        if label == "calibrated":
            assert calibrate(model, blocks) == [1, 2]
        with torch.no_grad():
            out = model(blocks, exits=[1, 2, 4], output_hidden_states=True)
        target = out.hidden_states[4]
        errors[label] = [float((out.hidden_states[d] - target).pow(2).mean()) for d in (1, 2)]
    assert all(c < 0.75 * i for c, i in zip(errors["calibrated"], errors["identity"], strict=True))


def test_only_full_translators_below_the_deepest_exit_are_calibrated():
    assert calibratable_exits(family(branch=2)) == [1]
    assert calibratable_exits(family(ExitAdapterConfig(norm=True, translator="none"))) == []
    low_rank = ExitAdapterConfig(norm=True, translator="low-rank", translator_rank=4)
    assert calibratable_exits(family(low_rank)) == []


def test_bad_statistics_are_refused():
    good = LensStatistics(np.eye(32), np.zeros((32, 32)), 10)
    good.check(32)
    with pytest.raises(FamflowError, match="shapes"):
        LensStatistics(np.eye(5), np.zeros((5, 4)), 10).check(32)
    with pytest.raises(FamflowError, match="NaN"):
        LensStatistics(np.full((32, 32), np.nan), np.zeros((32, 32)), 10).check(32)
    with pytest.raises(FamflowError, match="0 tokens"):
        LensStatistics(np.eye(32), np.zeros((32, 32)), 0).check(32)
    with pytest.raises(FamflowError, match="different hidden sizes"):
        good + LensStatistics(np.eye(5), np.zeros((5, 4)), 10)
