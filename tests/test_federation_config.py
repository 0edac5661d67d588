import tomllib
from pathlib import Path

import pytest

from famflow.familial.errors import FamflowError
from famflow.federation.config import FederationConfig

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_pyproject_run_config_is_every_field_with_its_default():
    run_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    config = FederationConfig.from_run_config(run_config)
    assert run_config == FederationConfig().to_run_config()
    assert config.rule == "flexlora" and config.tier_counts() == [
        ("device", 2),
        ("edge", 2),
        ("cloud", 2),
    ]


def test_tiers_follow_the_mix_in_partition_order():
    config = FederationConfig(tier_mix="device:1,cloud:2")
    assert [config.tier_of_partition(i) for i in range(4)] == ["device", "cloud", "cloud", "device"]


def test_tiers_named_in_tier_local_steps_train_their_own_steps():
    config = FederationConfig(local_steps=10, tier_local_steps="cloud:20, device:5")
    assert [config.local_steps_of(t) for t in ("device", "edge", "cloud")] == [5, 10, 20]


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({"rounds": 3}, r"Unknown run-config key\(s\) \['rounds'\]"),
        ({"rule": "fedprox"}, "Unknown rule 'fedprox': use one of fedit, ffa, flexlora, hetlora."),
        ({"codec": "int4"}, "Unknown codec 'int4'"),
        ({"branch-exits": "all"}, "branch-exits .all. is unknown: use held or own."),
        ({"server-lr": 0.0}, "server-lr, lora-alpha-ratio and round-timeout must be positive"),
        ({"tier-mix": "device=2"}, "is not a list of tier:count pairs"),
        ({"local-steps": 0}, "local-steps must be at least 1"),
        ({"tier-local-steps": "cloud=20"}, "is not a list of tier:steps pairs with steps >= 1"),
        ({"tier-local-steps": "cloud:0"}, "is not a list of tier:steps pairs with steps >= 1"),
        ({"batch-size": "four"}, "run-config batch-size = 'four' is not a int"),
        ({"move-old-run": "maybe"}, "is not a bool"),
        ({"export-formats": "hf,onnx"}, r"Unknown export format\(s\) \[.onnx.\]: use hf, gguf"),
        ({"fraction-train": 0.0}, r"fraction-train must be in \(0, 1\]"),
        ({"dp": True}, "dp = true needs a noise: set dp-noise-multiplier > 0"),
        ({"dp-noise-multiplier": -1.0}, "dp-noise-multiplier and dp-target-epsilon must be >= 0"),
        ({"dp-delta": 1.0}, r"dp-delta must be in \(0, 1\), got 1.0."),
        ({"dp-max-grad-norm": 0.0}, "dp-max-grad-norm must be positive, got 0.0."),
        ({"central-dp-noise": 1.0}, "central-dp-noise > 0 needs a clipping bound"),
        ({"central-dp-clip": -1.0}, "central-dp-noise and central-dp-clip must be >= 0."),
    ],
)
def test_bad_run_config_is_one_sentence(run_config, message):
    with pytest.raises(FamflowError, match=message):
        FederationConfig.from_run_config(run_config)
