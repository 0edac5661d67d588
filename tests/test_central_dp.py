import numpy as np
import pytest

from famflow.familial.errors import FamflowError
from famflow.strategies.central_dp import CentralDPSettings, central_dp_updates, holder_counts
from famflow.strategies.rules import get_rule
from famflow.strategies.rules.base import ClientUpdate

SIZE = 40_000
NOISE, CLIP = 2.0, 0.5


def update(arrays: dict[str, np.ndarray], examples: int = 10) -> ClientUpdate:
    return ClientUpdate(arrays=arrays, num_examples=examples, rank=4, scale=2.0)


def mean_change(updates: list[ClientUpdate], sent: list[dict], key: str) -> np.ndarray:
    changes = [
        u.arrays[key] - s[key] for u, s in zip(updates, sent, strict=True) if key in u.arrays
    ]
    return np.mean(changes, axis=0)


def test_noise_std_per_key_follows_the_holder_count():
    # "solo" is held by one node of four, "shared" by all four; nobody changed anything.
    sent = [{"shared": np.zeros(SIZE)} for _ in range(4)]
    sent[0]["solo"] = np.zeros(SIZE)
    updates = [update({k: v.astype(np.float32) for k, v in s.items()}) for s in sent]
    settings = CentralDPSettings(noise=NOISE, clip=CLIP)
    private = central_dp_updates(updates, sent, settings, np.random.default_rng(0))
    solo, shared = mean_change(private, sent, "solo"), mean_change(private, sent, "shared")
    assert np.std(solo) == pytest.approx(NOISE * CLIP / 1, rel=0.02)
    assert np.std(shared) == pytest.approx(NOISE * CLIP / 4, rel=0.02)
    assert abs(np.mean(shared)) < 0.01 and all(u.num_examples == 1 for u in private)


def test_each_node_change_is_clipped_over_all_its_keys():
    sent = [{"a": np.zeros(3), "b": np.zeros(4)}, {"a": np.zeros(3), "b": np.zeros(4)}]
    updates = [update({"a": np.full(3, 3.0), "b": np.full(4, 4.0)}), update(dict(sent[1]))]
    settings = CentralDPSettings(noise=1e-12, clip=CLIP)
    private = central_dp_updates(updates, sent, settings, np.random.default_rng(0))
    change = np.concatenate([private[0].arrays["a"], private[0].arrays["b"]])
    assert np.linalg.norm(change) == pytest.approx(CLIP, rel=1e-5)
    assert np.allclose(change[:3] / change[3:].mean(), 3.0 / 4.0)  # direction kept


def test_heterogeneous_ranks_count_holders_per_coordinate():
    values = [np.zeros((2, 8)), np.zeros((4, 8)), np.zeros((4, 8))]
    counts = holder_counts(values)
    assert counts.shape == (4, 8)
    assert (counts[:2] == 3).all() and (counts[2:] == 2).all()


def test_a_linear_rule_adds_the_per_key_noise_to_the_mean():
    # FFA averages B: the aggregate moves by exactly the mean clipped change plus the noise.
    key = "model.layers.0.self_attn.q_proj.lora_B"
    sent = [{key: np.zeros((16, 4))} for _ in range(3)]
    updates = [
        update({key: np.full((16, 4), 0.01 * (i + 1), np.float32)}, 10 * i + 1) for i in range(3)
    ]
    settings = CentralDPSettings(noise=1.0, clip=10.0)
    private = central_dp_updates(updates, sent, settings, np.random.default_rng(1))
    noise = np.random.default_rng(1).normal(size=(16, 4)) * 10.0 / 3
    aggregate = get_rule("ffa").aggregate({key: np.zeros((16, 4))}, private)
    assert np.allclose(aggregate[key], 0.02 + noise, atol=1e-5)


def test_off_and_bad_settings():
    updates = [update({"a": np.ones(2, np.float32)})]
    assert central_dp_updates(updates, [{"a": np.zeros(2)}], CentralDPSettings(), None) is updates  # type: ignore[arg-type]
    with pytest.raises(FamflowError, match="needs a clipping bound"):
        CentralDPSettings(noise=1.0)


def test_central_epsilon_is_opacus_gaussian_mechanism_composed_over_rounds():
    from opacus.accountants import RDPAccountant

    from famflow.strategies.central_dp import central_epsilon

    rdp = RDPAccountant()
    for _ in range(3):
        rdp.step(noise_multiplier=NOISE, sample_rate=1.0)
    after_three = central_epsilon(NOISE, 3, 1e-5)
    assert after_three == pytest.approx(rdp.get_epsilon(1e-5))
    assert after_three == pytest.approx(4.0113, abs=1e-3)
    assert central_epsilon(NOISE, 1, 1e-5) < after_three < central_epsilon(NOISE, 10, 1e-5)


@pytest.mark.parametrize(
    ("rule", "robust", "words"),
    [("flexlora", "none", "rule='ffa'"), ("ffa", "median", "robust='none'"), ("ffa", "none", None)],
)
def test_an_epsilon_is_stated_only_where_the_noised_mean_is_what_the_server_uses(
    rule, robust, words
):
    from famflow.strategies.central_dp import unstated_guarantee

    reason = unstated_guarantee(get_rule(rule), robust)
    assert reason is None if words is None else words in reason
