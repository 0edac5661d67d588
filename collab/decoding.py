"""The device side of collaborative decoding: speculative and confidence early exit.

Speculative (greedy): each round the device runs its pending token(s), drafts ``k`` tokens
with its exit, runs the last draft once more (its hidden state lets the top tier add a token
after the last draft), and sends the hidden states of all those positions up. The top tier
answers with the accepted drafts plus its own next token; the device crops its cache to the
accepted length, like every tier did. With a lossless codec (fp32) the output is the top
exit's greedy output; fp16/int8 change the hidden states the upper tiers see.

Early exit: per token the device reads its exit; below ``threshold`` it hands up the hidden
states of every position the tier above has not seen yet (see ``famflow.collab.tiers``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from famflow.collab.codec import check_codec
from famflow.collab.nodes import TierNode
from famflow.collab.protocol import HiddenRequest, TierReply, TraceEntry
from famflow.collab.tiers import confident_token
from famflow.collab.transport import Transport
from famflow.familial.errors import FamflowError


@dataclass
class Round:
    """One device step: its compute, and (if it handed up) the trace of the tiers above.

    ``trace[0]`` is the device: its compute and the bytes of the hop to the first upper tier.
    ``resolved_by`` is the index of the tier whose exit chose the last token (0: device).
    """

    trace: list[TraceEntry]
    emitted: int
    drafted: int = 0
    accepted: int = 0
    resolved_by: int = 0
    # Pre-drafting: device seconds spent during this round's flight, and whether the next
    # round's drafts came from them (then that round's own device compute is 0).
    overlapped_s: float = 0.0
    reused: bool = False

    @property
    def round_trip(self) -> bool:
        return len(self.trace) > 1


@dataclass
class CollabResult:
    """The tokens of a collaborative run and what every step cost (compute, bytes per hop)."""

    tokens: torch.Tensor  # (1, prompt + new)
    prompt_length: int
    rounds: list[Round] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return int(self.tokens.shape[1]) - self.prompt_length

    @property
    def round_trips(self) -> int:
        return sum(r.round_trip for r in self.rounds)

    @property
    def device_bytes(self) -> int:
        """Bytes over the device's own link, both directions."""
        return sum(r.trace[0].request_bytes + r.trace[0].reply_bytes for r in self.rounds)

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(r.drafted for r in self.rounds)
        return sum(r.accepted for r in self.rounds) / drafted if drafted else 0.0

    @property
    def top_passes_per_token(self) -> float:
        """The top tier's decode passes per generated token (one per round trip)."""
        return self.round_trips / self.new_tokens if self.new_tokens else 0.0

    @property
    def tokens_per_round_trip(self) -> float:
        trips = self.round_trips
        return sum(r.emitted for r in self.rounds if r.round_trip) / trips if trips else 0.0

    def resolved_counts(self, tiers: int) -> list[int]:
        counts = [0] * tiers
        for r in self.rounds:
            counts[r.resolved_by] += r.emitted
        return counts


def _check_prompt(input_ids: torch.Tensor, device: TierNode) -> None:
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise FamflowError(
            f"Collaborative decoding takes one prompt of shape (1, n), got "
            f"{tuple(input_ids.shape)}: decode prompts one at a time."
        )
    if not device.takes_tokens:
        raise FamflowError("The first node of a route must start at layer 0 (the device).")


def _finish(new: list[int], room: int, eos_token_id: int | None) -> tuple[list[int], bool]:
    """Cut ``new`` to ``room`` tokens and after the first end-of-text token."""
    new = new[:room]
    if eos_token_id is not None and eos_token_id in new:
        return new[: new.index(eos_token_id) + 1], True
    return new, len(new) == room


@dataclass
class _Drafts:
    """One round's device work: the positions it ran from ``start`` (their hidden rows), the
    drafts, the device's guess of the token after the last draft (pre-drafting) and seconds."""

    start: int
    hiddens: list[torch.Tensor]
    drafts: list[int]
    guess: int | None
    seconds: float


def _draft_round(
    device: TierNode, pending: torch.Tensor, k: int, eos_token_id: int | None, guess: bool
) -> _Drafts:
    """Run the pending token(s), draft ``k`` tokens and run the last draft too; with ``guess``
    also read the device's own next token after the last draft."""
    begin = time.perf_counter()
    start = device.length
    wants = k > 0 or guess
    output = device.run(pending, start, greedy_from=pending.shape[1] - 1 if wants else None)
    hiddens, drafts = [output.hidden[0]], []
    while len(drafts) < k:
        assert output.tokens is not None
        draft = int(output.tokens[0, -1])
        drafts.append(draft)
        more = (len(drafts) < k or guess) and draft != eos_token_id
        output = device.run(torch.tensor([[draft]]), device.length, greedy_from=0 if more else None)
        hiddens.append(output.hidden[0])
        if draft == eos_token_id:
            break
    ended = bool(drafts) and drafts[-1] == eos_token_id
    next_token = (
        int(output.tokens[0, -1]) if guess and not ended and output.tokens is not None else None
    )
    return _Drafts(start, hiddens, drafts, next_token, time.perf_counter() - begin)


@torch.no_grad()
def speculative_generate(
    device: TierNode,
    upstream: Transport,
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    draft_tokens: int = 4,
    codec: str = "fp32",
    eos_token_id: int | None = None,
    predraft: bool = False,
) -> CollabResult:
    """Greedy hierarchical speculative decoding from ``device`` through ``upstream``.

    ``predraft``: while a verification is in flight, the device drafts the next round as if
    every draft were accepted and the top's next token were the device's own guess. When the
    reply says so, that round is sent at once; otherwise the device forgets it. Its compute
    overlaps the flight (``Round.overlapped_s``) and is never on the critical path.
    """
    _check_prompt(input_ids, device)
    check_codec(codec)
    if draft_tokens < 0:
        raise FamflowError(f"draft_tokens must be 0 or more, got {draft_tokens}.")
    device.reset()
    tokens = input_ids[0].tolist()
    result = CollabResult(input_ids, len(tokens))
    room = max_new_tokens
    ready = None
    while room > 0:
        k = min(draft_tokens, room - 1)
        if ready is None:
            pending = torch.tensor([tokens[device.length :]])
            ready = _draft_round(device, pending, k, eos_token_id, predraft)
        current, ready = ready, None
        request = HiddenRequest(
            "verify", current.start, torch.cat(current.hiddens), codec, current.drafts
        ).encode()
        answer = upstream.exchange(request)
        reply = TierReply.decode(answer)
        drafts = current.drafts
        if reply.accepted > len(drafts) or len(reply.tokens) != reply.accepted + 1:
            raise FamflowError(
                f"The tier above accepted {reply.accepted} of {len(drafts)} drafts and sent "
                f"{len(reply.tokens)} tokens: it does not speak this protocol version."
            )
        kept = current.start + len(current.hiddens) - len(drafts) + reply.accepted
        overlapped = 0.0
        after = room - len(drafts) - 1
        if current.guess is not None and after > 0:
            # The device drafted on during the flight; what it did is kept only if the reply
            # is what it guessed.
            guessed = _draft_round(
                device,
                torch.tensor([[current.guess]]),
                min(draft_tokens, after - 1),
                eos_token_id,
                predraft,
            )
            overlapped = guessed.seconds
            if reply.accepted == len(drafts) and reply.tokens[-1] == current.guess:
                ready = guessed
        if ready is None:
            device.rollback(kept)
        new, done = _finish(reply.tokens, room, eos_token_id)
        tokens += new
        room = 0 if done else room - len(new)
        compute = current.seconds if not result.rounds or not result.rounds[-1].reused else 0.0
        trace = [TraceEntry(compute, len(request), len(answer)), *reply.trace]
        result.rounds.append(
            Round(
                trace,
                len(new),
                len(drafts),
                reply.accepted,
                resolved_by=len(trace) - 1,
                overlapped_s=overlapped,
                reused=ready is not None,
            )
        )
    result.tokens = torch.tensor([tokens])
    return result


@torch.no_grad()
def early_exit_generate(
    device: TierNode,
    upstream: Transport,
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    threshold: float = 0.9,
    codec: str = "fp32",
    eos_token_id: int | None = None,
) -> CollabResult:
    """Per token, the first tier whose exit reaches ``threshold`` decides; the top always can."""
    _check_prompt(input_ids, device)
    check_codec(codec)
    device.reset()
    tokens = input_ids[0].tolist()
    result = CollabResult(input_ids, len(tokens))
    pending = input_ids
    unsent: list[torch.Tensor] = []
    unsent_start = 0
    done = max_new_tokens < 1
    while not done:
        begin = time.perf_counter()
        output = device.run(pending, device.length, logits_from=pending.shape[1] - 1)
        assert output.logits is not None
        token, confident = confident_token(output.logits[0, -1], threshold)
        unsent.append(output.hidden[0])
        compute = time.perf_counter() - begin
        trace = [TraceEntry(compute)]
        if not confident:
            payload = HiddenRequest(
                "confidence", unsent_start, torch.cat(unsent), codec, [], threshold
            ).encode()
            answer = upstream.exchange(payload)
            reply = TierReply.decode(answer)
            if len(reply.tokens) != 1:
                raise FamflowError(
                    f"The tier above answered with {len(reply.tokens)} tokens, not 1: it does "
                    "not speak this protocol version."
                )
            token = reply.tokens[0]
            trace = [TraceEntry(compute, len(payload), len(answer)), *reply.trace]
            unsent, unsent_start = [], device.length
        tokens.append(token)
        done = token == eos_token_id or len(tokens) - result.prompt_length >= max_new_tokens
        pending = torch.tensor([[token]])
        result.rounds.append(Round(trace, 1, resolved_by=len(trace) - 1))
    result.tokens = torch.tensor([tokens])
    return result
