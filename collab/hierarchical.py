"""Hierarchical speculative decoding on one box: the device exit drafts, the middle verifies,
the top refines, in one process, with output identical to the top exit's greedy output.

Every level is a ``TierNode`` over one trunk: level i runs the trunk layers from level i-1's
exit point to its own, so no layer below an exit is ever computed twice. A level's greedy
tokens are proposals for the level above; the top's are the output. Decoding nests:

- the device drafts ``lookahead[0]`` tokens past what the level above has approved (through its
  draft vocabulary, when it has one: FR-Spec), and runs its last draft through its layers too;
- level i runs its layers once over every position the level below has run and keeps the
  longest prefix of proposals its own greedy choice agrees with, plus its own next token (its
  correction, or a bonus token when it agreed with all); then all levels forget the rejected
  positions (their caches are cropped);
- a middle level repeats that until it has approved ``lookahead[i]`` tokens past what the
  level above approved; the top verifies once per such batch and is the only level whose
  tokens are final.

So the top runs one decode pass per batch of approved tokens, and a middle level filters the
device's drafts so that the top sees long runs of tokens it accepts.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from famflow.collab.nodes import TierNode
from famflow.familial.errors import FamflowError


@dataclass
class LevelStats:
    """What one level did: layer passes it ran, positions they covered, proposals it judged."""

    passes: int = 0
    positions: int = 0
    judged: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        """Share of the proposals from below that this level accepted."""
        return self.accepted / self.judged if self.judged else 0.0


@dataclass
class HierarchicalResult:
    tokens: torch.Tensor  # (1, prompt + new)
    prompt_length: int
    seconds: float
    levels: list[LevelStats] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return int(self.tokens.shape[1]) - self.prompt_length

    def passes_per_token(self, level: int) -> float:
        return self.levels[level].passes / max(1, self.new_tokens)


class _Decoding:
    """The state of one hierarchical generation: tokens, approvals and each level's outputs."""

    def __init__(
        self,
        nodes: Sequence[TierNode],
        prompt: list[int],
        lookahead: Sequence[int],
        limit: int,
        eos_token_id: int | None,
    ) -> None:
        self.nodes = list(nodes)
        self.tokens = list(prompt)
        self.prompt_length = len(prompt)
        self.lookahead = list(lookahead)
        self.limit = limit
        self.eos = eos_token_id
        # approved[i]: the prefix of ``tokens`` level i stands behind (the top's is final).
        self.approved = [len(prompt)] * len(self.nodes)
        # outputs[i]: level i's hidden rows for the positions the level above has not run yet.
        self.outputs: list[list[torch.Tensor]] = [[] for _ in self.nodes]
        self.stats = [LevelStats() for _ in self.nodes]
        for node in self.nodes:
            node.reset()

    @property
    def top(self) -> int:
        return len(self.nodes) - 1

    def finished(self, level: int) -> bool:
        """Whether level ``level``'s approved tokens reach the limit or end with end-of-text."""
        end = self.approved[level]
        return end >= self.limit or self.ends(end)

    def ends(self, length: int) -> bool:
        """Whether the first ``length`` tokens end with a generated end-of-text token."""
        return length > self.prompt_length and self.tokens[length - 1] == self.eos

    def _run(self, level: int, stop: int, greedy: bool) -> list[int]:
        """Level ``level`` runs its positions up to ``stop``; its greedy tokens for them."""
        node = self.nodes[level]
        start = node.length
        if level == 0:
            inputs = torch.tensor([self.tokens[start:stop]])
        else:
            rows = torch.cat(self.outputs[level - 1], dim=0)
            assert len(rows) == stop - start, "a level runs exactly what the one below ran"
            inputs, rest = rows[: stop - start].unsqueeze(0), rows[stop - start :]
            self.outputs[level - 1] = [rest] if len(rest) else []
        output = node.run(inputs, start, greedy_from=0 if greedy else None)
        self.stats[level].passes += 1
        self.stats[level].positions += stop - start
        if level < self.top:
            self.outputs[level].append(output.hidden[0])
        return output.tokens[0].tolist() if output.tokens is not None else []

    def _forget(self, length: int, levels: int) -> None:
        """Levels below ``levels`` (and it) forget every position from ``length`` on."""
        del self.tokens[length:]
        for level in range(levels + 1):
            self.approved[level] = min(self.approved[level], length)
            node = self.nodes[level]
            if node.length > length:
                node.rollback(length)
            if level < self.top and self.outputs[level]:
                rows = torch.cat(self.outputs[level], dim=0)
                above = self.nodes[level + 1].length
                kept = rows[: max(0, length - above)]
                self.outputs[level] = [kept] if len(kept) else []

    def draft(self, target: int) -> None:
        """The device drafts until the tokens reach ``target`` (or end), then runs the last."""
        target = min(target, self.limit)
        while len(self.tokens) < target and not self.ends(len(self.tokens)):
            self.tokens.append(self._run(0, len(self.tokens), greedy=True)[-1])
        length = len(self.tokens)
        if self.nodes[0].length < length < self.limit and not self.ends(length):
            self._run(0, length, greedy=False)
        self.approved[0] = len(self.tokens)

    def verify(self, level: int) -> None:
        """Level ``level`` judges the proposals the level below has run; keeps the agreeing
        prefix and adds its own next token."""
        start = self.nodes[level].length
        stop = self.nodes[level - 1].length
        predictions = self._run(level, stop, greedy=True)
        first = self.approved[level]
        judged = accepted = 0
        for offset, prediction in enumerate(predictions):
            position = start + offset + 1  # the token this row predicts
            if position < first:
                continue
            if position == len(self.tokens):  # every proposal agreed: a bonus token
                if position < self.limit and not self.ends(position):
                    self.tokens.append(prediction)
                break
            judged += 1
            if self.tokens[position] != prediction:
                self._forget(position, level)
                self.tokens.append(prediction)
                break
            accepted += 1
        self.stats[level].judged += judged
        self.stats[level].accepted += accepted
        self.approved[level] = min(len(self.tokens), stop + 1)
        for lower in range(level):
            self.approved[lower] = max(self.approved[lower], self.approved[level])

    def advance(self, level: int) -> None:
        """Level ``level`` approves ``lookahead[level]`` tokens past the level above's."""
        target = self.approved[level + 1] + self.lookahead[level]
        if level == 0:
            self.draft(target)
            return
        while self.approved[level] < target and not self.finished(level):
            self.advance(level - 1)
            self.verify(level)


def check_route_nodes(nodes: Sequence[TierNode], lookahead: Sequence[int]) -> None:
    if len(nodes) < 2 or not nodes[0].takes_tokens:
        raise FamflowError(
            "Hierarchical decoding needs a device node from layer 0 and at least one above it."
        )
    for lower, upper in itertools.pairwise(nodes):
        if lower.stop != upper.start or lower.trunk is not upper.trunk:
            raise FamflowError(
                f"{upper.name} does not continue {lower.name}'s trunk: build the nodes with "
                "collab.route.build_nodes."
            )
    if len(lookahead) != len(nodes) - 1 or min(lookahead) < 1:
        raise FamflowError(
            f"Give one lookahead of at least 1 per level below the top ({len(nodes) - 1}), "
            f"got {list(lookahead)}."
        )


@torch.no_grad()
def hierarchical_generate(
    nodes: Sequence[TierNode],
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    lookahead: Sequence[int] = (4,),
    eos_token_id: int | None = None,
) -> HierarchicalResult:
    """Greedy decoding of the top node's exit, drafted and filtered by the nodes below it.

    ``lookahead[i]`` is how many tokens level i proposes past the level above's approval
    before that level judges them (for the device: draft tokens per verification).
    """
    check_route_nodes(nodes, lookahead)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise FamflowError(
            f"Hierarchical decoding takes one prompt of shape (1, n), got "
            f"{tuple(input_ids.shape)}: decode prompts one at a time."
        )
    begin = time.perf_counter()
    prompt = input_ids[0].tolist()
    state = _Decoding(nodes, prompt, lookahead, len(prompt) + max_new_tokens, eos_token_id)
    while not state.finished(state.top) and max_new_tokens > 0:
        state.advance(state.top - 1)
        state.verify(state.top)
    return HierarchicalResult(
        torch.tensor([state.tokens]), len(prompt), time.perf_counter() - begin, state.stats
    )
