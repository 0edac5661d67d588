"""How well each exit below the top drafts for it, and what hierarchical decoding would need.

Per exit below the top, on held-out prompts kept aside from training (chat questions of
chatterbot and Shakespeare lines):

- ``tf``: teacher-forced agreement with the top exit's greedy token on held-out blocks of the
  demo's data (``--blocks``);
- ``chat`` / ``verse`` / ``own``: agreement on the top exit's own greedy continuations of the
  prompts (what decoding sees), per source and together: the share of the top's tokens the
  exit predicts. ``--route E,TOP --mode speculative --draft-tokens 1`` accepts these;
- ``acc kN``: speculative acceptance (accepted / drafted) drafting N tokens per round, replayed
  exactly on the continuations (a round keeps the drafts before the first disagreement and
  the verifier adds one token);
- ``draft``: one cached decode step of the exit's branch, over one decode step of the top;
- ``x kN``: the speedup over plain cached greedy decoding of the top that the measured costs
  and acceptance give on one box (the device node's k+1 steps, then the upper layers verify
  k+1 positions from the exit's hidden states), and ``need``: the acceptance that 1.25x needs.

The top exit's continuations are made once per machine and cached (familial.continuation_cache).

    .venv/bin/python benchmarks/exit_agreement.py [--model smollm2-135m] [--adapters DIR]
        [--prompts 24] [--new-tokens 48] [--blocks 16] [--draft-tokens 1 2 4] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from collab_inference import held_out_blocks

from famflow.collab.agreement import agreement_flags, exit_agreement, speculative_acceptance
from famflow.collab.nodes import TierNode
from famflow.collab.route import RouteModels, build_nodes, load_route_models
from famflow.familial.continuation_cache import top_exit_continuations
from famflow.familial.data.prompts import corpus_prompts
from famflow.familial.presets import ModelSpec, resolve_model
from famflow.familial.tokenizer import load_tokenizer

SOURCES = {"chat": "chatterbot", "verse": "shakespeare"}
TARGET = 1.25


def _median_s(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        action()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _run_and_forget(node: TierNode, inputs: torch.Tensor, length: int) -> None:
    node.run(inputs, length, logits_from=0)
    node.rollback(length)


def step_costs(
    models: RouteModels, exits: list[int], prompt: torch.Tensor, draft_tokens: Sequence[int]
) -> dict:
    """Seconds of one cached decode step of each exit's branch, of the top, and of the top's
    layers above each exit verifying k+1 positions handed up from it."""
    ids = prompt.reshape(1, -1)
    top = exits[-1]
    costs: dict = {"step_s": {}, "verify_s": {}}
    for depth in exits:
        if depth == top:
            node = TierNode(models.trunk, 0, models.trunk.trunk_depth(top), top)
        else:
            node = build_nodes(models, [depth, top])[0]
        node.run(ids, 0, logits_from=None)
        length = node.length
        one_step = partial(_run_and_forget, node, ids[:, -1:], length)
        one_step()
        costs["step_s"][depth] = _median_s(one_step, 9)
    for depth in exits[:-1]:
        device, upper = build_nodes(models, [depth, top])
        hidden = device.run(ids, 0).hidden
        reserve = max(draft_tokens) + 1
        upper.run(hidden[:, :-reserve], 0)
        length = upper.length
        for k in draft_tokens:
            verify = partial(_run_and_forget, upper, hidden[:, -reserve:][:, : k + 1], length)
            verify()
            costs["verify_s"][(depth, k)] = _median_s(verify, 5)
    return costs


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens per round when each draft is accepted with ``acceptance``: 1 + a + ... + a^k."""
    return sum(acceptance**i for i in range(k + 1))


def speedup(tokens_per_round: float, k: int, step: float, verify: float, top_step: float) -> float:
    return tokens_per_round * top_step / ((k + 1) * step + verify)


def acceptance_needed(target: float, k: int, step: float, verify: float, top_step: float) -> float:
    """The per-draft acceptance at which rounds of k drafts reach ``target``x (> 1: none)."""
    if speedup(k + 1, k, step, verify, top_step) < target:
        return float("inf")
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        fast = speedup(expected_tokens(mid, k), k, step, verify, top_step) >= target
        low, high = (low, mid) if fast else (mid, high)
    return high


def benchmark(
    spec: ModelSpec,
    adapters: Path | None,
    prompts_per_source: int,
    new_tokens: int,
    blocks: int,
    draft_tokens: Sequence[int],
) -> dict:
    tokenizer = load_tokenizer(spec)
    exits = list(spec.family.exits)
    top = exits[-1]
    models = load_route_models(spec, exits, adapters)
    eos = tokenizer.eos_token_id
    result: dict = {"model": spec.name, "adapters": str(adapters) if adapters else None}
    result["exits"] = exits
    flags: dict[str, dict[int, list[torch.Tensor]]] = {}
    made = {}
    for label, corpus in SOURCES.items():
        prompts = corpus_prompts(corpus, tokenizer, "held-out", prompts_per_source)
        begin = time.perf_counter()
        texts, cached = top_exit_continuations(
            spec.name, models.trunk, prompts, new_tokens, eos, adapters
        )
        made[label] = {"cached": cached, "seconds": time.perf_counter() - begin}
        flags[label] = {depth: [] for depth in exits[:-1]}
        for prompt, text in zip(prompts, texts, strict=True):
            for depth, row in agreement_flags(models, exits, text).items():
                flags[label][depth].append(row[len(prompt) - 1 : len(text) - 1])
    result["continuations"] = made
    held = held_out_blocks(blocks) if blocks else []
    teacher_forced = exit_agreement(models, exits, held) if held else {}
    costs = step_costs(models, exits, held[0][:32] if held else torch.arange(1, 33), draft_tokens)
    top_step = costs["step_s"][top]
    rows = []
    for depth in exits[:-1]:
        every = [f for label in SOURCES for f in flags[label][depth]]
        row = {
            "exit": depth,
            "teacher_forced": teacher_forced.get(depth),
            "agreement": {
                label: float(torch.cat(flags[label][depth]).float().mean()) for label in SOURCES
            },
            "own": float(torch.cat(every).float().mean()),
            "positions": sum(len(f) for f in every),
            "draft_cost": costs["step_s"][depth] / top_step,
            "speculative": {},
        }
        for k in draft_tokens:
            accepted = drafted = rounds = 0
            for f in every:
                a, d, r = speculative_acceptance(f, k)
                accepted, drafted, rounds = accepted + a, drafted + d, rounds + r
            verify = costs["verify_s"][(depth, k)]
            per_round = (accepted + rounds) / rounds
            row["speculative"][k] = {
                "acceptance": accepted / drafted,
                "tokens_per_round": per_round,
                "speedup": speedup(per_round, k, costs["step_s"][depth], verify, top_step),
                "needed_for_target": acceptance_needed(
                    TARGET, k, costs["step_s"][depth], verify, top_step
                ),
            }
        rows.append(row)
    result["rows"] = rows
    result["top_step_s"] = top_step
    return result


def format_table(result: dict) -> str:
    ks = list(result["rows"][0]["speculative"]) if result["rows"] else []
    lines = [
        f"{result['model']} (adapters: {result['adapters'] or 'none'}): exits below "
        f"{result['exits'][-1]} against its greedy tokens; top decode step "
        f"{result['top_step_s'] * 1e3:.1f} ms; x = one-box speculative speedup over plain "
        f"cached greedy at the measured costs; need = acceptance for {TARGET:g}x",
        f"{'exit':>4} {'tf':>5} {'chat':>5} {'verse':>5} {'own':>5} {'draft':>6}"
        + "".join(f" | {f'k={k}: acc':>8} {'x':>5} {'need':>5}" for k in ks),
    ]
    for row in result["rows"]:
        tf = row["teacher_forced"]
        text = (
            f"{row['exit']:>4} {'-' if tf is None else f'{tf:.3f}':>5} "
            f"{row['agreement']['chat']:>5.3f} {row['agreement']['verse']:>5.3f} "
            f"{row['own']:>5.3f} {row['draft_cost']:>6.2f}"
        )
        for k in ks:
            cell = row["speculative"][k]
            need = cell["needed_for_target"]
            text += (
                f" | {cell['acceptance']:>8.3f} {cell['speedup']:>5.2f} "
                f"{'none' if need == float('inf') else f'{need:.2f}':>5}"
            )
        lines.append(text)
    for label, made in result["continuations"].items():
        how = "read from the cache" if made["cached"] else "generated"
        lines.append(f"{label} continuations: {how} in {made['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--adapters", type=Path, default=None, help="familialize output or federation export"
    )
    parser.add_argument("--prompts", type=int, default=24, help="held-out prompts per source")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--blocks", type=int, default=16, help="held-out blocks, teacher-forced")
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = benchmark(
        resolve_model(args.model),
        args.adapters,
        args.prompts,
        args.new_tokens,
        args.blocks,
        args.draft_tokens,
    )
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
