"""End-to-end latency from a link model and the compute times measured in a run.

A hop (device -> edge, edge -> cloud) costs its round-trip time plus the bytes of the request
and the reply at its bandwidth. A collaborative run is a chain of steps: per step the device
computes, and if it hands up, each hop and each tier's compute follow in turn (the trace a
reply carries). Cloud-only sends the prompt's token ids to the cloud over every hop, the
cloud runs the full model, and the new token ids come back in one streamed reply; the
per-token variant pays a round trip per new token instead (a client that sends each token
back, as interactive control would). Device-only is the device branch's own generation
time. All compute times are measured on this machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from famflow.collab.decoding import CollabResult
from famflow.collab.protocol import TOKEN_BYTES
from famflow.familial.errors import FamflowError


@dataclass(frozen=True)
class Link:
    bandwidth_bps: float
    rtt_s: float

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0 or not self.rtt_s >= 0:
            raise FamflowError(
                f"A link needs bandwidth > 0 bit/s and RTT >= 0 s, got {self.bandwidth_bps}, "
                f"{self.rtt_s}: e.g. 10e6,0.05."
            )

    def exchange_s(self, request_bytes: int, reply_bytes: int) -> float:
        return self.rtt_s + 8 * (request_bytes + reply_bytes) / self.bandwidth_bps

    @classmethod
    def parse(cls, text: str) -> Link:
        """``BANDWIDTH,RTT`` in bit/s and seconds, e.g. ``10e6,0.05``."""
        try:
            bandwidth, rtt = (float(part) for part in text.split(","))
        except ValueError:
            raise FamflowError(
                f"A link is BANDWIDTH,RTT in bit/s and seconds, got {text!r}: e.g. 10e6,0.05."
            ) from None
        return cls(bandwidth, rtt)

    def describe(self) -> str:
        return f"{self.bandwidth_bps / 1e6:g} Mbit/s, {self.rtt_s * 1e3:g} ms RTT"


def per_hop(links: Sequence[Link], hops: int) -> list[Link]:
    """One link per hop: a single link stands for every hop."""
    if len(links) == 1:
        return list(links) * hops
    if len(links) != hops:
        raise FamflowError(
            f"The route has {hops} hops and {len(links)} links were given: give one link "
            "for every hop, or one for all."
        )
    return list(links)


def collaborative_latency(
    result: CollabResult, hop_links: Sequence[Link], upper_speed: float = 1.0
) -> float:
    """Seconds of the run: device compute, then per hand-up every hop and upper tier.

    ``hop_links[i]`` is the link from tier i to tier i + 1 (see ``per_hop``). The tiers
    above the device compute ``upper_speed`` times faster than measured here.
    """
    total = 0.0
    for step in result.rounds:
        total += step.trace[0].compute_s
        flight = 0.0
        for hop, (lower, upper) in enumerate(zip(step.trace, step.trace[1:], strict=False)):
            flight += hop_links[hop].exchange_s(lower.request_bytes, lower.reply_bytes)
            flight += upper.compute_s / upper_speed
        total += max(flight, step.overlapped_s)  # pre-drafting runs during the flight
    return total


def collaboration_gain(
    result: CollabResult, hop_links: Sequence[Link], cloud_compute_s: float, speed: float
) -> float:
    """Cloud-only latency minus collaborative latency (> 0: collaboration is faster) with the
    upper tiers ``speed`` times as fast as measured; ``cloud_compute_s`` is cloud-only's
    measured compute."""
    alone = cloud_only_latency(
        result.prompt_length, result.new_tokens, cloud_compute_s / speed, hop_links
    )
    return alone - collaborative_latency(result, hop_links, speed)


def break_even_speed(gain: Callable[[float], float]) -> float | None:
    """The speed of the upper tiers relative to the device at which ``gain(speed)`` (see
    ``collaboration_gain``) falls to 0: collaboration pays below it.

    None when it loses at every speed from 1/1000 to 1000; infinity when it wins at all.
    """
    low, high = 1e-3, 1e3
    if gain(low) <= 0:
        return None
    if gain(high) > 0:
        return float("inf")
    for _ in range(60):  # bisection on a log scale
        middle = (low * high) ** 0.5
        low, high = (middle, high) if gain(middle) > 0 else (low, middle)
    return (low * high) ** 0.5


def cloud_only_bytes(prompt_tokens: int, new_tokens: int) -> tuple[int, int]:
    """(request, reply) bytes of cloud-only generation: token ids as int32."""
    return TOKEN_BYTES * prompt_tokens, TOKEN_BYTES * new_tokens


def cloud_only_latency(
    prompt_tokens: int, new_tokens: int, cloud_compute_s: float, hop_links: Sequence[Link]
) -> float:
    """One request over every hop (the path to the cloud), plus the full model's time."""
    request, reply = cloud_only_bytes(prompt_tokens, new_tokens)
    return cloud_compute_s + sum(link.exchange_s(request, reply) for link in hop_links)


def cloud_per_token_latency(
    prompt_tokens: int, new_tokens: int, cloud_compute_s: float, hop_links: Sequence[Link]
) -> float:
    """Cloud-only with one round trip per new token: the prompt first, then one id each way."""
    first = sum(link.exchange_s(TOKEN_BYTES * prompt_tokens, TOKEN_BYTES) for link in hop_links)
    rest = sum(link.exchange_s(TOKEN_BYTES, TOKEN_BYTES) for link in hop_links)
    return cloud_compute_s + first + max(0, new_tokens - 1) * rest


def acceptance_for_speedup(
    speedup: float, round_trip_s: float, cloud_token_s: float, draft_tokens: int
) -> float:
    """The acceptance rate (accepted / drafted) that ``speedup`` over cloud-only needs.

    A round trip of k drafts emits 1 + k x acceptance tokens; this keeps the round trip's
    measured cost ``round_trip_s`` (k drafts and one verification, whatever is accepted) and
    solves ``tokens x cloud_token_s = speedup x round_trip_s``. Above 1, no draft reaches it.
    """
    if min(round_trip_s, cloud_token_s) <= 0 or draft_tokens < 1:
        raise FamflowError(
            "The acceptance a speedup needs takes positive times and at least one draft token."
        )
    tokens = speedup * round_trip_s / cloud_token_s
    return (tokens - 1) / draft_tokens
