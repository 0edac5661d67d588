"""An edge or cloud tier: continues from received hidden states, answers with tokens.

The top tier (no ``upstream``) decides: in ``verify`` requests it runs the rows, reads its
exit at the last accepted token and at every draft, accepts the longest prefix of drafts its
own greedy choice agrees with plus its own next token, and crops its cache to the accepted
length. A middle tier (``upstream`` set) runs its layers, hands its hidden states up with the
same codec, and crops its cache by the reply's accepted count.

``confidence`` requests (early exit): a tier answers with its exit's greedy token when that
token's probability reaches the threshold (the top tier always answers). Otherwise it hands
up its hidden states for every position the tier above has not seen yet: the positions
lower tiers resolved on their own travel lazily with the next hand-up, so every cache stays
complete without a message per token.
"""

from __future__ import annotations

import threading
import time

import torch

from famflow.collab.codec import ProtocolError
from famflow.collab.nodes import TierNode
from famflow.collab.protocol import HiddenRequest, TierReply, TraceEntry
from famflow.collab.transport import Transport


def accepted_prefix(drafts: list[int], predictions: list[int]) -> int:
    """How many leading drafts equal the verifier's greedy predictions."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == predictions[accepted]:
        accepted += 1
    return accepted


def confident_token(logits: torch.Tensor, threshold: float) -> tuple[int, bool]:
    """The greedy token of one row of logits and whether its probability reaches threshold."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    top, token = probabilities.max(dim=-1)
    return int(token), bool(top >= threshold)


class UpperTier:
    """A node above the device, reachable through ``handle(bytes) -> bytes``."""

    def __init__(self, node: TierNode, upstream: Transport | None = None) -> None:
        self.node = node
        self.upstream = upstream
        self.unsent: list[torch.Tensor] = []  # hidden rows not yet seen by the tier above
        self.unsent_start = 0
        self._lock = threading.Lock()

    @property
    def is_top(self) -> bool:
        return self.upstream is None

    def handle(self, payload: bytes) -> bytes:
        """Serve one request frame; a malformed one raises ProtocolError before any work."""
        request = HiddenRequest.decode(payload)
        hidden_size = int(self.node.config.hidden_size)
        if request.hidden.shape[1] != hidden_size:
            raise ProtocolError(
                f"This tier takes hidden states of {hidden_size} values per row, got "
                f"{request.hidden.shape[1]}: send the trunk hidden state of the same model."
            )
        if request.kind == "confidence" and request.drafts:
            raise ProtocolError("A confidence request carries no drafts: send them as verify.")
        with self._lock:
            if request.start > self.node.length:
                raise ProtocolError(
                    f"This tier has seen {self.node.length} positions, the request starts at "
                    f"{request.start}: send the positions from {self.node.length} on."
                )
            self._rewind(request.start)
            serve = self._verify if request.kind == "verify" else self._confidence
            reply = serve(request)
        return reply.encode()

    def _rewind(self, start: int) -> None:
        self.node.rollback(start)
        keep = max(0, start - self.unsent_start)
        if start < self.unsent_start:
            self.unsent, self.unsent_start = [], start
        elif self.unsent:
            rows = torch.cat(self.unsent)[:keep]
            self.unsent = [rows] if len(rows) else []

    def _verify(self, request: HiddenRequest) -> TierReply:
        rows, drafts = request.hidden.shape[0], request.drafts
        begin = time.perf_counter()
        if self.is_top:
            output = self.node.run(
                request.hidden.unsqueeze(0), request.start, logits_from=rows - len(drafts) - 1
            )
            assert output.logits is not None
            predictions = output.logits[0].argmax(dim=-1).tolist()
            accepted = accepted_prefix(drafts, predictions)
            self.node.rollback(request.start + rows - len(drafts) + accepted)
            compute = time.perf_counter() - begin
            return TierReply("verify", predictions[: accepted + 1], accepted, [TraceEntry(compute)])
        output = self.node.run(request.hidden.unsqueeze(0), request.start)
        compute = time.perf_counter() - begin
        up = HiddenRequest(
            "verify", request.start, output.hidden[0], request.codec, drafts, request.threshold
        ).encode()
        reply = self._exchange(up, compute)
        self.node.rollback(request.start + rows - len(drafts) + reply.accepted)
        # The tier above holds exactly the positions this one kept.
        self.unsent, self.unsent_start = [], self.node.length
        return reply

    def _confidence(self, request: HiddenRequest) -> TierReply:
        begin = time.perf_counter()
        rows = request.hidden.shape[0]
        output = self.node.run(request.hidden.unsqueeze(0), request.start, logits_from=rows - 1)
        assert output.logits is not None
        token, confident = confident_token(output.logits[0, -1], request.threshold)
        compute = time.perf_counter() - begin
        if self.is_top or confident:
            if not self.is_top:
                self.unsent.append(output.hidden[0])
            return TierReply("confidence", [token], 0, [TraceEntry(compute)])
        hidden = torch.cat([*self.unsent, output.hidden[0]])
        up = HiddenRequest(
            "confidence", self.unsent_start, hidden, request.codec, [], request.threshold
        ).encode()
        self.unsent, self.unsent_start = [], request.start + rows
        return self._exchange(up, compute)

    def _exchange(self, up: bytes, compute: float) -> TierReply:
        """Send ``up`` to the tier above; put this tier's trace entry before its reply's."""
        assert self.upstream is not None
        answer = self.upstream.exchange(up)
        reply = TierReply.decode(answer)
        reply.trace.insert(0, TraceEntry(compute, len(up), len(answer)))
        return reply
