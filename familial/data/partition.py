"""flwr-datasets partitioners (IID, Dirichlet, natural id) over a local corpus `Dataset`."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    natural_id_partitioner,
)

from famflow.familial.data.config import DataConfig
from famflow.familial.data.corpus import default_partition_by
from famflow.familial.errors import FamflowError

# Small, so skewed (low alpha) splits succeed; a partition too small to fill one block is
# reported by `prepare_data` with its own fix.
DIRICHLET_MIN_PARTITION_SIZE = 1


@contextmanager
def no_progress_bar() -> Iterator[None]:
    """flwr-datasets' natural-id partitioner draws a tqdm bar each time it indexes a corpus, with
    no option to turn it off; every node of a federation would draw one."""
    original = natural_id_partitioner.tqdm
    natural_id_partitioner.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        natural_id_partitioner.tqdm = original


def partition_column(config: DataConfig, dataset: Dataset) -> str | None:
    """The column natural and Dirichlet splits group by; None for IID."""
    if config.partitioner == "iid":
        return None
    column = config.partition_by or default_partition_by(config.name)
    if column is None:
        raise FamflowError(
            f"A {config.partitioner} split of {config.name} needs partition_by: set it to one "
            f"of its columns ({', '.join(dataset.column_names)})."
        )
    if column not in dataset.column_names:
        raise FamflowError(
            f"{config.name} has no column {column!r} to partition by: set partition_by to one "
            f"of {', '.join(dataset.column_names)}."
        )
    return column


def make_partitioner(config: DataConfig, dataset: Dataset) -> Partitioner:
    """The configured partitioner with ``dataset`` assigned (IID shards a seeded shuffle)."""
    column = partition_column(config, dataset)
    partitioner: Partitioner
    if config.partitioner == "natural":
        partitioner = NaturalIdPartitioner(partition_by=str(column))
    elif config.partitioner == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=config.num_partitions,
            partition_by=str(column),
            alpha=float(config.alpha),
            min_partition_size=DIRICHLET_MIN_PARTITION_SIZE,
            seed=config.seed,
        )
    else:
        # IidPartitioner cuts contiguous shards, and corpora are stored grouped (by play).
        dataset = dataset.shuffle(seed=config.seed)
        partitioner = IidPartitioner(num_partitions=config.num_partitions)
    partitioner.dataset = dataset
    return partitioner


def _split_name(config: DataConfig, dataset: Dataset) -> str:
    column = partition_column(config, dataset)
    return f"the {config.partitioner} split of {config.name}" + (f" by {column}" if column else "")


def partition_count(config: DataConfig, dataset: Dataset) -> int:
    """How many partitions the configured split makes (natural: distinct column values)."""
    if config.partitioner != "natural":
        return config.num_partitions
    return make_partitioner(config, dataset).num_partitions


def load_partition(config: DataConfig, dataset: Dataset, partition_id: int) -> Dataset:
    """Partition ``partition_id`` of ``dataset``, the same in every process for one config."""
    partitioner = make_partitioner(config, dataset)
    # Counted on this partitioner: a second natural partitioner would index the corpus again.
    count = partitioner.num_partitions if config.partitioner == "natural" else config.num_partitions
    if not 0 <= partition_id < count:
        raise FamflowError(
            f"Partition {partition_id} does not exist: {_split_name(config, dataset)} has "
            f"{count} partition(s), so use an id from 0 to {count - 1} or fewer clients."
        )
    if config.partitioner == "dirichlet" and config.num_partitions > len(dataset):
        raise FamflowError(
            f"{config.name} has {len(dataset)} examples, too few for {config.num_partitions} "
            "Dirichlet partitions: use fewer partitions."
        )
    try:
        with warnings.catch_warnings():
            # The partitioner warns on each resampling; its final failure is reported below.
            warnings.simplefilter("ignore")
            with no_progress_bar():
                return partitioner.load_partition(partition_id)
    except ValueError as error:
        raise FamflowError(
            f"{_split_name(config, dataset)} into {config.num_partitions} partitions failed "
            f"({error}): use fewer partitions or a larger alpha."
        ) from None
