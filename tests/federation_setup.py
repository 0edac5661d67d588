"""A tiny three-branch federation for tests: preset, tiers and corpus written to a tmp dir."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp.typing import Mod
from flwr.simulation import run_simulation

from famflow.clients.client_app import make_client_app
from famflow.server.server_app import make_server_app

PRESET = """
name = "tiny3"
seed = 0
[source]
kind = "random"
[family]
exits = [1, 2, 4]
[family.adapters]
norm = true
translator = "full"
[config]
model_type = "llama"
vocab_size = 256
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 4
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 128
tie_word_embeddings = true
initializer_range = 0.2
"""
# Budgets that put exits 1, 2 and 4 of tiny3 (batch 4 x 16) on device, edge and cloud.
TIERS = """
[device]
memory-gb = 0.0008
rank = 2
[edge]
memory-gb = 0.0015
rank = 4
[cloud]
memory-gb = 1.0
rank = 8
"""
TEXT = (
    "To be, or not to be, that is the question:\nWhether tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
) * 60


def write_federation_files(root: Path) -> dict[str, str]:
    """Write preset, tiers and corpus; returns the environment variables that point at them."""
    (root / "presets").mkdir(parents=True, exist_ok=True)
    (root / "presets" / "tiny3.toml").write_text(PRESET)
    (root / "tiers.toml").write_text(TIERS)
    (root / "hamlet.txt").write_text(TEXT)
    return {
        "FAMFLOW_PRESETS": str(root / "presets"),
        "FAMFLOW_TIERS": str(root / "tiers.toml"),
        "FLWR_HOME": str(root / "flwr"),
    }


def run_config(root: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "model": "tiny3",
        "num-server-rounds": 2,
        "tier-mix": "device:1,edge:1,cloud:1",
        "rule": "flexlora",
        "local-steps": 3,
        "batch-size": 4,
        "seq-len": 16,
        "lr": 0.01,
        "dataset": str(root / "hamlet.txt"),
        "partitioner": "iid",
        "eval-blocks": 8,
        "device": "cpu",
        "min-nodes": 3,
        "round-timeout": 300.0,
        "out-dir": str(root / "run"),
        **overrides,
    }


def simulate(config: dict[str, Any], mods: list[Mod] | None = None, nodes: int = 3) -> None:
    run_simulation(
        make_server_app(config),
        make_client_app(config, mods=mods),
        num_supernodes=nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


class InProcessGrid:
    """The Grid calls run_federation makes, answered by a ClientApp in this process."""

    def __init__(self, app: Any, nodes: int) -> None:
        self.app = app
        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                node_config={"partition-id": i, "num-partitions": nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(nodes)
        }
        self.replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's push does
            ids.append(message.metadata.message_id)
            self.replies[message.metadata.message_id] = self.answer(message)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))

    def answer(self, message: Message) -> Message:
        try:
            return self.app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as error:  # what Flower's node runtime turns a failure into
            return Message(Error(code=0, reason=repr(error)), reply_to=message)
