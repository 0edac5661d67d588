"""Hierarchical decoding on one box against plain cached greedy decoding of the full model.

On held-out prompts (chatterbot questions and Shakespeare lines, never seen in training), in
one run on this machine, every method generates the same number of tokens per prompt:

- ``greedy``: transformers' own cached greedy decoding of the plain model (the baseline);
- ``famflow greedy``: famflow's cached greedy decoding of the top exit;
- ``assistant_early_exit``: transformers' self-speculative decoding drafting from layer E of
  the plain model (``generate(assistant_early_exit=E)``);
- ``hier R/L``: ``famflow.collab.hierarchical`` along route R (exits, device first) with
  lookahead L per level below the top, the lower exits drafting over the draft vocabulary.

Per method: tokens per second over all prompts and its ratio to ``greedy``, the share of
prompts whose output equals the top exit's greedy output, the top's decode passes per new
token and each level's acceptance of the proposals from below.

    .venv/bin/python benchmarks/hierarchical_decoding.py --adapters runs/familialize
        [--prompts 12] [--max-new-tokens 48] [--config 10,30:3 --config 10,20,30:2,3]
        [--early-exit 10] [--json F]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from collab_inference import hf_model, time_hf

from famflow.collab.hierarchical import hierarchical_generate
from famflow.collab.route import build_nodes, load_route_models
from famflow.familial.data.prompts import corpus_prompts
from famflow.familial.inference import generate
from famflow.familial.presets import resolve_model
from famflow.familial.tokenizer import load_tokenizer

SOURCES = ("chatterbot", "shakespeare")
DEFAULT_CONFIGS = ("10,30:2", "10,30:3", "10,20,30:2,3", "10,20,30:3,4")


def parse_config(text: str) -> tuple[list[int], list[int]]:
    route, _, lookahead = text.partition(":")
    return [int(e) for e in route.split(",")], [int(k) for k in lookahead.split(",")]


def timed(run: Callable[[torch.Tensor], torch.Tensor], prompts: Sequence[torch.Tensor]):
    run(prompts[0][:, :8])  # warm-up
    outputs, seconds = [], 0.0
    for prompt in prompts:
        begin = time.perf_counter()
        outputs.append(run(prompt))
        seconds += time.perf_counter() - begin
    return outputs, seconds


def _new_tokens(outputs: Sequence[torch.Tensor], prompts: Sequence[torch.Tensor]) -> int:
    return sum(o.shape[1] - p.shape[1] for o, p in zip(outputs, prompts, strict=True))


def _hierarchical_row(nodes, route, lookahead, prompts, n: int, eos: int | None) -> dict:
    results = []

    def run(prompt: torch.Tensor) -> torch.Tensor:
        result = hierarchical_generate(nodes, prompt, n, lookahead, eos)
        results.append(result)
        return result.tokens

    outputs, seconds = timed(run, prompts)
    results = results[1:]  # without the warm-up
    new = sum(r.new_tokens for r in results)

    def acceptance(level: int) -> float:
        judged = sum(r.levels[level].judged for r in results)
        return sum(r.levels[level].accepted for r in results) / max(1, judged)

    return {
        "method": f"hier {','.join(map(str, route))}/{','.join(map(str, lookahead))}",
        "seconds": seconds,
        "outputs": outputs,
        "top_passes_per_token": sum(r.levels[-1].passes for r in results) / new,
        "acceptance": [acceptance(level) for level in range(1, len(route))],
    }


def benchmark(args: argparse.Namespace) -> dict:
    spec = resolve_model(args.model)
    tokenizer = load_tokenizer(spec)
    eos = tokenizer.eos_token_id
    configs = [parse_config(text) for text in args.config or DEFAULT_CONFIGS]
    exits = sorted({e for route, _ in configs for e in route})
    models = load_route_models(spec, exits, args.adapters)
    prompts = [
        torch.tensor([ids])
        for source in SOURCES
        for ids in corpus_prompts(source, tokenizer, "held-out", args.prompts)
    ]
    n = args.max_new_tokens
    plain = hf_model(spec)

    def hf_row(method: str, early_exit: int | None) -> dict:
        outputs, seconds = timed(lambda p: time_hf(plain, p, n, eos, early_exit)[0], prompts)
        return {"method": method, "seconds": seconds, "outputs": outputs}

    rows = [hf_row("greedy", None)]
    reference, seconds = timed(lambda p: generate(models.trunk, p, exits[-1], n, eos), prompts)
    rows.append({"method": "famflow greedy", "seconds": seconds, "outputs": reference})
    rows.append(hf_row(f"assistant_early_exit={args.early_exit}", args.early_exit))
    for route, lookahead in configs:
        nodes = build_nodes(models, route)
        rows.append(_hierarchical_row(nodes, route, lookahead, prompts, n, eos))
    for row in rows:
        outputs = row.pop("outputs")
        row["new_tokens"] = _new_tokens(outputs, prompts)
        row["tokens_per_s"] = row["new_tokens"] / row["seconds"]
        same = sum(torch.equal(o, r) for o, r in zip(outputs, reference, strict=True))
        row["identical"] = same / len(prompts)
        row["speedup"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    vocabulary = models.draft_vocabulary
    return {
        "model": spec.name,
        "adapters": str(args.adapters) if args.adapters else None,
        "prompts": len(prompts),
        "new_tokens": _new_tokens(reference, prompts),
        "draft_vocabulary": None if vocabulary is None else len(vocabulary),
        "rows": rows,
    }


def format_table(result: dict) -> str:
    vocabulary = result["draft_vocabulary"] or "full"
    lines = [
        f"{result['model']} (adapters: {result['adapters'] or 'none'}), {result['prompts']} "
        f"held-out prompts, {result['new_tokens']} new tokens, draft vocabulary {vocabulary}; "
        "x = tokens/s over transformers' greedy, same run",
        f"{'method':<28} {'tok/s':>7} {'x':>6} {'same':>5} {'top/tok':>8}  acceptance per level",
    ]
    for row in result["rows"]:
        passes = row.get("top_passes_per_token")
        acceptance = " ".join(f"{a:.3f}" for a in row.get("acceptance", []))
        lines.append(
            f"{row['method']:<28} {row['tokens_per_s']:>7.2f} {row['speedup']:>6.2f} "
            f"{row['identical']:>5.0%} {'-' if passes is None else f'{passes:.3f}':>8}  "
            f"{acceptance}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapters", type=Path, default=None, help="familialize output")
    parser.add_argument("--prompts", type=int, default=12, help="held-out prompts per source")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--config", action="append", help="ROUTE:LOOKAHEAD, e.g. 10,20,30:2,3")
    parser.add_argument("--early-exit", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = benchmark(args)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
