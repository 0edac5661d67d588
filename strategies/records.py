"""Named numpy arrays <-> Flower ArrayRecords, the only form updates take on the wire."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


# The metrics a reply carries, part of the exchange contract (famflow.federation.contract).
NUM_EXAMPLES = "num-examples"  # a train reply: the examples its update is weighted by
NUM_TOKENS = "num-tokens"  # an evaluate reply: the tokens its metrics are weighted by
LOSS_EXIT = "loss-exit-"  # + exit depth: the mean next-token loss at that exit
ACCURACY_EXIT = "accuracy-exit-"  # + exit depth: next-token accuracy at that exit
LOCAL_STEPS = "local-steps"
TRAIN_SECONDS = "train-seconds"
CLIENT_SECONDS = "client-seconds"  # the handler's time after the branch load
STARTUP_SECONDS = "startup-seconds"  # ClientApp process start to its handler
LOAD_SECONDS = "load-seconds"  # branch and data load
TOKENS = "tokens"
DP_EPSILON = "dp-epsilon"
DP_NOISE = "dp-noise"


def exit_metric(prefix: str, depth: int) -> str:
    """``loss-exit-10``: a per-exit metric's name."""
    return f"{prefix}{depth}"
