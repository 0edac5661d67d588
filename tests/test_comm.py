import csv
import json
import math

import numpy as np
import pytest

from famflow.__main__ import main
from famflow.familial.codecs import CODECS, encode
from famflow.familial.paths import shipped_configs
from famflow.familial.presets import resolve_model
from famflow.federation.config import RULES, FederationConfig
from famflow.server.records import RoundRecorder
from famflow.simulations.comm_run import measured_rows, read_run, run_settings, training_rounds
from famflow.simulations.comm_schemes import TOTAL, analytic_rows, famflow_rank, tier_nodes
from famflow.simulations.comm_wire import FamilyShapes, message_bytes
from famflow.strategies.records import to_record
from tests.federation_setup import run_config, simulate

# LoRA on q,k,v,o,gate,up,down of a Qwen2.5-7B-shaped layer: rank x (sum of in + out).
RUYI_LORA_PER_RANK_AND_LAYER = 90_112
RUYI_B_PER_RANK_AND_LAYER = 49_664  # sum of out features: what FFA sends
RUYI_DENSE_PARAMETERS = 7_615_616_512
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def parameters(shapes):
    return sum(math.prod(shape) for shape in shapes.values())


def test_wire_bytes_are_what_flower_counts_for_every_codec():
    shapes = {
        "trunk.0.self_attn.q_proj.A": (4, 64),
        "trunk.0.self_attn.q_proj.B": (64, 4),
        "exit.2.norm.weight": (64,),
        "exit.2.translator.proj.weight": (64, 64),
    }
    rng = np.random.default_rng(0)
    for codec in CODECS:
        arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        record = to_record(encode(arrays, codec))
        wire = message_bytes(shapes, codec)
        assert record.count_bytes() == wire.total, codec
        assert sum(array.numpy().nbytes for array in record.values()) == wire.payload, codec
        assert wire.framing > 0


def test_analytic_plans_match_the_servers_node_plans(root):
    from famflow.server.plans import node_plans
    from famflow.strategies.rules import RULES as RULE_REGISTRY

    spec = resolve_model("tiny3")
    nodes = tier_nodes(spec, "device:1,edge:1,cloud:1", batch_size=4, seq_len=16)
    assert [(n.tier, n.exit, n.rank) for n in nodes] == [
        ("device", 1, 2),
        ("edge", 2, 4),
        ("cloud", 4, 8),
    ]
    shapes = FamilyShapes(spec)
    profiles = {
        i: {"tier": n.tier, "exit": n.exit, "rank": n.rank, "device": "cpu"}
        for i, n in enumerate(nodes)
    }
    for rule in RULES:
        for adapters in (True, False):
            config = FederationConfig(model="tiny3", rule=rule, train_exit_adapters=adapters)
            plans = node_plans(config, profiles)
            for i, node in enumerate(nodes):
                rank = famflow_rank(rule, node, nodes)
                assert plans[i].rank == rank
                lora_a = RULE_REGISTRY[rule].exchanges_a
                exchanged = shapes.exchanged(node.exit, rank, lora_a, adapters)
                assert tuple(sorted(exchanged)) == plans[i].keys


def test_ruyi_7b_figures_match_lora_per_layer_and_full_gradients():
    spec = resolve_model("ruyi-7b")
    nodes = tier_nodes(
        spec, "E3B:1,E5B:1,E7B:1", shipped_configs() / "hardware" / "ruyi-tiers.toml"
    )
    assert [(n.tier, n.exit, n.rank) for n in nodes] == [
        ("E3B", 12, 4),
        ("E5B", 20, 8),
        ("E7B", 28, 16),
    ]
    shapes = FamilyShapes(spec)
    for rank in (4, 16):
        assert parameters(shapes.dense_model_lora(rank)) == 28 * rank * RUYI_LORA_PER_RANK_AND_LAYER
    # A famflow client trains every exit it holds: E3B runs 11 trunk layers + its exit layer,
    # E7B all 28 trunk layers + the exit layers of exits 12, 16, 20 and 24.
    per_layer = RUYI_LORA_PER_RANK_AND_LAYER
    assert parameters(shapes.exchanged(12, 4)) == 12 * 4 * per_layer
    assert parameters(shapes.exchanged(20, 8)) == 22 * 8 * per_layer
    assert parameters(shapes.exchanged(28, 16)) == 32 * 16 * per_layer
    b_only = shapes.exchanged(12, 4, lora_a=False)
    assert parameters(b_only) == 12 * 4 * RUYI_B_PER_RANK_AND_LAYER

    rows = analytic_rows(spec, nodes, ["flexlora", "ffa"], ["fp16", "int8"])
    by = {(r.scheme, r.rule, r.codec, r.tier): r for r in rows}
    gradient = by[("fedavg-gradient", "-", "fp32", "E3B")]
    assert gradient.up_per_client == RUYI_DENSE_PARAMETERS * 4
    assert round(gradient.up_per_client / 1e9, 1) == 30.5
    e3b = by[("famflow", "flexlora", "fp16", "E3B")]
    assert e3b.up_per_client == 12 * 4 * per_layer * 2
    assert 3_400 < e3b.full_gradient_ratio < 3_600
    assert 320 < by[("famflow", "flexlora", "fp16", "E7B")].full_gradient_ratio < 340
    assert 370 < by[("lora-dense", "fedit", "fp16", "E7B")].full_gradient_ratio < 390
    # ffa keeps each tier's rank and sends only B; int8 adds one fp32 scale per rank component.
    ffa_e3b = by[("famflow", "ffa", "int8", "E3B")]
    scales = 12 * 7 * 4 * 4
    assert ffa_e3b.up_per_client == 12 * 4 * RUYI_B_PER_RANK_AND_LAYER + scales
    assert [
        round(by[("famflow", "ffa", "int8", t)].full_gradient_ratio) for t in ("E3B", "E7B")
    ] == [12771, 1197]


def test_comm_prints_a_table_json_csv_and_a_plot(root, capsys):
    tiers = str(root / "tiers.toml")
    mix = ["--tier-mix", "device:1,edge:2", "--seq-len", "16"]
    assert main(["comm", "tiny3", *mix, "--tiers", tiers]) == 0
    table = capsys.readouterr().out
    assert "fedavg-gradient" in table and "famflow" in table and "hetlora" in table
    csv_path, plot_path = root / "out" / "comm.csv", root / "out" / "comm.png"
    args = ["comm", "tiny3", *mix, "--rule", "ffa", "--json"]
    assert main([*args, "--codec", "int8", "--csv", str(csv_path), "--plot", str(plot_path)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [t["tier"] for t in document["tiers"]] == ["device", "edge"]
    schemes = {(r["scheme"], r["codec"]) for r in document["rows"]}
    assert schemes == {
        ("fedavg-gradient", "fp32"),
        ("fedavg-weights", "fp32"),
        ("lora-dense", "int8"),
        ("famflow", "int8"),
    }
    total = next(r for r in document["rows"] if r["scheme"] == "famflow" and r["tier"] == TOTAL)
    assert total["clients"] == 3
    with csv_path.open() as file:
        assert len(list(csv.DictReader(file))) == len(document["rows"])
    assert plot_path.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["comm", "no-such-model"], "No model preset"),
        (["comm", "tiny", "--tier-mix", "device=2"], "tier-mix"),
        (["comm", "tiny", "--tier-mix", "gpu:2"], "unknown tier"),
        (["comm", "tiny", "--tier-mix", "device:0"], "no nodes"),
        (["comm"], "needs a MODEL"),
        (["comm", "--run", "{tmp}/missing"], "No run directory"),
        (["comm", "--run", "{tmp}"], "has no metrics.jsonl"),
    ],
)
def test_bad_input_ends_in_one_sentence(tmp_path, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("famflow: error: ") and message in err
    assert "\n" not in err


def test_run_without_checkpoints_needs_the_settings(tmp_path, capsys):
    node = {"tier": "device", "exit": 2, "rank": 4, "bytes_down": 10, "bytes_up": 10}
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"round": 1, "nodes": {"1": node}}))
    assert main(["comm", "--run", str(tmp_path)]) == 1
    assert "pass MODEL, --rule and --codec" in capsys.readouterr().err
    metrics.write_text(json.dumps({"round": 1, "nodes": {"1": {"tier": "device"}}}))
    assert main(["comm", "--run", str(tmp_path), "tiny", "--rule", "ffa", "--codec", "fp16"]) == 1
    assert "per-node tier/exit/rank/bytes" in capsys.readouterr().err


def test_tensorboard_gets_cumulative_bytes_across_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for rounds in ([0, 1], [2]):  # a second recorder continues the run, as a resume does
        recorder = RoundRecorder(tmp_path)
        for r in rounds:
            recorder.record({"round": r, "bytes_up": 10 * r, "bytes_down": 20 * r})
        recorder.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    up = {e.step: e.value for e in events.Scalars("cumulative/bytes_up")}
    assert up == {0: 0, 1: 10, 2: 30}


@pytest.mark.slow
@pytest.mark.parametrize(
    "rule, codec, branch_exits",
    [
        ("fedit", "fp32", "held"),
        ("ffa", "fp16", "held"),
        ("flexlora", "bf16", "held"),
        ("hetlora", "int8", "held"),
        ("flexlora", "int8", "own"),
    ],
)
def test_analytic_bytes_equal_the_bytes_measured_in_a_tiny_run(
    root, capsys, rule, codec, branch_exits
):
    overrides = {"num-server-rounds": 1, "local-steps": 1, "eval-blocks": 2}
    simulate(
        run_config(root, rule=rule, codec=codec, **overrides, **{"branch-exits": branch_exits})
    )
    run = root / "run"
    rows = training_rounds(read_run(run), run)
    settings = run_settings(run)
    own = branch_exits == "own"
    assert (settings.rule, settings.codec, settings.own_exit) == (rule, codec, own)
    measured = measured_rows(rows, settings)
    assert {(r.tier, r.direction) for r in measured} == {
        (tier, direction)
        for tier in ("device", "edge", "cloud", TOTAL)
        for direction in ("up", "down")
    }
    for row in measured:
        # measured = payload + framing exactly; the framing is the whole difference
        assert row.unexplained_per_round == 0, row
        assert row.difference_per_round == row.framing_per_round > 0

    # The analytic table, from the preset and the tier mix alone, predicts every node's bytes.
    spec = resolve_model("tiny3")
    nodes = tier_nodes(spec, "device:1,edge:1,cloud:1", batch_size=4, seq_len=16)
    analytic = {
        r.tier: r
        for r in analytic_rows(spec, nodes, [rule], [codec], own_exit=own)
        if r.scheme == "famflow"
    }
    for row in measured:
        if row.tier != TOTAL:
            expected = analytic[row.tier]
            assert (row.exit, row.rank) == (expected.exit, expected.rank)
            assert row.payload_per_client == expected.up_per_client
            assert row.measured_per_client == expected.up_per_client + expected.framing_per_client

    if own:  # the cloud node sends its own exit's path: less than when it trains them all
        held = analytic_rows(spec, nodes, [rule], [codec])
        by_tier = {r.tier: r for r in held if r.scheme == "famflow"}
        assert analytic["cloud"].up_per_client < by_tier["cloud"].up_per_client
        assert analytic["device"].up_per_client == by_tier["device"].up_per_client
    if codec == "int8" and not own:  # the command line on the same run
        plot = root / "cumulative.png"
        assert main(["comm", "--run", str(run), "--plot", str(plot)]) == 0
        out = capsys.readouterr().out
        assert "unexplained" in out and "hetlora" in out
        assert plot.read_bytes().startswith(PNG_MAGIC)
