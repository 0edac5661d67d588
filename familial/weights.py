"""The precision a branch's frozen decoder layers are held in: fp32, bf16, fp16, or quantized.

``int8`` and ``nf4`` quantize the linears of the branch's decoder layers with bitsandbytes
(``Linear8bitLt`` with int8 weights and one scale per row; ``Linear4bit`` NF4 with blocks of 64
and double-quantized block scales, QLoRA's recipe). PEFT's LoRA wraps those layers natively, so
the LoRA factors stay fp32 and travel exactly as from a full-precision branch. Embeddings,
norms, heads and exit adapters keep the model's dtype: they are small, tied, or trained, and
the quantized layers compute in that dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from famflow.familial.errors import FamflowError

logger = logging.getLogger("famflow.familial")

NF4_BLOCK = 64
NF4_SCALE_BLOCK = 256  # double quantization: 256 int8 block scales share one fp32 scale


def _bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as error:
        raise FamflowError(
            f"Quantized weights need bitsandbytes ({error}): pip install 'bitsandbytes>=0.48'."
        ) from None
    return bitsandbytes


def _placed(module: nn.Module, weight: nn.Parameter, linear: nn.Linear, device: str) -> nn.Module:
    """``module`` with the quantizable ``weight`` and ``linear``'s bias, on ``device``:
    bitsandbytes quantizes a weight when it moves to its device."""
    module.weight = weight
    if linear.bias is not None:
        module.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    return module.to(device)


def _int8(linear: nn.Linear, device: str) -> nn.Module:
    bnb = _bitsandbytes()
    shape = (linear.in_features, linear.out_features)
    module = bnb.nn.Linear8bitLt(
        *shape, bias=linear.bias is not None, has_fp16_weights=False, threshold=0.0
    )
    weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    return _placed(module, weight, linear, device)


def _nf4(linear: nn.Linear, device: str) -> nn.Module:
    bnb = _bitsandbytes()
    module = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=linear.weight.dtype,  # the model's own: fp32 here, bf16 for Ruyi
        quant_type="nf4",
        compress_statistics=True,
    )
    weight = bnb.nn.Params4bit(
        linear.weight.data,
        requires_grad=False,
        quant_type="nf4",
        blocksize=NF4_BLOCK,
        compress_statistics=True,
    )
    return _placed(module, weight, linear, device)


@dataclass(frozen=True)
class WeightPrecision:
    """One way of holding frozen linears; ``quantize`` None keeps them as dense tensors."""

    name: str
    dtype: torch.dtype | None  # of what it leaves dense; None: the model's own dtype
    bits: float  # bits per frozen linear weight, scales included
    quantize: Callable[[nn.Linear, str], nn.Module] | None = None
    peft_flag: str | None = None  # the model attribute PEFT reads to wrap the quantized layers
    # What training on the quantized layers keeps beyond their weights (dequantized copies,
    # bitsandbytes' saved inputs), as a share of their dense bytes; measured on SmolLM2-135M
    # by benchmarks/quantized_branches.py --held-exits (int8 up to 1.1, nf4 up to 0.76).
    training_overhead: float = 0.0

    @property
    def quantized(self) -> bool:
        return self.quantize is not None

    def dense_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype of what this precision leaves dense, on a model stored in ``model_dtype``."""
        return self.dtype or model_dtype

    def linear_bytes(self, in_features: int, out_features: int) -> int:
        """Bytes a frozen ``in -> out`` linear's weight takes in this precision."""
        return int(in_features * out_features * self.bits / 8)


PRECISIONS: dict[str, WeightPrecision] = {
    "fp32": WeightPrecision("fp32", torch.float32, 32),
    "bf16": WeightPrecision("bf16", torch.bfloat16, 16),
    "fp16": WeightPrecision("fp16", torch.float16, 16),
    # one fp32 scale per row is ~0 bits per weight for rows of hundreds of inputs
    "int8": WeightPrecision("int8", None, 8, _int8, "is_loaded_in_8bit", 1.15),
    # 4 bits + an int8 scale per 64 weights + an fp32 scale per 256 scales
    "nf4": WeightPrecision(
        "nf4", None, 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * NF4_SCALE_BLOCK), _nf4,
        "is_loaded_in_4bit", 0.8,
    ),
}  # fmt: skip


def weight_precision(name: str) -> WeightPrecision:
    if name not in PRECISIONS:
        raise FamflowError(
            f"Unknown weight precision {name!r}: use one of {', '.join(PRECISIONS)}."
        )
    return PRECISIONS[name]


def precision_of_dtype(dtype: torch.dtype) -> str:
    """The dense precision that holds weights of ``dtype`` (a preset's ``dtype``)."""
    for precision in PRECISIONS.values():
        if precision.dtype == dtype:
            return precision.name
    raise FamflowError(f"No weight precision stores {dtype}: use float32, bfloat16 or float16.")


def frozen_layer_prefixes(exit_style: str) -> tuple[str, ...]:
    """Module-name prefixes of the pretrained decoder layers a branch keeps frozen: the trunk's,
    and a Ruyi family's exit layers (an adapter ``extra_layer`` trains whole, so stays dense)."""
    return ("model.layers.", "exits.") if exit_style == "ruyi" else ("model.layers.",)


def frozen_linears(model: nn.Module, exit_style: str) -> list[tuple[str, nn.Linear]]:
    prefixes = frozen_layer_prefixes(exit_style)
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and name.startswith(prefixes)
        and (not name.startswith("exits.") or ".layer." in name)
    ]


def quantize_frozen_layers(model: nn.Module, exit_style: str, precision: str, device: str) -> int:
    """Replace the frozen decoder layers' linears with ``precision``'s quantized modules on
    ``device``, one at a time so that only one dense copy is alive. Call it before LoRA is
    attached; returns how many linears were quantized."""
    chosen = weight_precision(precision)
    if chosen.quantize is None:
        return 0
    linears = frozen_linears(model, exit_style)
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, chosen.quantize(linear, device))
        linear.weight = None  # drop the dense weight now, not when the loop ends
    assert chosen.peft_flag is not None
    setattr(model, chosen.peft_flag, True)
    model.weight_precision = precision
    logger.debug("Quantized %d linears to %s on %s.", len(linears), precision, device)
    return len(linears)
