"""Routes: names to exits, nodes from a federation export, the latency model."""

import pytest
import torch

from famflow.collab import (
    build_nodes,
    load_route_models,
    local_chain,
    parse_route,
    speculative_generate,
)
from famflow.collab.agreement import exit_agreement
from famflow.collab.decoding import CollabResult, Round
from famflow.collab.latency import (
    Link,
    acceptance_for_speedup,
    break_even_speed,
    cloud_only_latency,
    cloud_per_token_latency,
    collaboration_gain,
    collaborative_latency,
    per_hop,
)
from famflow.collab.protocol import TraceEntry
from famflow.collab.route import tier_names
from famflow.familial import ExitAdapterConfig, FamflowError
from famflow.familial.family_io import save_exit_adapters
from famflow.familial.inference import generate
from famflow.familial.loading import load_branch
from famflow.familial.local_training import load_trained_branch
from famflow.familial.lora import LoraSettings, attach_lora, lora_state
from famflow.familial.peft_export import save_peft_adapter
from tests.conftest import random_spec


def test_route_names_map_to_the_family_exits_in_order():
    assert parse_route("device,edge,cloud", [10, 20, 30]) == [10, 20, 30]
    assert parse_route("device, cloud", [10, 20, 30]) == [10, 30]
    assert parse_route("12,edge,28", [12, 16, 20, 24, 28]) == [12, 16, 28]
    assert tier_names(3) == ["device", "edge", "cloud"]
    assert tier_names(4) == ["device", "edge1", "edge2", "cloud"]


@pytest.mark.parametrize(
    ("route", "exits", "message"),
    [
        ("device,edge,cloud", [2, 4], r"tier 'edge' is neither a tier name \(device=2, cloud=4\)"),
        ("device,11", [10, 20, 30], "nor one of the exits"),
        ("cloud,device", [10, 20, 30], "increasing exits"),
        ("device", [10, 20, 30], "at least two tiers"),
    ],
)
def test_bad_routes_are_one_sentence(route, exits, message):
    with pytest.raises(FamflowError, match=message):
        parse_route(route, exits)


def _export(tmp_path, spec, exits):
    """A federation-style export: exit-E/ per exit, LoRA and exit adapters differing per exit."""
    for index, depth in enumerate(exits):
        branch = attach_lora(load_branch(spec, depth, exits=[depth]), LoraSettings(rank=2))
        generator = torch.Generator().manual_seed(10 + index)
        with torch.no_grad():
            for tensor in lora_state(branch).values():
                tensor.add_(0.2 * torch.randn(tensor.shape, generator=generator))
            for name, param in branch.named_parameters():
                if name.startswith("exits.") and ".lora_" not in name:
                    param.add_(0.05 * torch.randn(param.shape, generator=generator))
        save_peft_adapter(branch, tmp_path / f"exit-{depth}")
        save_exit_adapters(branch, tmp_path / f"exit-{depth}")
    return tmp_path


def test_export_route_runs_the_top_branch_trunk_with_each_exit_own_head(tmp_path):
    spec = random_spec([2, 4], ExitAdapterConfig(norm=True, translator="full"))
    export = _export(tmp_path / "export", spec, [2, 4])
    models = load_route_models(spec, [2, 4], export)
    cloud = load_trained_branch(spec, 4, export / "exit-4", exits=[4])
    device = load_trained_branch(spec, 2, export / "exit-2", exits=[2])
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(models.trunk(ids).logits[4], cloud(ids).logits[4])
    torch.testing.assert_close(models.branch(2)(ids).logits[2], device(ids).logits[2])
    # The device's own trunk LoRA differs from the cloud's: the route must not use it.
    assert not torch.allclose(device(ids, exits=[2]).logits[2], _cloud_trunk_exit_2(models, ids))
    nodes = build_nodes(models, [2, 4])
    assert nodes[0].trunk is models.trunk and nodes[0].head is models.branch(2).exit_head(2)
    result = speculative_generate(nodes[0], local_chain(nodes), ids, 10, draft_tokens=3)
    assert torch.equal(result.tokens, generate(cloud, ids, 4, max_new_tokens=10))


def _cloud_trunk_exit_2(models, ids):
    node = build_nodes(models, [2, 4])[0]
    return node.run(ids, 0, logits_from=0).logits


def test_exit_agreement_reads_each_exit_on_the_route_trunk(tmp_path):
    spec = random_spec([2, 4], ExitAdapterConfig(norm=True, translator="full"))
    models = load_route_models(spec, [2, 4], _export(tmp_path / "export", spec, [2, 4]))
    generator = torch.Generator().manual_seed(1)
    texts = [torch.randint(0, 128, (n,), generator=generator) for n in (7, 5)]
    top = torch.cat([models.trunk(t[None]).logits[4][0].argmax(-1) for t in texts])
    device = torch.cat([_cloud_trunk_exit_2(models, t[None])[0].argmax(-1) for t in texts])
    agreement = exit_agreement(models, [2, 4], texts)
    assert agreement == {2: pytest.approx(float((device == top).float().mean()))}


def test_export_without_a_route_exit_is_one_sentence(tmp_path):
    spec = random_spec([2, 4], ExitAdapterConfig(norm=True, translator="full"))
    (tmp_path / "exit-4").mkdir()
    with pytest.raises(FamflowError, match="has no exit-2: route only through exits"):
        load_route_models(spec, [2, 4], tmp_path)


def _result(rounds):
    return CollabResult(torch.zeros(1, 10, dtype=torch.long), prompt_length=4, rounds=rounds)


def test_latency_model_adds_compute_and_every_hop():
    slow, fast = Link(8e6, 0.05), Link(80e6, 0.01)  # 1 byte = 1 us / 0.1 us
    rounds = [
        # Handed up to the cloud: device -> edge 1000 B up / 100 B down, edge -> cloud 500 / 50.
        Round([TraceEntry(0.01, 1000, 100), TraceEntry(0.02, 500, 50), TraceEntry(0.03)], 3),
        # Decided on the device (early exit): compute only.
        Round([TraceEntry(0.004)], 1),
        # Decided at the edge.
        Round([TraceEntry(0.01, 200, 20), TraceEntry(0.02)], 1),
    ]
    expected = (
        0.01 + (0.05 + 1100e-6) + 0.02 + (0.01 + 550e-7) + 0.03
        + 0.004
        + 0.01 + (0.05 + 220e-6) + 0.02
    )  # fmt: skip
    assert collaborative_latency(_result(rounds), [slow, fast]) == pytest.approx(expected)
    assert _result(rounds).device_bytes == 1320 and _result(rounds).round_trips == 2
    # Cloud-only: 4 prompt ids up, 6 new ids back, over both hops, plus the cloud's compute.
    assert cloud_only_latency(4, 6, 0.5, [slow, fast]) == pytest.approx(
        0.5 + (0.05 + 40e-6) + (0.01 + 40e-7)
    )
    per_token = cloud_per_token_latency(4, 6, 0.5, [slow, fast])
    assert per_token == pytest.approx(0.5 + 0.06 + 20e-6 + 2e-6 + 5 * (0.06 + 8e-6 + 8e-7))


def test_predrafting_overlaps_the_flight_and_costs_only_what_outlasts_it():
    link = Link(8e6, 0.05)
    rounds = [
        # Pre-drafting for 0.02 s during a 0.05 + 1100e-6 + 0.03 s flight: hidden by it.
        Round([TraceEntry(0.01, 1000, 100), TraceEntry(0.03)], 3, overlapped_s=0.02),
        # Pre-drafting that outlasts the flight: the round waits for the device.
        Round([TraceEntry(0.0, 1000, 100), TraceEntry(0.03)], 3, overlapped_s=0.2),
    ]
    expected = 0.01 + (0.05 + 1100e-6 + 0.03) + 0.0 + 0.2
    assert collaborative_latency(_result(rounds), [link]) == pytest.approx(expected)


def test_break_even_speed_is_where_cloud_only_catches_up():
    link = Link(8e9, 0.05)  # bytes cost next to nothing
    # Two round trips of three tokens, 0.01 s on the device and 0.1 s of verification each,
    # against 0.1 s per token cloud-only: 0.12 + 0.2 / s = 0.05 + 0.6 / s at s = 0.4 / 0.07.
    pays = _result([Round([TraceEntry(0.01), TraceEntry(0.1)], 3) for _ in range(2)])
    speed = break_even_speed(lambda s: collaboration_gain(pays, [link], 0.6, s))
    assert speed == pytest.approx(0.4 / 0.07, rel=1e-3)
    # A round trip per token never saves a cloud pass: cloud-only wins at any speed.
    never = _result([Round([TraceEntry(0.01), TraceEntry(0.1)], 1) for _ in range(6)])
    assert break_even_speed(lambda s: collaboration_gain(never, [link], 0.6, s)) is None
    assert pays.top_passes_per_token == pytest.approx(2 / 6)


def test_acceptance_a_speedup_needs():
    # A 0.2 s round trip of 4 drafts against 0.05 s per cloud token: 1.25x needs 5 tokens per
    # round trip, every draft accepted; 1x needs 4, three drafts in four.
    assert acceptance_for_speedup(1.25, 0.2, 0.05, 4) == pytest.approx(1.0)
    assert acceptance_for_speedup(1.0, 0.2, 0.05, 4) == pytest.approx(0.75)
    assert acceptance_for_speedup(1.25, 0.5, 0.05, 4) > 1  # out of reach of any draft
    with pytest.raises(FamflowError, match="positive times"):
        acceptance_for_speedup(1.25, 0.2, 0.0, 4)


def test_links_parse_and_cover_every_hop():
    assert Link.parse("10e6,0.05") == Link(10e6, 0.05)
    assert per_hop([Link(1e6, 0.1)], 2) == [Link(1e6, 0.1)] * 2
    with pytest.raises(FamflowError, match="BANDWIDTH,RTT"):
        Link.parse("fast")
    with pytest.raises(FamflowError, match="bandwidth > 0"):
        Link.parse("0,0.1")
    with pytest.raises(FamflowError, match="one link for every hop"):
        per_hop([Link(1e6, 0.1)] * 3, 2)
