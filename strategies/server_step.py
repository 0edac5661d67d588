"""The server's step: move the global adapters ``server_lr`` times the way the rule points.

FedAvg with a server learning rate (Reddi et al., "Adaptive Federated Optimization", SGD
server optimizer): ``new = old + server_lr * (aggregate - old)``. With 1.0 it is the rule's
aggregate. Several nodes train in parallel from the same start, so their mean update is a
denoised step of one node's length; a server learning rate above 1 lets a round move as far
as the nodes' combined steps would. A key that no node sent keeps its value at any rate.

Where the rule averages factors (fedit, ffa, hetlora) the step is taken on the factors, as the
rule would; FlexLoRA's factors are an SVD that changes basis every round, so it steps on the
product ``B A`` and truncates back to the global rank.
"""

from __future__ import annotations

import numpy as np

from famflow.strategies.rules.base import State, copy_state, dense_keys, lora_modules, lora_rank
from famflow.strategies.rules.flexlora import factored_svd, truncated_factors


def server_step(old: State, aggregate: State, server_lr: float, on_products: bool) -> State:
    """``old + server_lr * (aggregate - old)`` per key, or per LoRA product (``on_products``)."""
    if server_lr == 1.0:
        return aggregate
    state = copy_state(aggregate)
    keys = dense_keys(old) if on_products else list(old)
    for key in keys:
        step = aggregate[key].astype(np.float64) - old[key]
        state[key] = (old[key] + server_lr * step).astype(np.float32)
    if on_products:
        for module in lora_modules(old):
            b_old, a_old = old[f"{module}.B"], old[f"{module}.A"]
            b_new, a_new = aggregate[f"{module}.B"], aggregate[f"{module}.A"]
            if np.array_equal(b_old, b_new) and np.array_equal(a_old, a_new):
                continue  # not held this round
            b_cat = np.concatenate([server_lr * b_new, (1 - server_lr) * b_old], axis=1)
            u, s, vt = factored_svd(b_cat, np.concatenate([a_new, a_old], axis=0))
            state[f"{module}.B"], state[f"{module}.A"] = truncated_factors(
                u, s, vt, lora_rank(old, module), scale=1.0
            )
    return state
