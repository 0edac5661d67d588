"""The run config of a federation (``[tool.flwr.app.config]``), read into one typed dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from famflow.familial.codecs import CODECS
from famflow.familial.compute import CHECKPOINTING
from famflow.familial.compute import PRECISIONS as COMPUTE_PRECISIONS
from famflow.familial.errors import FamflowError
from famflow.familial.export_formats import parse_formats
from famflow.strategies.robust import ROBUST_METHODS as ROBUST
from famflow.strategies.rules import RULES, AggregationRule

if TYPE_CHECKING:
    from famflow.familial.model import FamilialLM
    from famflow.familial.presets import ModelSpec

BRANCH_EXITS: tuple[str, ...] = ("held", "own")


@dataclass
class FederationConfig:
    """Every setting of a federated run; Flower's hyphenated keys map to these fields.

    ``tier_mix`` lists the tiers of simulated nodes in partition order, as ``name:count``
    pairs (``device:2,edge:2,cloud:2``); a deployed node names its tier in its node config.
    A tier's LoRA uses ``alpha = lora_alpha_ratio * rank``, one scale for every rank.
    ``branch_exits``: a node trains every exit its branch holds (``held``: the trunk learns
    from all of them, and a Ruyi branch carries the shallower exits' own layers) or only its
    own exit's path (``own``: the least to send; shallower exits train on shallower nodes).
    ``tier_local_steps`` gives some tiers their own local steps per round (``cloud:20``: a
    stronger node does more work in a round); the other tiers take ``local_steps``.
    ``tier_weights`` overrides the weight precisions some tiers may hold their frozen layers in
    (``device:int8/nf4``: the device tier takes the deepest exit that fits in int8 or nf4;
    ``familial.weights``); the other tiers keep their tiers file's ``weights``.
    ``gradient_checkpointing``: ``off``; ``on`` (a node recomputes activations in backward,
    about 1.6x the compute for a fraction of the memory; ``familial.chunked_loss``); ``auto``
    (a node recomputes only when its branch would not fit otherwise, so that it can hold a
    deeper branch; ``familial.sizing.largest_fitting_branch``); or per tier, ``device:auto``
    (the tiers not named: ``off``).
    ``server_lr`` scales the step from the old global adapters to the rule's aggregate
    (``strategies.server_step``; 1.0 takes the aggregate).
    ``fraction_train`` < 1 samples that share of each tier's nodes every round (at least one),
    so every branch trains every round, and a tier's nodes take turns; ``min_nodes`` tops up.
    Held-out evaluation runs before round 1, every ``evaluate_every`` rounds and after the last.
    ``out_dir`` belongs to one run: a fresh run refuses a directory an earlier run used,
    unless ``move_old_run`` moves that run aside (to ``OUT.<its run id>``); ``resume`` (a
    checkpoints directory or ``round-N``) continues a run whose model, exits, rule, codec and
    tier plan are this run's.
    ``calibrate_exits`` fits the shallow exits' full translators in closed form before round 1,
    from statistics of ``calibration_blocks`` training blocks per node holding the deepest exit.
    ``export_formats`` (comma-separated ``hf``, ``gguf``, ``peft``) adds standalone exports of
    every exit to the run's export (``server.export``).
    ``family_adapters`` names a ``famflow familialize`` output (made once per machine): every
    branch starts from its self-distilled exits, their own decoder layers included, which
    then train with the exit adapters; calibration is skipped, the exits being trained.

    Bad replies and robust aggregation (``strategies.validation``, ``strategies.robust``):
    a reply whose change of some key has an RMS above ``outlier_norm_ratio`` times the median
    of that key's holders (at least 3) is dropped (0: never). ``robust`` works on each node's
    change from the slice it was sent, per key over the nodes holding it, before the rule
    aggregates: ``none``; ``clip`` (each change scaled to a norm of at most ``clip_norm``; 0:
    the holders' median, per value); ``trimmed-mean`` (per coordinate, the mean without the
    ``trim_ratio`` share of largest and of smallest values) or ``median`` (per coordinate).
    Trimmed mean and median count each holder once: example counts do not weight them.

    Differential privacy (``familial.privacy``, ``strategies.central_dp``): ``dp`` turns on
    sample-level DP-SGD in every client, with ``dp_noise_multiplier`` (0: derived from
    ``dp_target_epsilon`` over rounds x local steps), ``dp_max_grad_norm`` and ``dp_delta``; a
    ``dp_target_epsilon`` > 0 is also each client's budget. ``central_dp_noise`` > 0 adds
    user-level central DP on the server: each change clipped to ``central_dp_clip``, Gaussian
    noise of std ``central_dp_noise * central_dp_clip / holders`` per aggregated key.
    """

    model: str = "smollm2-135m"
    family_adapters: str = ""
    num_server_rounds: int = 3
    tier_mix: str = "device:2,edge:2,cloud:2"
    rule: str = "flexlora"
    codec: str = "fp32"
    lora_alpha_ratio: float = 2.0
    local_steps: int = 10
    tier_local_steps: str = ""
    tier_weights: str = ""
    batch_size: int = 4
    seq_len: int = 64
    lr: float = 2e-3
    server_lr: float = 1.0
    distill_weight: float = 0.0
    train_exit_adapters: bool = True
    branch_exits: str = "held"
    calibrate_exits: bool = True
    calibration_blocks: int = 32
    dataset: str = "shakespeare"
    partitioner: str = "natural"
    partition_by: str = "play"
    max_examples: int = 0
    eval_blocks: int = 8
    evaluate_every: int = 1
    fraction_train: float = 1.0
    min_nodes: int = 2
    round_timeout: float = 600.0
    seed: int = 0
    device: str = "auto"
    # what local training computes in (familial.compute): fp32, or bf16 autocast
    train_precision: str = "fp32"
    gradient_checkpointing: str = "off"
    out_dir: str = "runs/federation"
    resume: str = ""
    move_old_run: bool = False
    export_formats: str = ""
    robust: str = "none"
    clip_norm: float = 0.0
    trim_ratio: float = 0.2
    outlier_norm_ratio: float = 10.0
    dp: bool = False
    dp_noise_multiplier: float = 0.0
    dp_target_epsilon: float = 0.0
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    central_dp_noise: float = 0.0
    central_dp_clip: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise FamflowError(f"Unknown rule {self.rule!r}: use one of {', '.join(RULES)}.")
        if self.codec not in CODECS:
            raise FamflowError(f"Unknown codec {self.codec!r}: use one of {', '.join(CODECS)}.")
        if self.train_precision not in COMPUTE_PRECISIONS:
            raise FamflowError(
                f"Unknown train-precision {self.train_precision!r}: use "
                f"{' or '.join(COMPUTE_PRECISIONS)}."
            )
        self.checkpointing_by_tier()  # refuses a malformed value
        if self.branch_exits not in BRANCH_EXITS:
            raise FamflowError(f"branch-exits {self.branch_exits!r} is unknown: use held or own.")
        if self.robust not in ROBUST:
            raise FamflowError(f"Unknown robust {self.robust!r}: use one of {', '.join(ROBUST)}.")
        if not self.clip_norm >= 0:
            raise FamflowError(f"clip-norm must be 0 (adaptive) or positive, got {self.clip_norm}.")
        if not 0 <= self.trim_ratio < 0.5:
            raise FamflowError(f"trim-ratio must be in [0, 0.5), got {self.trim_ratio}.")
        if not (self.outlier_norm_ratio == 0 or self.outlier_norm_ratio > 1):
            raise FamflowError(
                f"outlier-norm-ratio must be 0 (off) or above 1, got {self.outlier_norm_ratio}."
            )
        self._check_dp()
        parse_formats(self.export_formats)
        positive = ("num_server_rounds", "local_steps", "batch_size", "seq_len", "min_nodes")
        for name in (*positive, "evaluate_every", "calibration_blocks"):
            if getattr(self, name) < 1:
                raise FamflowError(f"{_key(name)} must be at least 1, got {getattr(self, name)}.")
        if not 0 < self.fraction_train <= 1:
            raise FamflowError(f"fraction-train must be in (0, 1], got {self.fraction_train}.")
        if min(self.lr, self.server_lr, self.lora_alpha_ratio, self.round_timeout) <= 0:
            raise FamflowError(
                "lr, server-lr, lora-alpha-ratio and round-timeout must be positive."
            )
        self.tier_counts()
        self.local_steps_by_tier()
        self.weights_by_tier()

    def _check_dp(self) -> None:
        if self.dp_noise_multiplier < 0 or self.dp_target_epsilon < 0:
            raise FamflowError("dp-noise-multiplier and dp-target-epsilon must be >= 0.")
        if self.dp and set(self.checkpointing_by_tier().values()) != {"off"}:
            raise FamflowError(
                "DP-SGD computes per-sample gradients from kept activations, so it cannot "
                "recompute them: set gradient-checkpointing = off or dp = false."
            )
        if self.dp and self.dp_noise_multiplier == 0 and self.dp_target_epsilon == 0:
            raise FamflowError(
                "dp = true needs a noise: set dp-noise-multiplier > 0 or dp-target-epsilon > 0."
            )
        if not 0 < self.dp_delta < 1:
            raise FamflowError(f"dp-delta must be in (0, 1), got {self.dp_delta}.")
        if not self.dp_max_grad_norm > 0:
            raise FamflowError(f"dp-max-grad-norm must be positive, got {self.dp_max_grad_norm}.")
        if self.central_dp_noise < 0 or self.central_dp_clip < 0:
            raise FamflowError("central-dp-noise and central-dp-clip must be >= 0.")
        if self.central_dp_noise > 0 and self.central_dp_clip == 0:
            raise FamflowError(
                "central-dp-noise > 0 needs a clipping bound: set central-dp-clip > 0."
            )

    def check_setup(self) -> None:
        """What the run needs exists, checked before any node is asked: the model (a preset
        whose exits its layers allow, or a checkpoint), every tier of the mix (in the tiers
        file, with a rank >= 1 and memory for the smallest branch), enough tiered nodes for
        ``min_nodes``, and the dataset."""
        from famflow.familial.data.config import CORPUS_NAMES
        from famflow.familial.hardware import GIB, get_tier
        from famflow.familial.sizing import largest_fitting_branch, training_memory_bytes

        spec = self.model_spec()
        counts = self.tier_counts()
        total = sum(count for _, count in counts)
        if total < self.min_nodes:
            raise FamflowError(
                f"tier-mix {self.tier_mix!r} has fewer nodes ({total}) than min-nodes "
                f"({self.min_nodes}): give the tiers counts that add up to at least min-nodes."
            )
        tiers = spec.hardware_tiers()
        shallowest = spec.family.exits[0]
        for name in sorted({name for name, count in counts if count > 0}):
            tier = get_tier(name, tiers)
            weights = self.weights_by_tier().get(name, tier.weights)
            fit = largest_fitting_branch(
                spec,
                tier.memory_gb * GIB,
                tier.rank,
                self.batch_size,
                self.seq_len,
                weights,
                self.checkpointing_of(name),
            )
            if fit is None:
                needed = training_memory_bytes(
                    spec, shallowest, tier.rank, self.batch_size, self.seq_len
                )
                raise FamflowError(
                    f"Tier {name} ({tier.memory_gb:g} GiB) holds no branch of {spec.name}: its "
                    f"smallest, exit {shallowest}, needs {needed / GIB:.3g} GiB at batch "
                    f"{self.batch_size} x {self.seq_len}; raise memory-gb, lower batch-size or "
                    "seq-len, allow quantized weights (tier-weights) or set "
                    "gradient-checkpointing = auto."
                )
        if self.dataset not in CORPUS_NAMES and not Path(self.dataset).expanduser().exists():
            raise FamflowError(
                f"dataset {self.dataset!r} is neither {' nor '.join(CORPUS_NAMES)} nor an "
                "existing file or directory: fix the path or name a corpus."
            )

    @property
    def aggregation(self) -> AggregationRule:
        """The rule ``rule`` names; callers ask it what it needs (``exchanges_a``, ...)."""
        return RULES[self.rule]

    def model_spec(self) -> ModelSpec:
        """The run's model, with the exit layers its family adapters were distilled with."""
        from famflow.familial.loading import with_saved_family
        from famflow.familial.presets import resolve_model

        return with_saved_family(resolve_model(self.model), self._family_adapters())

    def load_branch(
        self,
        exit_depth: int | None = None,
        exits: list[int] | None = None,
        weights: str | None = None,
        device: str = "cpu",
    ) -> FamilialLM:
        """A fresh branch of the run's model (``familial.loading.load_branch``), its exits
        from ``family_adapters`` when the run names them, its frozen layers in ``weights``."""
        from famflow.familial.loading import load_branch

        return load_branch(
            self.model,
            exit_depth,
            exits=exits,
            adapters=self._family_adapters(),
            weights=weights,
            device=device,
        )

    def meta_branch(
        self, exit_depth: int | None = None, exits: list[int] | None = None
    ) -> FamilialLM:
        """The branch's modules on the meta device (shapes and keys, no weights)."""
        from famflow.familial.loading import build_meta_branch

        return build_meta_branch(self.model_spec(), exit_depth, exits=exits)

    def _family_adapters(self) -> Path | None:
        if not self.family_adapters:
            return None
        from famflow.familial.family_io import ADAPTERS_FILE

        directory = Path(self.family_adapters)
        if not (directory / ADAPTERS_FILE).is_file():
            raise FamflowError(
                f"family-adapters {directory} holds no {ADAPTERS_FILE}: run `famflow "
                f"familialize {self.model} --out {directory}` once, or clear family-adapters."
            )
        return directory

    def exits_of_branch(self, exit_depth: int) -> list[int] | None:
        """The exits a node holding ``exit_depth`` trains (None: every exit up to it)."""
        return [exit_depth] if self.branch_exits == "own" else None

    def tier_counts(self) -> list[tuple[str, int]]:
        try:
            pairs = [item.split(":") for item in self.tier_mix.split(",") if item.strip()]
            counts = [(name.strip(), int(count)) for name, count in pairs]
        except ValueError:
            counts = []
        if not counts or any(count < 0 for _, count in counts):
            raise FamflowError(
                f"tier-mix {self.tier_mix!r} is not a list of tier:count pairs: "
                "write e.g. device:2,edge:2,cloud:2."
            )
        return counts

    def node_count(self) -> int:
        """The simulated nodes of the tier mix."""
        return sum(count for _, count in self.tier_counts())

    def local_steps_by_tier(self) -> dict[str, int]:
        """The tiers ``tier-local-steps`` names, with their local steps per round."""
        try:
            pairs = [item.split(":") for item in self.tier_local_steps.split(",") if item.strip()]
            steps = {name.strip(): int(count) for name, count in pairs}
        except ValueError:
            steps = {"": 0}
        if any(not name or count < 1 for name, count in steps.items()):
            raise FamflowError(
                f"tier-local-steps {self.tier_local_steps!r} is not a list of tier:steps pairs "
                "with steps >= 1: write e.g. cloud:20,device:5, or leave it empty."
            )
        return steps

    def weights_by_tier(self) -> dict[str, tuple[str, ...]]:
        """``tier_weights`` parsed: the precisions each named tier may hold."""
        from famflow.familial.hardware import parse_weights

        weights = {}
        for item in filter(str.strip, self.tier_weights.split(",")):
            name, _, allowed = item.partition(":")
            if not name.strip() or not allowed.strip():
                raise FamflowError(
                    f"tier-weights {self.tier_weights!r} is not a list of tier:precisions "
                    "pairs: write e.g. device:int8/nf4, or leave it empty."
                )
            weights[name.strip()] = parse_weights(allowed.replace("/", ","))
        return weights

    def checkpointing_by_tier(self) -> dict[str | None, str]:
        """``gradient_checkpointing`` parsed: a mode for every tier (key None), or per named
        tier (the others ``off``)."""
        value = self.gradient_checkpointing.strip()
        if ":" not in value:
            modes: dict[str | None, str] = {None: value}
        else:
            pairs = [item.partition(":") for item in value.split(",") if item.strip()]
            modes = {None: "off", **{name.strip(): mode.strip() for name, _, mode in pairs}}
        wrong = sorted(str(mode) for mode in modes.values() if mode not in CHECKPOINTING)
        if wrong:
            raise FamflowError(
                f"Unknown gradient-checkpointing {self.gradient_checkpointing!r}: use "
                f"{', '.join(CHECKPOINTING)}, or tier:mode pairs such as device:auto."
            )
        return modes

    def checkpointing_of(self, tier: str | None) -> str:
        """Whether a node of ``tier`` (None: a node without a tier) recomputes activations."""
        modes = self.checkpointing_by_tier()
        return modes.get(tier, modes[None])

    def local_steps_of(self, tier: str) -> int:
        """The local steps per round of a node of ``tier``."""
        return self.local_steps_by_tier().get(tier, self.local_steps)

    def tier_of_partition(self, partition_id: int) -> str:
        """The tier of simulated node ``partition_id`` (the mix repeats past its end)."""
        order = [name for name, count in self.tier_counts() for _ in range(count)]
        if not order:
            raise FamflowError("tier-mix has no nodes: give at least one tier a count.")
        return order[partition_id % len(order)]

    def to_run_config(self) -> dict[str, Any]:
        return {_key(name): value for name, value in asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederationConfig:
        """Read Flower's run config; unknown keys are refused, missing keys take defaults."""
        known = {_key(f.name): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise FamflowError(
                f"Unknown run-config key(s) {unknown}: use only {', '.join(sorted(known))}."
            )
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            field = known[key]
            kind = {"int": int, "float": float, "bool": _bool, "str": str}[str(field.type)]
            try:
                values[field.name] = kind(value)
            except (TypeError, ValueError):
                raise FamflowError(
                    f"run-config {key} = {value!r} is not a {field.type}: fix its value."
                ) from None
        return cls(**values)


def _bool(value: object) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(value)
        return value.lower() in ("true", "1")
    return bool(value)


def _key(name: str) -> str:
    return name.replace("_", "-")
