"""One tier of a route: a range of trunk layers and one exit, with a KV cache of its own.

A node continues the trunk from a received hidden state (the device node starts from token
ids) at explicit positions, so its rotary embeddings and causal masks are those the full
model would use there. Its cache holds only its own layers, under the layers' own indices
(a Ruyi exit layer sits at ``num_hidden_layers + exit index``): caches are never shared
between nodes or exits, and masks are sized against a layer this node runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from famflow.familial.errors import FamflowError
from famflow.familial.exits import ExitHead
from famflow.familial.model import FamilialLM

MASK_FUNCTIONS = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


@dataclass
class NodeOutput:
    """``hidden``: the trunk hidden state after the node's last layer, one row per position.

    ``logits``: the node's exit logits for the rows from ``logits_from`` on (None if not asked).
    ``tokens``: the node's greedy tokens for the rows from ``greedy_from`` on (None if not
    asked), chosen within its draft vocabulary when it has one.
    """

    hidden: torch.Tensor
    logits: torch.Tensor | None
    tokens: torch.Tensor | None = None


class TierNode:
    """Trunk layers ``[start, stop)`` of ``trunk`` and exit ``exit_depth`` of ``exit_model``.

    ``exit_model`` (default ``trunk``) holds the exit head; its trunk depth must be ``stop``,
    so the exit reads the hidden state this node hands up. A node that starts at layer 0
    embeds token ids; any other receives hidden states. Every position a node runs also goes
    through its exit layer (if the exit has one), so the exit can be read at any later
    position; the norm and head run only on the rows asked for.
    """

    def __init__(
        self,
        trunk: FamilialLM,
        start: int,
        stop: int,
        exit_depth: int,
        exit_model: FamilialLM | None = None,
        name: str = "",
        draft_vocabulary: torch.Tensor | None = None,
    ) -> None:
        exit_model = trunk if exit_model is None else exit_model
        runs_a_layer = start < stop or exit_model.has_exit_layer(exit_depth)
        if not (0 <= start <= stop <= len(trunk.model.layers) and runs_a_layer):
            raise FamflowError(
                f"A node needs trunk layers [{start}, {stop}) within the "
                f"{len(trunk.model.layers)} layers its model holds: load a deeper branch."
            )
        if exit_depth not in exit_model.held_exits or exit_model.trunk_depth(exit_depth) != stop:
            raise FamflowError(
                f"Exit {exit_depth} does not read the hidden state after layer {stop}: "
                "build the node's layer range from the exits of its route."
            )
        self.trunk = trunk
        self.head: ExitHead = exit_model.exit_head(exit_depth)
        self.shared_norm = exit_model.model.norm
        self.shared_head = exit_model.lm_head
        self.start, self.stop, self.exit_depth = start, stop, exit_depth
        self.name = name or f"exit {exit_depth}"
        self.config = trunk.config
        self.cache = DynamicCache()
        self.length = 0
        parameter = next(trunk.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device
        self.draft_vocabulary: torch.Tensor | None = None
        self._draft_rows: torch.Tensor | None = None
        if draft_vocabulary is not None:
            self.restrict_drafts(draft_vocabulary)

    def restrict_drafts(self, vocabulary: torch.Tensor | None) -> None:
        """Choose greedy tokens only among ``vocabulary`` (None: the whole vocabulary)."""
        if vocabulary is None:
            self.draft_vocabulary = self._draft_rows = None
            return
        head = self.head.lm_head if self.head.lm_head is not None else self.shared_head
        assert head is not None, "an exit without its own head needs the shared lm_head"
        vocabulary = vocabulary.to(device=self.device, dtype=torch.long)
        self.draft_vocabulary = vocabulary
        self._draft_rows = head.weight.detach()[vocabulary].contiguous()

    @property
    def takes_tokens(self) -> bool:
        return self.start == 0

    def _layers(self) -> list[tuple[nn.Module, str]]:
        """The decoder layers this node runs, in order, with their attention types."""
        layer_types = getattr(self.config, "layer_types", None)
        layers = [
            (self.trunk.model.layers[i], layer_types[i] if layer_types else "full_attention")
            for i in range(self.start, self.stop)
        ]
        if self.head.layer is not None:
            layers.append((self.head.layer, self.head.layer_type))
        return layers

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.length = 0

    def rollback(self, length: int) -> None:
        """Forget every position from ``length`` on (rejected drafts): crop the cache."""
        if not 0 <= length <= self.length:
            raise FamflowError(
                f"{self.name} holds {self.length} positions and cannot roll back to {length}: "
                "roll back only to a length it has reached."
            )
        if length == 0:
            self.reset()
        elif length < self.length:
            self.cache.crop(length - self.length)
            self.length = length

    @torch.no_grad()
    def run(
        self,
        inputs: torch.Tensor,
        position: int,
        logits_from: int | None = None,
        greedy_from: int | None = None,
    ) -> NodeOutput:
        """Run the positions ``[position, position + rows)`` given as ids or hidden states.

        ``inputs`` is ``(1, rows)`` token ids for the first node, ``(1, rows, hidden)`` for
        the others. ``position`` must equal the positions already cached.
        """
        if position != self.length:
            raise FamflowError(
                f"{self.name} has run {self.length} positions, not {position}: send the "
                f"positions from {self.length} on."
            )
        if self.takes_tokens:
            hidden = self.trunk.model.embed_tokens(inputs.to(self.device))
        else:
            hidden = inputs.to(device=self.device, dtype=self.dtype)
        rows = hidden.shape[1]
        positions = torch.arange(position, position + rows, device=self.device).unsqueeze(0)
        layers = self._layers()
        masks = self._masks(hidden, positions, layers)
        layer_kwargs = {
            "position_embeddings": self.trunk.model.rotary_emb(hidden, positions),
            "position_ids": positions,
            "cache": self.cache,
            "use_cache": True,
        }
        for layer, kind in layers[: self.stop - self.start]:
            hidden = layer(hidden, attention_mask=masks[kind], **layer_kwargs)
        exit_hidden = hidden
        if self.head.layer is not None:
            mask = masks[self.head.layer_type]
            exit_hidden = self.head.layer(exit_hidden, attention_mask=mask, **layer_kwargs)
        self.length += rows
        logits = tokens = None
        if logits_from is not None:
            logits = self._exit_logits(exit_hidden[:, logits_from:])
        if greedy_from is not None:
            tokens = self._greedy(exit_hidden[:, greedy_from:])
        return NodeOutput(hidden=hidden, logits=logits, tokens=tokens)

    def _exit_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head.logits(hidden, self.shared_norm, self.shared_head)

    def _greedy(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._draft_rows is None or self.draft_vocabulary is None:
            return self._exit_logits(hidden).argmax(dim=-1)
        scores = self.head.head_input(hidden, self.shared_norm) @ self._draft_rows.T
        return self.draft_vocabulary[scores.argmax(dim=-1)]

    def _masks(
        self, hidden: torch.Tensor, positions: torch.Tensor, layers: list[tuple[nn.Module, str]]
    ) -> dict[str, torch.Tensor | None]:
        """One mask per attention type, sized against a cache layer of this node.

        The node's cache has empty slots below its first layer index (a DynamicCache grows up
        to the highest index updated), so the default (layer 0) would see no past.
        """
        masks: dict[str, torch.Tensor | None] = {}
        for layer, kind in layers:
            if kind not in masks:
                masks[kind] = MASK_FUNCTIONS[kind](
                    config=self.config,
                    inputs_embeds=hidden,
                    attention_mask=None,
                    cache=self.cache,
                    position_ids=positions,
                    layer_idx=layer.self_attn.layer_idx,
                )
        return masks
