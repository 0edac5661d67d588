"""The typed, validated settings of a run's data: corpus, sequence length and partitioning."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from famflow.familial.errors import FamflowError

PARTITIONERS: tuple[str, ...] = ("iid", "dirichlet", "natural")
# The named corpora (familial.data.corpus.CORPORA); anything else is a local path.
CORPUS_NAMES: tuple[str, ...] = ("shakespeare", "chatterbot")


@dataclass
class DataConfig:
    """Which corpus a client trains on and how it is cut into partitions and blocks.

    - ``name``: ``shakespeare``, ``chatterbot`` or a local jsonl/csv/parquet/text file or
      saved dataset directory.
    - ``partitioner``: ``iid`` (even random shards), ``dirichlet`` (label skew over
      ``partition_by`` with concentration ``alpha``) or ``natural`` (one partition per value
      of ``partition_by``; ``num_partitions`` is then ignored).
    - ``partition_by``: the column for ``natural``/``dirichlet``; None picks the corpus's own
      (``play`` for shakespeare, ``category`` for chatterbot).
    - ``max_examples``: at most this many examples per partition, drawn after shuffling with
      ``seed``, for quick runs.
    """

    name: str = "shakespeare"
    seq_len: int = 64
    partitioner: str = "iid"
    num_partitions: int = 1
    partition_by: str | None = None
    alpha: float = 0.5
    validation_fraction: float = 0.1
    seed: int = 0
    max_examples: int | None = None

    def __post_init__(self) -> None:
        if not str(self.name).strip():
            raise FamflowError(
                "The data name is empty: use shakespeare, chatterbot or a local dataset path."
            )
        if self.seq_len < 2:
            raise FamflowError(
                f"seq_len must be at least 2 for next-token prediction, got {self.seq_len}: "
                "use a longer sequence length."
            )
        if self.partitioner not in PARTITIONERS:
            raise FamflowError(
                f"Unknown partitioner {self.partitioner!r}: use one of {', '.join(PARTITIONERS)}."
            )
        if self.num_partitions < 1:
            raise FamflowError(
                f"num_partitions must be at least 1, got {self.num_partitions}: "
                "use a positive number of partitions."
            )
        if not self.alpha > 0:
            raise FamflowError(
                f"The Dirichlet alpha must be positive, got {self.alpha}: use e.g. 0.5."
            )
        if not 0 <= self.validation_fraction < 1:
            raise FamflowError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}: "
                "use e.g. 0.1."
            )
        if self.max_examples is not None and self.max_examples < 1:
            raise FamflowError(
                f"max_examples must be at least 1, got {self.max_examples}: "
                "use a positive cap or leave it unset."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FamflowError(
                f"Unknown data setting(s) {sorted(unknown)}: use only {sorted(known)}."
            )
        return cls(**data)
