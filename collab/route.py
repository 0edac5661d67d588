"""A route device -> edge -> cloud: which exits, which models, which nodes, which transport.

Every node runs trunk layers of one model (``RouteModels.trunk``: the top tier's branch), so
the hidden state a lower tier hands up is exactly the one the top tier's own branch computes
there, and speculative output equals that branch's greedy output. Each tier's exit head may
come from its own refreshed branch (a federation export holds one directory per exit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from famflow.collab.nodes import TierNode
from famflow.collab.service import TierService
from famflow.collab.tiers import UpperTier
from famflow.collab.transport import HttpTransport, LocalTransport, Transport
from famflow.familial.errors import FamflowError
from famflow.familial.export_origin import exit_dir_name
from famflow.familial.model import FamilialLM
from famflow.familial.presets import ModelSpec


def parse_route(text: str, family_exits: list[int]) -> list[int]:
    """``device,edge,cloud`` (the family's first, second and deepest exits) or exit depths."""
    by_name = {"device": family_exits[0], "cloud": family_exits[-1]}
    if len(family_exits) > 2:
        by_name["edge"] = family_exits[1]
    exits = []
    for item in (part.strip() for part in text.split(",")):
        if item in by_name:
            exits.append(by_name[item])
        elif item.isdigit() and int(item) in family_exits:
            exits.append(int(item))
        else:
            names = ", ".join(f"{n}={d}" for n, d in by_name.items())
            raise FamflowError(
                f"Route tier {item!r} is neither a tier name ({names}) nor one of the exits "
                f"{family_exits}: write e.g. {','.join(by_name)} or "
                f"{','.join(map(str, family_exits))}."
            )
    if len(exits) < 2 or exits != sorted(set(exits)):
        raise FamflowError(
            f"A route needs at least two tiers with increasing exits, got {exits}: "
            "list them from the device up."
        )
    return exits


def tier_names(count: int) -> list[str]:
    """device, [edge | edge1, edge2, ...], cloud."""
    middle = ["edge"] if count == 3 else [f"edge{i}" for i in range(1, count - 1)]
    return ["device", *middle, "cloud"]


@dataclass
class RouteModels:
    """``trunk``: runs every trunk layer and holds the top exit; ``branches``: the refreshed
    branch of any lower exit whose head differs from ``trunk``'s; ``draft_vocabulary``: the
    token ids lower exits draft over, when the adapters carry one (``famflow familialize``)."""

    trunk: FamilialLM
    branches: dict[int, FamilialLM] = field(default_factory=dict)
    draft_vocabulary: torch.Tensor | None = None

    def branch(self, depth: int) -> FamilialLM:
        """The model that holds exit ``depth``'s head (also what device-only runs)."""
        return self.branches.get(depth, self.trunk)


def build_nodes(models: RouteModels, exits: list[int]) -> list[TierNode]:
    """One node per tier: trunk layers from the previous tier's exit point to its own; the
    tiers below the top draft over the route's draft vocabulary."""
    nodes, start = [], 0
    for name, depth in zip(tier_names(len(exits)), exits, strict=True):
        head_model = models.branch(depth)
        stop = head_model.trunk_depth(depth)
        drafts = models.draft_vocabulary if depth != exits[-1] else None
        nodes.append(TierNode(models.trunk, start, stop, depth, head_model, name, drafts))
        start = stop
    return nodes


def _upper_tiers(nodes: list[TierNode]) -> None:
    if len(nodes) < 2:
        raise FamflowError("A route needs a device and at least one tier above it.")


def local_chain(nodes: list[TierNode]) -> Transport:
    """The upper tiers in this process; returns the device's transport to the first one."""
    _upper_tiers(nodes)
    upstream: Transport | None = None
    for node in reversed(nodes[1:]):
        upstream = LocalTransport(UpperTier(node, upstream))
    assert upstream is not None
    return upstream


@contextmanager
def http_chain(nodes: list[TierNode], timeout: float = 60.0) -> Iterator[Transport]:
    """Every upper tier as an HTTP service on 127.0.0.1 (free ports), chained by HTTP."""
    _upper_tiers(nodes)
    with ExitStack() as stack:
        upstream: Transport | None = None
        for node in reversed(nodes[1:]):
            service = TierService(UpperTier(node, upstream), timeout=timeout)
            stack.enter_context(service)
            upstream = HttpTransport(service.url, timeout=timeout)
        assert upstream is not None
        yield upstream


def load_route_models(spec: ModelSpec, exits: list[int], adapters: Path | None) -> RouteModels:
    """The models of a route, from the base checkpoint or with refreshed adapters.

    ``adapters`` is a federation export (``exit-E/`` per exit: the top exit's branch gives the
    trunk, every lower exit its own head) or a train-local/familialize output (one
    directory for every exit up to the top one).
    """
    from famflow.familial.family_io import read_draft_vocabulary
    from famflow.familial.loading import load_branch
    from famflow.familial.local_training import load_trained_branch

    top = exits[-1]
    if adapters is None:
        return RouteModels(load_branch(spec, top, exits=exits).eval())
    adapters = Path(adapters)
    vocab_size = int(spec.base_config().vocab_size)
    if not (adapters / exit_dir_name(top)).is_dir():
        trunk = load_trained_branch(spec, top, adapters)
        return RouteModels(trunk, draft_vocabulary=read_draft_vocabulary(adapters, vocab_size))
    missing = [e for e in exits if not (adapters / exit_dir_name(e)).is_dir()]
    if missing:
        raise FamflowError(
            f"{adapters} has no {', '.join(exit_dir_name(e) for e in missing)}: "
            "route only through exits the federation exported."
        )
    trunk = load_trained_branch(spec, top, adapters / exit_dir_name(top), exits=[top])
    branches = {
        depth: load_trained_branch(spec, depth, adapters / exit_dir_name(depth), [depth])
        for depth in exits[:-1]
    }
    return RouteModels(trunk, branches)
