"""Training a branch: multi-exit loss, optional self-distillation, accumulation, cosine LR."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F  # noqa: N812
from torch.optim.lr_scheduler import LambdaLR

from famflow.familial.chunked_loss import chunked_multi_exit_loss
from famflow.familial.compute import Precision, autocast, check_precision
from famflow.familial.errors import FamflowError
from famflow.familial.host_memory import bound_heap_slack
from famflow.familial.lora import set_trainable
from famflow.familial.model import FamilialLM

logger = logging.getLogger("famflow.familial")


@dataclass
class TrainConfig:
    """How a branch trains. ``exit_weights`` default to 1 for every exit the branch holds.

    ``steps`` counts optimizer steps, each over ``grad_accum`` batches of ``batch_size``
    blocks. ``distill_weight`` > 0 adds KL(deepest exit || each shallower exit) at
    ``distill_temperature`` (DepthFL-style self-distillation).
    """

    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    exit_weights: dict[int, float] | None = None
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    # Translators act after the norm, straight on what the head reads: a step of ``lr`` on an
    # h x h map moves the logits far more than a LoRA step does.
    translator_lr_ratio: float = 0.1
    train_lora: bool = True
    train_exit_adapters: bool = True
    seed: int = 0
    # bf16 autocast (familial.compute); fp32 stays the default, see docs/benchmarks.md
    precision: Precision = "fp32"
    # Recompute decoder layers and the heads' logits in backward (familial.chunked_loss): a
    # step keeps about a layer's and a chunk's activations, for about a third more compute.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_precision(self.precision)
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise FamflowError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.lr <= 0:
            raise FamflowError(f"The learning rate must be positive, got {self.lr}.")
        if not 0 <= self.min_lr_ratio <= 1:
            raise FamflowError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}.")
        if self.warmup_steps < 0:
            raise FamflowError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise FamflowError(
                "distill_weight must be >= 0 and distill_temperature > 0: fix the settings."
            )
        if self.exit_weights is not None:
            self.exit_weights = {int(k): float(v) for k, v in self.exit_weights.items()}
            if any(w < 0 for w in self.exit_weights.values()):
                raise FamflowError(f"Exit weights must be >= 0, got {self.exit_weights}.")
        if not (self.train_lora or self.train_exit_adapters):
            raise FamflowError("Nothing to train: enable LoRA or exit adapters (or both).")

    def weights_for(self, model: FamilialLM) -> dict[int, float]:
        weights = self.exit_weights or dict.fromkeys(model.held_exits, 1.0)
        outside = sorted(set(weights) - set(model.held_exits))
        if outside:
            raise FamflowError(
                f"Exit weights name exits {outside} that branch {model.branch} does not hold: "
                f"use exits from {model.held_exits}."
            )
        if not any(weights.values()):
            raise FamflowError("All exit weights are 0: give at least one exit a weight.")
        return weights


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    exit_losses: dict[int, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t within each block."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1))


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) per token at ``temperature``, scaled by T^2 (Hinton et al.)."""
    vocab = student.shape[-1]
    log_student = F.log_softmax(student.reshape(-1, vocab) / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.detach().reshape(-1, vocab) / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def multi_exit_loss(
    logits: dict[int, torch.Tensor],
    input_ids: torch.Tensor,
    weights: dict[int, float],
    distill_weight: float = 0.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Weighted sum of the exits' next-token losses, plus distillation from the deepest exit."""
    per_exit = {depth: next_token_loss(logits[depth], input_ids) for depth in weights}
    total = sum(weights[depth] * loss for depth, loss in per_exit.items())
    if distill_weight > 0:
        teacher = logits[max(logits)]
        for depth, student in logits.items():
            if depth != max(logits):
                total = total + distill_weight * distillation_loss(student, teacher, temperature)
    return total, per_exit  # type: ignore[return-value]


def cosine_schedule(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def batches(blocks: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of blocks, a new permutation every epoch (last part dropped)."""
    if blocks.ndim != 2 or len(blocks) == 0:
        raise FamflowError(
            "No training blocks: the partition has fewer tokens than one sequence; "
            "use fewer partitions or a shorter sequence length."
        )
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(blocks))
    while True:
        order = torch.randperm(len(blocks), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield blocks[order[start : start + batch_size]]


def trainable_setup(
    model: FamilialLM, config: TrainConfig
) -> tuple[dict[int, float], list[int], list[torch.nn.Parameter]]:
    """The exit weights, the exits to run and the parameters to train (made trainable)."""
    weights = {d: w for d, w in config.weights_for(model).items() if w > 0}
    # Distillation teaches every held exit from the deepest, weighted or not.
    exits = model.held_exits if config.distill_weight > 0 else sorted(weights)
    set_trainable(model, lora=config.train_lora, exit_adapters=config.train_exit_adapters)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise FamflowError(
            "This branch has no trainable parameters: attach LoRA or give the family exit adapters."
        )
    return weights, exits, parameters


class OptimizerSettings(Protocol):
    lr: float
    translator_lr_ratio: float
    weight_decay: float


def make_optimizer(
    model: FamilialLM, parameters: list[torch.nn.Parameter], config: OptimizerSettings
) -> torch.optim.AdamW:
    """AdamW over ``parameters``; the exit translators at ``lr * translator_lr_ratio``."""
    translators = {
        id(p)
        for depth in model.held_exits
        if (translator := model.exit_head(depth).translator) is not None
        for p in translator.parameters()
    }
    slow = [p for p in parameters if id(p) in translators]
    rest = [p for p in parameters if id(p) not in translators]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": config.lr}]
    if slow:
        groups.append({"params": slow, "lr": config.lr * config.translator_lr_ratio})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def step_loss_of(
    model: FamilialLM,
    input_ids: torch.Tensor,
    exits: list[int],
    weights: dict[int, float],
    config: TrainConfig,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The batch's loss (and each weighted exit's), whole or in checkpointed chunks."""
    with autocast(config.precision, input_ids.device.type):
        if config.gradient_checkpointing:
            output = model(input_ids, exits=exits, output_logits=False)
            assert output.hidden_states is not None
            return chunked_multi_exit_loss(
                model,
                output.hidden_states,
                input_ids,
                weights,
                config.distill_weight,
                config.distill_temperature,
            )
        output = model(input_ids, exits=exits)
    logits = {depth: value.float() for depth, value in output.logits.items()}
    return multi_exit_loss(
        logits, input_ids, weights, config.distill_weight, config.distill_temperature
    )


def train(model: FamilialLM, blocks: torch.Tensor, config: TrainConfig) -> TrainResult:
    """Train the branch's chosen parts on ``blocks`` ([n, seq_len] token ids)."""
    weights, exits, parameters = trainable_setup(model, config)
    torch.manual_seed(config.seed)
    optimizer = make_optimizer(model, parameters, config)
    scheduler = LambdaLR(optimizer, cosine_schedule(config))
    stream = batches(blocks, config.batch_size, config.seed)
    device = parameters[0].device
    result = TrainResult(steps=0, tokens=0, seconds=0.0)
    model.train()
    model.gradient_checkpointing = config.gradient_checkpointing
    if config.gradient_checkpointing:
        bound_heap_slack()
    start = time.perf_counter()
    for step in range(config.steps):
        step_loss = torch.zeros((), device=device)
        exit_sums = dict.fromkeys(weights, 0.0)
        for _ in range(config.grad_accum):
            input_ids = next(stream).to(device)
            loss, per_exit = step_loss_of(model, input_ids, exits, weights, config)
            (loss / config.grad_accum).backward()
            step_loss += loss.detach() / config.grad_accum
            for depth, value in per_exit.items():
                exit_sums[depth] += value.detach() / config.grad_accum
            result.tokens += input_ids.numel()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(step_loss))
        result.exit_losses = {d: float(v) for d, v in exit_sums.items()}
        logger.info("step %d/%d loss %.4f", step + 1, config.steps, result.losses[-1])
    result.seconds = time.perf_counter() - start
    result.steps = config.steps
    model.gradient_checkpointing = False
    model.eval()
    return result
