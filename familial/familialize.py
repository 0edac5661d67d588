"""``famflow familialize``: make a dense model's lower exits draft for its top exit.

The top exit (the dense model) greedily continues training prompts (chat questions and text
openings); the continuations are cached once per machine. Each lower exit gets its own
decoder layer (Kangaroo / Ruyi style; a shared-head family's exits otherwise have only a
norm and a translator) and is self-distilled toward the top on those continuations and on
corpus blocks (``familial.self_distillation``). The trunk and the top exit never change, so
the refreshed family decodes exactly as before at the top, and a lower exit's drafts are
accepted more often. Agreement with the top is measured on held-out prompts before and after.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from famflow.familial.continuation_cache import top_exit_continuations
from famflow.familial.data.config import DataConfig
from famflow.familial.data.prepare import prepare_data
from famflow.familial.data.prompts import corpus_prompts
from famflow.familial.errors import FamflowError
from famflow.familial.evaluation import continuation_agreement, evaluate
from famflow.familial.family_io import save_draft_vocabulary, save_exit_adapters, saved_family
from famflow.familial.loading import load_branch
from famflow.familial.local_training import METRICS_FILE
from famflow.familial.model import FamilialLM
from famflow.familial.presets import ModelSpec
from famflow.familial.self_distillation import (
    DistillConfig,
    distill_exits,
    start_exit_layers_from_last,
)
from famflow.familial.tokenizer import load_tokenizer

LayerInit = Literal["last", "depth"]
LAYER_INITS: tuple[LayerInit, ...] = ("last", "depth")


@dataclass
class FamilializeConfig:
    """Where the distillation data comes from, and whether exits get their own layer.

    ``layer_init`` "last" starts each new exit layer from the model's last decoder layer
    (which already turns a late hidden state into the head's input), "depth" from the
    trunk layer it stands in for.
    """

    prompt_sources: tuple[str, ...] = ("chatterbot", "shakespeare")
    prompts_per_source: int = 1024
    held_out_prompts: int = 16
    new_tokens: int = 48
    corpus: str = "shakespeare"
    corpus_blocks: int = 64
    eval_blocks: int = 32
    seq_len: int = 64
    exit_layers: bool = True
    layer_init: LayerInit = "last"
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if not self.prompt_sources or self.prompts_per_source < 1 or self.new_tokens < 1:
            raise FamflowError(
                "Familialize needs at least one prompt source, one prompt per source and one "
                "new token: fix --prompt-data, --prompts or --new-tokens."
            )
        if self.layer_init not in LAYER_INITS:
            raise FamflowError(
                f"Unknown --layer-init {self.layer_init!r}: use one of {', '.join(LAYER_INITS)}."
            )


def familial_spec(spec: ModelSpec, exit_layers: bool) -> ModelSpec:
    """``spec`` whose lower exits have their own decoder layer when ``exit_layers`` (Ruyi's
    exits always have one), with some exit part to train."""
    if spec.is_ruyi:
        return spec
    family = spec.family.with_exit_layers() if exit_layers else spec.family
    if family.adapters is None or family.adapters.is_empty:
        raise FamflowError(
            f"{spec.name}'s exits have nothing to train: keep --exit-layers or give the "
            "preset [family.adapters]."
        )
    return dataclasses.replace(spec, family=family)


def _has_new_exit_layers(spec: ModelSpec, config: FamilializeConfig, adapters: Path | None) -> bool:
    """Whether the exits' own layers start here (not from a Ruyi checkpoint or saved adapters)."""
    if spec.is_ruyi or not config.exit_layers:
        return False
    saved = saved_family(adapters) if adapters is not None else None
    return not (saved and saved.adapters and saved.adapters.extra_layer)


def _agreement_row(
    branch: FamilialLM, texts: list[torch.Tensor], lengths: list[int], blocks: torch.Tensor
) -> dict[str, Any]:
    return {
        "own_continuations": continuation_agreement(branch, texts, lengths),
        "held_out_blocks": {d: asdict(m) for d, m in evaluate(branch, blocks).items()},
    }


def familialize(
    spec: ModelSpec,
    out_dir: Path,
    config: FamilializeConfig,
    adapters: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Distill ``spec``'s lower exits from its top exit; write the exit adapters (with their
    ``family.json``) and ``metrics.json`` into ``out_dir``; return the metrics."""
    family_spec = familial_spec(spec, config.exit_layers)
    branch = load_branch(family_spec, adapters=adapters)
    tokenizer = load_tokenizer(spec)
    eos = tokenizer.eos_token_id
    begin = time.perf_counter()
    train, held, held_lengths = [], [], []
    made = {}
    for source in config.prompt_sources:
        prompts = corpus_prompts(source, tokenizer, "train", config.prompts_per_source)
        texts, cached = top_exit_continuations(
            spec.name, branch, prompts, config.new_tokens, eos, adapters
        )
        train += texts
        kept = corpus_prompts(source, tokenizer, "held-out", config.held_out_prompts)
        held += top_exit_continuations(spec.name, branch, kept, config.new_tokens, eos, adapters)[0]
        held_lengths += [len(p) for p in kept]
        made[source] = {"prompts": len(prompts), "cached": cached}
    generation_s = time.perf_counter() - begin
    counts = ", ".join(f"{source}: {made[source]['prompts']}" for source in made)
    how = "read from the cache" if all(m["cached"] for m in made.values()) else "generated"
    say(
        f"{len(train)} top-exit continuations of up to {config.new_tokens} tokens "
        f"({counts}) {how} in {generation_s:.0f} s"
    )
    data = DataConfig(name=config.corpus, seq_len=config.seq_len)
    max_length = int(spec.base_config().max_position_embeddings)
    splits = prepare_data(data, tokenizer, max_length=max_length)
    blocks = list(splits.train[: config.corpus_blocks])
    validation = splits.validation[: config.eval_blocks]
    before = _agreement_row(branch, held, held_lengths, validation)
    if config.layer_init == "last" and _has_new_exit_layers(spec, config, adapters):
        start_exit_layers_from_last(branch)
    result = distill_exits(branch, train + blocks, config.distill)
    after = _agreement_row(branch, held, held_lengths, validation)
    out_dir = Path(out_dir)
    save_exit_adapters(branch, out_dir)
    if config.distill.draft_vocab:
        save_draft_vocabulary(out_dir, result.vocabulary)
    metrics = {
        "model": spec.name,
        "exits": branch.held_exits,
        "config": asdict(config),
        "continuations": {"sources": made, "seconds": generation_s},
        "distillation": {
            "steps": result.steps,
            "tokens": result.tokens,
            "feature_seconds": result.feature_seconds,
            "draft_vocabulary": len(result.vocabulary),
            "seconds": result.seconds,
            "first_loss": result.losses[0],
            "last_loss": result.losses[-1],
        },
        "held_out_prompts": len(held),
        "before": before,
        "after": after,
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    say(
        f"distilled exits {branch.held_exits[:-1]} in {result.steps} steps: features "
        f"{result.feature_seconds:.0f} s, training {result.seconds:.0f} s, KL "
        f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}"
    )
    for depth in branch.held_exits[:-1]:
        old, new = before["own_continuations"][depth], after["own_continuations"][depth]
        ppl_old = before["held_out_blocks"][depth]["perplexity"]
        ppl_new = after["held_out_blocks"][depth]["perplexity"]
        say(
            f"  exit {depth:>4}: predicts {old:.1%} -> {new:.1%} of exit "
            f"{branch.held_exits[-1]}'s own greedy tokens on {len(held)} held-out prompts; "
            f"perplexity {ppl_old:.4g} -> {ppl_new:.4g}"
        )
    say(f"written to {out_dir}")
    return metrics
