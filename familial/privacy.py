"""Sample-level differential privacy in local training: DP-SGD with Opacus on the adapters.

Only the LoRA factors (and the exit adapters, if trained) carry gradients; Opacus computes
their per-sample gradients, clips each to ``max_grad_norm`` and adds Gaussian noise of std
``noise_multiplier * max_grad_norm`` per step, over Poisson-sampled batches (sample rate =
1 / batches per epoch, about batch size / blocks), as its accountant assumes.

Per-sample gradients: PEFT's LoRA factors are plain ``nn.Linear`` modules, which Opacus'
hooks handle; a module type it has no sampler for (the exit adapters' norm, for example) is
handled by its functorch fallback inside the same ``GradSampleModule``. ``grad_sample_mode =
"functorch"`` forces functorch for every module.

The guarantee is cumulative: each client keeps its RDP accountant's history (a list of
``(noise_multiplier, sample_rate, steps)``) across rounds, in Flower's ``Context.state`` (and
optionally a JSON file), and reports the epsilon of everything it has trained so far. With a
``target_epsilon``, the noise is derived for the whole run (rounds x local steps) and the
client refuses to train a round that would take it past that budget.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

from famflow.familial.errors import FamflowError
from famflow.familial.model import FamilialLM
from famflow.familial.training import (
    TrainConfig,
    TrainResult,
    cosine_schedule,
    make_optimizer,
    multi_exit_loss,
    trainable_setup,
)

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant

logger = logging.getLogger("famflow.familial")

History = list[tuple[float, float, int]]


def opacus() -> ModuleType:
    """Opacus, imported on first use: its import calls ``logging.basicConfig``, which would put
    every library's log records on stderr; the root logger's handlers are kept as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import opacus as module
    import opacus.accountants.utils  # get_noise_multiplier lives there

    root.handlers, root.level = handlers, level
    return module


GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "functorch")


class PrivacyBudgetError(FamflowError):
    """A client's next round would take its cumulative epsilon past its target."""


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings. ``noise_multiplier`` > 0 is used as given; 0 derives it from
    ``target_epsilon`` over the whole run. ``target_epsilon`` > 0 is also the budget a client
    never exceeds. ``delta`` is the (epsilon, delta) guarantee's delta."""

    noise_multiplier: float = 0.0
    target_epsilon: float = 0.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    grad_sample_mode: str = "hooks"

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.target_epsilon < 0:
            raise FamflowError("dp-noise-multiplier and dp-target-epsilon must be >= 0.")
        if self.noise_multiplier == 0 and self.target_epsilon == 0:
            raise FamflowError(
                "DP needs a noise: set dp-noise-multiplier > 0 or dp-target-epsilon > 0."
            )
        if not self.max_grad_norm > 0:
            raise FamflowError(f"dp-max-grad-norm must be positive, got {self.max_grad_norm}.")
        if not 0 < self.delta < 1:
            raise FamflowError(f"dp-delta must be in (0, 1), got {self.delta}.")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise FamflowError(
                f"Unknown grad-sample mode {self.grad_sample_mode!r}: use hooks or functorch."
            )

    def noise_for(self, sample_rate: float, total_steps: int) -> float:
        """The noise multiplier: as given, or the one reaching ``target_epsilon`` at ``delta``
        after ``total_steps`` steps at ``sample_rate`` (the whole run)."""
        if self.noise_multiplier > 0:
            return self.noise_multiplier
        return float(
            opacus().accountants.utils.get_noise_multiplier(
                target_epsilon=self.target_epsilon,
                target_delta=self.delta,
                sample_rate=sample_rate,
                steps=total_steps,
                accountant="rdp",
            )
        )


def check_blocks(blocks: torch.Tensor) -> None:
    if blocks.ndim != 2 or len(blocks) == 0:
        raise FamflowError(
            "No training blocks: the partition has fewer tokens than one sequence; "
            "use fewer partitions or a shorter sequence length."
        )


def accountant(history: History) -> RDPAccountant:
    """Opacus' RDP accountant holding ``history``."""
    rdp = opacus().accountants.RDPAccountant()
    rdp.history = [(float(z), float(q), int(n)) for z, q, n in history]
    return rdp


def epsilon(history: History, delta: float) -> float:
    """The epsilon of everything in ``history`` at ``delta`` (0 before any step)."""
    return float(accountant(history).get_epsilon(delta)) if history else 0.0


def extended(history: History, noise: float, rate: float, steps: int) -> History:
    """``history`` plus ``steps`` steps at (noise, rate), merged as Opacus merges them."""
    rdp = accountant(history)
    for _ in range(steps):
        rdp.step(noise_multiplier=noise, sample_rate=rate)
    return list(rdp.history)


def check_budget(config: DPConfig, history: History, noise: float, rate: float, steps: int) -> None:
    """Refuse a round that would take the client past ``target_epsilon`` (if one is set)."""
    if config.target_epsilon <= 0:
        return
    after = epsilon(extended(history, noise, rate, steps), config.delta)
    if after > config.target_epsilon * (1 + 1e-9):
        raise PrivacyBudgetError(
            f"This client's privacy budget is spent: another {steps} steps would take its "
            f"epsilon from {epsilon(history, config.delta):.3g} to {after:.3g}, past "
            f"dp-target-epsilon {config.target_epsilon:g}."
        )


# History as Flower records (ConfigRecord values: lists of floats / ints) and as JSON.
def history_to_config(history: History) -> dict[str, list[float] | list[int]]:
    return {
        "noise": [float(z) for z, _, _ in history],
        "rate": [float(q) for _, q, _ in history],
        "steps": [int(n) for _, _, n in history],
    }


def history_from_config(values: dict[str, object] | None) -> History:
    if not values:
        return []
    try:
        noise, rate, steps = (list(values[key]) for key in ("noise", "rate", "steps"))  # type: ignore[call-overload]
        if not len(noise) == len(rate) == len(steps):
            raise ValueError("lengths differ")
        return [(float(z), float(q), int(n)) for z, q, n in zip(noise, rate, steps, strict=True)]
    except (KeyError, TypeError, ValueError) as error:
        raise FamflowError(f"The stored DP accountant history is unreadable ({error}).") from None


def load_history(path: Path) -> History:
    """The history in a JSON file (empty when the file does not exist)."""
    if not path.exists():
        return []
    try:
        return history_from_config(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise FamflowError(f"DP accountant file {path} is not JSON ({error}).") from None


def save_history(path: Path, history: History) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history_to_config(history)))


@dataclass
class PrivateResult:
    result: TrainResult
    history: History
    epsilon: float
    noise_multiplier: float
    sample_rate: float


def train_private(
    model: FamilialLM,
    blocks: torch.Tensor,
    config: TrainConfig,
    dp: DPConfig,
    history: History | None = None,
    total_steps: int | None = None,
) -> PrivateResult:
    """DP-SGD on the branch's adapters over ``blocks``; ``history`` is the client's accountant
    history before this round, ``total_steps`` the steps of the whole run (for a target
    epsilon; default: this round's). Raises a FamflowError if the round would exceed the
    budget. ``config.max_grad_norm`` is ignored: Opacus clips per sample at
    ``dp.max_grad_norm``; ``grad_accum`` must be 1 (one Poisson batch per step)."""
    if config.grad_accum != 1:
        raise FamflowError("DP training takes one Poisson batch per step: set grad_accum = 1.")
    if config.gradient_checkpointing:
        raise FamflowError(
            "DP training needs the activations kept for per-sample gradients: set "
            "gradient_checkpointing = False."
        )
    check_blocks(blocks)
    history = list(history or [])
    loader = opacus().data_loader.DPDataLoader.from_data_loader(
        DataLoader(
            TensorDataset(blocks),
            batch_size=min(config.batch_size, len(blocks)),
            generator=torch.Generator().manual_seed(config.seed),
        )
    )
    # The rate Opacus' accountant records: 1 / batches per epoch, which is not always
    # batch / blocks (466 blocks in batches of 4 give 1/116); plan the noise and budget with it.
    rate = 1 / len(loader)
    noise = dp.noise_for(rate, total_steps or config.steps)
    check_budget(dp, history, noise, rate, config.steps)

    weights, exits, parameters = trainable_setup(model, config)
    torch.manual_seed(config.seed)
    device = parameters[0].device
    optimizer = make_optimizer(model, parameters, config)
    model.train()  # Opacus validates a model in training mode
    engine = opacus().PrivacyEngine(accountant="rdp")
    engine.accountant.history = list(history)
    private, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=False,  # the loader already samples as Poisson (DPDataLoader)
        grad_sample_mode=dp.grad_sample_mode,
        noise_generator=torch.Generator(device=device).manual_seed(config.seed),
    )
    scheduler = LambdaLR(optimizer, cosine_schedule(config))
    result = TrainResult(steps=0, tokens=0, seconds=0.0)
    private.train()
    start = time.perf_counter()
    stream = iter(loader)
    try:
        for step in range(config.steps):
            try:
                (input_ids,) = next(stream)
            except StopIteration:
                stream = iter(loader)
                (input_ids,) = next(stream)
            input_ids = input_ids.to(device)
            if len(input_ids):
                output = private(input_ids, exits=exits)
                loss, per_exit = multi_exit_loss(
                    output.logits,
                    input_ids,
                    weights,
                    config.distill_weight,
                    config.distill_temperature,
                )
                loss.backward()
                result.losses.append(float(loss.detach()))
                result.exit_losses = {d: float(v.detach()) for d, v in per_exit.items()}
                result.tokens += input_ids.numel()
            else:  # an empty Poisson batch still takes a step: noise on zero sums
                for p in parameters:
                    p.grad_sample = torch.zeros((0, *p.shape), device=device, dtype=p.dtype)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            logger.info("DP step %d/%d", step + 1, config.steps)
    finally:
        private._close()  # the cached branch is reused: remove Opacus' hooks and attributes
    result.seconds = time.perf_counter() - start
    result.steps = config.steps
    model.eval()
    history = list(engine.accountant.history)
    return PrivateResult(result, history, epsilon(history, dp.delta), noise, rate)
