"""Tokenizers of a model: the checkpoint's own, or a byte-level one for random test models."""

from __future__ import annotations

from functools import cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from famflow.familial.errors import FamflowError
from famflow.familial.presets import ModelSpec

BYTE_VOCAB_SIZE = 256
# A plain chat template, so chat data formats the same way for test models as for real ones.
BYTE_CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


@cache
def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(BYTE_VOCAB_SIZE)}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (256 tokens); byte 0 doubles as end of text."""
    chars = _byte_to_char()
    vocab = {chars[b]: b for b in range(BYTE_VOCAB_SIZE)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=chars[0])
    tokenizer.chat_template = BYTE_CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, or the byte tokenizer for random and config-only models."""
    if spec.source in ("random", "config"):
        vocab_size = int(spec.config_dict["vocab_size"])
        if vocab_size < BYTE_VOCAB_SIZE:
            raise FamflowError(
                f"{spec.name} has {vocab_size} tokens, fewer than the {BYTE_VOCAB_SIZE} "
                "the byte tokenizer needs: give it vocab_size >= 256."
            )
        return byte_tokenizer()
    from famflow.familial.loading import checkpoint_dir

    directory = checkpoint_dir(spec)
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as error:
        raise FamflowError(
            f"No usable tokenizer in {directory} ({error}): save the model's tokenizer there."
        ) from None
