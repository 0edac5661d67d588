"""FamilialLM: one trunk of transformers decoder layers with several early exits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from famflow.familial.architectures import Architecture, architecture_for
from famflow.familial.config import FamilyConfig
from famflow.familial.errors import FamflowError
from famflow.familial.exits import ExitHead, make_translator


@dataclass
class FamilialOutput:
    """Per-exit results of one trunk pass, keyed by exit depth."""

    logits: dict[int, torch.Tensor]
    hidden_states: dict[int, torch.Tensor] | None = None
    past_key_values: Cache | None = None


class FamilialTrunk(nn.Module):
    """Embedding, the branch's trunk layers, the shared final norm and rotary embedding.

    Attribute names match transformers' ``model.*`` so dense checkpoints load key for key.
    """

    def __init__(self, config: PretrainedConfig, num_layers: int, with_final_norm: bool) -> None:
        super().__init__()
        arch = architecture_for(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(arch.decoder_layer(config, i) for i in range(num_layers))
        self.norm = (
            arch.rms_norm(config.hidden_size, eps=config.rms_norm_eps) if with_final_norm else None
        )
        self.rotary_emb = arch.rotary_embedding(config=config)


class FamilialLM(nn.Module):
    """A causal LM whose exits share one trunk; built for a branch, it holds only that branch.

    ``branch`` is the deepest exit held (default: the family's deepest). The model then holds
    the trunk layers that exit needs and the exit heads of ``exits`` (default: every exit up to
    the branch, for multi-exit training; ``[branch]`` holds the branch's own path only).
    """

    # recompute each decoder layer in backward (training only); see TrainConfig
    gradient_checkpointing: bool = False

    def __init__(
        self,
        config: PretrainedConfig,
        family: FamilyConfig,
        branch: int | None = None,
        exits: list[int] | None = None,
    ) -> None:
        super().__init__()
        family.validate_against(config.num_hidden_layers)
        if family.exit_style == "ruyi" and family.adapters and family.adapters.extra_layer:
            raise FamflowError(
                "Ruyi-style exits already have their own layer: set adapters.extra_layer = false."
            )
        self.config = config
        self.family = family
        self.branch = family.exits[-1] if branch is None else branch
        self.held_exits = family.exits_up_to(self.branch)
        if exits is not None:
            outside = sorted(set(exits) - set(self.held_exits))
            if outside or self.branch not in exits:
                raise FamflowError(
                    f"Branch {self.branch} can hold exits {self.held_exits} and must hold itself, "
                    f"got {exits}: choose exits from that list including {self.branch}."
                )
            self.held_exits = sorted(set(exits))
        arch = architecture_for(config)
        shared_head = family.exit_style == "shared-head" or family.shared_heads

        self.model = FamilialTrunk(
            config,
            num_layers=max(self.trunk_depth(e) for e in self.held_exits),
            with_final_norm=family.exit_style == "shared-head",
        )
        self.lm_head = (
            nn.Linear(config.hidden_size, config.vocab_size, bias=False) if shared_head else None
        )
        self.exits = nn.ModuleDict(
            {str(e): self._make_exit(arch, e, shared_head) for e in self.held_exits}
        )
        self.tie_weights()

    @property
    def num_hidden_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def trunk_depth(self, exit_depth: int) -> int:
        """Trunk layers run before the exit head; a Ruyi exit's last layer is its own."""
        if self.family.exit_style == "ruyi" and exit_depth < self.num_hidden_layers:
            return exit_depth - 1
        return exit_depth

    def has_exit_layer(self, exit_depth: int) -> bool:
        if exit_depth >= self.num_hidden_layers:
            return False
        if self.family.exit_style == "ruyi":
            return True
        return bool(self.family.adapters and self.family.adapters.extra_layer)

    def _make_exit(self, arch: Architecture, depth: int, shared_head: bool) -> ExitHead:
        config = self.config
        adapters = self.family.adapters
        layer = None
        source_index = min(depth, self.num_hidden_layers - 1)
        if self.has_exit_layer(depth):
            # Built with the index of the trunk layer it stands for (Ruyi: depth - 1, adapter:
            # the layer it is initialised from), then moved past the trunk so that one cache can
            # hold trunk and exit layers without collisions.
            if self.family.exit_style == "ruyi":
                source_index = depth - 1
            layer = arch.decoder_layer(config, source_index)
            layer.self_attn.layer_idx = self.num_hidden_layers + self.family.exits.index(depth)
        translator = make_translator(adapters, config.hidden_size) if adapters else None
        own_norm = self.family.exit_style == "ruyi" or bool(adapters and adapters.norm)
        norm = arch.rms_norm(config.hidden_size, eps=config.rms_norm_eps) if own_norm else None
        head = None if shared_head else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        return ExitHead(layer, translator, norm, head, self._layer_type(source_index))

    def tie_weights(self) -> None:
        if self.lm_head is not None and self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def exit_head(self, depth: int) -> ExitHead:
        return self.exits[str(depth)]  # type: ignore[return-value]

    def _check_requested(self, exits: list[int]) -> list[int]:
        for depth in exits:
            if depth not in self.held_exits:
                raise FamflowError(
                    f"Exit {depth} is not held by this branch (it holds {self.held_exits}): "
                    "load a branch that contains it."
                )
        return sorted(set(exits))

    def _masks(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        position_ids: torch.Tensor,
    ) -> dict[str, torch.Tensor | None]:
        kwargs = {
            "config": self.config,
            "inputs_embeds": embeds,
            "attention_mask": attention_mask,
            "cache": cache,
            "position_ids": position_ids,
        }
        masks = {"full_attention": create_causal_mask(**kwargs)}
        if "sliding_attention" in (getattr(self.config, "layer_types", None) or []):
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        return masks

    def _layer_type(self, index: int) -> str:
        layer_types = getattr(self.config, "layer_types", None)
        return layer_types[index] if layer_types else "full_attention"

    def _run(
        self,
        layer: nn.Module,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        layer_kwargs: dict[str, object],
    ) -> torch.Tensor:
        """One decoder layer; under gradient checkpointing in training its activations are
        recomputed in backward instead of kept (only the layer's input stays)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(
                layer, hidden, attention_mask=mask, use_reentrant=False, **layer_kwargs
            )
        return layer(hidden, attention_mask=mask, **layer_kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        exits: list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_logits: bool = True,
    ) -> FamilialOutput:
        """Logits for every requested exit (default: the branch's deepest) from one trunk pass.

        ``hidden_states[e]`` is what exit e's head reads (normed, translated); without
        ``output_logits`` only those are computed (``logits`` is empty). A cache holds the
        layers the requested exits ran: reuse it only with the same exits.
        """
        output_hidden_states = output_hidden_states or not output_logits
        exits = self._check_requested(exits or [self.branch])
        embeds = self.model.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if position_ids is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(embeds.shape[1], device=embeds.device).unsqueeze(0) + seen
        masks = self._masks(embeds, attention_mask, past_key_values, position_ids)
        layer_kwargs = {
            "position_embeddings": self.model.rotary_emb(embeds, position_ids),
            "position_ids": position_ids,
            "cache": past_key_values,
            "use_cache": use_cache,
        }
        branch_off: dict[int, list[int]] = {}
        for depth in exits:
            branch_off.setdefault(self.trunk_depth(depth), []).append(depth)

        logits: dict[int, torch.Tensor] = {}
        hiddens: dict[int, torch.Tensor] = {}
        hidden = embeds
        for index in range(max(branch_off) + 1):
            for depth in branch_off.get(index, []):
                head = self.exit_head(depth)
                exit_hidden = hidden
                if head.layer is not None:
                    mask = masks[head.layer_type]
                    exit_hidden = self._run(head.layer, exit_hidden, mask, layer_kwargs)
                head_input = head.head_input(exit_hidden, self.model.norm)
                if output_hidden_states:
                    hiddens[depth] = head_input
                if output_logits:
                    logits[depth] = head.project(head_input, self.lm_head)
            if index < len(self.model.layers) and index < max(branch_off):
                mask = masks[self._layer_type(index)]
                hidden = self._run(self.model.layers[index], hidden, mask, layer_kwargs)
        return FamilialOutput(
            logits=logits,
            hidden_states=hiddens if output_hidden_states else None,
            past_key_values=past_key_values if use_cache else None,
        )
