"""Collaborative device -> edge -> cloud inference on a model preset, against the baselines.

For every prompt and setting: acceptance rate and accepted tokens per round trip
(speculative), tokens decided per tier (early exit), bytes over the device link per token
against cloud-only (prompt and new token ids as int32), and the latency estimate (compute
measured here + link model) against cloud-only and device-only under each link model, with
the acceptance rate a target speedup over cloud-only would need at the measured cost of a
round trip. Prompts are chat questions, or with ``--held-out N`` the openings of held-out
blocks of the demo's data (the domain the federation trained on). The same run times
transformers' own assisted generation with ``assistant_early_exit`` = the device exit on the
plain Hugging Face model (no adapters) against its own greedy generation. ``--agreement N``
adds each lower exit's teacher-forced agreement with the top exit on N held-out blocks: the
share of positions where its greedy token is the top exit's (drafts are accepted only there).

    .venv/bin/python benchmarks/collab_inference.py [--model smollm2-135m]
        [--adapters runs/federation/export] [--route device,edge,cloud] [--draft-tokens 2 4]
        [--threshold 0.9] [--codec fp16] [--max-new-tokens 32] [--target 1.25]
        [--held-out N | --held-out-prompts N] [--agreement N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from famflow.collab.agreement import exit_agreement
from famflow.collab.compare import RouteComparison, compare_route
from famflow.collab.latency import (
    Link,
    acceptance_for_speedup,
    break_even_speed,
    collaboration_gain,
)
from famflow.collab.route import load_route_models, parse_route
from famflow.collab.settings import RouteSettings
from famflow.familial.data.prompts import corpus_prompts
from famflow.familial.presets import ModelSpec, resolve_model
from famflow.familial.tokenizer import load_tokenizer

PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a neural network is in one paragraph.",
    "Give me three tips for learning a new language.",
    "Why is the sky blue?",
)
LINKS = ("10e6,0.05", "100e6,0.01")
TARGET_SPEEDUP = 1.25


def encode_prompt(tokenizer, text: str) -> torch.Tensor:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
    )
    return prompt if not hasattr(prompt, "input_ids") else prompt["input_ids"]


def hf_model(spec: ModelSpec):
    """The plain transformers model of a preset (None for Ruyi: its code is remote)."""
    from transformers import AutoModelForCausalLM

    if spec.is_ruyi:
        return None
    if spec.source == "random":
        state = torch.random.get_rng_state()
        torch.manual_seed(spec.seed)  # as familial.loading builds random presets
        try:
            return AutoModelForCausalLM.from_config(spec.base_config()).eval()
        finally:
            torch.random.set_rng_state(state)
    from famflow.familial.loading import checkpoint_dir

    return AutoModelForCausalLM.from_pretrained(
        str(checkpoint_dir(spec)), dtype=spec.torch_dtype
    ).eval()


def time_hf(model, input_ids, max_new_tokens: int, eos: int | None, early_exit: int | None):
    kwargs = {"assistant_early_exit": early_exit} if early_exit is not None else {}
    begin = time.perf_counter()
    with torch.no_grad():
        tokens = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
            **kwargs,
        )
    return tokens, time.perf_counter() - begin


def held_out_blocks(count: int) -> list[torch.Tensor]:
    """Held-out blocks of the demo's data (pyproject's run config), one block per node's
    partition in turn: text in the domain the federation trained on."""
    from famflow.clients.task import get_data
    from famflow.federation.config import FederationConfig
    from famflow.simulations.compare_federations import base_run_config

    config = FederationConfig.from_run_config(base_run_config())
    nodes = config.node_count()
    return [get_data(config, i % nodes).validation[i // nodes] for i in range(count)]


def held_out_prompts(count: int, tokens: int) -> list[torch.Tensor]:
    """The first ``tokens`` of ``held_out_blocks(count)``."""
    return [block[:tokens] for block in held_out_blocks(count)]


def familialize_prompts(spec: ModelSpec, count: int) -> list[torch.Tensor]:
    """``count`` held-out chatterbot questions and Shakespeare lines (as familialize and
    ``hierarchical_decoding.py`` keep them aside)."""
    tokenizer = load_tokenizer(spec)
    return [
        torch.tensor(ids)
        for source in ("chatterbot", "shakespeare")
        for ids in corpus_prompts(source, tokenizer, "held-out", count)
    ]


def settings_grid(
    draft_tokens: Sequence[int], thresholds: Sequence[float], codec: str, n: int, transport: str
) -> list[RouteSettings]:
    grid = [
        RouteSettings("speculative", k, codec, transport=transport, max_new_tokens=n)
        for k in draft_tokens
    ]
    grid += [
        RouteSettings("early-exit", 0, codec, t, transport=transport, max_new_tokens=n)
        for t in thresholds
    ]
    return grid


def summarize(
    label: str, runs: list[RouteComparison], links: list[Link], target: float = TARGET_SPEEDUP
) -> dict:
    """One table row: totals over prompts, so ratios weigh every prompt by its time."""
    new = sum(c.result.new_tokens for c in runs)
    speculative = bool(runs) and runs[0].settings.mode == "speculative"
    round_trips = sum(c.result.round_trips for c in runs)
    row = {
        "setting": label,
        "acceptance_rate": _ratio(
            sum(r.accepted for c in runs for r in c.result.rounds),
            sum(r.drafted for c in runs for r in c.result.rounds),
        )
        if speculative
        else None,
        "top_passes_per_token": _ratio(round_trips, new) if speculative else None,
        "tokens_per_round_trip": _ratio(
            sum(r.emitted for c in runs for r in c.result.rounds if r.round_trip),
            round_trips,
        ),
        "bytes_per_token": _ratio(sum(c.result.device_bytes for c in runs), new),
        "cloud_only_bytes_per_token": _ratio(
            sum(c.cloud_only_bytes_per_token * c.cloud_new_tokens for c in runs),
            sum(c.cloud_new_tokens for c in runs),
        ),
        "identical": sum(c.identical_to_cloud for c in runs),
        "prompts": len(runs),
        "latency": {},
    }
    for link in links:
        rows = [c.latency([link]) for c in runs]
        collab = sum(r.collaborative_s for r in rows)
        cloud = sum(r.cloud_only_s for r in rows)
        per_token = sum(r.cloud_per_token_s for r in rows)
        device = sum(r.device_only_s for r in rows)
        row["latency"][link.describe()] = {
            "collaborative_s": collab,
            "cloud_only_s": cloud,
            "cloud_per_token_s": per_token,
            "speedup_vs_cloud_per_token": per_token / collab,
            "device_only_s": device,
            "speedup_vs_cloud": cloud / collab,
            "speedup_vs_device": device / collab,
            "break_even_speed": break_even_speed(
                lambda speed, link=link: sum(
                    collaboration_gain(c.result, [link] * (len(c.exits) - 1), c.cloud_s, speed)
                    for c in runs
                )
            ),
        }
        if speculative and round_trips:
            row["latency"][link.describe()]["acceptance_for_target"] = acceptance_for_speedup(
                target,
                collab / round_trips,
                cloud / sum(c.cloud_new_tokens for c in runs),
                runs[0].settings.draft_tokens,
            )
    row["target_speedup"] = target
    return row


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def benchmark(
    spec: ModelSpec,
    adapters: Path | None = None,
    route: str = "device,edge,cloud",
    prompts: Sequence[str | torch.Tensor] = PROMPTS,
    draft_tokens: Sequence[int] = (2, 4),
    thresholds: Sequence[float] = (0.9,),
    codec: str = "fp16",
    max_new_tokens: int = 32,
    links: Sequence[str] = LINKS,
    transport: str = "local",
    with_hf: bool = True,
    target: float = TARGET_SPEEDUP,
    agreement_texts: Sequence[torch.Tensor] = (),
) -> dict:
    exits = parse_route(route, spec.family.exits)
    tokenizer = load_tokenizer(spec)
    eos = tokenizer.eos_token_id
    models = load_route_models(spec, exits, adapters)
    link_models = [Link.parse(text) for text in links]
    inputs = [
        encode_prompt(tokenizer, p) if isinstance(p, str) else p.reshape(1, -1) for p in prompts
    ]
    rows = []
    for settings in settings_grid(draft_tokens, thresholds, codec, max_new_tokens, transport):
        runs = [compare_route(models, exits, ids, settings, eos) for ids in inputs]
        label = (
            f"speculative k={settings.draft_tokens}"
            if settings.mode == "speculative"
            else f"early exit p>={settings.threshold:g}"
        )
        row = summarize(label, runs, link_models, target)
        if settings.mode == "early-exit":
            counts = [c.result.resolved_counts(len(exits)) for c in runs]
            row["decided_per_tier"] = [sum(col) for col in zip(*counts, strict=True)]
        rows.append(row)
    result = {
        "model": spec.name,
        "adapters": str(adapters) if adapters else None,
        "exits": exits,
        "codec": codec,
        "max_new_tokens": max_new_tokens,
        "prompts": [p if isinstance(p, str) else tokenizer.decode(p.flatten()) for p in prompts],
        "rows": rows,
        "exit_agreement": None,
        "hf_assisted": None,
    }
    if agreement_texts:
        result["exit_agreement"] = {
            "texts": len(agreement_texts),
            "positions": sum(text.numel() for text in agreement_texts),
            "per_exit": exit_agreement(models, exits, agreement_texts),
        }
    hf = hf_model(spec) if with_hf else None
    if hf is not None:
        plain_s = assisted_s = 0.0
        identical = 0
        time_hf(hf, inputs[0], 2, eos, None)  # warm-up
        time_hf(hf, inputs[0], 2, eos, exits[0])
        for ids in inputs:
            plain, seconds = time_hf(hf, ids, max_new_tokens, eos, None)
            plain_s += seconds
            assisted, seconds = time_hf(hf, ids, max_new_tokens, eos, exits[0])
            assisted_s += seconds
            identical += bool(torch.equal(plain, assisted))
        result["hf_assisted"] = {
            "assistant_early_exit": exits[0],
            "greedy_s": plain_s,
            "assisted_s": assisted_s,
            "speedup": plain_s / assisted_s,
            "identical": identical,
        }
    return result


def format_table(result: dict) -> str:
    if not result["rows"]:
        return f"{result['model']}: no settings were run."
    links = list(result["rows"][0]["latency"])
    lines = [
        f"{result['model']} (adapters: {result['adapters'] or 'none'}), exits "
        f"{' -> '.join(map(str, result['exits']))}, {result['codec']} hidden states, "
        f"{len(result['prompts'])} prompts x up to {result['max_new_tokens']} new tokens",
        "latency = compute measured in this run + link model (RTT + bytes / bandwidth per hop); "
        "x cloud = cloud-only (one request, tokens streamed back) / collaborative latency "
        "(> 1: collaboration is faster); need = the acceptance rate at which speculation "
        f"would be {result['rows'][0]['target_speedup']:g}x faster than cloud-only, at this "
        "round trip's measured cost (> 1: no draft reaches it); x tok = the same against "
        "cloud-only with a round trip per token; x dev = device-only / collaborative; "
        "top/tok = the top tier's decode passes per generated token; even = the speed of "
        "the upper tiers, relative to the device, below which collaboration beats cloud-only",
    ]
    head = (
        f"{'setting':<22} {'accept':>6} {'top/tok':>7} {'tok/RT':>6} {'B/tok':>8} "
        f"{'cloud B/tok':>11} {'same':>5}"
    )
    sub = " " * len(head)
    for link in links:
        head += f" | {link:^63}"
        sub += (
            f" | {'collab s':>9} {'cloud s':>8} {'x cloud':>7} {'need':>5} {'x tok':>6}"
            f" {'device s':>8} {'x dev':>5} {'even':>6}"
        )
    lines += [head, sub]
    for row in result["rows"]:
        accept, passes = row["acceptance_rate"], row["top_passes_per_token"]
        text = (
            f"{row['setting']:<22} {'-' if accept is None else f'{accept:.2f}':>6} "
            f"{'-' if passes is None else f'{passes:.2f}':>7} "
            f"{row['tokens_per_round_trip']:>6.2f} {row['bytes_per_token']:>8,.0f} "
            f"{row['cloud_only_bytes_per_token']:>11,.1f} "
            f"{row['identical']:>2}/{row['prompts']:<2}"
        )
        for link in links:
            cell = row["latency"][link]
            text += (
                f" | {cell['collaborative_s']:>9.3f} {cell['cloud_only_s']:>8.3f} "
                f"{cell['speedup_vs_cloud']:>7.2f} {_need(cell):>5} "
                f"{cell['speedup_vs_cloud_per_token']:>6.2f} "
                f"{cell['device_only_s']:>8.3f} {cell['speedup_vs_device']:>5.2f} "
                f"{_speed(cell['break_even_speed']):>6}"
            )
        if "decided_per_tier" in row:
            text += f"   decided per tier {row['decided_per_tier']}"
        lines.append(text)
    agreement = result.get("exit_agreement")
    if agreement:
        shares = ", ".join(
            f"exit {depth} {share:.2f}" for depth, share in agreement["per_exit"].items()
        )
        lines.append(
            f"teacher-forced agreement with exit {result['exits'][-1]}'s greedy token "
            f"on {agreement['texts']} held-out texts ({agreement['positions']} positions; "
            f"drafts are accepted only where they agree): {shares}"
        )
    hf = result["hf_assisted"]
    if hf is None:
        lines.append("transformers assisted generation: not run (Ruyi or --no-hf)")
    else:
        lines.append(
            f"transformers assisted generation (assistant_early_exit={hf['assistant_early_exit']}, "
            f"plain model, no adapters, no network): {hf['assisted_s']:.3f} s vs its greedy "
            f"{hf['greedy_s']:.3f} s ({hf['speedup']:.2f}x), identical on "
            f"{hf['identical']}/{len(result['prompts'])} prompts"
        )
    return "\n".join(lines)


def _speed(speed: float | None) -> str:
    if speed is None:
        return "never"
    return "always" if speed == float("inf") else f"{speed:.2f}x"


def _need(cell: dict) -> str:
    need = cell.get("acceptance_for_target")
    return "-" if need is None else f"{need:.2f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapters", type=Path, default=None)
    parser.add_argument("--route", default="device,edge,cloud")
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--threshold", type=float, nargs="*", default=[0.9])
    parser.add_argument("--codec", choices=("fp32", "fp16", "int8"), default="fp16")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--link", action="append", help=f"BW,RTT (default {' and '.join(LINKS)})")
    parser.add_argument("--transport", choices=("local", "http"), default="local")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many prompts")
    parser.add_argument(
        "--held-out",
        type=int,
        default=0,
        metavar="N",
        help="prompt with the first 32 tokens of N held-out blocks of the demo's data instead",
    )
    parser.add_argument(
        "--held-out-prompts",
        type=int,
        default=0,
        metavar="N",
        help="prompt with N held-out chatterbot questions and N Shakespeare lines instead "
        "(the prompts familialize keeps aside)",
    )
    parser.add_argument(
        "--agreement",
        type=int,
        default=0,
        metavar="N",
        help="also measure each exit's teacher-forced agreement with the top exit on N "
        "held-out blocks of the demo's data",
    )
    parser.add_argument(
        "--target", type=float, default=TARGET_SPEEDUP, help="speedup whose acceptance to show"
    )
    parser.add_argument("--no-hf", action="store_true", help="skip transformers' reference")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    spec = resolve_model(args.model)
    prompts: Sequence[str | torch.Tensor] = PROMPTS[: args.prompts]
    if args.held_out:
        prompts = held_out_prompts(args.held_out, 32)
    elif args.held_out_prompts:
        prompts = familialize_prompts(spec, args.held_out_prompts)
    result = benchmark(
        spec,
        args.adapters,
        args.route,
        prompts,
        args.draft_tokens,
        args.threshold,
        args.codec,
        args.max_new_tokens,
        args.link or LINKS,
        args.transport,
        not args.no_hf,
        args.target,
        held_out_blocks(args.agreement) if args.agreement else (),
    )
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
