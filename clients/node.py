"""What a SuperNode's ``--node-config`` says about its data and cache, and process start time.

Keys (besides the hardware keys of ``clients.task.node_profile``): ``data`` (the node's own
corpus, a local file or dataset directory: used whole), else ``partition-id`` and
``num-partitions`` of the run's dataset; ``cache-dir`` (where the model's safetensors cache is).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from famflow.clients.task import get_data
from famflow.familial.data.splits import TokenSplits
from famflow.familial.errors import FamflowError
from famflow.federation.config import FederationConfig

_handled_a_message = False


def use_node_cache(node_config: Mapping[str, Any]) -> None:
    """Point famflow's cache (model safetensors, corpora) at the node's ``cache-dir``."""
    if "cache-dir" in node_config:
        os.environ["FAMFLOW_CACHE"] = str(Path(str(node_config["cache-dir"])).expanduser())


def get_node_data(config: FederationConfig, node_config: Mapping[str, Any]) -> TokenSplits:
    if "data" in node_config:
        path = Path(str(node_config["data"])).expanduser()
        if not path.exists():
            raise FamflowError(
                f"The node's data {path} does not exist: fix data= in the SuperNode's "
                "--node-config."
            )
        return get_data(config, 0, dataset=str(path), num_partitions=1)
    partitions = node_config.get("num-partitions")
    return get_data(
        config,
        int(node_config.get("partition-id", 0)),
        num_partitions=int(partitions) if partitions is not None else None,
    )


def first_message_startup_seconds() -> float:
    """Seconds from this process's start to now on the first message it handles, else 0:
    deployment starts a ClientApp process per message, simulation reuses one."""
    global _handled_a_message
    if _handled_a_message:
        return 0.0
    _handled_a_message = True
    return max(0.0, time.time() - psutil.Process().create_time())
