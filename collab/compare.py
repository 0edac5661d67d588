"""One prompt along a route, set beside cloud-only and device-only (what ``generate`` prints).

Cloud-only is the top exit's own greedy generation (``familial.inference.generate`` on the
trunk model), device-only the device exit's on its own branch; both are timed here, in the
same process as the collaborative run, after one short warm-up of every path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from famflow.collab.decoding import CollabResult, early_exit_generate, speculative_generate
from famflow.collab.latency import (
    Link,
    break_even_speed,
    cloud_only_bytes,
    cloud_only_latency,
    cloud_per_token_latency,
    collaboration_gain,
    collaborative_latency,
    per_hop,
)
from famflow.collab.route import RouteModels, build_nodes, http_chain, local_chain
from famflow.collab.settings import RouteSettings
from famflow.familial.inference import generate


@dataclass
class LatencyRow:
    link: str
    collaborative_s: float
    cloud_only_s: float
    cloud_per_token_s: float
    device_only_s: float
    break_even_speed: float | None = None

    @property
    def speedup_vs_cloud(self) -> float:
        """Cloud-only latency over collaborative latency (> 1: collaboration is faster)."""
        return self.cloud_only_s / self.collaborative_s


@dataclass
class RouteComparison:
    exits: list[int]
    settings: RouteSettings
    result: CollabResult
    collaborative_wall_s: float
    cloud_tokens: torch.Tensor
    cloud_s: float
    device_tokens: torch.Tensor
    device_s: float

    @property
    def identical_to_cloud(self) -> bool:
        return torch.equal(self.result.tokens, self.cloud_tokens)

    @property
    def device_agreement(self) -> float:
        """Share of cloud-only's new tokens that device-only reproduces at the same place."""
        start = self.result.prompt_length
        cloud, device = self.cloud_tokens[0, start:], self.device_tokens[0, start:]
        n = min(len(cloud), len(device))
        return float((cloud[:n] == device[:n]).float().mean()) if n else 0.0

    @property
    def bytes_per_token(self) -> float:
        """Bytes over the device's link (up and down) per generated token."""
        return self.result.device_bytes / max(1, self.result.new_tokens)

    @property
    def cloud_only_bytes_per_token(self) -> float:
        request, reply = cloud_only_bytes(self.result.prompt_length, self.cloud_new_tokens)
        return (request + reply) / max(1, self.cloud_new_tokens)

    @property
    def cloud_new_tokens(self) -> int:
        return int(self.cloud_tokens.shape[1]) - self.result.prompt_length

    def latency(self, links: Sequence[Link]) -> LatencyRow:
        """Latency under one link model (a link per hop, or one for every hop)."""
        hop_links = per_hop(links, len(self.exits) - 1)
        return LatencyRow(
            link=" | ".join(link.describe() for link in links),
            collaborative_s=collaborative_latency(self.result, hop_links),
            cloud_only_s=cloud_only_latency(
                self.result.prompt_length, self.cloud_new_tokens, self.cloud_s, hop_links
            ),
            cloud_per_token_s=cloud_per_token_latency(
                self.result.prompt_length, self.cloud_new_tokens, self.cloud_s, hop_links
            ),
            device_only_s=self.device_s,
            break_even_speed=break_even_speed(
                lambda speed: collaboration_gain(self.result, hop_links, self.cloud_s, speed)
            ),
        )


def _collaborate(
    models: RouteModels,
    exits: list[int],
    input_ids: torch.Tensor,
    settings: RouteSettings,
    eos_token_id: int | None,
    max_new_tokens: int,
) -> CollabResult:
    nodes = build_nodes(models, exits)
    with ExitStack() as stack:
        if settings.transport == "http":
            upstream = stack.enter_context(http_chain(nodes))
        else:
            upstream = local_chain(nodes)
        if settings.mode == "speculative":
            return speculative_generate(
                nodes[0],
                upstream,
                input_ids,
                max_new_tokens,
                settings.draft_tokens,
                settings.codec,
                eos_token_id,
                predraft=settings.predraft,
            )
        return early_exit_generate(
            nodes[0],
            upstream,
            input_ids,
            max_new_tokens,
            settings.threshold,
            settings.codec,
            eos_token_id,
        )


def _timed(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    begin = time.perf_counter()
    tokens = run()
    return tokens, time.perf_counter() - begin


def compare_route(
    models: RouteModels,
    exits: list[int],
    input_ids: torch.Tensor,
    settings: RouteSettings,
    eos_token_id: int | None = None,
    warmup: bool = True,
) -> RouteComparison:
    """Run ``input_ids`` along the route, cloud-only and device-only; time all three."""
    top, device = exits[-1], exits[0]
    n = settings.max_new_tokens
    if warmup:
        _collaborate(models, exits, input_ids, settings, eos_token_id, 2)
        generate(models.trunk, input_ids, top, 2)
        generate(models.branch(device), input_ids, device, 2)
    begin = time.perf_counter()
    result = _collaborate(models, exits, input_ids, settings, eos_token_id, n)
    wall = time.perf_counter() - begin
    cloud_tokens, cloud_s = _timed(lambda: generate(models.trunk, input_ids, top, n, eos_token_id))
    device_tokens, device_s = _timed(
        lambda: generate(models.branch(device), input_ids, device, n, eos_token_id)
    )
    return RouteComparison(
        exits, settings, result, wall, cloud_tokens, cloud_s, device_tokens, device_s
    )


def _break_even(speed: float | None) -> str:
    if speed is None:
        return "cloud-only is faster even with the upper tiers 1000x slower than the device"
    if speed == float("inf"):
        return "collaboration is faster even with the upper tiers 1000x faster"
    return f"collaboration pays while the upper tiers are under {speed:.2f}x the device's speed"


def describe(comparison: RouteComparison, links: Sequence[Sequence[Link]]) -> list[str]:
    """The report lines of a comparison under each link model (what ``generate`` prints)."""
    c, result, settings = comparison, comparison.result, comparison.settings
    route = " -> ".join(str(e) for e in c.exits)
    if settings.mode == "speculative":
        ahead = ", drafting ahead in flight" if settings.predraft else ""
        how = (
            f"speculative, {settings.draft_tokens} draft tokens{ahead}: "
            f"{result.tokens_per_round_trip:.2f} accepted tokens per round trip, "
            f"acceptance rate {result.acceptance_rate:.2f}, {result.round_trips} round trips "
            f"({result.top_passes_per_token:.2f} top decode passes per token)"
        )
    else:
        counts = result.resolved_counts(len(c.exits))
        per_tier = ", ".join(f"exit {e}: {n}" for e, n in zip(c.exits, counts, strict=True))
        how = (
            f"early exit at threshold {settings.threshold:g}: tokens decided by {per_tier}; "
            f"{result.round_trips} hand-ups"
        )
    lines = [
        f"route {route} ({settings.transport} transport, {settings.codec} hidden states): {how}",
        f"bytes over the device link per token: {c.bytes_per_token:,.0f} "
        f"({result.device_bytes:,} B for {result.new_tokens} tokens); cloud-only sends "
        f"{c.cloud_only_bytes_per_token:,.1f} B per token (token ids)",
        f"identical to cloud-only greedy output: {'yes' if c.identical_to_cloud else 'no'}; "
        f"device-only agrees on {c.device_agreement:.0%} of the tokens",
    ]
    for link_model in links:
        row = c.latency(link_model)
        lines.append(
            f"latency over {row.link}: collaborative {row.collaborative_s:.3f} s, "
            f"cloud-only {row.cloud_only_s:.3f} s ({row.speedup_vs_cloud:.2f}x; "
            f"{row.cloud_per_token_s:.3f} s with a round trip per token), "
            f"device-only {row.device_only_s:.3f} s; {_break_even(row.break_even_speed)}"
        )
    return lines
