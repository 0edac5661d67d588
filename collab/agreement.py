"""How often each lower tier's exit picks the top exit's next token, teacher-forced on text.

Speculative decoding accepts a draft only where the device's exit (or an edge's) picks the
token the top exit would pick, and only up to the first draft where they differ. So on a
given text the share of drafts accepted is at most the share of positions where the two
argmaxes agree, run along the route's own nodes. Held-out text of the training domain
stands in for the text generation would produce.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from famflow.collab.route import RouteModels, build_nodes


def exit_agreement(
    models: RouteModels, exits: list[int], texts: Sequence[torch.Tensor]
) -> dict[int, float]:
    """Per lower exit of the route: the share of positions of ``texts`` (token ids) where its
    greedy token equals the top exit's, each exit reading the hidden state the route hands it."""
    agreeing = dict.fromkeys(exits[:-1], 0)
    positions = 0
    for text in texts:
        inputs = text.reshape(1, -1)
        picks = []
        for node in build_nodes(models, exits):  # fresh caches per text
            output = node.run(inputs, 0, logits_from=0)
            assert output.logits is not None
            picks.append(output.logits[0].argmax(dim=-1))
            inputs = output.hidden
        top = picks[-1]
        for depth, pick in zip(exits, picks[:-1], strict=False):
            agreeing[depth] += int((pick == top).sum())
        positions += top.numel()
    return {depth: count / positions for depth, count in agreeing.items()} if positions else {}
