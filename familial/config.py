"""Typed, validated configuration of a family: which exits it has and how each exit decodes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from famflow.familial.errors import FamflowError

ExitStyle = Literal["shared-head", "ruyi"]
TranslatorKind = Literal["none", "full", "low-rank"]
EXIT_STYLES: tuple[str, ...] = ("shared-head", "ruyi")
TRANSLATOR_KINDS: tuple[str, ...] = ("none", "full", "low-rank")


@dataclass
class ExitAdapterConfig:
    """Per-exit trainable parts that make a dense checkpoint's shallow exits decodable.

    - ``norm``: an exit-private RMSNorm initialised from the final norm.
    - ``translator``: an identity-initialised affine map on the hidden state (a tuned lens),
      ``full`` (h x h) or ``low-rank`` (identity + U V^T with U zero-initialised).
    - ``extra_layer``: an exit-private decoder layer initialised from trunk layer ``depth``
      (Ruyi style); the deepest exit never gets one since no layer follows it.
    """

    norm: bool = True
    translator: TranslatorKind = "full"
    translator_rank: int = 64
    extra_layer: bool = False

    def __post_init__(self) -> None:
        if self.translator not in TRANSLATOR_KINDS:
            raise FamflowError(
                f"Unknown translator {self.translator!r}: use one of {', '.join(TRANSLATOR_KINDS)}."
            )
        if self.translator == "low-rank" and self.translator_rank < 1:
            raise FamflowError(
                f"translator_rank must be at least 1, got {self.translator_rank}: "
                "set a positive rank."
            )

    @property
    def is_empty(self) -> bool:
        return not self.norm and self.translator == "none" and not self.extra_layer


@dataclass
class FamilyConfig:
    """How one transformer becomes a family of early-exit branches.

    Exits are named by depth: the number of decoder layers their branch runs
    (for ``ruyi`` style that includes the exit's own layer).
    """

    exits: list[int]
    exit_style: ExitStyle = "shared-head"
    shared_heads: bool = True
    adapters: ExitAdapterConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.adapters, dict):
            self.adapters = ExitAdapterConfig(**self.adapters)
        if self.exit_style not in EXIT_STYLES:
            raise FamflowError(
                f"Unknown exit style {self.exit_style!r}: use one of {', '.join(EXIT_STYLES)}."
            )
        if not self.exits:
            raise FamflowError("A family needs at least one exit: list exit depths in `exits`.")
        if sorted(set(self.exits)) != list(self.exits):
            raise FamflowError(
                f"Exits must be distinct and increasing, got {self.exits}: "
                "sort them and drop repeats."
            )
        if self.exits[0] < 1:
            raise FamflowError(
                f"Exit depths start at 1, got {self.exits[0]}: use a positive depth."
            )
        if self.adapters is not None and self.adapters.is_empty:
            self.adapters = None

    def validate_against(self, num_hidden_layers: int) -> None:
        deepest = self.exits[-1]
        if deepest > num_hidden_layers:
            raise FamflowError(
                f"Exit {deepest} is beyond the model's {num_hidden_layers} layers: "
                f"choose exits between 1 and {num_hidden_layers}."
            )
        if self.exit_style == "ruyi" and deepest != num_hidden_layers:
            raise FamflowError(
                f"A ruyi-style family must end with an exit at depth {num_hidden_layers}, "
                f"got {deepest}: add it to `exits`."
            )

    def check_exit(self, depth: int) -> None:
        if depth not in self.exits:
            raise FamflowError(
                f"Exit {depth} is not one of this family's exits {self.exits}: pick one of them."
            )

    def with_exit_layers(self) -> FamilyConfig:
        """This family with an own decoder layer on every lower exit (``famflow familialize``);
        exits without adapters get the default norm and translator too."""
        adapters = replace(self.adapters or ExitAdapterConfig(), extra_layer=True)
        return replace(self, adapters=adapters)

    def exits_up_to(self, depth: int) -> list[int]:
        self.check_exit(depth)
        return [e for e in self.exits if e <= depth]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FamilyConfig:
        known = {"exits", "exit_style", "shared_heads", "adapters"}
        unknown = set(data) - known
        if unknown:
            raise FamflowError(
                f"Unknown family setting(s) {sorted(unknown)}: use only {sorted(known)}."
            )
        return cls(**data)
