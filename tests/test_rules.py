import copy

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from famflow.familial.errors import FamflowError
from famflow.strategies.rules import (
    FFA,
    RULES,
    ClientUpdate,
    FedIT,
    FlexLoRA,
    HetLoRA,
    get_rule,
    lora_products,
    weighted_mean_per_key,
)
from famflow.strategies.server_step import server_step

IN, OUT, HIDDEN = 12, 10, 6
GLOBAL_RANK = 8
LAYERS = 5  # the global family; this round's clients hold 2, 4 and 4 layers
EXAMPLES = (10, 30, 60)


def module(layer):
    return f"trunk.{layer}.self_attn.q_proj"


def exit_keys(depth):
    return {
        f"exit.{depth}.norm.weight": (HIDDEN,),
        f"exit.{depth}.translator.proj.weight": (HIDDEN, HIDDEN),
    }


def shapes(depth, rank, exits=None):
    """Canonical keys and shapes of a branch of ``depth`` layers at LoRA ``rank``."""
    found = {}
    for layer in range(depth):
        found[f"{module(layer)}.A"] = (rank, IN)
        found[f"{module(layer)}.B"] = (OUT, rank)
    for exit_depth in exits or [depth]:
        found.update(exit_keys(exit_depth))
    return found


def random_state(rng, key_shapes):
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in key_shapes.items()}


def global_state(rank=GLOBAL_RANK, seed=0, zero_b=False):
    state = random_state(np.random.default_rng(seed), shapes(LAYERS, rank, exits=[2, 4, 5]))
    if zero_b:
        state.update({k: np.zeros_like(v) for k, v in state.items() if k.endswith(".B")})
    return state


def client_updates(ranks=(GLOBAL_RANK,) * 3, scales=(2.0, 2.0, 2.0), seed=1, frozen_a=None):
    """Three clients holding 2, 4 and 4 layers (exit 2 held by one, exit 4 by two)."""
    rng = np.random.default_rng(seed)
    updates = []
    for depth, rank, scale, examples in zip((2, 4, 4), ranks, scales, EXAMPLES, strict=True):
        arrays = random_state(rng, shapes(depth, rank))
        if frozen_a is not None:
            arrays.update({k: frozen_a[k][:rank].copy() for k in arrays if k.endswith(".A")})
        updates.append(ClientUpdate(arrays, examples, rank, scale))
    return updates


def test_dense_and_trunk_keys_average_over_exactly_their_holders():
    updates = client_updates()
    x0, x1, x2 = (u.arrays for u in updates)
    key3 = f"{module(3)}.B"
    key0 = f"{module(0)}.A"
    exit4 = "exit.4.translator.proj.weight"
    mean = weighted_mean_per_key(updates, [key0, key3, exit4, "exit.2.norm.weight", "nobody"])
    # Hand-written: layer 3 and exit 4 are held by clients 1 and 2 (30 + 60 examples).
    assert_allclose(mean[key3], (30 * x1[key3] + 60 * x2[key3]) / 90, rtol=1e-5, atol=1e-6)
    assert_allclose(mean[exit4], (30 * x1[exit4] + 60 * x2[exit4]) / 90, rtol=1e-5, atol=1e-6)
    assert_allclose(
        mean[key0], (10 * x0[key0] + 30 * x1[key0] + 60 * x2[key0]) / 100, rtol=1e-5, atol=1e-6
    )
    assert_array_equal(mean["exit.2.norm.weight"], x0["exit.2.norm.weight"])
    assert "nobody" not in mean


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_averages_dense_keys_per_holder_and_keeps_unsent_keys(name):
    g = global_state()
    updates = client_updates(frozen_a=g)
    before_g, before_u = copy.deepcopy(g), copy.deepcopy([u.arrays for u in updates])
    new = get_rule(name).aggregate(g, updates)

    assert set(new) == set(g)
    assert all(v.dtype == np.float32 for v in new.values())
    x0, x1, x2 = (u.arrays for u in updates)
    for key in exit_keys(4):
        assert_allclose(new[key], (30 * x1[key] + 60 * x2[key]) / 90, rtol=1e-5, atol=1e-6)
    for key in exit_keys(2):
        assert_array_equal(new[key], x0[key])
    for key in [*exit_keys(5), f"{module(4)}.A", f"{module(4)}.B"]:
        assert_array_equal(new[key], g[key])
        assert new[key] is not g[key]
    # Inputs are never mutated.
    for key, value in before_g.items():
        assert_array_equal(g[key], value)
    for update, arrays in zip(updates, before_u, strict=True):
        for key, value in arrays.items():
            assert_array_equal(update.arrays[key], value)


def test_fedit_averages_factors_separately():
    g = global_state()
    updates = client_updates()
    x0, x1, x2 = (u.arrays for u in updates)
    new = FedIT().aggregate(g, updates)
    for key in (f"{module(1)}.A", f"{module(1)}.B"):
        assert_allclose(
            new[key], (10 * x0[key] + 30 * x1[key] + 60 * x2[key]) / 100, rtol=1e-5, atol=1e-6
        )
    for key in (f"{module(2)}.A", f"{module(2)}.B"):
        assert_allclose(new[key], (30 * x1[key] + 60 * x2[key]) / 90, rtol=1e-5, atol=1e-6)
    sliced = FedIT().slice_for(new, shapes(2, GLOBAL_RANK), GLOBAL_RANK, 2.0)
    assert set(sliced) == set(shapes(2, GLOBAL_RANK))
    assert_array_equal(sliced[f"{module(1)}.B"], new[f"{module(1)}.B"])


def test_fedit_refuses_mixed_ranks():
    rule = FedIT()
    g = global_state(rank=4)
    updates = client_updates(ranks=(4, 8, 8))
    with pytest.raises(
        FamflowError,
        match=rf"^{rule.name} needs one LoRA rank for all clients, got ranks \[4, 8\]: "
        "use ffa, flexlora or hetlora for heterogeneous ranks.$",
    ):
        rule.aggregate(g, updates)
    with pytest.raises(FamflowError, match="one LoRA scale"):
        rule.aggregate(g, client_updates(ranks=(4, 4, 4), scales=(4.0, 4.0, 1.0)))
    with pytest.raises(FamflowError, match="differs from the global rank 4"):
        rule.validate(g, client_updates(ranks=(8, 8, 8))[0])
    with pytest.raises(FamflowError, match="does not fit LoRA rank 8"):
        rule.slice_for(g, shapes(2, 4), 8, 2.0)


def test_ffa_with_heterogeneous_ranks_is_exact_on_the_nested_frozen_a():
    g = global_state()
    updates = client_updates(ranks=(2, 4, 8), frozen_a=g)
    new = FFA().aggregate(g, updates)
    for layer, holders in ((0, (0, 1, 2)), (3, (1, 2))):
        a, b = f"{module(layer)}.A", f"{module(layer)}.B"
        assert_array_equal(new[a], g[a])
        weights = np.array([EXAMPLES[k] for k in holders], dtype=np.float64)
        weights /= weights.sum()
        exact = sum(  # each client's product with its own rows of the frozen A
            p * updates[k].arrays[b].astype(np.float64) @ g[a][: updates[k].rank]
            for p, k in zip(weights, holders, strict=True)
        )
        assert_allclose(new[b].astype(np.float64) @ g[a], exact, rtol=1e-5, atol=1e-6)
    with pytest.raises(FamflowError, match="exceeds the global rank 8"):
        FFA().validate(g, client_updates(ranks=(16, 8, 8))[0])
    sliced = FFA().slice_for(new, shapes(2, 4), 4, 2.0)
    assert sliced[f"{module(1)}.A"].shape == (4, IN) and sliced[f"{module(1)}.B"].shape == (OUT, 4)
    assert_array_equal(sliced[f"{module(1)}.B"], new[f"{module(1)}.B"][:, :4])


def test_ffa_is_exact_and_keeps_the_frozen_a():
    g = global_state()
    updates = client_updates(frozen_a=g)
    updates[0] = ClientUpdate(  # FFA clients may leave A out altogether
        {k: v for k, v in updates[0].arrays.items() if not k.endswith(".A")}, 10, 8, 2.0
    )
    new = FFA().aggregate(g, updates)
    scale = 2.0
    for layer, holders in ((0, (0, 1, 2)), (3, (1, 2))):
        a, b = f"{module(layer)}.A", f"{module(layer)}.B"
        assert_array_equal(new[a], g[a])
        weights = np.array([EXAMPLES[k] for k in holders], dtype=np.float64)
        weights /= weights.sum()
        exact = sum(
            p * scale * updates[k].arrays[b].astype(np.float64) @ g[a].astype(np.float64)
            for p, k in zip(weights, holders, strict=True)
        )
        assert_allclose(scale * new[b].astype(np.float64) @ g[a], exact, rtol=1e-5, atol=1e-6)

    drifted = copy.deepcopy(updates[1].arrays)
    drifted[f"{module(2)}.A"] = drifted[f"{module(2)}.A"] + 0.5
    with pytest.raises(FamflowError, match="one LoRA scale"):
        FFA().aggregate(g, client_updates(scales=(2.0, 2.0, 1.0), frozen_a=g))
    with pytest.raises(FamflowError, match=r"trunk.2.self_attn.q_proj.A differs from the frozen"):
        FFA().aggregate(g, [ClientUpdate(drifted, 30, 8, 2.0)])
    # An A through a lossy codec (within 1e-2 of its largest value) is accepted.
    lossy = copy.deepcopy(updates[1].arrays)
    lossy[f"{module(2)}.A"] = lossy[f"{module(2)}.A"] * np.float32(1.001)
    kept = FFA().aggregate(g, [ClientUpdate(lossy, 30, 8, 2.0)])
    assert_array_equal(kept[f"{module(2)}.A"], g[f"{module(2)}.A"])


def weighted_product(updates, holders, mod):
    weights = np.array([updates[k].num_examples for k in holders], dtype=np.float64)
    weights /= weights.sum()
    return sum(
        p
        * updates[k].scale
        * updates[k].arrays[f"{mod}.B"].astype(np.float64)
        @ updates[k].arrays[f"{mod}.A"].astype(np.float64)
        for p, k in zip(weights, holders, strict=True)
    )


def best_rank(matrix, rank):
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def test_flexlora_products_are_exact_and_truncation_is_exact_up_to_the_global_rank():
    g = global_state()
    ranks, scales = (2, 2, 4), (16 / 2, 16 / 2, 16 / 4)  # alpha 16, heterogeneous tiers
    updates = client_updates(ranks=ranks, scales=scales)
    products = lora_products(updates)
    assert set(products) == {module(layer) for layer in range(4)}
    assert_allclose(products[module(0)], weighted_product(updates, (0, 1, 2), module(0)), 1e-5)
    assert_allclose(products[module(3)], weighted_product(updates, (1, 2), module(3)), 1e-5)

    new = FlexLoRA().aggregate(g, updates)
    for layer in range(4):  # every product has rank <= 2 + 2 + 4 = 8 = R: no loss
        a, b = new[f"{module(layer)}.A"], new[f"{module(layer)}.B"]
        assert a.shape == (GLOBAL_RANK, IN) and b.shape == (OUT, GLOBAL_RANK)
        assert_allclose(b @ a, products[module(layer)], rtol=1e-4, atol=1e-4)
        assert_allclose(a @ a.T, np.eye(GLOBAL_RANK), atol=1e-5)  # orthonormal rows
    assert_array_equal(new[f"{module(4)}.A"], g[f"{module(4)}.A"])

    for rank, scale in ((2, 8.0), (4, 4.0), (8, 2.0)):
        sliced = FlexLoRA().slice_for(new, shapes(4, rank), rank, scale)
        assert set(sliced) == set(shapes(4, rank))
        a, b = sliced[f"{module(0)}.A"], sliced[f"{module(0)}.B"]
        assert a.shape == (rank, IN) and b.shape == (OUT, rank)
        expected = best_rank(products[module(0)].astype(np.float64), rank)
        assert_allclose(scale * b @ a, expected, rtol=1e-4, atol=1e-4)


def test_flexlora_from_changes_keeps_what_low_rank_starts_could_not_carry():
    g = global_state()
    w = {layer: g[f"{module(layer)}.B"] @ g[f"{module(layer)}.A"] for layer in range(4)}
    ranks, scales = (2, 2, 4), (8.0, 8.0, 4.0)
    starts = [
        FlexLoRA().slice_for(g, shapes(depth, rank), rank, scale)
        for depth, rank, scale in zip((2, 4, 4), ranks, scales, strict=True)
    ]

    def updates(change_b):
        rng = np.random.default_rng(3)
        found = []
        for start, rank, scale, examples in zip(starts, ranks, scales, EXAMPLES, strict=True):
            arrays = copy.deepcopy(start)
            for key in arrays:
                if key.endswith(".B"):
                    arrays[key] += change_b * rng.standard_normal(arrays[key].shape)
            found.append(ClientUpdate(arrays, examples, rank, scale, start=start))
        return found

    # Nobody changed anything: the global stays; the mean product keeps only truncations of it.
    idle = updates(0.0)
    new = FlexLoRA().aggregate(g, idle)
    for layer in range(4):
        got = new[f"{module(layer)}.B"] @ new[f"{module(layer)}.A"]
        assert_allclose(got, w[layer], rtol=1e-4, atol=1e-4)
    mean = FlexLoRA(from_changes=False).aggregate(g, idle)
    lost = mean[f"{module(0)}.B"] @ mean[f"{module(0)}.A"] - w[0]
    assert np.linalg.norm(lost) > 0.1 * np.linalg.norm(w[0])

    # Changes of B stay in W's row space (rank <= R): W + sum_k p_k s_k (B_k - B0_k) A0_k.
    moved = updates(0.1)
    new = FlexLoRA().aggregate(g, moved)
    weights = np.array(EXAMPLES, dtype=np.float64) / sum(EXAMPLES)  # all three hold layer 0
    expected = w[0] + sum(
        p
        * u.scale
        * (u.arrays[f"{module(0)}.B"] - u.start[f"{module(0)}.B"])
        @ u.start[f"{module(0)}.A"]
        for p, u in zip(weights, moved, strict=True)
    )
    got = new[f"{module(0)}.B"] @ new[f"{module(0)}.A"]
    assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_flexlora_reads_its_own_global_without_an_svd_and_folds_truncated_starts_into_it():
    from famflow.strategies.rules.flexlora import _kept_by_starts, factored_svd, stored_svd

    fresh = global_state()
    assert stored_svd(fresh[f"{module(0)}.B"], fresh[f"{module(0)}.A"]) is None
    g = FlexLoRA().aggregate(fresh, client_updates(ranks=(2, 2, 4), scales=(8.0, 8.0, 4.0)))
    b_g, a_g = g[f"{module(0)}.B"], g[f"{module(0)}.A"]
    u, s, vt = stored_svd(b_g, a_g)
    u_ref, s_ref, vt_ref = factored_svd(b_g, a_g)
    assert_allclose(s, s_ref, rtol=1e-5, atol=1e-6)
    assert_allclose(u[:, :4] * s[:4], u_ref[:, :4] * s_ref[:4], atol=1e-5)
    assert_allclose(vt[:4], vt_ref[:4], atol=1e-5)

    ranks, scales = (2, 2, 4), (8.0, 8.0, 4.0)
    starts = [
        FlexLoRA().slice_for(g, shapes(depth, rank), rank, scale)
        for depth, rank, scale in zip((2, 4, 4), ranks, scales, strict=True)
    ]
    rng = np.random.default_rng(5)
    moved = []
    for start, rank, scale, examples in zip(starts, ranks, scales, EXAMPLES, strict=True):
        arrays = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in start.items()}
        moved.append(ClientUpdate(arrays, examples, rank, scale, start=start))
    p = np.array(EXAMPLES, dtype=np.float64) / sum(EXAMPLES)  # all three hold layer 0
    kept = _kept_by_starts(moved, module(0), b_g, a_g)
    assert_allclose(kept, [0, 0, 1 - p[2], 1 - p[2], 1, 1, 1, 1], atol=1e-12)

    new = FlexLoRA().aggregate(g, moved)
    expected = b_g.astype(np.float64) @ a_g + sum(
        q
        * u.scale
        * (u.arrays[f"{module(0)}.B"] @ u.arrays[f"{module(0)}.A"]
           - u.start[f"{module(0)}.B"] @ u.start[f"{module(0)}.A"])
        for q, u in zip(p, moved, strict=True)
    )  # fmt: skip
    got = new[f"{module(0)}.B"] @ new[f"{module(0)}.A"]
    assert_allclose(got, best_rank(expected, GLOBAL_RANK), rtol=1e-4, atol=1e-4)


def test_flexlora_truncates_a_product_beyond_the_global_rank_optimally():
    g = global_state(rank=4)
    updates = client_updates(ranks=(4, 4, 4), scales=(1.0, 1.0, 1.0))
    new = FlexLoRA().aggregate(g, updates)
    exact = weighted_product(updates, (0, 1, 2), module(0))  # rank 12 > R = 4
    got = new[f"{module(0)}.B"] @ new[f"{module(0)}.A"]
    assert_allclose(got, best_rank(exact, 4), rtol=1e-4, atol=1e-4)
    assert np.linalg.norm(got - exact) > 0.1  # the truncation loses something here


def test_flexlora_first_round_slice_keeps_a_trainable():
    g = global_state(zero_b=True)  # a fresh branch: random A, zero B
    sliced = FlexLoRA().slice_for(g, shapes(2, 4), 4, 4.0)
    a, b = sliced[f"{module(0)}.A"], sliced[f"{module(0)}.B"]
    assert_array_equal(b, np.zeros((OUT, 4)))
    assert_allclose(a @ a.T, np.eye(4), atol=1e-5)
    # The rows lie in the global A's row space (8 of 12 dimensions): its random init is kept.
    projection = g[f"{module(0)}.A"].T @ np.linalg.pinv(g[f"{module(0)}.A"].T)
    assert_allclose(projection @ a.T, a.T, atol=1e-5)


def test_flexlora_refuses_ranks_above_the_global_rank():
    g = global_state(rank=4)
    with pytest.raises(FamflowError, match="rank 8 exceeds the global rank 4"):
        FlexLoRA().aggregate(g, client_updates(ranks=(4, 8, 4)))
    with pytest.raises(FamflowError, match="rank 8 exceeds the global rank 4"):
        FlexLoRA().slice_for(g, shapes(2, 8), 8, 2.0)


def test_hetlora_zero_pads_averages_and_truncates():
    g = global_state()
    updates = client_updates(ranks=(2, 2, 4), scales=(8.0, 8.0, 4.0))
    x0, x1, x2 = (u.arrays for u in updates)
    new = HetLoRA().aggregate(g, updates)
    a, b = f"{module(0)}.A", f"{module(0)}.B"
    assert new[a].shape == (GLOBAL_RANK, IN) and new[b].shape == (OUT, GLOBAL_RANK)
    assert_allclose(
        new[a][:2], (10 * x0[a] + 30 * x1[a] + 60 * x2[a][:2]) / 100, rtol=1e-5, atol=1e-6
    )
    assert_allclose(new[a][2:4], 60 * x2[a][2:4] / 100, rtol=1e-5)  # padded zeros count
    assert_allclose(new[b][:, 2:4], 60 * x2[b][:, 2:4] / 100, rtol=1e-5, atol=1e-6)
    assert_array_equal(new[a][4:], g[a][4:])  # beyond every holder's rank: kept
    assert_array_equal(new[b][:, 4:], g[b][:, 4:])
    a3 = f"{module(3)}.A"  # held by the rank-2 and rank-4 clients of 4 layers
    assert_allclose(new[a3][:2], (30 * x1[a3] + 60 * x2[a3][:2]) / 90, rtol=1e-5, atol=1e-6)

    sliced = HetLoRA().slice_for(new, shapes(2, 2), 2, 8.0)
    assert set(sliced) == set(shapes(2, 2))
    assert_array_equal(sliced[a], new[a][:2])
    assert_array_equal(sliced[b], new[b][:, :2])
    assert_array_equal(sliced["exit.2.norm.weight"], new["exit.2.norm.weight"])


def test_hetlora_norm_weighting_follows_the_update_norms():
    g = global_state()
    updates = client_updates(ranks=(2, 2, 4), scales=(8.0, 8.0, 4.0))
    a, b = f"{module(0)}.A", f"{module(0)}.B"
    norms = np.array(
        [np.linalg.norm(u.scale * u.arrays[b].astype(np.float64) @ u.arrays[a]) for u in updates]
    )
    p = norms / norms.sum()
    new = HetLoRA(norm_weighted=True).aggregate(g, updates)
    x0, x1, x2 = (u.arrays[a] for u in updates)
    assert_allclose(new[a][:2], p[0] * x0 + p[1] * x1 + p[2] * x2[:2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(p, np.array(EXAMPLES) / 100)


@pytest.mark.parametrize("name", sorted(RULES))
def test_malformed_updates_are_refused_with_one_sentence(name):
    rule = get_rule(name)
    g = global_state()
    good = client_updates(frozen_a=g)[1].arrays
    key = f"{module(0)}.B"
    wrong_shape = {**good, key: np.zeros((OUT + 1, GLOBAL_RANK), dtype=np.float32)}
    with pytest.raises(FamflowError, match=rf"^Client update for {key} has shape \(11, 8\), "):
        rule.aggregate(g, [ClientUpdate(wrong_shape, 5, GLOBAL_RANK, 2.0)])
    dense = {**good, "exit.4.norm.weight": np.zeros(HIDDEN + 1, dtype=np.float32)}
    with pytest.raises(FamflowError, match=r"global state has \(6,\)"):
        rule.aggregate(g, [ClientUpdate(dense, 5, GLOBAL_RANK, 2.0)])
    with pytest.raises(FamflowError, match="keys the global state does not hold"):
        rule.aggregate(g, [ClientUpdate({**good, "trunk.9.x.A": good[key]}, 5, 8, 2.0)])
    poisoned = {**good, "exit.4.norm.weight": np.full(HIDDEN, np.nan, dtype=np.float32)}
    with pytest.raises(FamflowError, match="NaN or inf"):
        rule.aggregate(g, [ClientUpdate(poisoned, 5, GLOBAL_RANK, 2.0)])
    with pytest.raises(FamflowError, match="holds no"):
        rule.slice_for(g, ["trunk.9.x.A"], GLOBAL_RANK, 2.0)


def test_update_fields_and_registry_are_checked():
    with pytest.raises(FamflowError, match="at least one example"):
        ClientUpdate({}, 0, 4, 2.0)
    with pytest.raises(FamflowError, match="must be positive"):
        ClientUpdate({}, 1, 4, float("nan"))
    with pytest.raises(
        FamflowError,
        match=r"^Unknown aggregation rule 'fedavg': use one of fedit, ffa, flexlora, hetlora\.$",
    ):
        get_rule("fedavg")
    assert isinstance(get_rule("hetlora"), HetLoRA)


def test_a_server_learning_rate_scales_each_held_factor_step_and_keeps_unsent_keys():
    g = global_state()
    new = FedIT().aggregate(g, client_updates())
    stepped = server_step(g, new, 2.5, on_products=False)
    for key in g:
        assert_allclose(stepped[key], g[key] + 2.5 * (new[key] - g[key]), rtol=1e-5, atol=1e-5)
    assert_array_equal(stepped["exit.5.norm.weight"], g["exit.5.norm.weight"])  # held by none
    assert server_step(g, new, 1.0, on_products=False) is new


def test_flexlora_server_step_is_the_best_global_rank_fit_of_the_stepped_product():
    g = global_state(rank=GLOBAL_RANK, seed=3)
    new = FlexLoRA().aggregate(g, client_updates(ranks=(2, 4, 8)))
    stepped = server_step(g, new, 3.0, on_products=True)
    for layer in range(LAYERS):
        m = module(layer)
        old_w = g[f"{m}.B"].astype(np.float64) @ g[f"{m}.A"]
        new_w = new[f"{m}.B"].astype(np.float64) @ new[f"{m}.A"]
        u, s, vt = np.linalg.svd(old_w + 3.0 * (new_w - old_w))
        best = (u[:, :GLOBAL_RANK] * s[:GLOBAL_RANK]) @ vt[:GLOBAL_RANK]
        assert_allclose(stepped[f"{m}.B"] @ stepped[f"{m}.A"], best, atol=1e-4)
    assert_allclose(
        stepped["exit.4.norm.weight"],
        g["exit.4.norm.weight"] + 3.0 * (new["exit.4.norm.weight"] - g["exit.4.norm.weight"]),
        atol=1e-5,
    )


def test_flexlora_svd_falls_back_to_the_transpose_when_lapack_does_not_converge(monkeypatch):
    from famflow.strategies.rules import flexlora

    rng = np.random.default_rng(0)
    b, a = rng.normal(size=(12, 4)), rng.normal(size=(4, 10))
    expected = flexlora.factored_svd(b, a)
    real_svd, calls = np.linalg.svd, []

    def fails_first(matrix, full_matrices=True):
        calls.append(matrix.shape)
        if len(calls) == 1:
            raise np.linalg.LinAlgError("SVD did not converge")
        return real_svd(matrix, full_matrices=full_matrices)

    monkeypatch.setattr(np.linalg, "svd", fails_first)
    u, s, vt = flexlora.factored_svd(b, a)
    assert len(calls) == 2
    assert_allclose(s, expected[1])
    assert_allclose((u * s) @ vt, b @ a, atol=1e-10)
    assert_allclose(np.abs(vt), np.abs(expected[2]), atol=1e-10)


@pytest.mark.parametrize(("rule", "ranks"), [("flexlora", [2, 4, 8]), ("fedit", [8, 8, 8])])
def test_server_aggregation_benchmark_runs_every_tier_at_its_rank(root, rule, ranks):
    from famflow.federation.config import FederationConfig
    from tests.conftest import load_benchmark
    from tests.federation_setup import run_config

    bench = load_benchmark("server_aggregation")
    config = FederationConfig.from_run_config(run_config(root, rule=rule))
    tiers = bench.tier_plans(config)
    assert [plan.rank for plan, _ in tiers] == ranks and [n for _, n in tiers] == [1, 1, 1]
    keys = {plan.tier: set(plan.keys) for plan, _ in tiers}
    assert keys["device"] < keys["edge"] < keys["cloud"]
    timings = bench.time_rule(config, rounds=2)
    assert len(timings) == 2 and all(t["slice_s"] > 0 and t["aggregate_s"] > 0 for t in timings)
