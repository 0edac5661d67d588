"""prepare_data on a partition, its errors, and DataConfig validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from famflow.familial.data import DataConfig, prepare_data, tokenize_and_pack
from famflow.familial.errors import FamflowError
from famflow.familial.tokenizer import byte_tokenizer
from tests.data_setup import EXPECTED_SPEECHES, WORKS


def test_prepare_data_natural_partition(sdist: Path) -> None:
    tokenizer = byte_tokenizer()
    config = DataConfig(partitioner="natural", seq_len=16, validation_fraction=0.2)
    plays = sorted(WORKS)
    for partition_id in (0, 1):
        splits = prepare_data(config, tokenizer, partition_id, max_length=64)
        texts = [text for _, text in EXPECTED_SPEECHES[plays[partition_id]]]
        blocks = tokenize_and_pack(texts, tokenizer, 16)
        assert splits.train.shape[1] == splits.validation.shape[1] == 16
        assert splits.validation.shape[0] == round(0.2 * blocks.shape[0])
        rebuilt = {tuple(r) for r in torch.cat([splits.train, splits.validation]).tolist()}
        assert rebuilt == {tuple(r) for r in blocks.tolist()}
        assert splits.train.shape[0] + splits.validation.shape[0] == blocks.shape[0]


def test_prepare_data_errors(sdist: Path) -> None:
    tokenizer = byte_tokenizer()
    with pytest.raises(FamflowError) as error:
        prepare_data(DataConfig(seq_len=128), tokenizer, max_length=64)
    assert str(error.value) == (
        "Sequence length 128 is beyond the model's 64 positions: use --seq-len <= 64."
    )
    with pytest.raises(FamflowError, match=r"^Partition 7 does not exist: .* 4 partition"):
        prepare_data(DataConfig(partitioner="natural"), tokenizer, partition_id=7)
    sonnets = sorted(WORKS).index("sonnets")
    with pytest.raises(
        FamflowError,
        match=r"Partition \d of shakespeare has \d+ tokens, fewer than one block of 1024: "
        r"use fewer partitions or a shorter --seq-len\.",
    ):
        prepare_data(DataConfig(partitioner="natural", seq_len=1024), tokenizer, sonnets)


def test_config_validation() -> None:
    with pytest.raises(FamflowError, match="Unknown partitioner 'zipf'"):
        DataConfig(partitioner="zipf")
    with pytest.raises(FamflowError, match="seq_len must be at least 2"):
        DataConfig(seq_len=1)
    with pytest.raises(FamflowError, match=r"validation_fraction must be in \[0, 1\)"):
        DataConfig(validation_fraction=1.0)
    with pytest.raises(FamflowError, match="alpha must be positive"):
        DataConfig(alpha=0)
    with pytest.raises(FamflowError, match=r"Unknown data setting\(s\) \['seqlen'\]"):
        DataConfig.from_dict({"seqlen": 8})
    assert DataConfig.from_dict({"seq_len": 8}).to_dict()["seq_len"] == 8
