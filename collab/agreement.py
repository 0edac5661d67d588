"""How often each lower tier's exit picks the top exit's next token, teacher-forced on text.

Speculative decoding accepts a draft only where the device's exit (or an edge's) picks the
token the top exit would pick, and only up to the first draft where they differ. So on a
given text the share of drafts accepted is at most the share of positions where the two
argmaxes agree, run along the route's own nodes. On the top exit's own greedy continuation
of a prompt the bound is exact: ``speculative_acceptance`` replays drafting on the flags.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from famflow.collab.route import RouteModels, build_nodes


def agreement_flags(
    models: RouteModels, exits: list[int], text: torch.Tensor
) -> dict[int, torch.Tensor]:
    """Per lower exit of the route: at each position of ``text`` (token ids), whether its greedy
    token (its draft: within the draft vocabulary, if the route has one) equals the top exit's,
    each exit reading the hidden state the route hands it."""
    inputs = text.reshape(1, -1)
    picks = []
    for node in build_nodes(models, exits):  # fresh caches per text
        output = node.run(inputs, 0, greedy_from=0)
        assert output.tokens is not None
        picks.append(output.tokens[0])
        inputs = output.hidden
    return {depth: pick == picks[-1] for depth, pick in zip(exits, picks[:-1], strict=False)}


def exit_agreement(
    models: RouteModels, exits: list[int], texts: Sequence[torch.Tensor]
) -> dict[int, float]:
    """The share of positions of ``texts`` where each lower exit agrees with the top exit."""
    agreeing = dict.fromkeys(exits[:-1], 0)
    positions = 0
    for text in texts:
        for depth, flags in agreement_flags(models, exits, text).items():
            agreeing[depth] += int(flags.sum())
        positions += len(text)
    return {depth: count / positions for depth, count in agreeing.items()} if positions else {}


def speculative_acceptance(flags: torch.Tensor, draft_tokens: int) -> tuple[int, int, int]:
    """Drafting ``draft_tokens`` at a time along the top exit's own greedy continuation whose
    per-position agreement is ``flags``: (accepted, drafted, rounds).

    As ``collab.decoding.speculative_generate`` does, a round drafts up to ``draft_tokens``
    (never the continuation's last token, which the verifier gives), keeps those before the
    first disagreement and gets one token from the verifier: the next round starts after
    accepted + 1 tokens.
    """
    accepted = drafted = rounds = 0
    position, length = 0, len(flags)
    while position < length:
        window = flags[position : position + min(draft_tokens, length - position - 1)]
        misses = (~window).nonzero()
        kept = int(misses[0]) if len(misses) else len(window)
        accepted += kept
        drafted += len(window)
        rounds += 1
        position += kept + 1
    return accepted, drafted, rounds
